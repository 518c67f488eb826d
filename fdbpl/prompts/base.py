"""The base of the dual positive/negative prompt learners (Section 3.3 of the paper): the text
pass over two learned contexts, and checkpoints that record each learner's configuration."""

from __future__ import annotations

import functools
import inspect
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fdbpl._checks import check_count, first_difference
from fdbpl.data.items import coop_classname
from fdbpl.errors import InputValueError
from fdbpl.logits import clip_logits, logit_scale_of
from fdbpl.prompts.text_tower import TextTower, Tokenizer, check_text_tower, relative_error, tolerance

__all__ = ["NEGATIVE_INIT", "POSITIVE_INIT", "RANDOM_N_CTX", "RUNTIME_OPTIONS", "SPACES", "PromptLearnerBase"]

ClassTokenPosition = Literal["end", "middle", "front"]
ClassSelection = Sequence[int] | Sequence[str] | torch.Tensor | None

#: The two prompt spaces, in the order a learner's ``forward`` returns them.
SPACES = ("positive", "negative")

#: The positive space's init phrase (CoOp's ``CTX_INIT``) and the negative space's (the paper's).
POSITIVE_INIT = "a photo of a"
NEGATIVE_INIT = "a photo of no"

#: A context's length when no init phrase gives it (CoOp's ``N_CTX``).
RANDOM_N_CTX = 16
_PLACEHOLDER = "X"


def _other(space: str) -> str:
    return SPACES[1 - SPACES.index(space)]


def _token_counts(tokenizer: Tokenizer, texts: list[str], context_length: int) -> torch.Tensor:
    """Tokens per text including start and end markers, counted without truncation where possible."""
    try:
        ids = tokenizer(texts, context_length=4 * context_length)
    except TypeError:  # a tokenizer without a context_length argument
        ids = tokenizer(texts)
        full = ids[:, -1] != 0
        counts = (ids != 0).sum(dim=1)
        return torch.where(full, torch.full_like(counts, context_length + 1), counts)
    return (ids != 0).sum(dim=1)


def _check_distinct_prompts(ids: torch.Tensor, names: list[str], space: str) -> None:
    """Refuse two classes whose prompts tokenize alike (``'Cat'`` and ``'cat'`` for CLIP's
    lower-casing tokenizer): their text features would be identical."""
    seen: dict[tuple[int, ...], int] = {}
    for i, row in enumerate(ids.tolist()):
        first = seen.setdefault(tuple(row), i)
        if first != i:
            raise InputValueError(
                f"classnames: {names[first]!r} and {names[i]!r} give the same {space} prompt once tokenized "
                "(e.g. names that differ only in case), so no learner could tell the two classes apart"
            )


#: Constructor arguments that tune how a learner runs, not what it learns: not part of its
#: configuration, not saved (set them again when rebuilding).
RUNTIME_OPTIONS = frozenset(
    {"tokenizer", "truncate", "class_chunk_size", "share_prefix", "gradient_checkpointing"}
)
_NOT_CONFIG = frozenset({"self", "clip_model"})
#: What a state saved by fdbpl 0.1 without the entry was built with.
UNRECORDED_IN_0_1 = {"normalize_classnames": False, "vision_prompt_position": "after_ln_pre"}
# the learner class of each method of fdbpl 0.1, whose states name no class
_LEARNER_OF_0_1 = {
    "coop": "DualPromptLearner",
    "cocoop": "CoCoOpDualPromptLearner",
    **dict.fromkeys(("vpt", "ivlp", "maple", "promptsrc"), "DeepPromptLearner"),
}
# entries a loaded state may hold other values of: the contexts' starting point, the spelling
# of names (compared as prompted)
_MAY_DIFFER = frozenset({"classnames", "positive_init", "negative_init", "normalize_classnames"})
_PLAIN = (str, int, float, bool, type(None))


