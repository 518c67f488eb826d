"""Tiny random-initialised CLIP models and a toy teacher for the tests: no weights are downloaded."""

from __future__ import annotations

import warnings

import torch

TEXT_CFG = dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2)
VISION_CFG = dict(image_size=32, patch_size=8, width=64, layers=2)
EMBED_DIM = 64


def tiny_open_clip(kind: str = "clip", seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A tiny open_clip model and its tokenizer.

    ``kind``: ``"clip"`` (argmax pooling), ``"eos"`` (``text_pool_type="eos"``),
    ``"custom"`` (``CustomTextCLIP``, text tower under ``.text``) or ``"openai"``
    (an OpenAI-``clip`` model, sequence-first, from clip-anytorch).
    """
    import open_clip

    torch.manual_seed(seed)
    if kind == "clip":
        model = open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG)
    elif kind == "eos":
        model = open_clip.CLIP(
            embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=dict(TEXT_CFG, pool_type="eos", eos_id=49407)
        )
    elif kind == "custom":
        model = open_clip.CustomTextCLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG)
    elif kind == "openai":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # clip-anytorch imports pkg_resources
            import clip
            from clip.model import CLIP as OpenAICLIP
        model = OpenAICLIP(
            embed_dim=EMBED_DIM,
            image_resolution=32,
            vision_layers=2,
            vision_width=64,
            vision_patch_size=8,
            context_length=77,
            vocab_size=49408,
            transformer_width=64,
            transformer_heads=4,
            transformer_layers=2,
        )
        return model.eval(), clip.tokenize
    else:
        raise ValueError(kind)
    return model.eval(), open_clip.tokenize


def toy_teacher(num_classes: int):
    """A deterministic teacher: probabilities from the crops' mean colours (no model needed)."""
    from fdbpl.cache import Teacher

    weight = torch.linspace(-3, 3, 3 * num_classes).view(3, num_classes)

    def probs(crops: torch.Tensor) -> torch.Tensor:
        return torch.softmax(crops.mean(dim=(2, 3)) @ weight, dim=1)

    return Teacher(probs, 16, (0.5,) * 3, (0.5,) * 3, {"name": "toy"})


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move a learner's parameters off their initial values (so nothing is trivially equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module
