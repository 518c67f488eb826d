"""Deep prompts (VPT, IVLP, MaPLe, PromptSRC's learner) against plain loops over the blocks."""

from __future__ import annotations

import pytest
import torch
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
    return tiny_open_clip(request.param)


def text_parts(model):
    return model.text if hasattr(model, "text") else model


def plain_text(model, tokenizer, prompts, tokens):
    """encode_text written as a loop over the blocks: tokens[0] (n, W) replaces the context
    embeddings, tokens[j] the hidden states at the same positions before block j."""
    t = text_parts(model)
    ids = tokenizer(prompts)
    n = tokens[0].shape[0]
    x = t.token_embedding(ids)
    x = torch.cat([x[:, :1], tokens[0].expand(len(ids), -1, -1), x[:, 1 + n :]], dim=1)
    x = x + t.positional_embedding
    openai = not hasattr(t, "attn_mask")
    for j, blk in enumerate(t.transformer.resblocks):
        if 1 <= j < len(tokens):
            x = torch.cat([x[:, :1], tokens[j].expand(len(ids), -1, -1), x[:, 1 + n :]], dim=1)
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2) if openai else blk(x, attn_mask=t.attn_mask)
    x = t.ln_final(x)
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ t.text_projection


def plain_image(model, images, tokens):
    """encode_image as a loop: tokens[0] appended after the class and patch tokens, tokens[j]
    replacing them before block j, dropped before pooling at the class token."""
    v = model.visual
    x = v.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    keep = x.shape[1]
    openai = not hasattr(v, "_embeds")
    for j, blk in enumerate(v.transformer.resblocks):
        if j < len(tokens):
            x = torch.cat([x[:, :keep], tokens[j].expand(len(x), -1, -1)], dim=1)
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2) if openai else blk(x)
    return v.ln_post(x[:, 0]) @ v.proj


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
        vision_ctx=None if method == "maple" else vision_ctx,
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
        want = plain_image(model, images, plain_vision_tokens(learner))
        torch.testing.assert_close(learner.encode_image(images), want, rtol=0, atol=1e-5)


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
    learner = DeepPromptLearner(model, NAMES, "vpt", tokenizer=tok, depth=2, vision_ctx=0)
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
