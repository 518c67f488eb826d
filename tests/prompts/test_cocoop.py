"""CoCoOp's dual learner against a plain re-implementation of its forward; build_learner."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import perturbed, tiny_open_clip

from fdbpl.errors import FDBPLError
from fdbpl.losses import FDBPLLoss
from fdbpl.prompts import (
    SPACES,
    CoCoOpDualPromptLearner,
    DualPromptLearner,
    PromptModel,
    build_learner,
    learner_from_state_dict,
)

KINDS = ["clip", "eos", "custom", "openai"]
NAMES = ["cat", "dog", "school bus", "african bush elephant", "red panda"]


@pytest.fixture(scope="module", params=KINDS)
def model_and_tokenizer(request):
    return tiny_open_clip(request.param)


def token_embedding_of(model):
    return model.token_embedding if hasattr(model, "token_embedding") else model.text.token_embedding


def plain_cocoop(model, tokenizer, learner, image_features, names, space):
    """CoCoOp's forward written plainly: per image, pi(f / |f|) added to every context token,
    which replaces the init phrase's token embeddings in the full 77-token prompt of every
    class; the model's own encode_text does the rest (a forward hook swaps the embeddings)."""
    init, n = learner.inits[space], learner.n_ctx[space]
    init = init if init is not None else " ".join(["X"] * n)  # random contexts: any n one-token words
    ids = tokenizer([f"{init} {name}." for name in names])
    net = learner.meta_net["shared" if learner.meta_net_kind == "shared" else space]
    w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    out = []
    for f in image_features:
        f = f / f.norm()
        shift = torch.relu(f @ w1.T + b1) @ w2.T + b2
        ctx = getattr(learner, f"{space}_context") + shift

        def swap(module, inputs, output, ctx=ctx):
            output = output.clone()
            output[:, 1 : 1 + n] = ctx.to(output.dtype)
            return output

        handle = token_embedding_of(model).register_forward_hook(swap)
        try:
            out.append(model.encode_text(ids))
        finally:
            handle.remove()
    return torch.stack(out)


@pytest.mark.parametrize("meta_net", ["shared", "per_space"])
def test_features_equal_a_plain_cocoop_forward(model_and_tokenizer, meta_net):
    model, tok = model_and_tokenizer
    learner = perturbed(CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net=meta_net))
    f = torch.randn(3, learner.feature_dim)
    with torch.no_grad():
        got = learner(f)
        for space, features in zip(SPACES, got):
            assert features.shape == (3, len(NAMES), learner.feature_dim)
            want = plain_cocoop(model, tok, learner, f, NAMES, space)
            torch.testing.assert_close(features, want, rtol=0, atol=1e-5)


def test_the_meta_network_is_cocoops(open_clip_model):
    """Linear(D, D/16) - ReLU - Linear(D/16, W); shared by default, one per space on request."""
    model, tok = open_clip_model
    learner = CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok)
    d, width = learner.feature_dim, learner.tower.width
    shapes = [tuple(p.shape) for p in learner.meta_net["shared"].parameters()]
    assert shapes == [(d // 16, d), (d // 16,), (width, d // 16), (width,)]
    assert learner.n_ctx == {"positive": 4, "negative": 4}  # CoCoOp's "a photo of a"
    per_space = CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="per_space")
    assert sorted(per_space.meta_net) == ["negative", "positive"]
    with pytest.raises(FDBPLError, match="meta_net"):
        CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="both")


@st.composite
def class_selections(draw):
    ids = draw(st.lists(st.integers(0, len(NAMES) - 1), min_size=1, max_size=len(NAMES), unique=True))
    return ids, draw(st.integers(1, 6)), draw(st.integers(1, 4))


@given(class_selections())
def test_shared_prefix_and_chunks_give_the_full_pass(open_clip_model, selection):
    """Every way to run the text pass gives the same features and gradients: per-image shared
    prefixes, classes grouped by prompt length (the names have 1 to 3 tokens), chunks."""
    ids, chunk, n = selection
    model, tok = open_clip_model
    base = perturbed(CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="per_space"))
    assert base.shares_prefix
    others = [
        CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="per_space", share_prefix=False),
        CoCoOpDualPromptLearner(  # every prompt at 77 tokens: no cut, no grouping by length
            model, NAMES, tokenizer=tok, meta_net="per_space", share_prefix=False, truncate=False
        ),
        CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="per_space", class_chunk_size=chunk),
    ]
    f = torch.randn(n, base.feature_dim, generator=torch.Generator().manual_seed(n))

    def run(learner):
        pos, neg = learner(f, ids)
        loss = (pos * torch.linspace(-1, 1, pos.shape[-1])).sum() + (neg**2).sum()
        return [pos.detach(), neg.detach(), *torch.autograd.grad(loss, list(learner.parameters()))]

    want = run(base)
    for other in others:
        other.load_state_dict(base.state_dict())
        for a, b in zip(run(other), want):  # float32 sums in another order: relative to the largest entry
            assert float((a - b).abs().max()) <= 1e-4 * (1 + float(b.abs().max()))


def test_prefixes_of_two_lengths(open_clip_model):
    """A random positive context of 6 tokens and the 4-token negative phrase: two passes, same result."""
    model, tok = open_clip_model
    learner = CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, n_ctx={"positive": 6}, positive_init=None)
    full = CoCoOpDualPromptLearner(
        model, NAMES, tokenizer=tok, n_ctx={"positive": 6}, positive_init=None, share_prefix=False
    )
    full.load_state_dict(learner.state_dict())
    f = torch.randn(2, learner.feature_dim)
    with torch.no_grad():
        for a, b in zip(learner(f), full(f)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            learner(f)[0], plain_cocoop(model, tok, learner, f, NAMES, "positive"), rtol=0, atol=1e-5
        )


