"""Deterministic chip ids.

A chip id names *where and when* a chip is, never what a model made of it, so rows of two models for
the same chip join on it. It is the first 16 bytes of SHA-256, in lowercase hex, of the UTF-8 key

    eoembed-chip/1|{grid_id}|{grid_cell}|{col_off}|{row_off}|{chip_size}|{time}|{source_id}

where time is ISO 8601 UTC with seconds (``2020-05-18T00:00:00Z``) or ``start/end`` for a range.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Sequence

import numpy as np


def _iso(value) -> str:
    if value is None:
        return ""
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").astype(datetime).replace(tzinfo=timezone.utc)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def _stamp(time) -> str:
    """The key's time: ISO 8601 UTC to the second, ``start/end`` for a (start, end) pair."""
    return f"{_iso(time[0])}/{_iso(time[1])}" if isinstance(time, tuple) else _iso(time)


def chip_id(*, grid_id: str, grid_cell: str, col_off: int, row_off: int, chip_size: int,
            time, source_id: str) -> str:
    """The chip id of one chip; ``time`` is a datetime, a (start, end) pair, or None."""
    return chip_ids(grid_id=grid_id, grid_cells=[grid_cell], col_offs=[col_off], row_offs=[row_off],
                    chip_size=chip_size, times=[time], source_ids=[source_id])[0]


def chip_ids(*, grid_id: str, grid_cells: Sequence[str], col_offs: Sequence[int], row_offs: Sequence[int],
             chip_size: int, times: Sequence, source_ids: Sequence[str]) -> list[str]:
    """Chip ids for many chips (same rules as :func:`chip_id`). Each distinct time is formatted once:
    the chips of a scene share one."""
    stamps: dict = {}

    def stamp(time) -> str:
        if time not in stamps:
            stamps[time] = _stamp(time)
        return stamps[time]

    sha256, size = hashlib.sha256, int(chip_size)
    return [
        sha256(f"eoembed-chip/1|{grid_id}|{cell}|{int(col)}|{int(row)}|{size}|{stamp(time)}|{source}".encode("utf-8")).hexdigest()[:32]
        for cell, col, row, time, source in zip(grid_cells, np.asarray(col_offs).tolist(), np.asarray(row_offs).tolist(),
                                                times, source_ids)
    ]


def footprint_chip_ids(*, grid_id: str, grid_cells: Sequence[str], bounds: np.ndarray, times: Sequence,
                       source_ids: Sequence[str]) -> list[str]:
    """Chip ids of chips whose source gives no pixel offsets (imported products): the footprint's
    lon/lat bbox, to 1e-7 degrees, stands in for the offsets and the chip size, in the key

        eoembed-chip-footprint/1|{grid_id}|{grid_cell}|{xmin}|{ymin}|{xmax}|{ymax}|{time}|{source_id}
    """
    out = []
    for cell, box, time, source in zip(grid_cells, np.asarray(bounds, dtype=np.float64), times, source_ids):
        stamp = _stamp(time)
        corners = "|".join(f"{v:.7f}" for v in box)
        key = f"eoembed-chip-footprint/1|{grid_id}|{cell}|{corners}|{stamp}|{source}"
        out.append(hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])
    return out
