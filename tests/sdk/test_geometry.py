"""Geometry helpers of the writer: Hilbert order, WKB boxes, geometry types from WKB headers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eoembed._errors import CoordinateRangeError
from eoembed._geometry import _hilbert_index, bbox_bounds, box_wkb, geometry_types, hilbert_order, wkb_type_words


def level_by_level_hilbert(x: int, y: int, bits: int) -> int:
    """The textbook xy -> d conversion, one level (rotate and flip) at a time."""
    n = 1 << bits
    d = 0
    s = n >> 1
    while s > 0:
        rx = 1 if x & s else 0
        ry = 1 if y & s else 0
        d += s * s * ((3 * rx) ^ ry)
        if ry == 0:
            if rx == 1:
                x, y = n - 1 - x, n - 1 - y
            x, y = y, x
        s >>= 1
    return d


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 16), data=st.data())
@example(bits=16, data=None)
@example(bits=1, data=None)
def test_hilbert_index_is_the_level_by_level_curve(bits, data):
    side = 1 << bits
    if data is None:  # the corners and the middle of the square
        points = [(0, 0), (side - 1, 0), (0, side - 1), (side - 1, side - 1), (side // 2, side // 2)]
    else:
        coordinate = st.integers(0, side - 1)
        points = data.draw(st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=50))
    x = np.array([p[0] for p in points], dtype=np.uint32)
    y = np.array([p[1] for p in points], dtype=np.uint32)
    got = _hilbert_index(x, y, bits)
    assert got.tolist() == [level_by_level_hilbert(int(a), int(b), bits) for a, b in points]


@pytest.mark.parametrize("bits", [1, 2, 5])
def test_hilbert_index_walks_every_cell_once_by_neighbour_steps(bits):
    side = 1 << bits
    x, y = (a.ravel().astype(np.uint32) for a in np.meshgrid(np.arange(side), np.arange(side)))
    d = _hilbert_index(x, y, bits)
    assert sorted(d.tolist()) == list(range(side * side))
    walk = np.argsort(d)
    steps = np.abs(np.diff(x[walk].astype(int))) + np.abs(np.diff(y[walk].astype(int)))
    assert (steps == 1).all()


def test_hilbert_order_keeps_near_boxes_together_and_refuses_bad_bits():
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 10, (2000, 2))
    bounds = np.hstack([centres, centres + 0.01])
    order = hilbert_order(bounds)
    assert sorted(order.tolist()) == list(range(2000))
    walk = centres[order]
    # Consecutive rows along the curve are far closer than random pairs.
    assert np.linalg.norm(np.diff(walk, axis=0), axis=1).mean() < 0.2 * np.linalg.norm(centres[1:] - centres[:-1], axis=1).mean()
    with pytest.raises(CoordinateRangeError, match="bits=17"):
        hilbert_order(bounds, bits=17)


def test_bbox_bounds_reads_a_covering_column_of_any_chunks_and_float_width():
    box = pa.struct([(k, pa.float32()) for k in ("xmin", "ymin", "xmax", "ymax")])
    first = pa.array([{"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}], box)
    second = pa.array([{"xmin": -1.5, "ymin": None, "xmax": 0.5, "ymax": 2}], box)
    got = bbox_bounds(pa.chunked_array([first, second]))
    assert got.dtype == np.float64 and got.shape == (2, 4)
    np.testing.assert_array_equal(got, [[1, 2, 3, 4], [-1.5, np.nan, 0.5, 2]])
    np.testing.assert_array_equal(bbox_bounds(first), [[1, 2, 3, 4]])


def test_box_wkb_is_the_counter_clockwise_polygon_of_each_box():
    import shapely

    bounds = np.array([[-78.8, 35.6, -78.7, 35.7], [0.0, -1.5, 2.25, 0.0]])
    wkb = box_wkb(bounds)
    assert isinstance(wkb, pa.BinaryArray) and len(wkb) == 2
    geoms = shapely.from_wkb(wkb.to_numpy(zero_copy_only=False))
    for geom, (xmin, ymin, xmax, ymax) in zip(geoms, bounds):
        assert shapely.get_coordinates(geom).tolist() == [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
        assert shapely.is_ccw(geom.exterior)
    assert len(box_wkb(np.zeros((0, 4)))) == 0


def test_geometry_types_read_either_byte_order_and_skip_nulls_and_stubs():
    import shapely

    geoms = [shapely.Point(1, 2), shapely.LineString([(0, 0), (1, 1)]), shapely.Point(1, 2, 3), shapely.box(0, 0, 1, 1)]
    for order in (0, 1):
        values = list(shapely.to_wkb(geoms, flavor="iso", byte_order=order)) + [None, b"\x01\x03"]
        column = pa.array(values, pa.binary())
        assert geometry_types(column) == ["LineString", "Point", "Point Z", "Polygon"]
        assert geometry_types(pa.chunked_array([column.slice(0, 2), column.slice(2)])) == geometry_types(column)
        assert wkb_type_words(column).tolist() == [1, 2, 1001, 3, 0, 0]
    assert geometry_types(pa.array([], pa.binary())) == []
