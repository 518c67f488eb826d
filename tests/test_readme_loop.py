"""The README's training loop, run as it is written, on tiny models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny_models import toy_teacher

from fdbpl.cache import build_table, clip_student_features, scan_image_folder
from fdbpl.demo import TINY_STUDENT
from fdbpl.images import InputRecipe

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_loop() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use it in your own loop") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("stored_features", [False, True])
def test_the_readme_loop_trains_the_prompts(tmp_path, image_root, monkeypatch, stored_features):
    import open_clip

    torch.manual_seed(0)
    clip_model = open_clip.CLIP(**TINY_STUDENT).eval()
    scan = scan_image_folder(image_root)
    (tmp_path / "images").symlink_to(image_root, target_is_directory=True)
    student = clip_student_features(clip_model, InputRecipe.of_model(clip_model)) if stored_features else None
    build_table(
        image_root,
        tmp_path / "table",
        toy_teacher(len(scan.classnames)),
        student=student,
        crops_per_image=4,
        topk=3,
        progress=False,
    )
    monkeypatch.chdir(tmp_path)
    namespace = {"clip_model": clip_model, "classnames": scan.classnames, "epochs": 3}
    exec(compile(readme_loop(), "README.md", "exec"), namespace)
    prompts = namespace["prompts"]
    assert namespace["data"].features is stored_features
    assert namespace["image_features"].shape[-1] == 64
    assert torch.isfinite(namespace["out"].total)
    # the contexts moved away from the init phrases, and only they have gradients
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts.parameters())
    assert all(p.grad is None for p in clip_model.parameters())


def test_input_recipe_of_a_model():
    import open_clip

    recipe = InputRecipe.of_model(open_clip.CLIP(**TINY_STUDENT))
    assert recipe.size == 32 and recipe.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    model = open_clip.CLIP(**TINY_STUDENT)
    model.visual.preprocess_cfg = {"size": (48, 48), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    assert InputRecipe.of_model(model) == InputRecipe(48, (0.5,) * 3, (0.25,) * 3)
    from fdbpl.errors import FDBPLError

    with pytest.raises(FDBPLError, match="names its input size"):
        InputRecipe.of_model(torch.nn.Linear(2, 2))
