"""Every learner's configuration is one frozen value saved with its state: rebuilding is
``cls(model, **config)``, a subclass needs no checkpoint code, and states of fdbpl 0.1 load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fdbpl.errors import FDBPLError
from fdbpl.prompts import (
    CoCoOpDualPromptLearner,
    DeepPromptLearner,
    DualPromptLearner,
    PromptLearnerBase,
    learner_from_state_dict,
)

NAMES = ["cat", "dog", "school_bus"]


def perturbed(learner):
    """Contexts away from their initial values, so a load that copies nothing is seen."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return learner


def same_learner(a, b):
    assert type(a) is type(b) and dict(a.config) == dict(b.config)
    for (name, p), (name_b, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert name == name_b and torch.equal(p, q), name


coop_options = st.fixed_dictionaries(
    {},
    optional={
        "positive_init": st.sampled_from([None, "a photo of a", "an image of"]),
        "class_specific": st.booleans(),
        "class_token_position": st.sampled_from(["end", "middle", "front"]),
        "normalize_classnames": st.booleans(),
    },
)


@settings(max_examples=8)
@given(coop_options, st.sampled_from([None, 2, 5]))
def test_coop_rebuilds_from_its_config_alone(open_clip_model, options, n_ctx):
    model, tok = open_clip_model
    # a length only for the random space (an init phrase fixes its own)
    n_ctx = {"positive": n_ctx} if "positive_init" in options and options["positive_init"] is None else None
    learner = perturbed(DualPromptLearner(model, NAMES, tokenizer=tok, n_ctx=n_ctx, **options))
    config = learner.config
    with pytest.raises(TypeError):
        config["class_specific"] = True  # read-only
    assert "tokenizer" not in config and "truncate" not in config and "clip_model" not in config
    assert config["n_ctx"] == learner.n_ctx  # recorded as resolved, not as None
    rebuilt = DualPromptLearner(model, tokenizer=tok, **config)
    rebuilt.load_state_dict(learner.state_dict())
    same_learner(learner, rebuilt)
    same_learner(learner, learner_from_state_dict(model, learner.state_dict(), tokenizer=tok))


@pytest.mark.parametrize(
    "build",
    [
        lambda m, t: CoCoOpDualPromptLearner(m, NAMES, tokenizer=t, meta_net="per_space", positive_init=None),
        lambda m, t: DeepPromptLearner(m, NAMES, "maple", tokenizer=t, depth=2),
        lambda m, t: DeepPromptLearner(m, NAMES, "vpt", tokenizer=t, depth=2, vision_ctx=3),
    ],
    ids=["cocoop", "maple", "vpt"],
)
def test_every_learner_rebuilds_as_cls_of_its_config(open_clip_model, build):
    model, tok = open_clip_model
    learner = perturbed(build(model, tok))
    assert all(value is not None for key, value in learner.config.items() if key not in ("positive_init",))
    rebuilt = type(learner)(model, tokenizer=tok, **learner.config)
    rebuilt.load_state_dict(learner.state_dict())
    same_learner(learner, rebuilt)
    same_learner(learner, learner_from_state_dict(model, learner.state_dict(), tokenizer=tok))


class ScaledLearner(DualPromptLearner):
    """A learner defined outside fdbpl with an option of its own and no checkpoint code."""

    def __init__(self, clip_model, classnames, tokenizer=None, scale: float = 2.0, truncate: bool = True):
        super().__init__(clip_model, classnames, tokenizer=tokenizer, truncate=truncate)
        self.scale = scale

    def forward(self, classes=None):
        positive, negative = super().forward(classes)
        return self.scale * positive, negative


def test_a_subclass_needs_no_checkpoint_code(open_clip_model):
    model, tok = open_clip_model
    learner = perturbed(ScaledLearner(model, NAMES, tokenizer=tok, scale=0.5))
    assert dict(learner.config) == {"classnames": ["cat", "dog", "school bus"], "scale": 0.5}
    state = learner.state_dict()
    assert state["_extra_state"]["learner"] == "ScaledLearner" and state["_extra_state"]["scale"] == 0.5
    rebuilt = ScaledLearner.from_state_dict(model, state, tokenizer=tok)
    same_learner(learner, rebuilt)
    torch.testing.assert_close(rebuilt()[0], learner()[0])
    with pytest.raises(FDBPLError, match=r"state \(ScaledLearner\), not a .coop. one \(DualPromptLearner\)"):
        DualPromptLearner.from_state_dict(model, state, tokenizer=tok)
    with pytest.raises(FDBPLError, match=r"scale=0\.5"):
        ScaledLearner(model, NAMES, tokenizer=tok, scale=3.0).load_state_dict(state)
    numpy_scale = ScaledLearner(model, NAMES, tokenizer=tok, scale=np.float32(0.25)).config["scale"]
    assert numpy_scale == 0.25 and type(numpy_scale) is float  # saved as plain data
    with pytest.raises(FDBPLError, match="plain data"):
        ScaledLearner(model, NAMES, tokenizer=tok, scale=torch.tensor(1.0))


def _state_of_0_1(learner: PromptLearnerBase, **entries) -> dict:
    """The state fdbpl 0.1 saved: contexts and a flat configuration, without class or config entries."""
    state = {k: v for k, v in learner.state_dict().items() if k != "_extra_state"}
    state["_extra_state"] = {
        "method": learner.method,
        "classnames": list(learner.classnames),
        "n_ctx": dict(learner.n_ctx),
        "inits": dict(learner.inits),
        **entries,
    }
    return state


def test_states_of_0_1_still_load(open_clip_model):
    """0.1 saved no learner class and no config: they rebuild from the flat entries it wrote."""
    model, tok = open_clip_model
    coop = perturbed(
        DualPromptLearner(
            model,
            NAMES,
            tokenizer=tok,
            n_ctx={"positive": 3},
            positive_init=None,
            class_token_position="front",
        )
    )
    old = _state_of_0_1(coop, class_specific=False, class_token_position="front", normalize_classnames=True)
    same_learner(coop, learner_from_state_dict(model, old, tokenizer=tok))
    coop.load_state_dict(old)  # the learner accepts it as its own
    cocoop = perturbed(CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="per_space"))
    old = _state_of_0_1(cocoop, class_specific=False, normalize_classnames=True, meta_net="per_space")
    same_learner(cocoop, learner_from_state_dict(model, old, tokenizer=tok))
    deep = perturbed(
        DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=2, vision_prompt_position="after_ln_pre")
    )
    old = _state_of_0_1(
        deep, class_specific=False, normalize_classnames=True, depth=2, vision_ctx=deep.vision_ctx
    )
    old["_extra_state"]["method"] = "ivlp"
    rebuilt = learner_from_state_dict(model, old, tokenizer=tok)
    same_learner(deep, rebuilt)
    assert rebuilt.vision_prompt_position == "after_ln_pre"  # what 0.1 built every deep learner with
    with pytest.raises(FDBPLError, match="'cocoop' learner's state"):
        DualPromptLearner.from_state_dict(model, _state_of_0_1(cocoop), tokenizer=tok)
