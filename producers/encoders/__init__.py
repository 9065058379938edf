"""Encoders turn chips into vectors; the registry finds them by name.

One module per encoder (``stats``, ``rcf``, ``presto``, ``galileo``, ``usermodel`` for users' own models,
``checkpoint`` for compressors trained by ``eoembed train``); the base class in :mod:`.base`, the
band-alias table in :mod:`.bands` and the registry in :mod:`.registry`, apart from what registers in them.
Adding a built-in encoder is adding a module here and its import line below; other packages add
theirs through the ``eoembed.encoders`` entry-point group (see :mod:`.registry`).
"""

from __future__ import annotations

from .base import Encoder, select_device
from .registry import ENTRY_POINT_GROUP, get_encoder, list_encoders, register_encoder

__all__ = ["ENTRY_POINT_GROUP", "Encoder", "get_encoder", "list_encoders", "register_encoder", "select_device"]

from . import galileo, presto, rcf, stats  # noqa: E402,F401  register the built-in encoders
