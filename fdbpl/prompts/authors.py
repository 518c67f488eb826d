"""Start from prompts trained with a base method's own code: its authors' checkpoints.

CoOp, CoCoOp (KaiyangZhou/CoOp), VPT, IVLP, MaPLe (muzairkhattak/multimodal-prompt-learning)
and PromptSRC (muzairkhattak/PromptSRC) save their prompts through Dassl: a file
``model.pth.tar-N`` (or ``model-best.pth.tar``) holding a dict with ``state_dict`` and
``epoch`` (and the optimiser's and scheduler's states). CoOp and CoCoOp register their
prompt learner alone, so its keys are bare (``ctx``, ``meta_net.linear1.weight``); the deep
methods register the whole model, so the prompts sit among the CLIP weights under
``prompt_learner.``, ``image_encoder.`` and ``text_encoder.`` (their vision prompts are
named ``VPT``, at layer 0 ``image_encoder.VPT`` and at layer j
``image_encoder.transformer.resblocks.j.VPT_shallow``).

:func:`load_authors_checkpoint` copies such prompts into a learner's **positive** space (and
the image-side prompts, shared by the spaces); the negative space keeps its own init.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from fdbpl.errors import InputValueError
from fdbpl.prompts.base import PromptLearnerBase

__all__ = ["AUTHORS_METHODS", "load_authors_checkpoint", "read_authors_checkpoint"]

#: The base methods whose checkpoints :func:`load_authors_checkpoint` reads, with the learner
#: methods each fills (PromptSRC's learner is IVLP's: the same keys).
AUTHORS_METHODS: dict[str, tuple[str, ...]] = {
    "coop": ("coop",),
    "cocoop": ("cocoop",),
    "vpt": ("vpt",),
    "ivlp": ("ivlp", "promptsrc"),
    "maple": ("maple",),
    "promptsrc": ("ivlp", "promptsrc"),
}

# Entries of the authors' prompt learners that are not learned: the frozen token embeddings
# around the context (rebuilt from the class names on load, as the authors' load_model does)
# and PromptSRC's frozen copy of the image tower.
_FROZEN_PARTS = ("token_prefix", "token_suffix", "ZS_image_encoder.")


def _dassl_globals() -> contextlib.AbstractContextManager[Any]:
    """Let ``weights_only`` rebuild what Dassl's checkpoints pickle besides tensors: its warm-up
    scheduler keeps torch's own scheduler (and through it the optimiser, with a ``defaultdict``
    state) as an attribute. Only torch's scheduler and optimiser classes, ``dict`` and
    ``defaultdict`` are added; anything else is still refused. (torch < 2.5: nothing added.)"""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return contextlib.nullcontext()
    from torch.optim import Optimizer, lr_scheduler

    classes = [
        c
        for c in vars(lr_scheduler).values()
        if isinstance(c, type) and issubclass(c, lr_scheduler.LRScheduler)
    ]
    classes += [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, Optimizer)]
    return safe_globals([*classes, collections.defaultdict, dict])


def read_authors_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Dassl checkpoint, read without running code from the file.

    The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
    containers, plus torch's own scheduler and optimiser classes (Dassl's warm-up scheduler
    saves its successor, a torch scheduler, in its state). A checkpoint that pickles anything
    else is refused with the command that keeps only its ``state_dict``.

    Returns:
        The checkpoint's tensors by key (a leading ``module.``, from ``DataParallel``, removed).

    Raises:
        InputValueError: a missing or unreadable file, objects other than tensors, or no
            ``state_dict`` in it.
    """
    try:
        with _dassl_globals():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next((line.strip() for line in str(error).splitlines() if "Unpickler error" in line), "")
        raise InputValueError(
            f"checkpoint {os.fspath(path)!r}: cannot be read with weights_only=True: not a torch checkpoint, or "
            "one that holds more than tensors, numbers and strings, and fdbpl runs no code from a file"
            + (f" ({detail})" if detail else "")
            + ". Where you trust it, keep only its prompts: python -c \"import torch; c = torch.load('IN', "
            "weights_only=False); torch.save({'state_dict': c['state_dict'], 'epoch': c.get('epoch')}, 'OUT')\""
        ) from error
    except (OSError, RuntimeError, EOFError) as error:  # missing, a folder, not a torch file, cut short
        raise InputValueError(f"checkpoint {os.fspath(path)!r}: cannot be read ({error})") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputValueError(
            f"checkpoint {os.fspath(path)!r}: expected Dassl's layout (a dict with a 'state_dict' of tensors), "
            f"got {type(checkpoint).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _targets(learner: PromptLearnerBase, method: str) -> dict[str, tuple[str, torch.Tensor]]:
    """Each checkpoint key of ``method``'s layout -> (the learner's name for it, the tensor it fills)."""
    targets: dict[str, tuple[str, torch.Tensor]] = {}

    def add(key: str, name: str, tensor: torch.Tensor) -> None:
        targets[key] = (name, tensor)

    if method in ("coop", "cocoop"):
        add("ctx", "positive_context", learner.positive_context)
    if method == "cocoop":
        nets = learner.meta_net  # type: ignore[attr-defined]
        kind = "shared" if "shared" in nets else "positive"  # per_space: the positive space's net
        for layer, index in (("linear1", 0), ("linear2", 2)):
            for part in ("weight", "bias"):
                add(
                    f"meta_net.{layer}.{part}",
                    f"meta_net.{kind}.{index}.{part}",
                    getattr(nets[kind][index], part),
                )
    if method in ("vpt", "ivlp", "promptsrc"):
        vision = learner.vision_context  # type: ignore[attr-defined]
        add("image_encoder.VPT", "vision_context[0]", vision[0])
        for j in range(1, len(vision)):
            add(f"image_encoder.transformer.resblocks.{j}.VPT_shallow", f"vision_context[{j}]", vision[j])
    if method in ("ivlp", "promptsrc", "maple"):
        add("prompt_learner.ctx", "positive_context", learner.positive_context)
        deep = learner.positive_deep_context  # type: ignore[attr-defined]
        for j in range(1, len(deep) + 1):
            key = (
                f"prompt_learner.compound_prompts_text.{j - 1}"
                if method == "maple"
                else f"text_encoder.transformer.resblocks.{j}.VPT_shallow"
            )
            add(key, f"positive_deep_context[{j - 1}]", deep[j - 1])
    if method == "maple":
        for j, proj in enumerate(learner.vision_projection):  # type: ignore[attr-defined]
            key = "prompt_learner.proj" if j == 0 else f"prompt_learner.compound_prompt_projections.{j - 1}"
            for part in ("weight", "bias"):
                add(f"{key}.{part}", f"vision_projection.{j}.{part}", getattr(proj, part))
    return targets


def _is_prompt_key(key: str) -> bool:
    """Whether a checkpoint entry is something the authors' trainers learn (their prompt
    learner's entries, anything named VPT, CoCoOp's meta-network), not a frozen CLIP weight."""
    learned = key == "ctx" or key.startswith(("meta_net.", "prompt_learner.")) or "VPT" in key
    return learned and not any(part in key for part in _FROZEN_PARTS)


def load_authors_checkpoint(
    learner: PromptLearnerBase, path: str | os.PathLike[str], method: str | None = None
) -> dict[str, str]:
    """Copy the prompts of a checkpoint saved by a base method's own trainer into ``learner``.

    The checkpoint's text context (and deep text tokens, CoCoOp's meta-network, MaPLe's
    projections) fill the **positive** space; its vision prompts fill the image-side prompts
    (shared by the spaces); the negative space keeps its own init. Build the learner as the
    checkpoint's trainer was configured: the same init phrase and ``n_ctx`` / ``text_ctx``,
    ``depth`` and ``vision_ctx`` (CoOp's ``CSC``: ``class_specific=True`` for the same number
    of classes), with the authors' ``vision_prompt_position`` (the default). Every check runs
    before anything is copied: a refused checkpoint leaves the learner as it was.

    Args:
        learner: a learner of a method ``method``'s checkpoints fill (:data:`AUTHORS_METHODS`).
        path: the checkpoint, e.g. ``output/.../MultiModalPromptLearner/model.pth.tar-5``.
        method: the trainer that saved it: ``"coop"``, ``"cocoop"``, ``"vpt"``, ``"ivlp"``,
            ``"maple"`` or ``"promptsrc"``; default the learner's method.

    Returns:
        The checkpoint key each of the learner's tensors was filled from.

    Raises:
        InputValueError: an unknown method or one that does not fill this learner; a checkpoint
            read unsafely only (see :func:`read_authors_checkpoint`); one of another method or
            shape, naming the first mismatched key (a prompt key this layout has no place for,
            a missing key, or another shape).

    Example:
        >>> from fdbpl.prompts import build_learner, load_authors_checkpoint  # doctest: +SKIP
        >>> prompts = build_learner("maple", clip_model, classnames)  # doctest: +SKIP
        >>> load_authors_checkpoint(prompts.learner, "output/base2new/train_base/imagenet/shots_16/MaPLe/"
        ...     "vit_b16_c2_ep5_batch4_2ctx/seed1/MultiModalPromptLearner/model.pth.tar-5")  # doctest: +SKIP
    """
    method = learner.method if method is None else method
    if method not in AUTHORS_METHODS:
        raise InputValueError(f"method: expected one of {list(AUTHORS_METHODS)}, got {method!r}")
    if learner.method not in AUTHORS_METHODS[method]:
        raise InputValueError(
            f"method: a {method} checkpoint fills a {' or '.join(AUTHORS_METHODS[method])} learner; this learner "
            f"is {learner.method!r}"
        )
    if getattr(learner, "vision_prompt_position", "before_ln_pre") != "before_ln_pre":
        raise InputValueError(
            "learner: the authors' vision prompts were trained before the image tower's ln_pre; this learner "
            f"puts them {learner.vision_prompt_position!r} (build it with the default vision_prompt_position)"  # type: ignore[attr-defined]
        )
    state = read_authors_checkpoint(path)
    targets = _targets(learner, method)
    _check_layout(state, targets, method, path)
    with torch.no_grad():
        for key, (_, tensor) in targets.items():
            tensor.copy_(state[key])
    return {name: key for key, (name, _) in targets.items()}


def _check_layout(
    state: Mapping[str, torch.Tensor],
    targets: Mapping[str, tuple[str, torch.Tensor]],
    method: str,
    path: Any,
) -> None:
    """Refuse a checkpoint whose prompt entries are not exactly ``targets``, naming the first mismatch."""
    where = f"checkpoint {os.fspath(path)!r}"
    unexpected = sorted(k for k in state if _is_prompt_key(k) and k not in targets)
    if unexpected:
        raise InputValueError(
            f"{where}: {unexpected[0]!r} has no place in a {method} learner of this shape (another method, or a "
            f"larger depth / class-specific contexts){f'; {len(unexpected) - 1} more such key(s)' if len(unexpected) > 1 else ''}"
        )
    for key, (name, tensor) in targets.items():
        theirs = state.get(key)
        if theirs is None:
            raise InputValueError(
                f"{where}: no {key!r} in it, which a {method} checkpoint for this learner has (its {name}): "
                "another method, or a smaller depth"
            )
        if theirs.shape != tensor.shape or not theirs.is_floating_point():
            raise InputValueError(
                f"{where}: {key!r} is {tuple(theirs.shape)} {theirs.dtype}, this learner's {name} is "
                f"{tuple(tensor.shape)} floating point (another n_ctx, vision_ctx, width or class count)"
            )
