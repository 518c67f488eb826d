"""The student's image features of every stored crop, computed once like the teacher's labels.

For CoOp-style prompt learning the student's image encoder is frozen and sees exactly the
stored crops, so its feature of each region never changes: a table can store it (one
float16 vector per region) and training can skip the image encoder. This holds only while
nothing in the image tower is learned: methods that train vision prompts (VPT, IVLP,
MaPLe, PromptSRC) change the image features at every step and cannot use them.

A table records who computed its features: the student's description and the SHA-256
of its image tower's weights (:func:`image_tower_digest`); training with another student
is refused (:meth:`fdbpl.cache.RILTable.check_student`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fdbpl.errors import InputValueError
from fdbpl.images import InputRecipe

__all__ = ["StudentFeatures", "clip_student_features", "image_tower_digest"]


def image_tower_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a CLIP's image tower (``model.visual``): every parameter and buffer's name,
    dtype, shape and bytes, in state-dict order.

    Two models give the same digest exactly when their image towers hold the same weights in
    the same dtype (so the same image features, up to the kernels of the machine).

    Raises:
        InputValueError: the model has no ``visual`` module.
    """
    visual = getattr(model, "visual", None)
    if not isinstance(visual, torch.nn.Module):
        raise InputValueError(
            f"student: {type(model).__name__} has no image tower at .visual (expected an open_clip or "
            "OpenAI-clip model)"
        )
    digest = hashlib.sha256()
    for name, tensor in visual.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class StudentFeatures:
    """The student's image encoder as a build runs it: ``(B, 3, S, S)`` crops -> ``(B, D)``
    L2-normalised features, with the crop recipe it needs and what a table records of it.

    Args:
        fn: crops -> features (normalised here); called under ``torch.no_grad()``.
        recipe: the student's input (:class:`~fdbpl.images.InputRecipe`).
        dim: D, the feature width.
        description: what to record (name, weights, seed, ``image_tower_sha256``, ...).
        device: where crops are sent before calling ``fn``.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        recipe: InputRecipe,
        dim: int,
        description: dict[str, Any],
        device: str | torch.device = "cpu",
    ) -> None:
        self.fn = fn
        self.recipe = recipe
        self.dim = int(dim)
        self.description = dict(description)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        features = self.fn(crops.to(self.device)).float()
        if features.ndim != 2 or features.shape != (len(crops), self.dim):
            raise InputValueError(
                f"student: expected features of shape ({len(crops)}, {self.dim}), got {tuple(features.shape)}"
            )
        return F.normalize(features, dim=-1)

    def manifest_entry(self) -> dict[str, Any]:
        """What the table's manifest records under ``"student"``."""
        return {
            **self.description,
            "feature_dim": self.dim,
            "image_size": self.recipe.size,
            "mean": list(self.recipe.mean),
            "std": list(self.recipe.std),
        }


def clip_student_features(
    model: torch.nn.Module, recipe: InputRecipe, description: dict[str, Any] | None = None
) -> StudentFeatures:
    """A frozen CLIP's ``encode_image`` as the features a table stores for its regions.

    The description gains ``image_tower_sha256`` (:func:`image_tower_digest`), which is
    what training checks its student against.
    """
    device = next(model.parameters()).device
    dtype = next(model.visual.parameters()).dtype if hasattr(model, "visual") else torch.float32
    with torch.no_grad():
        probe = model.encode_image(torch.zeros(1, 3, recipe.size, recipe.size, device=device, dtype=dtype))
    info = {**(description or {}), "image_tower_sha256": image_tower_digest(model)}

    def encode(crops: torch.Tensor) -> torch.Tensor:
        return model.encode_image(crops.to(dtype))

    return StudentFeatures(encode, recipe, probe.shape[-1], info, device)