def test_state_dict_round_trip_and_refusals(open_clip_model):
    model, tok = open_clip_model
    learner = perturbed(CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok, meta_net="per_space"))
    state = learner.state_dict()
    assert state["_extra_state"]["method"] == "cocoop"
    rebuilt = learner_from_state_dict(model, state, tokenizer=tok)
    assert isinstance(rebuilt, CoCoOpDualPromptLearner) and rebuilt.meta_net_kind == "per_space"
    f = torch.randn(2, learner.feature_dim)
    with torch.no_grad():
        for a, b in zip(rebuilt(f), learner(f)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # new classes: the contexts and the meta-network transfer
    other = learner_from_state_dict(model, state, ["ox", "yak"], tokenizer=tok)
    assert other.classnames == ["ox", "yak"]
    torch.testing.assert_close(other.meta_net["positive"][0].weight, learner.meta_net["positive"][0].weight)
    # a CoOp learner's state is not a CoCoOp one, and back; nothing is copied on refusal
    coop = DualPromptLearner(model, NAMES, tokenizer=tok)
    shared = CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok)
    before = {k: v.clone() for k, v in shared.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(FDBPLError, match="'coop' learner"):
        shared.load_state_dict(coop.state_dict())
    with pytest.raises(FDBPLError, match="cocoop"):
        coop.load_state_dict(state)
    with pytest.raises(FDBPLError, match="meta_net"):
        shared.load_state_dict(state)
    bad = dict(shared.state_dict())
    bad["meta_net.shared.0.weight"] = torch.zeros(3, 3)
    bad["positive_context"] = bad["positive_context"] + 1
    with pytest.raises(FDBPLError, match=r"meta_net.shared.0.weight has shape \(3, 3\)"):
        shared.load_state_dict(bad)
    for k, v in shared.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k]), k
    with pytest.raises(FDBPLError, match="not a 'coop' one"):
        DualPromptLearner.from_state_dict(model, state, tokenizer=tok)


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_build_learner_trains_the_prompts_only(open_clip_model, method):
    """One call per method; (f, positive, negative) into FDBPLLoss; the CLIP is bit-identical
    after an optimiser step and every prompt parameter moved."""
    model, tok = open_clip_model
    prompts = build_learner(method, model, NAMES, tokenizer=tok)
    assert isinstance(prompts, PromptModel) and prompts.method == method
    clip_before = {k: v.clone() for k, v in model.state_dict().items()}
    learned_before = [p.detach().clone() for p in prompts.parameters()]
    images = torch.randn(6, 3, 32, 32)
    f, pos, neg = prompts(images)
    n, c, d = 6, len(NAMES), f.shape[1]
    assert pos.shape == neg.shape == ((n, c, d) if method == "cocoop" else (c, d))
    assert not f.requires_grad
    teacher = torch.softmax(torch.randn(n, c), dim=1)
    loss = FDBPLLoss()(f, pos, neg, teacher, torch.rand(n)).total
    optimizer = torch.optim.SGD(prompts.parameters(), lr=0.1)
    loss.backward()
    optimizer.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    for p, before in zip(prompts.parameters(), learned_before):
        assert not torch.equal(p.detach(), before)
    assert all(not p.requires_grad for p in model.parameters())
    # the same from stored features, and a rebuild from the state dict
    _, pos2, _ = prompts(image_features=f)
    rebuilt = PromptModel.from_state_dict(model, prompts.state_dict(), tokenizer=tok)
    assert rebuilt.method == method
    _, pos3, _ = rebuilt(image_features=f)
    torch.testing.assert_close(pos3, pos2, rtol=0, atol=0)
    logits, _ = prompts.logits(image_features=f)
    assert logits.shape == (n, c)


def test_build_learner_errors(open_clip_model):
    model, tok = open_clip_model
    with pytest.raises(FDBPLError, match="method: expected one of"):
        build_learner("no-such-method", model, NAMES, tokenizer=tok)
    with pytest.raises(FDBPLError, match=r"takes no option\(s\) \['meta_net'\]"):
        build_learner("coop", model, NAMES, tokenizer=tok, meta_net="shared")
    with pytest.raises(FDBPLError, match=r"takes no option\(s\) \['class_specific'\]"):
        build_learner("cocoop", model, NAMES, tokenizer=tok, class_specific=True)
    prompts = build_learner("cocoop", model, NAMES, tokenizer=tok)
    with pytest.raises(FDBPLError, match="exactly one"):
        prompts()
    with pytest.raises(FDBPLError, match=r"image_features: expected \(N, 64\)"):
        prompts(image_features=torch.randn(2, 5))


def test_logits_compare_each_image_with_its_own_text_features(open_clip_model):
    model, tok = open_clip_model
    learner = perturbed(CoCoOpDualPromptLearner(model, NAMES, tokenizer=tok))
    f = torch.randn(3, learner.feature_dim)
    with torch.no_grad():
        pos, neg = learner(f, [4, 0])
        got = learner.logits(f, [4, 0], logit_scale=10.0)
        for logits, text in zip(got, (pos, neg)):
            want = 10.0 * torch.stack(
                [torch.nn.functional.cosine_similarity(f[i][None], text[i], dim=-1) for i in range(3)]
            )
            torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)
