r"""CoCoOp's conditional prompts in both spaces: a meta-network shifts each context per image.

CoCoOp (Zhou et al., CVPR 2022) adds a small meta-network :math:`\pi` (Linear-ReLU-Linear,
hidden width D/16) that maps the (normalised, frozen) image feature :math:`f(x)` to a
vector added to every context token: :math:`v_m(x) = v_m + \pi(f(x))`. Each image thus has
its own text features for every class, :math:`g_i(V)` of shape :math:`(N, C, D)`, which
every :mod:`fdbpl.losses` function takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fdbpl.errors import InputValueError
from fdbpl.prompts.base import NEGATIVE_INIT, POSITIVE_INIT, SPACES, ClassSelection, PromptLearnerBase
from fdbpl.prompts.text_tower import Tokenizer

__all__ = ["META_NETS", "CoCoOpDualPromptLearner"]

MetaNet = Literal["shared", "per_space"]

#: How the two prompt spaces get their image-conditioned shift: ``"shared"`` (one
#: meta-network for both; the default) or ``"per_space"`` (one each).
META_NETS = ("shared", "per_space")


def _meta_net(dim: int, width: int) -> nn.Sequential:
    """CoCoOp's meta-network: Linear(D, D/16) - ReLU - Linear(D/16, W)."""
    hidden = max(1, dim // 16)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))


class CoCoOpDualPromptLearner(PromptLearnerBase):
    r"""CoCoOp's conditional prompt learner, in the positive and the negative space.

    Each space keeps one shared context (CoCoOp has no class-specific contexts and puts the
    class name at the end); a meta-network :math:`\pi` maps each L2-normalised image
    feature to a shift added to every context token, so :meth:`forward` returns text
    features per image, :math:`(N, C, D)` for each space.

    The text pass covers N x C sequences per space. Both spaces run in one batched pass;
    with ``truncate`` (default) the classes are grouped by prompt length and each group's
    sequences are cut to its own length (one pass per length). With ``share_prefix`` (default)
    each image's start token and shifted context — the prefix every class of that image
    shares — is computed once per image and space, and only the class-name part runs per
    (image, class) (:meth:`~fdbpl.prompts.TextTower.encode_shared_prefix`); checked once at
    construction, as in :class:`DualPromptLearner`. ``class_chunk_size`` encodes that many
    classes (for all N images) at a time and recomputes each chunk in the backward pass.

    The other arguments are those of :class:`DualPromptLearner` (CoCoOp has no
    ``class_specific`` or ``class_token_position``). CoCoOp's default is 4 context tokens
    from ``"a photo of a"``, which the default init phrases give (``"a photo of no"`` also
    has 4).

    Args:
        meta_net: ``"shared"`` (default): one meta-network shifts both spaces' contexts
            with the same vector, so the positive-negative difference :math:`D^{(1)}` that
            the PCD losses (Eq. 11-16) shape comes from the two learned contexts alone, the
            image entering both spaces the same way; it also keeps CoCoOp's parameter count,
            which matters in the few-shot regime CoCoOp targets. ``"per_space"``: one
            meta-network per space (the negative space may condition on the image
            differently).

    Raises:
        InputValueError: as :class:`DualPromptLearner`, and an unknown ``meta_net``.

    Example:
        >>> import open_clip, torch
        >>> from fdbpl.prompts import CoCoOpDualPromptLearner
        >>> model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64,
        ...     layers=1), text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
        >>> learner = CoCoOpDualPromptLearner(model, ["cat", "dog", "school bus"])
        >>> positive, negative = learner(torch.randn(5, 32))  # five images' features
        >>> positive.shape
        torch.Size([5, 3, 32])
    """

    method = "cocoop"
    per_image = True
    class_specific_contexts = False

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: Sequence[str],
        tokenizer: Tokenizer | None = None,
        n_ctx: int | Mapping[str, int | None] | None = None,
        positive_init: str | None = POSITIVE_INIT,
        negative_init: str | None = NEGATIVE_INIT,
        meta_net: MetaNet = "shared",
        truncate: bool = True,
        class_chunk_size: int | None = None,
        share_prefix: bool = True,
        normalize_classnames: bool = True,
    ) -> None:
        if meta_net not in META_NETS:
            raise InputValueError(f"meta_net: expected one of {list(META_NETS)}, got {meta_net!r}")
        super().__init__(
            clip_model,
            classnames,
            tokenizer=tokenizer,
            n_ctx=n_ctx,
            positive_init=positive_init,
            negative_init=negative_init,
            truncate=truncate,
            class_chunk_size=class_chunk_size,
            share_prefix=False,  # the class-level check; the per-image one is below
            normalize_classnames=normalize_classnames,
        )
        self.meta_net_kind = meta_net
        tower = self._tower
        self.feature_dim = tower.output_dim
        names = ("shared",) if meta_net == "shared" else SPACES
        self.meta_net = nn.ModuleDict({name: _meta_net(self.feature_dim, tower.width) for name in names})
        self.meta_net.to(device=tower.device, dtype=self.positive_context.dtype)
        # each class's own sequence length in both spaces, for the pass grouped by length
        self._by_length = truncate and tower.can_truncate
        lengths = torch.maximum(self._positive_pool, self._negative_pool) + 1
        self.register_buffer("_class_lengths", lengths, persistent=False)
        if share_prefix and tower.can_share_prefix:
            self.shares_prefix = self._per_image_prefix_agrees()

    # -- the forward pass ---------------------------------------------------------------

    def contexts(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Each space's context shifted per image, :math:`v_m + \pi(f(x_i))`: :math:`(N, n, W)`."""
        if image_features.ndim != 2 or image_features.shape[1] != self.feature_dim:
            raise InputValueError(
                f"image_features: expected (N, {self.feature_dim}) image features, got shape "
                f"{tuple(image_features.shape)}"
            )
        if image_features.shape[0] == 0:
            raise InputValueError("image_features: expected at least one image, got N = 0")
        f = F.normalize(image_features.to(self.positive_context.dtype), dim=-1)
        shifts = {name: net(f) for name, net in self.meta_net.items()}
        return {
            space: getattr(self, f"{space}_context")[None]
            + shifts.get(space, shifts.get("shared"))[:, None, :]
            for space in SPACES
        }

    def forward(  # type: ignore[override]
        self, image_features: torch.Tensor, classes: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features of both spaces per image, in one text pass.

        Args:
            image_features: :math:`(N, D)` the frozen image encoder's features of the images
                (normalised or not; the meta-network sees them L2-normalised, as CoCoOp's).
            classes: ``None`` for all classes, or a subset as ids or names.

        Returns:
            ``(positive_text_features, negative_text_features)``, each :math:`(N, C', D)`,
            not normalised.
        """
        idx = self.class_indices(classes)
        contexts = self.contexts(image_features)
        chunk = self._class_chunk_size
        if chunk is None or len(idx) <= chunk:
            pos, neg = self.encode_contexts(contexts, idx)
            return pos, neg
        recompute = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        parts = [
            checkpoint(self.encode_contexts, contexts, part, use_reentrant=False)
            if recompute
            else self.encode_contexts(contexts, part)
            for part in idx.split(chunk)
        ]
        return torch.cat([p for p, _ in parts], dim=1), torch.cat([n for _, n in parts], dim=1)

    def encode_contexts(
        self, contexts: Mapping[str, torch.Tensor], idx: torch.Tensor, share_prefix: bool | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The (N, C', D) features of the classes ``idx`` in each space of ``contexts``
        (shifted contexts by space, as :meth:`contexts` gives them; one space or both), in
        the order given, in one batched pass per prompt length.

        With truncation, classes are grouped by prompt length and each group's sequences
        are cut to its own length (a CoCoOp pass is N times as many sequences as CoOp's, so
        padding every prompt to the longest one costs N times as much). ``share_prefix``:
        compute each image's prompt start once (default: :attr:`shares_prefix`)."""
        shared = self.shares_prefix if share_prefix is None else share_prefix
        if not self._by_length:
            return self._encode_cut(contexts, idx, self.sequence_length, shared)
        lengths = self._class_lengths.index_select(0, idx).tolist()
        groups: dict[int, list[int]] = {}
        for position, length in enumerate(lengths):
            groups.setdefault(length, []).append(position)
        if len(groups) == 1:
            return self._encode_cut(contexts, idx, lengths[0], shared)
        outputs, order = [], []
        for length, positions in sorted(groups.items()):
            where = torch.tensor(positions, device=idx.device)
            outputs.append(torch.stack(self._encode_cut(contexts, idx[where], length, shared)))
            order.append(where)
        inverse = torch.argsort(torch.cat(order))
        return tuple(torch.cat(outputs, dim=2).index_select(2, inverse).unbind(0))

    def _encode_cut(
        self, contexts: Mapping[str, torch.Tensor], idx: torch.Tensor, length: int, shared: bool
    ) -> tuple[torch.Tensor, ...]:
        """Each given space's (N, C', D) features of the classes ``idx``, sequences cut to ``length``."""
        spaces = list(contexts)
        n, c = contexts[spaces[0]].shape[0], len(idx)
        if shared and len({self.n_ctx[space] for space in spaces}) == 1:
            parts = [self._prefix_and_rest(space, contexts[space], idx, length) for space in spaces]
            prefix, rest, pool = (torch.cat(t) for t in zip(*parts))
            out = self._tower.encode_shared_prefix(prefix, rest, pool)
        elif shared:  # prefixes of two lengths: one pass per space
            out = torch.cat(
                [
                    self._tower.encode_shared_prefix(
                        *self._prefix_and_rest(space, contexts[space], idx, length)
                    )
                    for space in spaces
                ]
            )
        else:
            parts = [self._full_sequences(space, contexts[space], idx, length) for space in spaces]
            x, pool = (torch.cat(t) for t in zip(*parts))
            out = self._tower.encode_embeddings(x, pool)
        return tuple(out.view(len(spaces), n, c, -1).unbind(0))

    def _prefix_and_rest(
        self, space: str, ctx: torch.Tensor, idx: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image, the prefix ``[start, shifted context]`` (N, P, W); per (image, class),
        the rest of the prompt (N C', S, W) and its pooling position within the rest."""
        template = getattr(self, f"_{space}_template")
        k = self.n_ctx[space]
        n = ctx.shape[0]
        start = template[:1, :1].expand(n, 1, -1)
        prefix = torch.cat([start, ctx.to(template.dtype)], dim=1)
        rest = template.index_select(0, idx)[:, 1 + k : length]
        rest = rest[None].expand(n, *rest.shape).flatten(0, 1)
        pool = (getattr(self, f"_{space}_pool").index_select(0, idx) - (1 + k)).repeat(n)
        return prefix, rest, pool

    def _full_sequences(
        self, space: str, ctx: torch.Tensor, idx: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (image, class) prompt in full: (N C', length, W) and its pooling positions."""
        template = getattr(self, f"_{space}_template").index_select(0, idx)[:, :length]
        k = self.n_ctx[space]
        n, c = ctx.shape[0], len(idx)
        x = torch.cat(
            [
                template[None, :, :1].expand(n, -1, -1, -1),
                ctx.to(template.dtype)[:, None].expand(-1, c, -1, -1),
                template[None, :, 1 + k :].expand(n, -1, -1, -1),
            ],
            dim=2,
        )
        pool = getattr(self, f"_{space}_pool").index_select(0, idx).repeat(n)
        return x.flatten(0, 1), pool

    def _per_image_prefix_agrees(self) -> bool:
        """Whether the per-image shared-prefix pass reproduces the full one here."""
        idx = torch.arange(min(4, self.num_classes), device=self._positive_pool.device)
        g = torch.Generator(device="cpu").manual_seed(0)
        features = torch.randn(2, self.feature_dim, generator=g).to(self._positive_pool.device)
        with torch.no_grad():
            contexts = self.contexts(features)
            got = self.encode_contexts(contexts, idx, share_prefix=True)
            want = self.encode_contexts(contexts, idx, share_prefix=False)
        return self._same_features(got, want)

    def normalized_features(  # type: ignore[override]
        self, image_features: torch.Tensor, classes: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s features, L2-normalised along D."""
        pos, neg = self(image_features, classes)
        return F.normalize(pos, dim=-1), F.normalize(neg, dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, meta_net={self.meta_net_kind!r}, per_image=True"
