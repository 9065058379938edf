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


def bbox_bounds(column) -> np.ndarray:
    """The (n, 4) float64 xmin, ymin, xmax, ymax of a ``bbox`` covering column (a pyarrow struct
    array or chunked array); null values are NaN."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    fields = [column.field(k).to_numpy(zero_copy_only=False) for k in ("xmin", "ymin", "xmax", "ymax")]
    return np.stack(fields, axis=1).astype(np.float64, copy=False)


def box_wkb(bounds: np.ndarray):
    """WKB polygons (counter-clockwise exterior ring) for an (n, 4) array of xmin, ymin, xmax, ymax,
    as a pyarrow binary array built straight from one numpy buffer (no Python object per row)."""
    import pyarrow as pa

    bounds = np.asarray(bounds, dtype="<f8").reshape(-1, 4)
    n = len(bounds)
    if n * _BOX_WKB_SIZE >= 1 << 31:
        raise CoordinateRangeError(
            f"a batch of {n} boxes exceeds the 2 GiB of one binary column; write it in batches of at most "
            f"{((1 << 31) - 1) // _BOX_WKB_SIZE} rows"
        )
    xmin, ymin, xmax, ymax = bounds.T
    out = np.empty((n, _BOX_WKB_SIZE), dtype="u1")
    out[:, : _POLYGON_HEADER.size] = _POLYGON_HEADER
    # Counter-clockwise: (xmin,ymin) (xmax,ymin) (xmax,ymax) (xmin,ymax) (xmin,ymin).
    coords = out[:, _POLYGON_HEADER.size :].view("<f8")
    for k, values in enumerate((xmin, ymin, xmax, ymin, xmax, ymax, xmin, ymax, xmin, ymin)):
        coords[:, k] = values
    offsets = np.arange(0, (n + 1) * _BOX_WKB_SIZE, _BOX_WKB_SIZE, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])


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
    # The 5 header bytes of every value in one gather; the type word is bytes 1..4 in the value's order.
    head = data[starts[ok][:, None] + np.arange(5)]
    word = np.ascontiguousarray(head[:, 1:]).view("<u4").ravel()
    big = head[:, 0] != 1
    if big.any():
        word[big] = word[big].byteswap()
    words[ok] = word
    return words


def geometry_types(column) -> list[str]:
    """Sorted GeoParquet geometry type names of ISO WKB values (a pyarrow binary array), read from
    the distinct 5-byte headers, so the cost is one pass in Arrow, not one per value in Python."""
    import pyarrow.compute as pc

    heads = pc.unique(pc.binary_slice(column, 0, 5)).to_pylist()
    names = set()
    for head in heads:
        if head is None or len(head) < 5:
            continue
        word = int.from_bytes(head[1:5], "little" if head[0] == 1 else "big")
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
    if not 1 <= bits <= 16:
        raise CoordinateRangeError(f"Hilbert order takes 1 to 16 bits a coordinate, got bits={bits}")
    bounds = np.asarray(bounds, dtype=float)
    if len(bounds) == 0:
        return np.zeros(0, dtype=np.int64)
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    x0, y0, x1, y1 = extent if extent is not None else (cx.min(), cy.min(), cx.max(), cy.max())
    side = (1 << bits) - 1
    x = np.clip(((cx - x0) / max(x1 - x0, 1e-12) * side), 0, side).astype(np.uint32)
    y = np.clip(((cy - y0) / max(y1 - y0, 1e-12) * side), 0, side).astype(np.uint32)
    return np.argsort(_hilbert_index(x, y, bits), kind="stable")


def _interleave(v: np.ndarray) -> np.ndarray:
    """Spread the low 16 bits of each value to the even bit positions."""
    v = (v | (v << 8)) & np.uint32(0x00FF00FF)
    v = (v | (v << 4)) & np.uint32(0x0F0F0F0F)
    v = (v | (v << 2)) & np.uint32(0x33333333)
    return (v | (v << 1)) & np.uint32(0x55555555)


def _hilbert_index(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """Distance along the Hilbert curve of integer cell coordinates below ``2**bits`` (bits <= 16).

    The rotate-and-flip of each level is folded into a parallel prefix scan over the bits
    (a fixed few dozen whole-array operations instead of a loop over levels with masked swaps);
    the curve is the classic one, ``d`` of (x, y) as in the level-by-level algorithm.
    """
    mask = np.uint32(0xFFFF)
    x = np.asarray(x, dtype=np.uint32) << np.uint32(16 - bits)
    y = np.asarray(y, dtype=np.uint32) << np.uint32(16 - bits)
    a = x ^ y
    b = mask ^ a
    c = mask ^ (x | y)
    d = x & (y ^ mask)
    big_a = a | (b >> 1)
    big_b = (a >> 1) ^ a
    big_c = ((c >> 1) ^ (b & (d >> 1))) ^ c
    big_d = ((a & (c >> 1)) ^ (d >> 1)) ^ d
    for shift in (2, 4, 8):
        a, b, c, d = big_a, big_b, big_c, big_d
        if shift < 8:
            big_a = (a & (a >> shift)) ^ (b & (b >> shift))
            big_b = (a & (b >> shift)) ^ (b & ((a ^ b) >> shift))
        big_c = big_c ^ ((a & (c >> shift)) ^ (b & (d >> shift)))
        big_d = big_d ^ ((b & (c >> shift)) ^ ((a ^ b) & (d >> shift)))
    a = big_c ^ (big_c >> 1)
    b = big_d ^ (big_d >> 1)
    i0 = x ^ y
    i1 = b | (mask ^ (i0 | a))
    return ((_interleave(i1) << 1) | _interleave(i0)) >> np.uint32(32 - 2 * bits)
