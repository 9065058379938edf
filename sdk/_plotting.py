"""Matplotlib for every figure eoembed draws (maps, previews, curves): one import, one backend."""

from __future__ import annotations

from typing import Any

from ._errors import MissingDependencyError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures go to files, never a window)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - matplotlib comes with the fewshot and train extras
        raise MissingDependencyError("drawing figures needs matplotlib: pip install 'eoembed[fewshot]'") from error
    return plt
