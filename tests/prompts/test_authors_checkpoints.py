"""Checkpoints saved by the base methods' own trainers (Dassl's model.pth.tar-N) as a starting point.

Each checkpoint is written here in its method's key layout, the names read from the authors'
trainers (CoOp/CoCoOp register the prompt learner alone; VPT, IVLP, MaPLe and PromptSRC the
whole model), and the loaded learner's positive space and image features are compared with
the authors' forward run on the checkpoint's own tensors.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from authors_forward import authors_image, plain_text, with_far_ln_pre
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_open_clip

from fdbpl.errors import FDBPLError
from fdbpl.prompts import DeepPromptLearner, build_learner, load_authors_checkpoint

NAMES = ["cat", "dog", "school bus"]
W = 64  # the tiny towers' text and vision width
CLIP_WEIGHTS = {  # frozen entries a whole-model checkpoint also holds
    "image_encoder.conv1.weight": (W, 3, 8, 8),
    "text_encoder.ln_final.weight": (W,),
    "logit_scale": (),
    "prompt_learner.token_prefix": (3, 1, W),
    "prompt_learner.token_suffix": (3, 72, W),
}


def rand(g, *shape):
    return 0.5 * torch.randn(shape, generator=g)


def authors_state(method, g, depth=2, n_ctx=4, n_vision=2):
    """A checkpoint's state_dict in ``method``'s key layout, with random prompts."""
    if method == "coop":
        return {"ctx": rand(g, n_ctx, W), "token_prefix": rand(g, 3, 1, W), "token_suffix": rand(g, 3, 72, W)}
    if method == "cocoop":
        return {
            "ctx": rand(g, n_ctx, W),
            "meta_net.linear1.weight": rand(g, W // 16, W),
            "meta_net.linear1.bias": rand(g, W // 16),
            "meta_net.linear2.weight": rand(g, W, W // 16),
            "meta_net.linear2.bias": rand(g, W),
        }
    state = {k: rand(g, *shape) for k, shape in CLIP_WEIGHTS.items()}
    if method in ("vpt", "ivlp", "promptsrc"):
        state["image_encoder.VPT"] = rand(g, n_vision, W)
        for j in range(1, depth):
            state[f"image_encoder.transformer.resblocks.{j}.VPT_shallow"] = rand(g, n_vision, W)
    if method in ("ivlp", "promptsrc"):
        state["prompt_learner.ctx"] = rand(g, n_ctx, W)
        for j in range(1, depth):
            state[f"text_encoder.transformer.resblocks.{j}.VPT_shallow"] = rand(g, n_ctx, W)
    if method == "promptsrc":
        state["prompt_learner.ZS_image_encoder.conv1.weight"] = rand(g, W, 3, 8, 8)
    if method == "maple":
        state["prompt_learner.ctx"] = rand(g, n_ctx, W)
        state["prompt_learner.proj.weight"] = rand(g, W, W)
        state["prompt_learner.proj.bias"] = rand(g, W)
        for i in range(depth - 1):
            state[f"prompt_learner.compound_prompts_text.{i}"] = rand(g, n_ctx, W)
            state[f"prompt_learner.compound_prompt_projections.{i}.weight"] = rand(g, W, W)
            state[f"prompt_learner.compound_prompt_projections.{i}.bias"] = rand(g, W)
    return state


def save(tmp_path, state, name="model.pth.tar-5"):
    path = tmp_path / name
    torch.save({"state_dict": state, "epoch": 5, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def authors_text_tokens(method, state, depth):
    if method in ("coop", "cocoop"):
        return [state["ctx"]]
    if method == "vpt":
        return None
    if method == "maple":
        return [state["prompt_learner.ctx"]] + [
            state[f"prompt_learner.compound_prompts_text.{i}"] for i in range(depth - 1)
        ]
    return [state["prompt_learner.ctx"]] + [
        state[f"text_encoder.transformer.resblocks.{j}.VPT_shallow"] for j in range(1, depth)
    ]


def authors_vision_tokens(method, state, depth):
    if method == "maple":  # MaPLe's forward: proj(ctx), then each projection of its compound prompt
        tokens = [
            F.linear(
                state["prompt_learner.ctx"],
                state["prompt_learner.proj.weight"],
                state["prompt_learner.proj.bias"],
            )
        ]
        for i in range(depth - 1):
            p = f"prompt_learner.compound_prompt_projections.{i}"
            tokens.append(
                F.linear(
                    state[f"prompt_learner.compound_prompts_text.{i}"],
                    state[f"{p}.weight"],
                    state[f"{p}.bias"],
                )
            )
        return tokens
    return [state["image_encoder.VPT"]] + [
        state[f"image_encoder.transformer.resblocks.{j}.VPT_shallow"] for j in range(1, depth)
    ]


def learner_for(method, model, tok):
    options = {"tokenizer": tok}
    if method == "maple":
        options.update(depth=2, text_ctx=4)
    elif method == "vpt":
        options.update(depth=2, vision_ctx=2)
    elif method in ("ivlp", "promptsrc"):
        options.update(depth=2, text_ctx=4, vision_ctx=2)
    return build_learner(method, model, NAMES, **options).learner


@pytest.fixture(scope="module", params=["clip", "openai"])
def tower(request):
    model, tok = tiny_open_clip(request.param)
    return with_far_ln_pre(model), tok


@pytest.mark.parametrize("method", ["coop", "cocoop", "vpt", "ivlp", "maple", "promptsrc"])
@settings(max_examples=3)
@given(seed=st.integers(0, 2**16))
def test_an_authors_checkpoint_gives_the_authors_positive_space_and_image_features(
    tower, tmp_path_factory, method, seed
):
    model, tok = tower
    g = torch.Generator().manual_seed(seed)
    learner = learner_for(method, model, tok)
    state = authors_state(method, g, n_ctx=4)
    with torch.no_grad():
        negative_before = learner.negative_context.clone()
    filled = load_authors_checkpoint(learner, save(tmp_path_factory.mktemp("ckpt"), state), method=method)
    assert all(key in state for key in filled.values())
    images = torch.randn(2, 3, 32, 32, generator=g)
    prompts = [f"a photo of a {c}." for c in NAMES]
    with torch.no_grad():
        if method == "cocoop":
            f = model.encode_image(images)
            pos, _ = learner(f)
            net = lambda x: F.linear(  # noqa: E731  CoCoOp's meta-net: linear1, ReLU, linear2
                F.relu(F.linear(x, state["meta_net.linear1.weight"], state["meta_net.linear1.bias"])),
                state["meta_net.linear2.weight"],
                state["meta_net.linear2.bias"],
            )
            shift = net(f / f.norm(dim=-1, keepdim=True))
            want = torch.stack([plain_text(model, tok, prompts, [state["ctx"] + s]) for s in shift])
            torch.testing.assert_close(pos, want, rtol=0, atol=2e-5)
        else:
            tokens = authors_text_tokens(method, state, 2)
            want = (
                model.encode_text(tok(prompts)) if tokens is None else plain_text(model, tok, prompts, tokens)
            )
            torch.testing.assert_close(learner()[0], want, rtol=0, atol=2e-5)
        if isinstance(learner, DeepPromptLearner):
            want = authors_image(model, images, authors_vision_tokens(method, state, 2))
            torch.testing.assert_close(learner.encode_image(images), want, rtol=0, atol=2e-5)
        assert torch.equal(learner.negative_context, negative_before)  # the negative space keeps its own


@pytest.mark.parametrize(
    ("saved", "into", "match"),
    [
        (
            "maple",
            "ivlp",
            "'prompt_learner.compound_prompt_projections.0.bias' has no place in a ivlp learner",
        ),
        ("ivlp", "maple", "'image_encoder.VPT' has no place in a maple learner"),
        ("vpt", "ivlp", "no 'prompt_learner.ctx' in it"),
        ("coop", "cocoop", "no 'meta_net.linear1.weight' in it"),
        ("cocoop", "coop", "'meta_net.linear1.bias' has no place in a coop learner"),
    ],
)
def test_a_checkpoint_of_another_method_is_refused_naming_the_key_and_nothing_changes(
    tower, tmp_path, saved, into, match
):
    model, tok = tower
    learner = learner_for(into, model, tok)
    before = {k: v.clone() for k, v in learner.state_dict().items() if isinstance(v, torch.Tensor)}
    path = save(tmp_path, authors_state(saved, torch.Generator().manual_seed(0)))
    with pytest.raises(FDBPLError, match=re.escape(match)):
        load_authors_checkpoint(learner, path, method=into)
    after = learner.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_dassl_checkpoint_with_its_warmup_schedulers_state_loads_safely(tower, tmp_path):
    """Dassl saves its warm-up scheduler's state_dict, which keeps torch's cosine scheduler (and
    through it the SGD optimiser) as an attribute: read with weights_only=True all the same."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

    class ConstantWarmupScheduler(LRScheduler):  # Dassl's layout: the successor kept as an attribute
        def __init__(self, optimizer, successor, cons_lr):
            self.successor, self.cons_lr = successor, cons_lr
            super().__init__(optimizer)

        def get_lr(self):
            return [self.cons_lr for _ in self.base_lrs]

    model, tok = tower
    state = authors_state("coop", torch.Generator().manual_seed(2))
    ctx = torch.nn.Parameter(state["ctx"].clone())
    optim = torch.optim.SGD([ctx], lr=0.002, momentum=0.9)
    sched = ConstantWarmupScheduler(optim, CosineAnnealingLR(optim, 50), 1e-5)
    checkpoint = {
        "state_dict": state,
        "epoch": 50,
        "optimizer": optim.state_dict(),
        "scheduler": sched.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "model.pth.tar-50")
    coop = learner_for("coop", model, tok)
    load_authors_checkpoint(coop, tmp_path / "model.pth.tar-50")
    assert torch.equal(coop.positive_context.detach(), state["ctx"])


