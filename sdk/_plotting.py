"""Matplotlib for every figure eoembed draws (maps, previews, curves): one import, one backend."""

from __future__ import annotations

from typing import Any

from ._optional import require


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures go to files, never a window)."""
    matplotlib = require("matplotlib", extra="plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
