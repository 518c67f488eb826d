"""Deep prompts (VPT, IVLP, MaPLe, PromptSRC's learner) against plain loops over the blocks."""

from __future__ import annotations

import pytest
import torch
from authors_forward import after_ln_pre_image, authors_image, plain_text, with_far_ln_pre
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import perturbed, tiny_open_clip

from fdbpl.errors import FDBPLError
from fdbpl.prompts import (
    DEEP_METHODS,
    SPACES,
    DeepPromptLearner,
    DualPromptLearner,
    UnsupportedModelError,
    build_learner,
    learner_from_state_dict,
)

KINDS = ["clip", "custom", "openai"]
NAMES = ["cat", "dog", "school bus", "red panda"]


@pytest.fixture(scope="module", params=KINDS)
def model_and_tokenizer(request):
    model, tok = tiny_open_clip(request.param)
    return with_far_ln_pre(model), tok


@pytest.fixture(scope="module", params=KINDS)
def float64_model(request):
    """A float64 tower. OpenAI-clip's LayerNorm subclass computes in float32 whatever comes in
    (the model cannot run in float64): its norms are made plain ``nn.LayerNorm`` (same weights)."""
    model, tok = tiny_open_clip(request.param, seed=3)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.__class__ = torch.nn.LayerNorm
    return with_far_ln_pre(model.double(), seed=3), tok


def plain_vision_tokens(learner):
    """Each layer's vision tokens; MaPLe's as the plain linear map of the positive text tokens."""
    if learner.method != "maple":
        return list(learner.vision_context)
    text = [learner.positive_context, *learner.positive_deep_context]
    return [t @ proj.weight.T + proj.bias for t, proj in zip(text, learner.vision_projection)]


@pytest.mark.parametrize("share_prefix", [True, False], ids=["shared-prefix", "full"])
@pytest.mark.parametrize("method", DEEP_METHODS)
@given(depth=st.integers(1, 2), text_ctx=st.integers(1, 4), vision_ctx=st.integers(0, 3), data=st.data())
def test_features_equal_plain_loops_over_the_blocks(
    model_and_tokenizer, method, share_prefix, depth, text_ctx, vision_ctx, data
):
    """Every method, with the prompt start (and its deep tokens) computed once per space or
    every prompt in full."""
    model, tok = model_and_tokenizer
    names = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    learner = DeepPromptLearner(
        model,
        names,
        method,
        tokenizer=tok,
        depth=depth,
        text_ctx=text_ctx,
        vision_ctx=None
        if method == "maple"
        else max(vision_ctx, int(method == "vpt")),  # vpt: something to learn
        share_prefix=share_prefix,
    )
    assert learner.shares_prefix == share_prefix
    perturbed(learner)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(depth))
    with torch.no_grad():
        got = learner()
        for space, features in zip(SPACES, got):
            phrase = learner.inits[space]
            tokens = [getattr(learner, f"{space}_context")]
            if method != "vpt":
                tokens += list(getattr(learner, f"{space}_deep_context"))
            want = plain_text(model, tok, [f"{phrase} {c}." for c in names], tokens)
            torch.testing.assert_close(features, want, rtol=0, atol=1e-5)
        want = authors_image(model, images, plain_vision_tokens(learner))
        torch.testing.assert_close(learner.encode_image(images), want, rtol=0, atol=1e-5)


def image_and_gradients(encode, learner, images):
    """Features of ``encode(images)`` and the gradients of a fixed functional of them with respect
    to each of the learner's trainable parameters (``None`` where it does not reach one)."""
    f = encode(images)
    weights = torch.linspace(-1, 2, f.shape[1], dtype=f.dtype)
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad((f * weights).square().sum(), params, allow_unused=True)
    return f.detach(), grads


def assert_close_relative(got, want, rel):
    scale = want.abs().max().clamp_min(1e-30)
    assert float((got - want).abs().max() / scale) <= rel, float((got - want).abs().max() / scale)