def test_checkpoints_of_another_shape_or_unsafe_content_are_refused(tower, tmp_path):
    model, tok = tower
    g = torch.Generator().manual_seed(1)
    ivlp = learner_for("ivlp", model, tok)
    deeper = authors_state("ivlp", g, depth=3)
    with pytest.raises(
        FDBPLError, match=re.escape("'image_encoder.transformer.resblocks.2.VPT_shallow' has no place")
    ):
        load_authors_checkpoint(ivlp, save(tmp_path, deeper))
    with pytest.raises(FDBPLError, match=r"'prompt_learner.ctx' is \(2, 64\).*positive_context is \(4, 64\)"):
        load_authors_checkpoint(ivlp, save(tmp_path, authors_state("ivlp", g, n_ctx=2)))
    with pytest.raises(FDBPLError, match="a maple checkpoint fills a maple learner; this learner is 'ivlp'"):
        load_authors_checkpoint(ivlp, save(tmp_path, authors_state("maple", g)), method="maple")
    ivlp_state = authors_state("ivlp", g)
    load_authors_checkpoint(ivlp, save(tmp_path, ivlp_state), method="promptsrc")  # the same layout
    coop = learner_for("coop", model, tok)
    torch.save({"state_dict": authors_state("coop", g), "hooks": [print]}, tmp_path / "x")
    with pytest.raises(
        FDBPLError, match=r"runs no code from a file \(.*Unsupported global.*keep only its prompts"
    ):
        load_authors_checkpoint(coop, tmp_path / "x")
    with pytest.raises(FDBPLError, match="cannot be read"):
        load_authors_checkpoint(coop, tmp_path / "missing.pth.tar")
    (tmp_path / "garbage").write_bytes(b"not a checkpoint")
    with pytest.raises(FDBPLError, match="not a torch checkpoint"):
        load_authors_checkpoint(coop, tmp_path / "garbage")
    torch.save([1, 2], tmp_path / "list")
    with pytest.raises(FDBPLError, match="expected Dassl's layout"):
        load_authors_checkpoint(coop, tmp_path / "list")
    old_order = DeepPromptLearner(
        model, NAMES, "ivlp", tokenizer=tok, depth=2, vision_ctx=2, vision_prompt_position="after_ln_pre"
    )
    with pytest.raises(FDBPLError, match="trained before the image tower's ln_pre"):
        load_authors_checkpoint(old_order, save(tmp_path, ivlp_state))
