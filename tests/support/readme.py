"""Code blocks of the README, so that what it shows is what the tests run."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example(marker: str) -> str:
    """The first ```python block after `marker` in the README."""
    text = README.read_text()
    after = text.split(marker, 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]