@pytest.mark.parametrize("method", DEEP_METHODS)
@given(depth=st.integers(1, 2), vision_ctx=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_image_features_and_prompt_gradients_equal_the_authors_forward_in_float64(
    float64_model, method, depth, vision_ctx, seed
):
    """The authors' order (prompts concatenated, then ln_pre) on float64 towers with a far-from-
    identity ln_pre: image features and every prompt gradient equal to float64 round-off."""
    model, tok = float64_model
    learner = DeepPromptLearner(
        model, NAMES, method, tokenizer=tok, depth=depth, vision_ctx=None if method == "maple" else vision_ctx
    )
    assert learner.vision_prompt_position == "before_ln_pre"
    perturbed(learner, seed)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got, got_grads = image_and_gradients(learner.encode_image, learner, images)
    want, want_grads = image_and_gradients(
        lambda x: authors_image(model, x, plain_vision_tokens(learner)), learner, images
    )
    assert_close_relative(got, want, 1e-12)
    assert sum(g is not None for g in want_grads) >= 1
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)
        if w is not None:
            assert_close_relative(g, w, 1e-10)


def test_the_two_prompt_orders_differ_and_after_ln_pre_is_the_old_one(model_and_tokenizer):
    """The test above can fail: with ln_pre far from the identity the orders give clearly other
    features, and ``vision_prompt_position="after_ln_pre"`` is the other one exactly."""
    model, tok = model_and_tokenizer
    learner = perturbed(
        DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=2, vision_prompt_position="after_ln_pre")
    )
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        old = after_ln_pre_image(model, images, plain_vision_tokens(learner))
        authors = authors_image(model, images, plain_vision_tokens(learner))
        torch.testing.assert_close(learner.encode_image(images), old, rtol=0, atol=1e-5)
    assert float((old - authors).norm() / authors.norm()) > 1e-2
    with pytest.raises(FDBPLError, match="vision_prompt_position: expected one of"):
        DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, vision_prompt_position="after")


def test_a_state_saved_without_the_prompt_position_keeps_the_old_order(open_clip_model):
    """States of fdbpl 0.1 were trained with the prompts after ln_pre: they rebuild that way, and a
    learner of the authors' order refuses them rather than silently changing their features."""
    model, tok = open_clip_model
    learner = perturbed(
        DeepPromptLearner(model, NAMES, "vpt", tokenizer=tok, depth=2, vision_prompt_position="after_ln_pre")
    )
    state = learner.state_dict()
    del state["_extra_state"]["vision_prompt_position"]
    rebuilt = learner_from_state_dict(model, state, tokenizer=tok)
    assert rebuilt.vision_prompt_position == "after_ln_pre"
    with pytest.raises(FDBPLError, match="vision_prompt_position='after_ln_pre'"):
        DeepPromptLearner(model, NAMES, "vpt", tokenizer=tok, depth=2).load_state_dict(state)


def test_maple_projections_start_as_its_authors_do(open_clip_model):
    """MaPLe: layer 0's projection initialised on its own, layers 1..J-1 copies of one Linear."""
    model, tok = open_clip_model
    proj = DeepPromptLearner(model, NAMES, "maple", tokenizer=tok, depth=2).vision_projection
    torch.manual_seed(5)
    deeper = DeepPromptLearner(model, NAMES, "maple", tokenizer=tok, depth=2).vision_projection
    assert not torch.equal(proj[0].weight, proj[1].weight)
    assert not torch.equal(proj[1].weight, deeper[1].weight)  # drawn, not a constant
    model3, tok3 = tiny_open_clip("clip")
    model3.visual.transformer.resblocks.append(model3.visual.transformer.resblocks[1])
    model3.transformer.resblocks.append(model3.transformer.resblocks[1])
    three = DeepPromptLearner(model3, NAMES, "maple", tokenizer=tok3, depth=3).vision_projection
    assert torch.equal(three[1].weight, three[2].weight) and torch.equal(three[1].bias, three[2].bias)
    assert three[1].weight.data_ptr() != three[2].weight.data_ptr()  # copies, not one shared module


