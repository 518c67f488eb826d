"""Fixtures shared by the prompt-learner tests."""

from __future__ import annotations

import pytest
from tiny_models import tiny_open_clip


@pytest.fixture(scope="module")
def open_clip_model():
    """A tiny open_clip CLIP and its tokenizer (one per test module)."""
    return tiny_open_clip("clip")
