"""CoOp's prompt learner in both spaces (Zhou et al., IJCV 2022; Section 3.3 of the paper)."""

from __future__ import annotations

from fdbpl.prompts.base import PromptLearnerBase

__all__ = ["DualPromptLearner"]


class DualPromptLearner(PromptLearnerBase):
    r"""Learnable positive and negative prompt contexts over a frozen CLIP text encoder.

    CoOp's prompt learner, twice: one context for the positive space :math:`V` (initialised
    from ``"a photo of a"``) and one for the negative space :math:`\bar V` (``"a photo of
    no"``). The prompt of class :math:`c` in a space is ``"{init} {classname}."`` with the
    init phrase's token embeddings replaced by learnable vectors. :meth:`forward` returns
    :math:`g(V)` and :math:`g(\bar V)`, the text features of every class in both spaces,
    computed in one batched text pass over sequences cut to the longest tokenized prompt
    (causal attention and end-of-text pooling make the padded tail irrelevant).

    At initialisation the features equal the model's ``encode_text`` of the tokenized
    prompts (to float round-off). Only the two contexts are parameters of this module: the
    CLIP model is not registered (it is neither saved in :meth:`state_dict` nor moved by
    :meth:`to`), and the text tower's parameters are set to ``requires_grad=False``.
    Contexts are kept in float32 (or float64 for a float64 model) and cast to the model's
    compute dtype in the forward pass, so float16 models train with float32 master weights.

    Args:
        clip_model: an open_clip ``CLIP`` or ``CustomTextCLIP``, or an OpenAI-``clip`` model.
        classnames: the C class names, distinct and non-empty.
        tokenizer: maps a list of strings to :math:`(B, L)` token ids. Default: open_clip's
            CLIP tokenizer (``open_clip.tokenize``) at the model's context length; pass
            ``open_clip.get_tokenizer(name)`` for models trained with another tokenizer
            (SigLIP, ...). OpenAI-clip models need ``clip.tokenize``.
        n_ctx: the number of context tokens, for both spaces (an int) or per space (a
            mapping such as ``{"positive": 16}``; a space left out takes the default).
            With an init phrase it is the phrase's token count (passing another value is
            an error); without one it defaults to 16. So CoOp's default, 16 random tokens,
            goes with a negative phrase as ``n_ctx={"positive": 16}, positive_init=None``.
        positive_init: the positive space's init phrase, or ``None`` for random
            initialisation (normal, std 0.02).
        negative_init: the negative space's init phrase, or ``None``.
        class_specific: one context per class (CoOp's CSC) instead of one shared context.
        class_token_position: where the class name goes relative to the context,
            ``"end"`` (default), ``"middle"`` or ``"front"``, as in CoOp.
        truncate: cut sequences to the longest tokenized prompt (default). ``False`` runs
            the full context length, which gives the same features more slowly.
        class_chunk_size: encode at most this many classes of one space at a time, and
            keep no activations: each chunk is recomputed in the backward pass with its
            upstream gradient (activation checkpointing per chunk), so the text pass's
            peak memory is set by the chunk, not by C. The features and gradients are the
            unchunked ones (to float round-off); the backward pass runs each chunk's
            forward once more. ``None`` (default): all classes in one pass. It is not part
            of the state dict; change it any time (``learner.class_chunk_size = 100``).
        normalize_classnames: read ``_`` in class names as a space, as CoOp's prompt
            learner does (``"american_bulldog"`` -> ``"american bulldog"``; default), or
            keep the names as given (``False``). The learner's :attr:`classnames` are the
            names it prompts with.
        share_prefix: with ``class_token_position="end"`` and a shared context, every
            prompt of a space starts with the same start token and context, and causal
            attention makes their activations the same in every prompt: compute them once
            per space (:meth:`TextTower.encode_shared_prefix`) and run only the rest of each
            prompt per class (default). The features are the same to float round-off; it
            is checked once here on a few classes, and a tower whose blocks it does not
            reproduce is run in full (with a warning). :attr:`shares_prefix` says which.

    Raises:
        InputValueError: an empty or duplicated class list, two classes whose prompts
            tokenize alike (names that differ only in case), a class whose prompt does not
            fit the context length, an unknown ``class_token_position``, an ``n_ctx`` that
            contradicts an init phrase.
        UnsupportedModelError: a model without a recognisable text tower, or one whose
            ``encode_text`` this learner does not reproduce from token embeddings (checked
            once here on a few prompts; e.g. a tower already patched for deep prompts,
            whose blocks hold their own prompt tokens).

    Example:
        >>> import open_clip, torch
        >>> from fdbpl.prompts import DualPromptLearner
        >>> model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64,
        ...     layers=1), text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
        >>> learner = DualPromptLearner(model, ["cat", "dog", "school bus"])
        >>> positive, negative = learner()
        >>> positive.shape, negative.shape
        (torch.Size([3, 32]), torch.Size([3, 32]))
        >>> [name for name, p in learner.named_parameters()]
        ['positive_context', 'negative_context']
    """

    method = "coop"
    class_specific_contexts = True