def _plain(name: str, value: Any) -> Any:
    """``value`` as plain data (a checkpoint loads it with ``weights_only=True``), or an error."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(name, v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(name, v) for v in value]
    raise InputValueError(f"{name}: a learner's configuration is plain data, got {type(value).__name__}")


def _records_config(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a learner's ``__init__`` so that the learner's own constructor (the outermost one)
    records its configuration: each argument but the model and :data:`RUNTIME_OPTIONS`, as the
    learner resolved it where it keeps a plain attribute of that name."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self: PromptLearnerBase, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is not recording_init:
            return  # a subclass's constructor records its own arguments
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {}
        for name, value in bound.arguments.items():
            if name in _NOT_CONFIG or name in RUNTIME_OPTIONS:
                continue
            resolved = self.__dict__.get(name, value)
            config[name] = _plain(name, resolved if isinstance(resolved, (*_PLAIN, list, dict)) else value)
        self._config = config

    return recording_init


class PromptLearnerBase(nn.Module):
    r"""The base of every dual prompt learner: two learned contexts over a frozen CLIP text tower.

    It holds what every base method's learner shares: the positive and negative contexts
    (:math:`V`, :math:`\bar V`), the batched text pass (cut sequences, shared prefix, class
    chunks), :meth:`logits`, and checkpoints. Its constructor's arguments are CoOp's
    (documented on :class:`~fdbpl.prompts.DualPromptLearner`, CoOp's learner); a subclass
    passes up the ones it keeps and adds its own.

    **Configuration.** The arguments of the learner's own constructor, except the model
    and the ones that only tune how it runs (:data:`RUNTIME_OPTIONS`), are its
    configuration: :attr:`config`, a read-only mapping recorded when it is built (each
    argument as the learner resolved it where it keeps a plain attribute of that name, so
    ``n_ctx=None`` is recorded as the lengths it chose), saved in :meth:`state_dict` and
    given back by :meth:`from_state_dict` as ``cls(clip_model, **config)``. A subclass needs
    no checkpoint code of its own.
    """

    #: The base method's name, recorded in the state dict (see :func:`fdbpl.prompts.build_learner`).
    method = "coop"
    #: Whether :meth:`forward` takes image features and gives text features per image.
    per_image = False
    #: Whether the learner prompts the image tower (it has ``encode_image``; it needs the
    #: images, and gradients flow through the image tower).
    prompts_images = False
    #: Whether the learner can learn one context per class (``class_specific``).
    class_specific_contexts = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _records_config(cls.__dict__["__init__"])  # type: ignore[method-assign]

    @property
    def config(self) -> Mapping[str, Any]:
        """The learner's configuration (read-only): its constructor's arguments as resolved."""
        return MappingProxyType(self._config)

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: Sequence[str],
        tokenizer: Tokenizer | None = None,
        n_ctx: int | Mapping[str, int | None] | None = None,
        positive_init: str | None = POSITIVE_INIT,
        negative_init: str | None = NEGATIVE_INIT,
        class_specific: bool = False,
        class_token_position: ClassTokenPosition = "end",
        truncate: bool = True,
        class_chunk_size: int | None = None,
        share_prefix: bool = True,
        normalize_classnames: bool = True,
    ) -> None:
        super().__init__()
        self.normalize_classnames = bool(normalize_classnames)
        classnames = self._check_classnames(classnames, self.normalize_classnames)
        self.class_chunk_size = class_chunk_size
        if class_token_position not in ("end", "middle", "front"):
            raise InputValueError(
                f"class_token_position: expected 'end', 'middle' or 'front', got {class_token_position!r}"
            )
        tower = TextTower.from_model(clip_model)
        tokenizer = tokenizer if tokenizer is not None else tower.default_tokenizer()
        for p in tower.parameters():
            p.requires_grad_(False)
        self._tower = tower
        self.classnames = list(classnames)
        self.class_specific = bool(class_specific)
        self.class_token_position = class_token_position
        self.inits = {"positive": positive_init, "negative": negative_init}
        self.n_ctx: dict[str, int] = {}

        param_dtype = torch.promote_types(tower.cast_dtype, torch.float32)
        ids: dict[str, torch.Tensor] = {}
        contexts: dict[str, torch.Tensor] = {}
        per_space = self._n_ctx_per_space(n_ctx)
        for space, init in self.inits.items():
            n, ctx = self._init_context(tower, tokenizer, init, per_space[space], space)
            self.n_ctx[space] = n
            prefix = init if init is not None else " ".join([_PLACEHOLDER] * n)
            prompts = [f"{prefix} {name}." for name in classnames]
            self._check_fit(tokenizer, prompts, classnames, tower.context_length, space)
            ids[space] = tokenizer(prompts).to(tower.device)
            _check_distinct_prompts(ids[space], classnames, space)
            if self.class_specific:
                ctx = ctx.expand(len(classnames), -1, -1)
            contexts[space] = ctx.to(param_dtype).clone()

        pools = {space: tower.pool_index(t) for space, t in ids.items()}
        length = ids["positive"].shape[1]
        if truncate and tower.can_truncate:
            length = int(max(p.max() for p in pools.values())) + 1
        self.sequence_length = length

        self.positive_context = nn.Parameter(contexts["positive"])
        self.negative_context = nn.Parameter(contexts["negative"])
        name_lens = None
        if class_token_position != "end":
            name_lens = _token_counts(tokenizer, list(classnames), tower.context_length) - 2
        for space in SPACES:
            self.register_buffer(
                f"_{space}_template", tower.embed_tokens(ids[space][:, :length]), persistent=False
            )
            self.register_buffer(f"_{space}_pool", pools[space], persistent=False)
            order = self._order(self.n_ctx[space], name_lens, length, tower.device)
            self.register_buffer(f"_{space}_order", order, persistent=False)
        check_text_tower(
            clip_model, tower, ids["positive"][:4], self._positive_template[:4], self._positive_pool[:4]
        )
        self.shares_prefix = False
        if (
            share_prefix
            and class_token_position == "end"
            and not self.class_specific
            and tower.can_share_prefix
        ):
            self.shares_prefix = self._shared_prefix_agrees()

    # -- construction helpers -----------------------------------------------------------

    @staticmethod
    def _check_classnames(classnames: Sequence[str], normalize: bool = False) -> list[str]:
        if isinstance(classnames, str) or not isinstance(classnames, Sequence):
            raise InputValueError(f"classnames: expected a list of strings, got {type(classnames).__name__}")
        names = list(classnames)
        if not names:
            raise InputValueError("classnames: expected at least one class name, got an empty list")
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise InputValueError(f"classnames: expected non-empty strings, got {bad[:5]!r}")
        if normalize:
            names = [coop_classname(n) for n in names]
        seen: set[str] = set()
        repeated = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        if repeated:
            raise InputValueError(f"classnames: expected distinct names, repeated: {repeated[:10]!r}")
        return names

    @staticmethod
    def _n_ctx_per_space(n_ctx: int | Mapping[str, int | None] | None) -> dict[str, int | None]:
        if not isinstance(n_ctx, Mapping):
            return dict.fromkeys(SPACES, n_ctx)
        unknown = sorted(set(n_ctx) - set(SPACES))
        if unknown:
            raise InputValueError(f"n_ctx: expected keys 'positive' and/or 'negative', got {unknown}")
        return {space: n_ctx.get(space) for space in SPACES}

    #: Whether ``n_ctx`` may be shorter than an init phrase (the first ``n_ctx`` of its tokens
    #: learn, the rest stay words of the prompt, as MaPLe's and IVLP's learners do).
    _partial_phrase = False

    @classmethod
    def _init_context(
        cls, tower: TextTower, tokenizer: Tokenizer, init: str | None, n_ctx: int | None, space: str
    ) -> tuple[int, torch.Tensor]:
        if init is None:
            n = RANDOM_N_CTX if n_ctx is None else check_count("n_ctx", n_ctx)
            ctx = torch.empty(n, tower.width, device=tower.device, dtype=torch.float32)
            nn.init.normal_(ctx, std=0.02)
            return n, ctx
        ids = tokenizer([init]).to(tower.device)
        n = int((ids != 0).sum()) - 2
        if n < 1:
            raise InputValueError(f"{space}_init: expected a phrase with at least one token, got {init!r}")
        if n_ctx is not None and cls._partial_phrase and check_count("n_ctx", n_ctx) <= n:
            n = n_ctx
        elif n_ctx is not None and n_ctx != n:
            raise InputValueError(
                f"n_ctx: the {space} init phrase {init!r} has {n} tokens, which fixes n_ctx; got "
                f"n_ctx={n_ctx} (size the other space alone with n_ctx={{'{_other(space)}': {n_ctx}}}, or "
                f"pass {space}_init=None for random contexts)"
            )
        return n, tower.embed_tokens(ids)[0, 1 : 1 + n]

    @staticmethod
    def _check_fit(
        tokenizer: Tokenizer, prompts: list[str], names: list[str], length: int, space: str
    ) -> None:
        counts = _token_counts(tokenizer, prompts, length)
        too_long = (counts > length).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise InputValueError(
                f"classnames: the {space} prompt of class {names[i]!r} ({prompts[i]!r}) needs "
                f"{int(counts[i])} tokens, more than the model's context length {length}"
                + (f"; {len(too_long) - 1} more class(es) too" if len(too_long) > 1 else "")
            )

    def _order(
        self, n: int, name_lens: torch.Tensor | None, length: int, device: torch.device
    ) -> torch.Tensor:
        """(C, L') positions into ``[prefix, context, suffix]`` that place the class name."""
        num_classes = len(self.classnames)
        base = torch.arange(length, device=device)
        if name_lens is None:
            return base.expand(num_classes, -1).clone()
        rows = []
        half = n // 2
        for k in name_lens.tolist():
            name = list(range(1 + n, 1 + n + k))
            rest = list(range(1 + n + k, length))
            if self.class_token_position == "front":
                row = [0, *name, *range(1, 1 + n), *rest]
            else:
                row = [0, *range(1, 1 + half), *name, *range(1 + half, 1 + n), *rest]
            rows.append(row[:length])
        return torch.tensor(rows, device=device)

    @property
    def class_chunk_size(self) -> int | None:
        """Classes per chunk of the text pass (``None``: all at once); see the class docs."""
        return self._class_chunk_size

    @class_chunk_size.setter
    def class_chunk_size(self, value: int | None) -> None:
        self._class_chunk_size = None if value is None else check_count("class_chunk_size", value)

    # -- selection ----------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def tower(self) -> TextTower:
        """The wrapped text tower (not registered as a submodule)."""
        return self._tower

    def class_indices(self, classes: ClassSelection = None) -> torch.Tensor:
        """Class ids :math:`(C',)` for a selection given as ids, names, or ``None`` (all)."""
        device = self._positive_pool.device
        if classes is None:
            return torch.arange(self.num_classes, device=device)
        if isinstance(classes, torch.Tensor):
            if classes.dtype == torch.bool or classes.is_floating_point() or classes.is_complex():
                raise InputValueError(
                    f"classes: expected integer class ids or class names, got a tensor of dtype {classes.dtype}"
                )
            idx = classes.to(device=device, dtype=torch.long).flatten()
        else:
            items = list(classes)
            if items and all(isinstance(c, str) for c in items):
                lookup = {n: i for i, n in enumerate(self.classnames)}
                unknown = [c for c in items if c not in lookup]
                if unknown:
                    raise InputValueError(f"classes: unknown class names {unknown[:10]!r}")
                items = [lookup[c] for c in items]
            bad = [c for c in items if isinstance(c, bool) or not isinstance(c, numbers.Integral)]
            if bad:
                raise InputValueError(
                    f"classes: expected integer class ids or class names, got {bad[:5]!r} among them"
                )
            idx = torch.tensor(items, dtype=torch.long, device=device)
        if idx.numel() == 0:
            raise InputValueError("classes: expected at least one class, got none")
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_classes:
            raise InputValueError(
                f"classes: expected ids in [0, {self.num_classes}), got min {int(idx.min())} and max {int(idx.max())}"
            )
        return idx

    # -- the forward pass ---------------------------------------------------------------

    def prompt_embeddings(
        self, space: str, classes: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token embeddings of one space's prompts and their pooling positions.

        Args:
            space: ``"positive"`` or ``"negative"``.
            classes: a class selection (see :meth:`class_indices`).

        Returns:
            ``(embeddings, pool_index)``: :math:`(C', L', W)` in the model's compute dtype
            and :math:`(C',)`.
        """
        if space not in SPACES:
            raise InputValueError(f"space: expected 'positive' or 'negative', got {space!r}")
        return self._embeddings(space, self.class_indices(classes))

    def _embeddings(self, space: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        template = getattr(self, f"_{space}_template")
        if template.device != self._tower.device:
            raise InputValueError(
                f"the learner is on {template.device} but the CLIP model is on {self._tower.device}: "
                "move both (learner.to(device) and model.to(device))"
            )
        template = template.index_select(0, idx)
        ctx = getattr(self, f"{space}_context").to(template.dtype)
        ctx = ctx.index_select(0, idx) if self.class_specific else ctx.expand(len(idx), -1, -1)
        n = self.n_ctx[space]
        x = torch.cat([template[:, :1], ctx, template[:, 1 + n :]], dim=1)
        if self.class_token_position != "end":
            order = getattr(self, f"_{space}_order").index_select(0, idx)
            x = x.gather(1, order[:, :, None].expand(-1, -1, x.shape[2]))
        return x, getattr(self, f"_{space}_pool").index_select(0, idx)

    def forward(self, classes: ClassSelection = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features of both spaces, :math:`g(V)` and :math:`g(\\bar V)`, in one text pass.

        With :attr:`class_chunk_size` set, the pass runs chunk by chunk and keeps no
        activations (each chunk is recomputed in backward); the result is the same.

        Args:
            classes: ``None`` for all classes, or a subset as ids or names (e.g. the base
                classes of a base-to-new split); features come in that order.

        Returns:
            ``(positive_text_features, negative_text_features)``, each :math:`(C', D)`, as
            ``encode_text`` returns them (not normalised).
        """
        idx = self.class_indices(classes)
        chunk = self._class_chunk_size
        if chunk is None or len(idx) <= chunk:
            return self._encode(idx)
        recompute = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        pos, neg = (
            torch.cat(
                [
                    checkpoint(self._encode_space, space, part, use_reentrant=False)
                    if recompute
                    else self._encode_space(space, part)
                    for part in idx.split(chunk)
                ]
            )
            for space in SPACES
        )
        return pos, neg

    def _encode_space(self, space: str, idx: torch.Tensor) -> torch.Tensor:
        """One space's features of the classes ``idx`` (a chunk of the chunked pass)."""
        if self.shares_prefix:
            return self._encode_shared(space, idx)
        return self._tower.encode_embeddings(*self._embeddings(space, idx), deep=self._deep(space))

    def _encode(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both spaces' features of the classes ``idx`` in one batched text pass."""
        if self.shares_prefix:
            pos, neg = (self._encode_shared(space, idx) for space in SPACES)
            return pos, neg
        return self._encode_full(idx)

    def _encode_shared(self, space: str, idx: torch.Tensor) -> torch.Tensor:
        """One space's features, its start token and context computed once for all classes."""
        template = getattr(self, f"_{space}_template")
        n = self.n_ctx[space]
        ctx = getattr(self, f"{space}_context").to(template.dtype)
        prefix = torch.cat([template[0, :1], ctx])
        rest = template.index_select(0, idx)[:, 1 + n :]
        pool = getattr(self, f"_{space}_pool").index_select(0, idx) - (1 + n)
        return self._tower.encode_shared_prefix(prefix, rest, pool, deep=self._deep(space))

    def _deep(self, space: str) -> list[torch.Tensor]:
        """One space's deep text tokens for blocks 1..J-1 (none here; see :class:`DeepPromptLearner`)."""
        return []

    def _shared_prefix_agrees(self) -> bool:
        """Whether the shared-prefix pass reproduces the full one here, on a few classes."""
        idx = torch.arange(min(8, self.num_classes), device=self._positive_pool.device)
        with torch.no_grad():
            want = self._encode_full(idx)
            got = [self._encode_shared(space, idx) for space in SPACES]
        return self._same_features(got, want)

    def _same_features(self, got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> bool:
        """Whether a shared-prefix pass gave the full pass's features (to float round-off);
        warns that every prompt will be computed in full where not."""
        for g, w in zip(got, want):
            error = relative_error(g, w)
            if not error <= tolerance(self._tower.cast_dtype):
                warnings.warn(
                    f"the text tower's blocks are not reproduced by the shared-prefix pass (relative error "
                    f"{error:.1e}): every prompt is computed in full",
                    stacklevel=4,
                )
                return False
        return True

    def _encode_full(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both spaces' features, every prompt computed in full, in one batched pass."""
        pos, pos_pool = self._embeddings("positive", idx)
        neg, neg_pool = self._embeddings("negative", idx)
        c = len(idx)
        deep = [  # per sequence: each space's deep tokens for its C prompts
            torch.cat([p.expand(c, -1, -1), q.expand(c, -1, -1)])
            for p, q in zip(self._deep("positive"), self._deep("negative"))
        ]
        x, pool = torch.cat([pos, neg]), torch.cat([pos_pool, neg_pool])
        features = self._tower.encode_embeddings(x, pool, deep=deep)
        return features[:c], features[c:]

    def normalized_features(self, classes: ClassSelection = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s features, L2-normalised along D."""
        pos, neg = self(classes)
        return F.normalize(pos, dim=-1), F.normalize(neg, dim=-1)

    def logits(
        self,
        image_features: torch.Tensor,
        classes: ClassSelection = None,
        logit_scale: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative logits, Eq. 7-8: ``logit_scale * cos(image, text)``.

        Args:
            image_features: :math:`(N, D)` image features (normalised or not).
            classes: a class selection (see :meth:`class_indices`).
            logit_scale: the multiplier :math:`1/\\tau`; default: the model's
                ``logit_scale.exp()``, or 100 when it has none.

        Returns:
            ``(positive_logits, negative_logits)``, each :math:`(N, C')` (a per-image
            learner compares each image with its own text features).
        """
        if logit_scale is None:
            logit_scale = logit_scale_of(self._tower.module)
        pos, neg = self(image_features, classes) if self.per_image else self(classes)
        return clip_logits(image_features, pos, logit_scale), clip_logits(image_features, neg, logit_scale)

    # -- checkpoints --------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        """The learner's class, method, class names, contexts' lengths and :attr:`config`,
        saved with its contexts (see :meth:`from_state_dict`)."""
        config = dict(self._config)
        inits = {space: config.pop(f"{space}_init", self.inits[space]) for space in SPACES}
        config.pop("classnames", None)
        return {
            "learner": type(self).__name__,
            "method": self.method,
            "classnames": list(self.classnames),
            "n_ctx": dict(self.n_ctx),
            "inits": inits,
            **config,
        }

    @classmethod
    def stored_config(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration a learner's extra state records, as arguments of ``cls``.

        Read by ``cls``'s constructor signature, so it serves every learner; states of
        fdbpl 0.1 (no ``learner`` entry) read as what 0.1 built them with
        (:data:`UNRECORDED_IN_0_1` where an entry is missing; a deep learner's
        ``text_ctx`` from its ``n_ctx``).

        Raises:
            InputValueError: a state that is not a learner's, or of another learner class.
        """
        if not isinstance(state, Mapping) or "classnames" not in state or "n_ctx" not in state:
            raise InputValueError("state_dict: not a prompt learner's state (no configuration in it)")
        learner = state.get("learner", _LEARNER_OF_0_1.get(state.get("method", "coop")))
        parameters = inspect.signature(cls.__init__).parameters
        if learner is not None and learner != cls.__name__:
            mine = cls.__name__ if "method" in parameters else f"{cls.method!r} one ({cls.__name__})"
            raise InputValueError(
                f"state_dict: a {state.get('method', 'coop')!r} learner's state ({learner}), not a {mine} "
                "(fdbpl.prompts.learner_from_state_dict picks the class from the state)"
            )
        # a state without its init phrases was made with fdbpl 0.1's defaults, whatever today's are
        inits = state.get("inits", {"positive": "a photo of a", "negative": "a photo of no"})
        recorded = {
            **UNRECORDED_IN_0_1,
            "text_ctx": state["n_ctx"].get("positive"),
            **{f"{space}_init": inits.get(space) for space in SPACES},
            **state,
        }
        return {
            name: recorded[name]
            for name in parameters
            if name in recorded and name not in _NOT_CONFIG and name not in RUNTIME_OPTIONS
        }

    @classmethod
    def from_state_dict(
        cls,
        clip_model: nn.Module,
        state_dict: Mapping[str, Any],
        classnames: Sequence[str] | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> PromptLearnerBase:
        """Rebuild a learner from its :meth:`state_dict`: ``cls(clip_model, **config)``, then its contexts.

        Args:
            clip_model: the CLIP model the contexts were trained for (or one of its shape).
            state_dict: a learner's state dict (its ``_extra_state`` holds the configuration).
            classnames: the classes to build prompts for; default the checkpoint's own. Shared
                contexts transfer to other class names (that is how new classes are
                evaluated); class-specific ones only to their own classes.
            tokenizer: the model's tokenizer (default: the text tower's).

        Raises:
            InputValueError: a state without a learner's configuration, of another learner
                class, or contexts that do not fit (another width, or class-specific
                contexts for other classes).
        """
        config = cls.stored_config(state_dict.get("_extra_state"))
        names = list(classnames) if classnames is not None else list(config["classnames"])
        if config.get("class_specific") and names != list(config["classnames"]):
            first = first_difference(config["classnames"], names)
            raise InputValueError(
                f"classnames: class-specific contexts belong to the {len(config['classnames'])} classes they "
                f"were trained on, {len(names)} other class names given (they first differ at index {first}); "
                "evaluate them on their own classes (fdbpl evaluate --classes all)"
            )
        learner = cls(clip_model, **{**config, "classnames": names}, tokenizer=tokenizer)
        learner.load_contexts(state_dict)
        return learner

    def set_extra_state(self, state: Any) -> None:
        self._check_extra_state(state)

    def _check_extra_state(self, state: Any) -> None:
        """Refuse a checkpoint of another learner, class names or configuration; changes nothing.

        The init phrases (only the contexts' starting point) and ``normalize_classnames``
        (the class names are compared as prompted) may differ."""
        if not isinstance(state, dict) or "classnames" not in state:
            raise InputValueError("state_dict: not a prompt learner's checkpoint (no class names in it)")
        if state["classnames"] != self.classnames:
            theirs, mine = state["classnames"], self.classnames
            first = first_difference(theirs, mine)
            raise InputValueError(
                f"state_dict: the checkpoint was made for {len(theirs)} class names, this learner has "
                f"{len(mine)}; they first differ at index {first}: "
                f"{theirs[first] if first < len(theirs) else '<end>'!r} in the checkpoint vs "
                f"{mine[first] if first < len(mine) else '<end>'!r} here"
            )
        if state.get("method", "coop") != self.method:
            raise InputValueError(
                f"state_dict: the checkpoint is of a {state.get('method', 'coop')!r} learner, this one is "
                f"{self.method!r}"
            )
        theirs = {**self.stored_config(state), "n_ctx": state["n_ctx"]}
        for key, mine in {**self._config, "n_ctx": self.n_ctx}.items():
            if key not in _MAY_DIFFER and theirs.get(key, mine) != mine:
                raise InputValueError(
                    f"state_dict: the checkpoint has {key}={theirs[key]!r}, this learner {key}={mine!r}"
                )

    def _check_state_dict(self, state_dict: Mapping[str, Any], prefix: str, strict: bool) -> None:
        """Everything :meth:`load_state_dict` could refuse, checked before anything is copied."""
        extra = prefix + "_extra_state"
        if extra not in state_dict:
            raise InputValueError(
                f"state_dict: no {extra!r} in it, so its class names and prompt shapes cannot be checked "
                "(not a prompt learner's state; load_contexts takes bare contexts)"
            )
        self._check_extra_state(state_dict[extra])
        for name, mine in self.named_parameters():
            theirs = state_dict.get(prefix + name)
            if theirs is None:
                if strict:
                    raise InputValueError(f"state_dict: no {prefix + name!r} in it (strict=True)")
                continue
            if not isinstance(theirs, torch.Tensor) or theirs.shape != mine.shape:
                shape = tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__
                raise InputValueError(
                    f"state_dict: {prefix + name} has shape {shape}, this learner's is {tuple(mine.shape)}"
                )
            if not theirs.is_floating_point():
                raise InputValueError(
                    f"state_dict: {prefix + name} has dtype {theirs.dtype}, expected floating point"
                )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """:meth:`torch.nn.Module.load_state_dict`, all or nothing: a state of other class names,
        prompt shapes, with missing or (``strict``) unexpected keys is refused before any
        context is copied, whatever ``strict`` says about the rest."""
        self._check_state_dict(state_dict, "", strict)
        if strict:
            unexpected = sorted(
                set(state_dict) - {"_extra_state", *(name for name, _ in self.named_parameters())}
            )
            if unexpected:
                raise InputValueError(f"state_dict: unexpected keys {unexpected[:5]} (strict=True)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # type: ignore[no-untyped-def]
        # also when the learner is loaded as part of a larger module
        self._check_state_dict(state_dict, prefix, strict)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def load_contexts(self, state_dict: Mapping[str, Any]) -> None:
        """Take the trained contexts of another learner's ``state_dict``, for other class names.

        Shared contexts transfer to any class list: that is how prompts learned on base
        classes are evaluated on new ones. Class-specific contexts belong to their classes,
        so for them this is :meth:`load_state_dict`, which refuses other class names.

        Raises:
            InputValueError: a state without both contexts, or contexts of another shape
                (another ``n_ctx`` or width).
        """
        if self.class_specific:
            self.load_state_dict(dict(state_dict))
            return
        learned = dict(self.named_parameters())
        for name, mine in learned.items():
            theirs = state_dict.get(name)
            if not isinstance(theirs, torch.Tensor):
                raise InputValueError(f"state_dict: no {name!r} in it (not a {type(self).__name__} state)")
            if theirs.shape != mine.shape:
                raise InputValueError(
                    f"state_dict: {name} has shape {tuple(theirs.shape)}, this learner's is {tuple(mine.shape)} "
                    "(another n_ctx, model width, or class-specific contexts)"
                )
        with torch.no_grad():
            for name, mine in learned.items():
                mine.copy_(state_dict[name])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, n_ctx={self.n_ctx}, class_specific={self.class_specific}, "
            f"class_token_position={self.class_token_position!r}, sequence_length={self.sequence_length}, "
            f"class_chunk_size={self._class_chunk_size}, shares_prefix={self.shares_prefix}, "
            f"text_tower={self._tower.kind!r}"
        )


PromptLearnerBase.__init__ = _records_config(PromptLearnerBase.__init__)  # type: ignore[method-assign]
