"""Acquisition times from Landsat and Sentinel-2 product ids and Landsat MTL files.

Many distributed scenes carry no TIFFTAG_DATETIME, but their names do:

- Landsat Collection 1/2 product ids, ``LC08_L1TP_016035_20200518_20200526_02_T1``: the fourth
  field is the acquisition date (the fifth is the processing date);
- Landsat pre-collection scene ids, ``LC80200392015216LGN00``: year and day of year;
- Sentinel-2 product names, ``S2A_MSIL1C_20200518T153601_N0209_R068_T17SQV_...``, and tile file
  names, ``T17SQV_20200518T153601_B02.jp2``: the first date-time is the sensing start;
- a Landsat ``*_MTL.txt`` beside the file: ``DATE_ACQUIRED`` and ``SCENE_CENTER_TIME``, which give
  the time of day as well. It is preferred to a date from the name.

A date without a time of day is taken as 00:00 UTC of that day.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

_LANDSAT_COLLECTION = re.compile(r"L[COTEM]0\d_L[0-9A-Z]{3}_\d{6}_(\d{8})_\d{8}_\d{2}_[A-Z0-9]{2}")
_LANDSAT_SCENE = re.compile(r"L[COTEM]\d\d{6}(\d{4})(\d{3})[A-Z]{3}\d{2}")
_SENTINEL2 = re.compile(r"(?:S2[ABCD]_MSI[A-Z0-9]{3}_|(?:^|_)T\d{2}[A-Z]{3}_)(\d{8}T\d{6})")
_MTL_DATE = re.compile(r'^\s*DATE_ACQUIRED\s*=\s*"?(\d{4}-\d{2}-\d{2})"?', re.MULTILINE)
_MTL_TIME = re.compile(r'^\s*SCENE_CENTER_TIME\s*=\s*"?(\d{2}:\d{2}:\d{2})(\.\d+)?Z?"?', re.MULTILINE)


def time_from_name(name: str) -> datetime | None:
    """The acquisition time a Landsat or Sentinel-2 id in ``name`` gives; None when there is none."""
    if found := _LANDSAT_COLLECTION.search(name):
        return datetime.strptime(found.group(1), "%Y%m%d").replace(tzinfo=timezone.utc)
    if found := _SENTINEL2.search(name):
        return datetime.strptime(found.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    if found := _LANDSAT_SCENE.search(name):
        year, day = int(found.group(1)), int(found.group(2))
        return datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=day - 1)
    return None


def time_from_mtl(text: str) -> datetime | None:
    """``DATE_ACQUIRED`` + ``SCENE_CENTER_TIME`` of a Landsat MTL text; None without a date."""
    date = _MTL_DATE.search(text)
    if date is None:
        return None
    clock = _MTL_TIME.search(text)
    when = datetime.strptime(date.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc)
    if clock:
        hours, minutes, seconds = (int(v) for v in clock.group(1).split(":"))
        fraction = float(clock.group(2) or 0)
        when += timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=round(fraction * 1e6) % 1_000_000)
    return when


def _mtl_beside(path: Path) -> Path | None:
    """The MTL file of ``path``: the one sharing its name's prefix, else the only one in its folder."""
    try:
        candidates = sorted(path.parent.glob("*_MTL.txt"))
    except OSError:
        return None
    for mtl in candidates:
        if path.name.upper().startswith(mtl.name[: -len("_MTL.txt")].upper() + "_"):
            return mtl
    return candidates[0] if len(candidates) == 1 else None


def acquisition_time(path: str) -> datetime | None:
    """The acquisition time of a raster file from the MTL beside it or from its name; None if neither says."""
    if "://" in path or path.startswith("/vsi"):
        return time_from_name(Path(path).name)
    mtl = _mtl_beside(Path(path))
    if mtl is not None:
        found = time_from_mtl(mtl.read_text(encoding="utf-8", errors="replace"))
        if found is not None:
            return found
    return time_from_name(Path(path).name)
