"""DualPromptLearner: exactness against encode_text, truncation, freezing, checkpoints, subsets."""

from __future__ import annotations

import io
import string

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import tiny_open_clip

from fdbpl.errors import FDBPLError
from fdbpl.losses.functional import clip_logits
from fdbpl.prompts import DualPromptLearner, UnsupportedModelError

KINDS = ["clip", "eos", "custom", "openai"]
NAMES = ["cat", "dog", "school bus", "african bush elephant", "red panda"]


@pytest.fixture(scope="module", params=KINDS)
def model_and_tokenizer(request):
    return tiny_open_clip(request.param)


def encode(model, tokenizer, texts):
    with torch.no_grad():
        return model.encode_text(tokenizer(texts))


def test_features_equal_encode_text_at_initialisation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    learner = DualPromptLearner(model, NAMES, tokenizer=tok)
    pos, neg = learner()
    assert learner.sequence_length < 77
    torch.testing.assert_close(
        pos, encode(model, tok, [f"a photo of a {c}." for c in NAMES]), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        neg, encode(model, tok, [f"a photo of no {c}." for c in NAMES]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    ("position", "text"),
    [("front", "{c} {init}."), ("middle", "a photo {c} of a.")],
)
def test_class_token_positions_equal_the_rearranged_prompt(open_clip_model, position, text):
    model, tok = open_clip_model
    learner = DualPromptLearner(model, NAMES, class_token_position=position, negative_init="a photo of a")
    pos, _ = learner()
    want = encode(model, tok, [text.format(c=c, init="a photo of a") for c in NAMES])
    torch.testing.assert_close(pos, want, rtol=0, atol=1e-5)


words = st.text(alphabet=string.ascii_lowercase + " -", min_size=1, max_size=18).filter(lambda s: s.strip())


@given(
    names=st.lists(words, min_size=1, max_size=6, unique_by=lambda s: s),
    n_ctx=st.integers(1, 6),
    random_init=st.booleans(),
    position=st.sampled_from(["end", "middle", "front"]),
    class_specific=st.booleans(),
)
def test_truncation_never_changes_outputs(
    open_clip_model, names, n_ctx, random_init, position, class_specific
):
    model, _ = open_clip_model
    inits = dict(positive_init=None, negative_init=None, n_ctx=n_ctx) if random_init else {}
    kwargs = dict(class_token_position=position, class_specific=class_specific, **inits)
    torch.manual_seed(1)
    short = DualPromptLearner(model, names, truncate=True, **kwargs)
    full = DualPromptLearner(model, names, truncate=False, **kwargs)
    full.load_state_dict(short.state_dict())
    assert full.sequence_length == 77 and short.sequence_length <= 77
    for a, b in zip(short(), full()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_gradients_reach_only_the_contexts_and_the_model_is_untouched(model_and_tokenizer):
    model, tok = model_and_tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = DualPromptLearner(model, NAMES, tokenizer=tok)
    assert [n for n, _ in learner.named_parameters()] == ["positive_context", "negative_context"]
    opt = torch.optim.SGD(learner.parameters(), lr=10.0)
    pos, neg = learner()
    (pos.pow(2).sum() + neg.sum()).backward()
    assert all(p.grad is None for p in model.parameters())
    assert learner.positive_context.grad.abs().sum() > 0 and learner.negative_context.grad.abs().sum() > 0
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(learner()[0], pos)


def test_state_dict_round_trip(open_clip_model):
    model, _ = open_clip_model
    learner = DualPromptLearner(model, NAMES, class_specific=True)
    with torch.no_grad():
        learner.positive_context.add_(torch.randn_like(learner.positive_context))
        learner.negative_context.mul_(-1)
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) == {"positive_context", "negative_context", "_extra_state"}
    fresh = DualPromptLearner(model, NAMES, class_specific=True)
    fresh.load_state_dict(state)
    for a, b in zip(fresh(), learner()):
        assert torch.equal(a, b)


def test_state_dict_refuses_other_classes_or_n_ctx(open_clip_model):
    model, _ = open_clip_model
    state = DualPromptLearner(model, NAMES).state_dict()
    with pytest.raises(
        FDBPLError,
        match=r"made for 5 class names, this learner has 5; they first differ at index 1: 'dog' in the checkpoint vs 'wolf'",
    ):
        DualPromptLearner(model, ["cat", "wolf", *NAMES[2:]]).load_state_dict(state)
    with pytest.raises(
        FDBPLError,
        match=r"the checkpoint has n_ctx=\{.positive.: 4, .negative.: 4\}, this learner n_ctx=\{.positive.: 6",
    ):
        DualPromptLearner(model, NAMES, positive_init=None, negative_init=None, n_ctx=6).load_state_dict(
            state
        )


@given(st.lists(st.sampled_from(range(len(NAMES))), min_size=1, max_size=5, unique=True))
def test_class_subset_equals_a_learner_built_on_the_subset(open_clip_model, subset):
    model, _ = open_clip_model
    full = DualPromptLearner(model, NAMES)
    names = [NAMES[i] for i in subset]
    small = DualPromptLearner(model, names)
    for a, b in zip(full(subset), small()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    for a, b in zip(full(names), full(torch.tensor(subset))):
        assert torch.equal(a, b)


def test_logits_and_normalized_features(open_clip_model):
    model, _ = open_clip_model
    learner = DualPromptLearner(model, NAMES)
    image = torch.randn(3, 64)
    pos_logits, neg_logits = learner.logits(image)
    pos, neg = learner()
    scale = model.logit_scale.exp().detach()
    torch.testing.assert_close(pos_logits, clip_logits(image, pos, scale))
    torch.testing.assert_close(neg_logits, clip_logits(image, neg, scale))
    for t in learner.normalized_features():
        torch.testing.assert_close(t.norm(dim=1), torch.ones(len(NAMES)))


def test_float16_model():
    model, tok = tiny_open_clip("clip")
    model = model.half()
    learner = DualPromptLearner(model, NAMES)
    assert learner.positive_context.dtype == torch.float32
    pos, neg = learner()
    assert pos.dtype == torch.float16 and bool(torch.isfinite(pos).all())
    # float16 rounds differently over 10 tokens than over 77: a few ulps apart
    torch.testing.assert_close(
        pos, encode(model, tok, [f"a photo of a {c}." for c in NAMES]), rtol=1e-2, atol=5e-3
    )
    (pos.float().sum() + neg.float().sum()).backward()
    assert learner.positive_context.grad.dtype == torch.float32


@pytest.mark.parametrize(
    ("names", "kwargs", "match"),
    [
        ([], {}, "classnames: expected at least one class name, got an empty list"),
        (["cat", "dog", "cat"], {}, r"classnames: expected distinct names, repeated: \['cat'\]"),
        (
            ["cat", "word " * 80],
            {},
            r"classnames: the positive prompt of class 'word word .* needs \d+ tokens, more than the model's context length 77",
        ),
        (
            ["cat"],
            dict(class_token_position="left"),
            r"class_token_position: expected 'end', 'middle' or 'front', got 'left'",
        ),
        (["cat"], dict(n_ctx=7), r"n_ctx: the positive init phrase 'a photo of a' has 4 tokens"),
        ("cat", {}, "classnames: expected a list of strings, got str"),
    ],
)
def test_bad_input(open_clip_model, names, kwargs, match):
    model, _ = open_clip_model
    with pytest.raises(FDBPLError, match=match):
        DualPromptLearner(model, names, **kwargs)


def test_model_without_a_text_tower():
    with pytest.raises(
        UnsupportedModelError, match=r"Linear has no recognisable text tower: looked for .*token_embedding"
    ):
        DualPromptLearner(torch.nn.Linear(2, 2), NAMES)


def test_openai_clip_needs_its_tokenizer():
    model, _ = tiny_open_clip("openai")
    with pytest.raises(UnsupportedModelError, match=r"pass tokenizer=clip\.tokenize"):
        DualPromptLearner(model, NAMES)


def test_shared_contexts_transfer_to_other_classes_and_class_specific_ones_do_not(open_clip_model):
    model, _ = open_clip_model
    trained = DualPromptLearner(model, NAMES[:3])
    with torch.no_grad():
        trained.positive_context.add_(1.0)
    other = DualPromptLearner(model, NAMES[3:])
    other.load_contexts(trained.state_dict())
    assert torch.equal(other.positive_context, trained.positive_context)
    assert torch.equal(other.negative_context, trained.negative_context)
    with pytest.raises(
        FDBPLError, match=r"positive_context has shape \(6, 64\), this learner's is \(4, 64\)"
    ):
        DualPromptLearner(model, NAMES, positive_init=None, negative_init=None, n_ctx=4).load_contexts(
            DualPromptLearner(model, NAMES, positive_init=None, negative_init=None, n_ctx=6).state_dict()
        )
    specific = DualPromptLearner(model, NAMES[:3], class_specific=True)
    with pytest.raises(FDBPLError, match="first differ at index 0"):
        DualPromptLearner(model, [*NAMES[3:], "owl"], class_specific=True).load_contexts(
            specific.state_dict()
        )


def _snapshot(learner):
    return {k: v.clone() for k, v in learner.state_dict().items() if isinstance(v, torch.Tensor)}


def _unchanged(learner, before):
    return all(torch.equal(v, learner.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("strict", [True, False])
def test_a_refused_load_changes_nothing(open_clip_model, strict):
    model, _ = open_clip_model
    other = DualPromptLearner(model, ["cat", "wolf", *NAMES[2:]])
    with torch.no_grad():
        other.positive_context.add_(1.0)
    learner = DualPromptLearner(model, NAMES)
    before = _snapshot(learner)
    with pytest.raises(FDBPLError, match="first differ at index 1"):
        learner.load_state_dict(other.state_dict(), strict=strict)
    assert _unchanged(learner, before)
    bare = {k: v for k, v in other.state_dict().items() if k != "_extra_state"}
    with pytest.raises(FDBPLError, match=r"no '_extra_state' in it"):
        learner.load_state_dict(bare, strict=strict)
    assert _unchanged(learner, before)
    wide = dict(DualPromptLearner(model, NAMES).state_dict())
    wide["negative_context"] = torch.zeros(5, 64)
    with pytest.raises(FDBPLError, match=r"negative_context has shape \(5, 64\)"):
        learner.load_state_dict(wide, strict=strict)
    assert _unchanged(learner, before)


def test_a_refused_load_inside_a_larger_module_changes_nothing(open_clip_model):
    model, _ = open_clip_model
    outer = torch.nn.ModuleDict({"prompts": DualPromptLearner(model, NAMES)})
    before = _snapshot(outer["prompts"])
    state = {f"prompts.{k}": v for k, v in DualPromptLearner(model, NAMES[::-1]).state_dict().items()}
    with pytest.raises(FDBPLError, match="first differ at index 0"):
        outer.load_state_dict(state)
    assert _unchanged(outer["prompts"], before)


def test_strict_load_refuses_missing_and_unexpected_keys_before_copying(open_clip_model):
    model, _ = open_clip_model
    learner = DualPromptLearner(model, NAMES)
    before = _snapshot(learner)
    state = dict(DualPromptLearner(model, NAMES).state_dict())
    state["positive_context"] = state["positive_context"] + 1
    with pytest.raises(FDBPLError, match=r"unexpected keys \['extra'\]"):
        learner.load_state_dict({**state, "extra": torch.zeros(1)})
    with pytest.raises(FDBPLError, match=r"no 'negative_context' in it \(strict=True\)"):
        learner.load_state_dict({k: v for k, v in state.items() if k != "negative_context"})
    assert _unchanged(learner, before)


@pytest.mark.parametrize(
    "classes",
    [torch.tensor([0.0, 1.0]), torch.tensor([True, False, True, False, True]), [0.5, 1], [True, False]],
)
def test_float_or_bool_class_selections_are_refused(open_clip_model, classes):
    model, _ = open_clip_model
    with pytest.raises(FDBPLError, match="classes: expected integer class ids or class names"):
        DualPromptLearner(model, NAMES)(classes)


@pytest.mark.parametrize("n_ctx", [2.5, 4.0, 0, -3, True])
def test_non_integer_or_non_positive_n_ctx_is_refused(open_clip_model, n_ctx):
    model, _ = open_clip_model
    with pytest.raises(FDBPLError, match="n_ctx: expected an integer >= 1"):
        DualPromptLearner(model, NAMES, positive_init=None, negative_init=None, n_ctx=n_ctx)


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("inits", [("a photo of a", "a photo of no"), (None, None)])
def test_from_state_dict_rebuilds_the_learner(open_clip_model, class_specific, inits):
    model, _ = open_clip_model
    kwargs = dict(positive_init=inits[0], negative_init=inits[1], class_specific=class_specific)
    if inits[0] is None:
        kwargs["n_ctx"] = 3
    trained = DualPromptLearner(model, NAMES, class_token_position="middle", **kwargs)
    with torch.no_grad():
        trained.positive_context.add_(0.5)
    again = DualPromptLearner.from_state_dict(model, trained.state_dict())
    assert again.get_extra_state() == trained.get_extra_state()
    for a, b in zip(again(), trained()):
        assert torch.equal(a, b)
    if not class_specific:  # shared contexts transfer to other classes
        other = DualPromptLearner.from_state_dict(model, trained.state_dict(), ["zebra", "cat"])
        assert other.classnames == ["zebra", "cat"]
        assert torch.equal(other.positive_context, trained.positive_context)
    else:
        with pytest.raises(FDBPLError, match=r"class-specific contexts belong to the 5 classes .* index 0\)"):
            DualPromptLearner.from_state_dict(model, trained.state_dict(), ["zebra", "cat"])


# -- class_chunk_size: the text pass in chunks, recomputed in backward ------------------


def _features_and_grads(learner, classes):
    learner.zero_grad()
    pos, neg = learner(classes)
    # an upstream gradient that differs per class and per space
    weight = torch.linspace(-1, 2, pos.numel()).view_as(pos)
    ((pos * weight).sum() + (neg.square() * weight).sum()).backward()
    return (
        pos.detach(),
        neg.detach(),
        learner.positive_context.grad.clone(),
        learner.negative_context.grad.clone(),
    )


@given(
    chunk=st.integers(1, 6),
    classes=st.none() | st.lists(st.integers(0, len(NAMES) - 1), min_size=1, max_size=8),
    class_specific=st.booleans(),
    position=st.sampled_from(["end", "middle", "front"]),
)
def test_chunked_text_pass_equals_the_unchunked_one(
    open_clip_model, chunk, classes, class_specific, position
):
    model, _ = open_clip_model
    whole = DualPromptLearner(model, NAMES, class_specific=class_specific, class_token_position=position)
    with torch.no_grad():  # contexts away from their init, so that every class differs
        whole.positive_context.add_(0.05 * torch.randn_like(whole.positive_context))
    chunked = DualPromptLearner(
        model, NAMES, class_specific=class_specific, class_token_position=position, class_chunk_size=chunk
    )
    chunked.load_state_dict(whole.state_dict())
    want = _features_and_grads(whole, classes)
    got = _features_and_grads(chunked, classes)
    for w, g in zip(want, got):  # float32 round-off of sums taken in another order (float64: below)
        assert float((g - w).norm()) <= 1e-5 * float(w.norm())


def _saved_bytes(learner):
    """Bytes autograd keeps for the backward pass of one forward (what the peak grows with)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pos, neg = learner()
    return total, pos, neg


def test_chunked_pass_keeps_no_activations_and_does_not_grow_with_c(open_clip_model):
    model, _ = open_clip_model
    names = [f"class number {i}" for i in range(48)]
    saved = {}
    for c in (12, 48):
        for chunk in (None, 4):
            learner = DualPromptLearner(model, names[:c], class_chunk_size=chunk)
            saved[c, chunk], pos, neg = _saved_bytes(learner)
            (pos.sum() + neg.sum()).backward()  # and the backward runs
    assert saved[48, None] > 2 * saved[12, None] > 0  # unchunked: activations grow with C
    # chunked: only each chunk's class ids are kept, a few bytes per class
    assert saved[48, 4] < 64 * 48 < saved[12, None] / 100


def test_chunked_pass_without_gradients_and_in_float64():
    model, _ = tiny_open_clip("clip")
    model = model.double()
    whole = DualPromptLearner(model, NAMES)
    chunked = DualPromptLearner(model, NAMES, class_chunk_size=2)
    chunked.load_state_dict(whole.state_dict())
    with torch.no_grad():
        for w, g in zip(whole(), chunked()):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    got, want = _features_and_grads(chunked, None), _features_and_grads(whole, None)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10 * float(w.abs().max()))


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True, "10"])
def test_bad_class_chunk_size_is_refused(open_clip_model, chunk):
    model, _ = open_clip_model
    with pytest.raises(FDBPLError, match="class_chunk_size"):
        DualPromptLearner(model, NAMES, class_chunk_size=chunk)
    learner = DualPromptLearner(model, NAMES)
    with pytest.raises(FDBPLError, match="class_chunk_size"):
        learner.class_chunk_size = chunk
    assert learner.class_chunk_size is None


# -- share_prefix: the start token and context computed once per space ------------------


@given(
    classes=st.none() | st.lists(st.integers(0, len(NAMES) - 1), min_size=1, max_size=6),
    random_init=st.booleans(),
    chunk=st.none() | st.integers(1, 4),
)
def test_shared_prefix_pass_equals_the_full_pass(model_and_tokenizer, classes, random_init, chunk):
    model, tok = model_and_tokenizer
    inits = dict(positive_init=None, negative_init=None, n_ctx=3) if random_init else {}
    full = DualPromptLearner(model, NAMES, tokenizer=tok, share_prefix=False, **inits)
    with torch.no_grad():
        full.negative_context.add_(0.05 * torch.randn_like(full.negative_context))
    shared = DualPromptLearner(model, NAMES, tokenizer=tok, class_chunk_size=chunk, **inits)
    shared.load_state_dict(full.state_dict())
    assert shared.shares_prefix and not full.shares_prefix
    for w, g in zip(_features_and_grads(full, classes), _features_and_grads(shared, classes)):
        assert float((g - w).norm()) <= 1e-5 * float(w.norm())


@pytest.mark.parametrize(
    "kwargs",
    [dict(class_specific=True), dict(class_token_position="middle"), dict(class_token_position="front")],
)
def test_prompts_without_a_shared_start_are_computed_in_full(open_clip_model, kwargs):
    model, _ = open_clip_model
    assert not DualPromptLearner(model, NAMES, **kwargs).shares_prefix


def test_a_tower_the_shared_pass_does_not_reproduce_is_run_in_full():
    model, tok = tiny_open_clip("clip")
    block = model.transformer.resblocks[0]  # not the last: ln_final would undo a scaling
    plain_forward = block.forward
    block.forward = lambda x, attn_mask=None, **kw: plain_forward(x, attn_mask=attn_mask) * 1.5  # patched
    with pytest.warns(UserWarning, match="not reproduced by the shared-prefix pass"):
        learner = DualPromptLearner(model, NAMES)
    assert not learner.shares_prefix
    pos, _ = learner()
    torch.testing.assert_close(
        pos, encode(model, tok, [f"a photo of a {c}." for c in NAMES]), rtol=0, atol=1e-5
    )
    # a block with extra parts is not even tried
    model2, _ = tiny_open_clip("clip")
    model2.transformer.resblocks[0].add_module("ln_extra", torch.nn.LayerNorm(64))
    assert not DualPromptLearner(model2, NAMES).shares_prefix


# -- contexts sized per space --------------------------------------------------------------


def test_coop_default_random_context_goes_with_a_negative_phrase(open_clip_model):
    model, tok = open_clip_model
    learner = DualPromptLearner(model, NAMES, n_ctx={"positive": 16}, positive_init=None)
    assert learner.n_ctx == {"positive": 16, "negative": 4}
    assert learner.positive_context.shape == (16, 64) and learner.negative_context.shape == (4, 64)
    _, neg = learner()  # the negative space is still its phrase, exactly
    torch.testing.assert_close(
        neg, encode(model, tok, [f"a photo of no {c}." for c in NAMES]), rtol=0, atol=1e-5
    )
    state = learner.state_dict()
    assert state["_extra_state"]["n_ctx"] == {"positive": 16, "negative": 4}
    again = DualPromptLearner.from_state_dict(model, state)
    assert again.n_ctx == learner.n_ctx and again.inits == learner.inits
    torch.testing.assert_close(again.positive_context, learner.positive_context, rtol=0, atol=0)
    both_random = DualPromptLearner(
        model, NAMES, n_ctx={"positive": 3, "negative": 5}, positive_init=None, negative_init=None
    )
    assert both_random.n_ctx == {"positive": 3, "negative": 5}
    assert DualPromptLearner.from_state_dict(model, both_random.state_dict()).n_ctx == both_random.n_ctx


@pytest.mark.parametrize(
    ("n_ctx", "match"),
    [
        ({"postive": 4}, r"n_ctx: expected keys 'positive' and/or 'negative', got \['postive'\]"),
        (16, r"the positive init phrase 'a photo of a' has 4 tokens.*n_ctx=\{'negative': 16\}"),
        ({"negative": 0}, r"n_ctx: expected an integer >= 1"),
    ],
)
def test_bad_per_space_n_ctx_is_refused(open_clip_model, n_ctx, match):
    model, _ = open_clip_model
    with pytest.raises(FDBPLError, match=match):
        DualPromptLearner(model, NAMES, n_ctx=n_ctx, negative_init=None)


def test_class_names_are_read_as_coop_reads_them(open_clip_model):
    model, tok = open_clip_model
    learner = DualPromptLearner(model, ["american_bulldog", "red panda"])
    assert learner.classnames == ["american bulldog", "red panda"]
    pos, _ = learner()
    torch.testing.assert_close(
        pos[0], encode(model, tok, ["a photo of a american bulldog."])[0], rtol=0, atol=1e-5
    )
    kept = DualPromptLearner(model, ["american_bulldog", "red panda"], normalize_classnames=False)
    assert kept.classnames == ["american_bulldog", "red panda"]
    assert DualPromptLearner.from_state_dict(model, kept.state_dict()).classnames == kept.classnames
    with pytest.raises(FDBPLError, match="repeated"):
        DualPromptLearner(model, ["red_panda", "red panda"])  # one class once normalised


# -- towers fdbpl cannot reproduce are refused at construction ---------------------------------


def test_a_tower_patched_for_deep_prompts_is_refused():
    """Blocks that hold their own prompt tokens (as PromptSRC's and MaPLe's patched CLIP
    blocks do) are refused by name, before any feature is computed."""
    model, tok = tiny_open_clip("clip")
    block = model.transformer.resblocks[1]
    block.register_parameter("compound_prompt", torch.nn.Parameter(torch.randn(2, 64)))
    with pytest.raises(UnsupportedModelError, match="block 1: compound_prompt"):
        DualPromptLearner(model, NAMES, tokenizer=tok)


@pytest.mark.parametrize("change", ["scaled", "raises"])
def test_a_model_whose_encode_text_is_not_its_tower_is_refused(change):
    model, tok = tiny_open_clip("clip")
    plain = model.encode_text

    def encode_text(ids):
        if change == "raises":
            raise TypeError("forward() missing 1 required positional argument: 'compound_prompts'")
        return plain(ids) * 1.5

    model.encode_text = encode_text
    match = "relative error 3.3e-01" if change == "scaled" else "encode_text fails on its own prompts"
    with pytest.raises(UnsupportedModelError, match=match):
        DualPromptLearner(model, NAMES, tokenizer=tok)
