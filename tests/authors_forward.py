"""The base methods' forward passes as their authors' code runs them, written plainly for the tests.

Read from multimodal-prompt-learning's and PromptSRC's ``clip/model.py`` (``VisionTransformer.forward``
and the blocks' prompt swap) and their trainers' ``TextEncoder``; independent of fdbpl's towers.
"""

from __future__ import annotations

import torch


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


def authors_image(model, images, tokens):
    """The image tower's forward as the deep methods' authors wrote it (multimodal-prompt-learning's
    and PromptSRC's ``clip/model.py``: ``VisionTransformer.forward`` and the blocks' prompt swap),
    written here as a plain sequence-first loop: patches, class token, positions; layer-0 prompts
    concatenated after them; THEN ``ln_pre`` over the whole sequence; before each block j >= 1
    the last n positions replaced by tokens[j]; ``ln_post`` of the class token, projection."""
    v = model.visual
    x = v.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.positional_embedding
    if tokens:
        x = torch.cat([x, tokens[0].expand(len(x), -1, -1)], dim=1)
    x = v.ln_pre(x).permute(1, 0, 2)  # LND
    openai = not hasattr(v, "_embeds")
    for j, blk in enumerate(v.transformer.resblocks):
        if 1 <= j < len(tokens):
            n = tokens[j].shape[0]
            x = torch.cat([x[: x.shape[0] - n], tokens[j][:, None].expand(-1, x.shape[1], -1)])
        x = blk(x) if openai else blk(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = x.permute(1, 0, 2)
    return v.ln_post(x[:, 0]) @ v.proj


def after_ln_pre_image(model, images, tokens):
    """fdbpl 0.1's order (``vision_prompt_position="after_ln_pre"``): ``ln_pre`` over the class and
    patch tokens alone, the layer-0 prompts appended to its output."""
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


def with_far_ln_pre(model, seed=0):
    """Give ``ln_pre`` a scale and a bias far from 1 and 0 (random-init towers have 1 and 0, under
    which the two prompt orders nearly agree and no test could tell them apart)."""
    g = torch.Generator().manual_seed(seed)
    ln = model.visual.ln_pre
    with torch.no_grad():
        sign = torch.where(torch.rand(ln.weight.shape, generator=g) < 0.5, -1.0, 1.0)
        ln.weight.copy_(sign * (0.3 + 2.0 * torch.rand(ln.weight.shape, generator=g)))
        ln.bias.copy_(torch.randn(ln.bias.shape, generator=g))
    return model
