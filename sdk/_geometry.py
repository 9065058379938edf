"""Geometry helpers: WKB boxes, coordinate-range checks, bbox structs and spatial (Hilbert) order."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._errors import CoordinateRangeError

# Little-endian WKB polygon with one ring of five points: byte order, type 3, 1 ring, 5 points.
_POLYGON_HEADER = np.frombuffer(
    np.array([1], "u1").tobytes() + np.array([3, 1, 5], "<u4").tobytes(), dtype="u1"
)
_BOX_WKB_SIZE = _POLYGON_HEADER.size + 5 * 2 * 8


def box_wkb(bounds: np.ndarray) -> list[bytes]:
    """WKB polygons (counter-clockwise exterior ring) for an (n, 4) array of xmin, ymin, xmax, ymax."""
    bounds = np.asarray(bounds, dtype="<f8").reshape(-1, 4)
    xmin, ymin, xmax, ymax = bounds.T
    # Counter-clockwise: (xmin,ymin) (xmax,ymin) (xmax,ymax) (xmin,ymax) (xmin,ymin).
    coords = np.stack([xmin, ymin, xmax, ymin, xmax, ymax, xmin, ymax, xmin, ymin], axis=1)
    out = np.empty((len(bounds), _BOX_WKB_SIZE), dtype="u1")
    out[:, : _POLYGON_HEADER.size] = _POLYGON_HEADER
    out[:, _POLYGON_HEADER.size :] = coords.astype("<f8").view("u1").reshape(len(bounds), -1)
    return [row.tobytes() for row in out]


def to_wkb(geometries: Sequence[Any]) -> tuple[list[bytes], np.ndarray, list[str]]:
    """WKB bytes, (n, 4) bounds and the geometry type names of shapely geometries or WKB bytes."""
    import shapely

    items = list(geometries)
    if items and isinstance(items[0], (bytes, bytearray, memoryview)):
        geoms = shapely.from_wkb([bytes(g) for g in items])
    else:
        geoms = np.asarray(items, dtype=object)
    if len(geoms) and shapely.is_missing(geoms).any():
        row = int(np.flatnonzero(shapely.is_missing(geoms))[0])
        raise CoordinateRangeError(f"geometry of row {row} is missing; every chip needs a footprint")
    # Exterior rings counter-clockwise, holes clockwise: what GeoParquet's "orientation" declares.
    geoms = shapely.orient_polygons(geoms, exterior_cw=False)
    wkb = shapely.to_wkb(geoms, byte_order=1, output_dimension=2, flavor="iso")
    return list(wkb), shapely.bounds(geoms), _type_names(geoms)


def wkb_type_words(column) -> np.ndarray:
    """The uint32 type word of every WKB value of a pyarrow binary array, read from the headers
    without parsing the geometries (byte order honoured; values shorter than 5 bytes give 0)."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(column) == 0:
        return np.zeros(0, dtype=np.uint32)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    data = column.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    ok = (offsets[1:] - starts) >= 5
    words = np.zeros(len(column), dtype=np.uint32)
    s = starts[ok]
    b = [data[s + k].astype(np.uint32) for k in range(1, 5)]
    little = data[s] == 1
    words[ok] = np.where(little, b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24, b[3] | b[2] << 8 | b[1] << 16 | b[0] << 24)
    return words


def geometry_types(column) -> list[str]:
    """Sorted GeoParquet geometry type names of ISO WKB values (a pyarrow binary array)."""
    words = np.unique(wkb_type_words(column))
    names = set()
    for word in words.tolist():
        base, dims = word % 1000, word // 1000  # ISO WKB: 1000 Z, 2000 M, 3000 ZM
        name = _WKB_TYPE_NAMES.get(base)
        if name is None:
            continue
        names.add(name + {0: "", 1: " Z", 2: " M", 3: " ZM"}.get(dims, ""))
    return sorted(names)


def _type_names(geoms) -> list[str]:
    import shapely

    return sorted({_TYPE_NAMES[t] for t in np.unique(shapely.get_type_id(geoms)).tolist()})


# Shapely's type ids (LinearRing, 2, counts as a LineString) ...
_TYPE_NAMES = {0: "Point", 1: "LineString", 2: "LineString", 3: "Polygon", 4: "MultiPoint",
               5: "MultiLineString", 6: "MultiPolygon", 7: "GeometryCollection"}
# ... and ISO WKB type codes, which start at 1.
_WKB_TYPE_NAMES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
                   6: "MultiPolygon", 7: "GeometryCollection"}


def check_lonlat(bounds: np.ndarray, *, first_row: int = 0, what: str = "geometry") -> None:
    """Raise :class:`CoordinateRangeError` naming the first row outside OGC:CRS84's range."""
    bounds = np.asarray(bounds, dtype=float)
    lon_bad = ~np.isfinite(bounds[:, [0, 2]]).all(axis=1) | (bounds[:, 0] < -180) | (bounds[:, 2] > 180)
    lat_bad = ~np.isfinite(bounds[:, [1, 3]]).all(axis=1) | (bounds[:, 1] < -90) | (bounds[:, 3] > 90)
    bad = lon_bad | lat_bad
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CoordinateRangeError(
            f"{what} of row {first_row + i} has bounds {bounds[i].tolist()} outside OGC:CRS84 "
            "(longitude -180..180, latitude -90..90); reproject footprints to lon/lat degrees first"
        )


def hilbert_order(bounds: np.ndarray, *, extent: Sequence[float] | None = None, bits: int = 16) -> np.ndarray:
    """Row order along a Hilbert curve through the bbox centres, so nearby chips share row groups."""
    bounds = np.asarray(bounds, dtype=float)
    if len(bounds) == 0:
        return np.zeros(0, dtype=np.int64)
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    x0, y0, x1, y1 = extent if extent is not None else (cx.min(), cy.min(), cx.max(), cy.max())
    side = (1 << bits) - 1
    x = np.clip(((cx - x0) / max(x1 - x0, 1e-12) * side), 0, side).astype(np.uint64)
    y = np.clip(((cy - y0) / max(y1 - y0, 1e-12) * side), 0, side).astype(np.uint64)
    return np.argsort(_hilbert_index(x, y, bits), kind="stable")


def _hilbert_index(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """Distance along the Hilbert curve of integer cell coordinates (vectorised rotate-and-flip)."""
    x = x.copy()
    y = y.copy()
    d = np.zeros_like(x)
    s = np.uint64(1 << (bits - 1))
    while s > 0:
        rx = ((x & s) > 0).astype(np.uint64)
        ry = ((y & s) > 0).astype(np.uint64)
        d += s * s * ((np.uint64(3) * rx) ^ ry)
        # Rotate the quadrant so the curve stays continuous.
        flip = ry == 0
        invert = flip & (rx == 1)
        n = np.uint64((1 << bits) - 1)
        x[invert] = n - x[invert]
        y[invert] = n - y[invert]
        xs = x[flip].copy()
        x[flip] = y[flip]
        y[flip] = xs
        s = np.uint64(int(s) >> 1)
    return d
