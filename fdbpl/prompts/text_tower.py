"""A uniform view of the text encoder of open_clip and OpenAI-``clip`` models.

A prompt learner must reproduce ``encode_text`` from token *embeddings* rather than
token ids: token embedding, cast, + positional embedding, causal transformer,
``ln_final``, pooling at the end-of-text token, projection. :class:`TextTower` finds
those pieces on the three model layouts in use and runs that sequence on any prefix of
the context (causal attention and end-of-text pooling make the padded tail irrelevant).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fdbpl.errors import UnsupportedModelError

__all__ = ["TextTower", "UnsupportedModelError", "replace_tokens"]

Tokenizer = Callable[..., torch.Tensor]

_LOOKED_FOR = (
    "an open_clip CLIP (token_embedding, positional_embedding, transformer, ln_final, "
    "text_projection, attn_mask on the model), an open_clip CustomTextCLIP (the same under "
    "model.text) or an OpenAI-clip CLIP (the same plus transformer.resblocks and model.dtype)"
)


class TextTower:
    """The pieces of a CLIP text encoder, and ``encode_text`` from token embeddings.

    Build one with :meth:`from_model`. It holds references to the model's modules (it is
    not an ``nn.Module`` itself, so a learner that holds it does not register, save or
    move the CLIP model).

    Attributes:
        kind: ``"open_clip"``, ``"open_clip_custom"`` or ``"openai_clip"``.
        context_length: the model's full context length L.
        pool_type: ``"argmax"`` (the end-of-text token has the largest id), ``"eos"``,
            ``"first"`` or ``"last"``.
    """

    def __init__(
        self,
        *,
        kind: str,
        module: nn.Module,
        token_embedding: nn.Embedding,
        positional_embedding: torch.Tensor,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection: torch.Tensor | nn.Module | None,
        attn_mask: torch.Tensor | None,
        pool_type: str,
        eos_id: int | None,
        cast_dtype: torch.dtype,
    ) -> None:
        self.kind = kind
        self.module = module
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.attn_mask = attn_mask
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.cast_dtype = cast_dtype
        self.context_length = positional_embedding.shape[0]

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: nn.Module) -> TextTower:
        """Find the text tower of an open_clip ``CLIP``, ``CustomTextCLIP`` or OpenAI-clip model.

        Raises:
            UnsupportedModelError: when no known layout matches; the message lists the
                attributes looked for.
        """
        required = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if all(hasattr(model, a) for a in required):
            if hasattr(model.transformer, "resblocks") and not hasattr(model, "attn_mask"):
                return cls._openai(model)
            return cls._open_clip(model, model, "open_clip")
        text = getattr(model, "text", None)
        if isinstance(text, nn.Module) and all(hasattr(text, a) for a in required):
            if getattr(text, "cls_emb", None) is not None:
                raise UnsupportedModelError(
                    "model.text appends a class token (a CoCa-style text tower): its pooled "
                    "output is not the end-of-text token, so prompt learning on it is not supported"
                )
            return cls._open_clip(text, model, "open_clip_custom")
        found = sorted(
            n
            for n in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text")
            if hasattr(model, n)
        )
        raise UnsupportedModelError(
            f"{type(model).__name__} has no recognisable text tower: looked for {_LOOKED_FOR}; "
            f"found only {found or 'none of them'}"
        )

    @classmethod
    def _open_clip(cls, tower: nn.Module, model: nn.Module, kind: str) -> TextTower:
        attn_mask = getattr(tower, "attn_mask", None)
        if attn_mask is None:
            raise UnsupportedModelError(
                f"{type(model).__name__}'s text transformer has no causal attention mask "
                "(a bidirectional text tower): prompts cannot be cut to their real length"
            )
        pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        eos_id = (
            getattr(tower, "text_eos_id", None) if kind == "open_clip" else getattr(tower, "eos_id", None)
        )
        get_cast = getattr(tower.transformer, "get_cast_dtype", None)
        cast_dtype = get_cast() if callable(get_cast) else tower.token_embedding.weight.dtype
        return cls(
            kind=kind,
            module=model,
            token_embedding=tower.token_embedding,
            positional_embedding=tower.positional_embedding,
            transformer=tower.transformer,
            ln_final=tower.ln_final,
            text_projection=getattr(tower, "text_projection", None),
            attn_mask=attn_mask,
            pool_type=pool_type,
            eos_id=eos_id,
            cast_dtype=cast_dtype,
        )

    @classmethod
    def _openai(cls, model: nn.Module) -> TextTower:
        blocks = model.transformer.resblocks
        mask = getattr(blocks[0], "attn_mask", None) if len(blocks) else None
        dtype = (
            model.dtype
            if isinstance(getattr(model, "dtype", None), torch.dtype)
            else model.token_embedding.weight.dtype
        )
        return cls(
            kind="openai_clip",
            module=model,
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            ln_final=model.ln_final,
            text_projection=model.text_projection,
            attn_mask=mask,
            pool_type="argmax",
            eos_id=None,
            cast_dtype=dtype,
        )

    # -- facts --------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter of the text tower's modules (for freezing and checks)."""
        modules: list[Any] = [self.token_embedding, self.transformer, self.ln_final, self.text_projection]
        params: list[nn.Parameter] = []
        for m in modules:
            if isinstance(m, nn.Module):
                params.extend(m.parameters())
            elif isinstance(m, nn.Parameter):
                params.append(m)
        if isinstance(self.positional_embedding, nn.Parameter):
            params.append(self.positional_embedding)
        return params

    def default_tokenizer(self) -> Tokenizer:
        """open_clip's tokenizer at this model's context length (OpenAI-clip models need ``clip.tokenize``)."""
        if self.kind == "openai_clip":
            raise UnsupportedModelError(
                "an OpenAI-clip model needs its own tokenizer: pass tokenizer=clip.tokenize"
            )
        import open_clip

        context_length = self.context_length

        def tokenize(texts: list[str], context_length: int = context_length) -> torch.Tensor:
            return open_clip.tokenize(texts, context_length=context_length)

        return tokenize

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """:math:`(B,)` the position each tokenized prompt is pooled at."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            if self.eos_id is None:
                raise UnsupportedModelError("the text tower pools at 'eos' but names no eos id")
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        if self.pool_type == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        raise UnsupportedModelError(f"text pool type {self.pool_type!r} is not supported")

    @property
    def can_truncate(self) -> bool:
        """Whether outputs depend only on the tokens up to the pooled one (not for ``"last"``)."""
        return self.pool_type != "last"

    # -- the encoder --------------------------------------------------------------------

    @torch.no_grad()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings :math:`(B, L, W)` in the tower's compute dtype, as ``encode_text`` makes them."""
        return self.token_embedding(ids.to(self.device)).to(self.cast_dtype)

    def encode_embeddings(
        self,
        x: torch.Tensor,
        pool_index: torch.Tensor,
        deep: Sequence[torch.Tensor] | None = None,
        deep_start: int = 1,
    ) -> torch.Tensor:
        """``encode_text`` from token embeddings, optionally with deep prompts.

        Args:
            x: :math:`(B, L', W)` token embeddings in the compute dtype, :math:`L' \\le L`.
            pool_index: :math:`(B,)` the position to pool each sequence at (< L').
            deep: deep prompts (IVLP, MaPLe): ``deep[j - 1]``, :math:`(n, W)` or
                :math:`(B, n, W)`, replaces the hidden states at positions
                ``deep_start .. deep_start + n - 1`` before block ``j`` (j = 1 .. len(deep));
                ``None`` or empty: the plain encoder.
            deep_start: the first position the deep prompts replace (1: after the start token).

        Returns:
            :math:`(B, D)` text features, not normalised.
        """
        length = x.shape[1]
        x = x + self.positional_embedding[:length].to(self.cast_dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        deep = list(deep or [])
        if self.kind == "openai_clip":
            x = self._openai_blocks(x.permute(1, 0, 2), mask, deep, deep_start).permute(1, 0, 2)
            x = self.ln_final(x).type(self.cast_dtype)
        else:
            batch_first = getattr(self.transformer, "batch_first", False)
            if not deep:
                if hasattr(self.transformer, "batch_first"):  # open_clip >= 2.25 takes (B, L, W)
                    x = self.transformer(x, attn_mask=mask)
                else:  # older open_clip runs sequence-first
                    x = self.transformer(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
            else:
                for j, blk in enumerate(self.transformer.resblocks):
                    if 1 <= j <= len(deep):
                        x = replace_tokens(x, deep[j - 1].to(x.dtype), deep_start)
                    x = (
                        blk(x, attn_mask=mask)
                        if batch_first
                        else blk(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
                    )
            x = self.ln_final(x)
        return self._pool_and_project(x, pool_index)

    def _pool_and_project(self, x: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
        """The final states ``x`` (B, L, W) at ``pool_index``, through the text projection."""
        pooled = x[torch.arange(x.shape[0], device=x.device), pool_index]
        proj = self.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Module):
            return proj(pooled)
        return pooled @ proj

    # -- a shared prompt start, computed once ------------------------------------------------

    @property
    def can_share_prefix(self) -> bool:
        """Whether :meth:`encode_shared_prefix` can run this tower: a causal mask, and blocks
        of the plain pre-norm form ``x + ls_1(attn(ln_1(x)))``, ``x + ls_2(mlp(ln_2(x)))``
        with a standard ``nn.MultiheadAttention`` (open_clip's and OpenAI-clip's blocks)."""
        if self.attn_mask is None or not self.can_truncate:
            return False
        return all(_plain_block(blk) for blk in self.transformer.resblocks)

    def encode_shared_prefix(
        self,
        prefix: torch.Tensor,
        rest: torch.Tensor,
        pool_index: torch.Tensor,
        deep: Sequence[torch.Tensor] | None = None,
        deep_start: int = 1,
    ) -> torch.Tensor:
        """``encode_text`` of sequences that start with a shared ``prefix``, computing each
        prefix's activations once.

        Under causal attention the first P positions of every sequence see only the prefix,
        so their activations are the same in every sequence at every layer: they are
        computed once per prefix, and the rest of each sequence attends to their keys and
        values. The result equals :meth:`encode_embeddings` of ``cat(prefix, rest)`` to
        float round-off (:attr:`can_share_prefix` must hold; forward hooks on the blocks
        do not run).

        Args:
            prefix: :math:`(P, W)` token embeddings of the start all B sequences share, or
                :math:`(G, P, W)`: G prefixes, each shared by B / G consecutive sequences
                (a CoCoOp learner's: one prefix per image, shared by its classes).
            rest: :math:`(B, S, W)` token embeddings of what follows the prefix in each sequence.
            pool_index: :math:`(B,)` the position to pool at, counted within ``rest``.
            deep, deep_start: deep prompts, as for :meth:`encode_embeddings`; they replace
                positions of the prefix (``deep_start + n <= P``), so they are computed once
                per prefix too.

        Returns:
            :math:`(B, D)` text features, not normalised.
        """
        if prefix.ndim == 2:
            prefix = prefix[None]
        groups, p, s = prefix.shape[0], prefix.shape[1], rest.shape[1]
        if rest.shape[0] % groups:
            raise ValueError(f"rest: {rest.shape[0]} sequences do not split into {groups} prefix groups")
        pos = self.positional_embedding[: p + s].to(self.cast_dtype)
        x_p = prefix + pos[:p]
        x_s = rest + pos[p:]
        mask = self.attn_mask[: p + s, : p + s].to(device=rest.device, dtype=rest.dtype)
        deep = list(deep or [])
        if deep and deep_start + deep[0].shape[-2] > p:
            raise ValueError(f"deep: prompts at positions {deep_start}.. do not fit a prefix of {p} tokens")
        for j, blk in enumerate(self.transformer.resblocks):
            if 1 <= j <= len(deep):
                x_p = replace_tokens(x_p, deep[j - 1].to(x_p.dtype), deep_start)
            x_p, x_s = _shared_prefix_block(blk, x_p, x_s, mask)
        x = self.ln_final(x_s)
        if self.kind == "openai_clip":
            x = x.type(self.cast_dtype)
        return self._pool_and_project(x, pool_index)

    @property
    def output_dim(self) -> int:
        """D, the dimension of the text features (the joint image-text embedding)."""
        proj = self.text_projection
        if proj is None:
            return self.width
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        out = getattr(proj, "out_features", None)
        if isinstance(out, int):
            return out
        raise UnsupportedModelError(
            f"cannot tell the output dimension of text projection {type(proj).__name__}"
        )

    def _openai_blocks(
        self, x: torch.Tensor, mask: torch.Tensor | None, deep: list[torch.Tensor], deep_start: int
    ) -> torch.Tensor:
        # OpenAI-clip blocks keep a fixed (L, L) mask inside; run them with the cut one.
        if mask is not None:
            mask = mask.to(dtype=x.dtype, device=x.device)
        for j, blk in enumerate(self.transformer.resblocks):
            if 1 <= j <= len(deep):  # sequence-first here
                x = replace_tokens(x.transpose(0, 1), deep[j - 1].to(x.dtype), deep_start).transpose(0, 1)
            h = blk.ln_1(x)
            x = x + blk.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + blk.mlp(blk.ln_2(x))
        return x


def unexpected_block_parts(blocks: nn.Module) -> list[str]:
    """``"block j: name"`` for every parameter a block holds itself rather than in its
    submodules: open_clip's and OpenAI-clip's blocks hold none, a block patched for deep
    prompting holds its learned prompt tokens there (PromptSRC's and MaPLe's code do)."""
    return [f"block {j}: {n}" for j, blk in enumerate(blocks) for n, _ in blk.named_parameters(recurse=False)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def tolerance(dtype: torch.dtype) -> float:
    """How far a re-run of a tower may be from the model's own (float round-off, by dtype)."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def check_text_tower(
    model: nn.Module, tower: TextTower, ids: torch.Tensor, embeddings: torch.Tensor, pool_index: torch.Tensor
) -> None:
    """Refuse a text tower that fdbpl does not reproduce: its blocks hold parts fdbpl does not
    know (a tower patched for deep prompts), or :meth:`TextTower.encode_embeddings` of the
    prompts ``ids`` (their ``embeddings``) differs from the model's own ``encode_text``.

    Raises:
        UnsupportedModelError: naming what differs.
    """
    check_reproduced(
        "text",
        tower.transformer.resblocks,
        lambda: model.encode_text(ids),
        lambda: tower.encode_embeddings(embeddings, pool_index),
        tower.cast_dtype,
        "encode_text",
        "its own prompts",
    )


def check_reproduced(
    name: str,
    blocks: nn.Module,
    theirs: Callable[[], torch.Tensor],
    ours: Callable[[], torch.Tensor],
    dtype: torch.dtype,
    call: str,
    inputs: str,
) -> None:
    """Refuse a tower (``name``: "text" or "image") whose ``blocks`` hold parts fdbpl does not
    run, or whose model output ``theirs()`` fdbpl's re-run ``ours()`` does not reproduce to
    :func:`tolerance`; ``call`` names the model's method and ``inputs`` what it was given.

    Raises:
        UnsupportedModelError: naming what differs.
    """
    unknown = unexpected_block_parts(blocks)
    if unknown:
        raise UnsupportedModelError(
            f"the {name} tower's blocks hold parts fdbpl does not run ("
            + ", ".join(unknown[:6])
            + "): a tower already modified (e.g. patched for deep prompts) cannot be reproduced; "
            "pass the unmodified CLIP model"
        )
    with torch.no_grad():
        try:
            want = theirs()
        except Exception as error:  # a patched tower may not even run on plain inputs
            raise UnsupportedModelError(f"the model's {call} fails on {inputs}: {error}") from error
        got = ours()
    error = relative_error(got, want)
    if not error <= tolerance(dtype):
        raise UnsupportedModelError(
            f"the {name} tower is not reproduced (relative error {error:.1e} against the model's {call}): "
            "its blocks or pooling work in a way fdbpl does not know"
        )


def replace_tokens(x: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """``x`` (B, L, W) with positions ``start .. start + n - 1`` replaced by ``tokens``
    ((n, W), or (B, n, W) per sequence); a new tensor (autograd sees the replacement)."""
    tokens = tokens.expand(x.shape[0], *tokens.shape[-2:])
    return torch.cat([x[:, :start], tokens, x[:, start + tokens.shape[1] :]], dim=1)


def _plain_block(blk: nn.Module) -> bool:
    """A pre-norm residual block with a standard multi-head self-attention and nothing else."""
    attn = getattr(blk, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and all(isinstance(getattr(blk, n, None), nn.Module) for n in ("ln_1", "ln_2", "mlp"))
        and not any(hasattr(blk, n) for n in ("ln_1_kv", "ln_attn", "ln_inner", "attn_mask_fn"))
        and {name for name, _ in blk.named_children()} <= {"ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"}
    )


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, L, W) -> (B, h, L, W / h)."""
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def _per_sequence(t: torch.Tensor, b: int) -> torch.Tensor:
    """(G, ...) per prefix -> (B, ...) per sequence, each prefix's row repeated B / G times."""
    g = t.shape[0]
    return t[:, None].expand(g, b // g, *t.shape[1:]).flatten(0, 1)


def _shared_prefix_block(
    blk: nn.Module, x_p: torch.Tensor, x_s: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block over G shared prefixes ``x_p`` (G, P, W) and the rest ``x_s`` (B, S, W),
    sequences ``[k B/G, (k+1) B/G)`` continuing prefix k."""
    attn: nn.MultiheadAttention = blk.attn
    h, p, b = attn.num_heads, x_p.shape[1], x_s.shape[0]
    q_p, k_p, v_p = (
        _heads(t, h) for t in F.linear(blk.ln_1(x_p), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    )
    q_s, k_s, v_s = (
        _heads(t, h) for t in F.linear(blk.ln_1(x_s), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    )
    out_p = F.scaled_dot_product_attention(q_p, k_p, v_p, attn_mask=mask[:p, :p])
    keys = torch.cat([_per_sequence(k_p, b), k_s], dim=2)
    values = torch.cat([_per_sequence(v_p, b), v_s], dim=2)
    out_s = F.scaled_dot_product_attention(q_s, keys, values, attn_mask=mask[p:, :])
    ls_1 = getattr(blk, "ls_1", nn.Identity())
    ls_2 = getattr(blk, "ls_2", nn.Identity())
    x_p = x_p + ls_1(attn.out_proj(out_p.transpose(1, 2).flatten(2)))
    x_s = x_s + ls_1(attn.out_proj(out_s.transpose(1, 2).flatten(2)))
    x_p = x_p + ls_2(blk.mlp(blk.ln_2(x_p)))
    x_s = x_s + ls_2(blk.mlp(blk.ln_2(x_s)))
    return x_p, x_s