def test_ivlp_at_depth_one_without_vision_tokens_is_the_coop_learner(model_and_tokenizer):
    model, tok = model_and_tokenizer
    deep = DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=1, vision_ctx=0)
    coop = DualPromptLearner(model, NAMES, tokenizer=tok)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(deep(), coop()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(deep.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6)


def test_vision_tokens_of_length_zero_give_encode_image(open_clip_model):
    model, tok = open_clip_model
    learner = DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=2, vision_ctx=0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            learner.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_a_step_trains_the_prompts_only(open_clip_model, method):
    """Through build_learner and FDBPLLoss: the CLIP is bit-identical after an SGD step, every
    learned tensor moved (VPT's text is its fixed phrases: its contexts do not learn)."""
    from fdbpl.losses import FDBPLLoss

    model, tok = open_clip_model
    prompts = build_learner(method, model, NAMES, tokenizer=tok, depth=2)
    clip_before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {k: p.detach().clone() for k, p in prompts.named_parameters() if p.requires_grad}
    frozen = {k: p.detach().clone() for k, p in prompts.named_parameters() if not p.requires_grad}
    assert bool(frozen) == (method == "vpt")
    f, pos, neg = prompts(torch.randn(4, 3, 32, 32))
    assert f.requires_grad and pos.shape == (len(NAMES), 64)
    teacher = torch.softmax(torch.randn(4, len(NAMES)), dim=1)
    FDBPLLoss()(f, pos, neg, teacher, torch.rand(4)).total.backward()
    torch.optim.SGD(prompts.parameters(), lr=0.5).step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    for k, p in prompts.named_parameters():
        moved = not torch.equal(p.detach(), (trained | frozen)[k])
        assert moved == (k in trained), k
    with pytest.raises(FDBPLError, match="needs the images themselves"):
        prompts(image_features=f.detach())


def test_state_dict_round_trip_and_refusals(open_clip_model):
    model, tok = open_clip_model
    learner = perturbed(DeepPromptLearner(model, NAMES, "maple", tokenizer=tok, depth=2))
    state = learner.state_dict()
    assert state["_extra_state"]["method"] == "maple" and state["_extra_state"]["depth"] == 2
    rebuilt = learner_from_state_dict(model, state, ["ox", "yak"], tokenizer=tok)
    assert (
        isinstance(rebuilt, DeepPromptLearner)
        and rebuilt.method == "maple"
        and rebuilt.n_ctx["positive"] == 2
    )
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_image(images), learner.encode_image(images), rtol=0, atol=0)
    other = DeepPromptLearner(model, NAMES, "maple", tokenizer=tok, depth=1)
    with pytest.raises(FDBPLError, match="depth"):
        other.load_state_dict(state)
    ivlp = DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=2)
    with pytest.raises(FDBPLError, match="'maple' learner"):
        ivlp.load_state_dict(state)


def test_nothing_to_learn_names_that_collide_and_no_images_are_refused(open_clip_model):
    """VPT without vision tokens trains nothing; 'Cat' and 'cat' tokenize alike for CLIP (any
    learner); CoCoOp given no images."""
    from fdbpl.prompts import CoCoOpDualPromptLearner

    model, tok = open_clip_model
    with pytest.raises(FDBPLError, match="vision_ctx=0 leaves it nothing to learn"):
        DeepPromptLearner(model, NAMES, "vpt", tokenizer=tok, vision_ctx=0)
    for cls in (DualPromptLearner, CoCoOpDualPromptLearner):
        with pytest.raises(FDBPLError, match="'Cat' and 'CAT' give the same positive prompt"):
            cls(model, ["Cat", "dog", "CAT"], tokenizer=tok)
    with pytest.raises(FDBPLError, match="expected at least one image, got N = 0"):
        CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok)(torch.zeros(0, 64))


def test_towers_it_cannot_prompt_are_refused():
    import open_clip

    resnet = open_clip.CLIP(
        embed_dim=64,
        vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=16, head_width=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2),
    )
    with pytest.raises(UnsupportedModelError, match="a ResNet tower cannot take prompt tokens"):
        DeepPromptLearner(resnet, NAMES, "vpt")
    model, tok = tiny_open_clip("clip")
    model.visual.transformer.resblocks[1].register_parameter(
        "vpt_tokens", torch.nn.Parameter(torch.zeros(2, 64))
    )
    with pytest.raises(UnsupportedModelError, match="block 1: vpt_tokens"):
        DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=2)
    model, tok = tiny_open_clip("clip")
    with pytest.raises(FDBPLError, match="depth: the towers have 2 text and 2 vision blocks"):
        DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=3)
    with pytest.raises(FDBPLError, match="n_ctx"):
        DeepPromptLearner(model, NAMES, "ivlp", tokenizer=tok, depth=1, text_ctx=5)


def test_template_ensemble_is_the_mean_of_encode_text_over_templates(open_clip_model):
    from fdbpl.prompts.ensemble import imagenet_templates, template_ensemble

    model, tok = open_clip_model
    templates = ["a photo of a {}.", lambda c: f"a drawing of the {c}."]
    got = template_ensemble(model, NAMES, templates, tokenizer=tok)
    with torch.no_grad():
        a = model.encode_text(tok([f"a photo of a {c}." for c in NAMES]))
        b = model.encode_text(tok([f"a drawing of the {c}." for c in NAMES]))
    torch.testing.assert_close(got, (a + b) / 2, rtol=0, atol=1e-6)
    assert len(imagenet_templates()) == 80


def test_the_default_ensemble_is_promptsrcs_and_names_are_read_as_the_learners_read_them(open_clip_model):
    """PromptSRC's trainers/imagenet_templates.py: 60 templates, from "a photo of a {}." to
    "itap of the {}.", all among OpenAI's 80; class names with ``_`` read as spaces (as the
    learners and PromptSRC do) unless told otherwise."""
    from fdbpl.prompts.ensemble import PROMPTSRC_TEMPLATES, imagenet_templates, template_ensemble

    assert len(PROMPTSRC_TEMPLATES) == len(set(PROMPTSRC_TEMPLATES)) == 60
    assert PROMPTSRC_TEMPLATES[0] == "a photo of a {}." and PROMPTSRC_TEMPLATES[-1] == "itap of the {}."
    openai = {t("x") if callable(t) else t.format("x") for t in imagenet_templates()}
    assert {t.format("x") for t in PROMPTSRC_TEMPLATES} < openai
    model, tok = open_clip_model
    names = ["school_bus", "red_panda"]
    got = template_ensemble(model, names, tokenizer=tok)
    with torch.no_grad():
        want = torch.stack(
            [
                model.encode_text(tok([t.format(c) for c in ("school bus", "red panda")]))
                for t in PROMPTSRC_TEMPLATES
            ]
        ).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        template_ensemble(model, names, "openai_imagenet", tok),
        template_ensemble(model, ["school bus", "red panda"], imagenet_templates(), tok),
    )
    kept = template_ensemble(model, names, ["a {}."], tok, normalize_classnames=False)
    with torch.no_grad():
        torch.testing.assert_close(
            kept, model.encode_text(tok(["a school_bus.", "a red_panda."])), rtol=0, atol=1e-6
        )
    with pytest.raises(FDBPLError, match="templates: expected one of"):
        template_ensemble(model, names, "imagenet", tok)


def test_template_ensemble_keeps_a_float64_models_dtype(float64_model):
    from fdbpl.prompts.ensemble import template_ensemble

    model, tok = float64_model
    got = template_ensemble(model, NAMES, ["a photo of a {}."], tok)
    assert got.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(
            got, model.encode_text(tok([f"a photo of a {c}." for c in NAMES])), rtol=0, atol=0
        )


def test_gradient_checkpointing_gives_the_same_features_and_gradients(open_clip_model):
    model, tok = open_clip_model
    plain = perturbed(DeepPromptLearner(model, NAMES, "maple", tokenizer=tok, depth=2))
    checkpointed = DeepPromptLearner(
        model, NAMES, "maple", tokenizer=tok, depth=2, gradient_checkpointing=True
    )
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(3, 3, 32, 32)

    def run(learner):
        f = learner.encode_image(images)
        grads = torch.autograd.grad(
            (f * torch.linspace(-1, 1, f.shape[1])).sum(), list(learner.parameters()), allow_unused=True
        )
        return [f.detach(), *[g for g in grads if g is not None]]

    for a, b in zip(run(checkpointed), run(plain)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
