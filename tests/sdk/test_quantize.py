"""Tests of eoembed._quantize against expectations computed independently (float64, by hand)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eoembed._errors import QuantizationError
from eoembed._quantize import (
    NODATA_CODE,
    Quantization,
    dequantize,
    dequantize_pixels,
    fit,
    nodata_pixels,
    quantize,
    quantize_pixels,
)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


V = _unit(500, 64)


# ---------------------------------------------------------------- round trips per form


def test_none_float32_is_exact() -> None:
    q = fit(V, method="none")
    assert (q.method, q.dtype, q.dim, q.stored_width()) == ("none", "float32", 64, 64)
    codes, rs = quantize(V, q)
    assert rs is None and codes.dtype == np.float32
    out = dequantize(codes, q)
    assert out.dtype == np.float32 and np.array_equal(out, V)


def test_none_float16_relative_error() -> None:
    v = V * np.float32(300.0)
    q = fit(v, method="none", dtype="float16")
    codes, _ = quantize(v, q)
    assert codes.dtype == np.float16 and codes.shape == v.shape
    out = dequantize(codes, q)
    assert out.dtype == np.float32
    # float16 has an 11-bit significand: relative error <= 2**-11 for normal numbers.
    big = np.abs(v) > 1e-3
    rel = np.abs(out[big].astype(np.float64) - v[big]) / np.abs(v[big])
    assert rel.max() <= 1e-3
    assert rel.max() > 0  # the cast is lossy, so the test actually measures something


def test_float16_out_of_range_names_max() -> None:
    v = V.copy()
    v[3, 5] = 70000.0
    q = fit(V, method="none", dtype="float16")
    with pytest.raises(QuantizationError, match="70000"):
        quantize(v, q)


def test_linear_per_tensor_parameters_and_error() -> None:
    q = fit(V, method="linear")
    expected_scale = np.float32(np.abs(V.astype(np.float64)).max() / 127)
    assert q.dtype == "int8" and q.scale is not None and q.offset is not None
    assert len(q.scale) == 1 and q.offset == (0.0,)
    assert q.scale[0] == pytest.approx(float(expected_scale), rel=1e-6)
    codes, rs = quantize(V, q)
    assert rs is None and codes.dtype == np.int8 and codes.shape == V.shape
    assert codes.min() >= -127 and codes.max() <= 127
    # The extreme value maps to +-127 exactly.
    assert np.abs(codes).max() == 127
    # Independent de-quantisation in float64 from the spec formula.
    s = q.scale[0]
    assert np.allclose(dequantize(codes, q), codes.astype(np.float64) * s, rtol=1e-6, atol=0)
    err = np.abs(dequantize(codes, q).astype(np.float64) - V)
    assert err.max() <= s / 2 * (1 + 1e-5) + 1e-7


def test_linear_per_dimension_parameters_and_error() -> None:
    rng = np.random.default_rng(1)
    v = (rng.standard_normal((400, 16)) * np.geomspace(0.01, 100, 16)).astype(np.float32)
    v[:, 7] = 0.0  # all-zero column gets scale 1.0
    q = fit(v, method="linear", per="dimension")
    assert q.scale is not None and len(q.scale) == 16
    expected = np.abs(v.astype(np.float64)).max(axis=0) / 127
    expected[7] = 1.0
    assert np.allclose(q.scale, expected, rtol=1e-6)
    codes, _ = quantize(v, q)
    assert np.all(codes[:, 7] == 0)
    out = dequantize(codes, q).astype(np.float64)
    err = np.abs(out - v)
    assert np.all(err <= np.asarray(q.scale) / 2 * (1 + 1e-5) + 1e-30)
    # Per-dimension beats per-tensor on columns of very different magnitude.
    qt = fit(v, method="linear")
    ct, _ = quantize(v, qt)
    assert err[:, 0].max() < np.abs(dequantize(ct, qt)[:, 0] - v[:, 0]).max()


def test_linear_offset_is_applied() -> None:
    q = Quantization(method="linear", dtype="int8", dim=3, scale=(0.5,), offset=(1.0, -2.0, 10.0))
    codes = np.array([[0, 1, -127], [127, -1, 2]], dtype=np.int8)
    expected = np.array([[1.0, -1.5, -53.5], [64.5, -2.5, 11.0]], dtype=np.float32)
    assert np.array_equal(dequantize(codes, q), expected)
    back, _ = quantize(expected, q)
    assert np.array_equal(back, codes)


def test_per_row_scale_and_error() -> None:
    v = V * np.geomspace(1e-3, 1e3, len(V), dtype=np.float32)[:, None]
    v[10] = 0.0
    q = fit(v, method="per-row")
    assert q.scale_column == "scale" and q.dtype == "int8"
    codes, rs = quantize(v, q)
    assert rs is not None and rs.dtype == np.float32 and rs.shape == (len(v),)
    expected = np.abs(v.astype(np.float64)).max(axis=1) / 127
    expected[10] = 1.0
    assert np.allclose(rs, expected, rtol=1e-6)
    assert np.all(codes[10] == 0)
    assert np.all(np.abs(codes).max(axis=1)[np.arange(len(v)) != 10] == 127)
    out = dequantize(codes, q, row_scale=rs)
    assert np.allclose(out, codes * rs.astype(np.float64)[:, None], rtol=1e-6, atol=0)
    err = np.abs(out.astype(np.float64) - v)
    assert np.all(err <= rs.astype(np.float64)[:, None] / 2 * (1 + 1e-5))


def test_per_row_needs_row_scale() -> None:
    q = fit(V, method="per-row")
    codes, rs = quantize(V, q)
    with pytest.raises(QuantizationError, match="row_scale"):
        dequantize(codes, q)
    with pytest.raises(QuantizationError, match="row_scale"):
        dequantize(codes, q, row_scale=rs[:-1])


def test_sqrt_known_codes() -> None:
    q = fit(np.zeros((1, 4), np.float32), method="sqrt")
    codes = np.array([[-128, -127, 0, 127], [1, -1, 64, -64]], dtype=np.int8)
    out = dequantize(codes, q)
    assert np.isnan(out[0, 0])  # nodata
    expected = [-(127 / 127.5) ** 2, 0.0, (127 / 127.5) ** 2, (1 / 127.5) ** 2, -((1 / 127.5) ** 2)]
    assert np.allclose(np.r_[out[0, 1:], out[1, :2]], expected, rtol=1e-6, atol=0)
    assert out[1, 2] == pytest.approx((64 / 127.5) ** 2, rel=1e-6)
    assert out[1, 3] == pytest.approx(-((64 / 127.5) ** 2), rel=1e-6)


def test_sqrt_round_trip_within_step() -> None:
    v = np.concatenate([V, np.linspace(-1, 1, 64, dtype=np.float32)[None, :]])
    q = fit(v, method="sqrt")
    codes, _ = quantize(v, q)
    v64 = v.astype(np.float64)
    x = np.sign(v64) * np.sqrt(np.abs(v64)) * 127.5
    expected_codes = np.clip(np.rint(x), -127, 127)
    # float32 arithmetic may round the other way only within a hair of a .5 tie (42.50000016 here).
    near_tie = np.abs(np.abs(x) % 1 - 0.5) < 1e-5
    diff = np.abs(codes.astype(np.int64) - expected_codes)
    assert np.all(diff[~near_tie] == 0) and np.all(diff <= 1)
    out = dequantize(codes, q).astype(np.float64)
    assert np.all(np.sign(out) == np.sign(codes))
    # |sqrt|v|*127.5 - |q|| <= 0.5, so |v - v'| <= ((s + 0.5)^2 - s^2) / 127.5^2 with s = sqrt|v|*127.5.
    s = np.sqrt(np.abs(v64)) * 127.5
    assert np.all(np.abs(out - v64) <= (s + 0.25) / 127.5**2 + 1e-7)


def test_sqrt_clips_beyond_one() -> None:
    q = fit(V, method="sqrt")
    codes, _ = quantize(np.full((1, 64), 4.0, np.float32), q)
    assert np.all(codes == 127)
    codes, _ = quantize(np.full((1, 64), -4.0, np.float32), q)
    assert np.all(codes == -127)  # never -128: that is nodata


def test_binary_signs_and_unit_norm() -> None:
    q = fit(V, method="binary")
    assert (q.dtype, q.stored_width()) == ("uint8", 8)
    codes, _ = quantize(V, q)
    assert codes.dtype == np.uint8 and codes.shape == (len(V), 8)
    # Bits by hand: MSB first within each byte.
    bits = (V > 0).astype(np.int64).reshape(len(V), 8, 8)
    expected = (bits * (1 << np.arange(7, -1, -1))).sum(axis=2)
    assert np.array_equal(codes, expected.astype(np.uint8))
    out = dequantize(codes, q)
    assert out.shape == V.shape
    assert np.array_equal(out > 0, V > 0)
    assert np.allclose(np.abs(out), 1 / math.sqrt(64))
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_binary_known_byte() -> None:
    q = Quantization(method="binary", dtype="uint8", dim=8)
    out = dequantize(np.array([[0b10000001]], dtype=np.uint8), q)
    s = 1 / math.sqrt(8)
    assert np.allclose(out, [[s, -s, -s, -s, -s, -s, -s, s]])


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "q",
    [
        fit(V, method="none"),
        fit(V, method="none", dtype="float16"),
        fit(V, method="linear"),
        fit(V, method="linear", per="dimension"),
        fit(V, method="per-row"),
        fit(V, method="sqrt"),
        fit(V, method="binary"),
    ],
    ids=["f32", "f16", "linear", "linear-dim", "per-row", "sqrt", "binary"],
)
def test_dict_round_trip(q: Quantization) -> None:
    d = json.loads(json.dumps(q.to_dict()))
    assert Quantization.from_dict(d, dim=q.dim) == q
    assert d["method"] == q.method and d["dtype"] == q.dtype and d["original_dtype"] == "float32"
    assert ("scale" in d) == (q.method == "linear") and ("offset" in d) == (q.method == "linear")
    assert ("scale_column" in d) == (q.method == "per-row")


def test_to_dict_exact_shape() -> None:
    q = Quantization(method="linear", dtype="int8", dim=2, scale=[0.25, 2], offset=[0, 1.5])
    assert q.to_dict() == {
        "method": "linear",
        "dtype": "int8",
        "original_dtype": "float32",
        "scale": [0.25, 2.0],
        "offset": [0.0, 1.5],
    }


LINEAR = {"method": "linear", "dtype": "int8", "original_dtype": "float32", "offset": [0.0]}


@pytest.mark.parametrize(
    ("d", "dim", "match"),
    [
        ({**LINEAR, "scale": [0.0]}, 4, "scale"),
        ({**LINEAR, "scale": [-1.0]}, 4, "scale"),
        ({**LINEAR, "scale": [float("nan")]}, 4, "scale"),
        ({**LINEAR, "scale": [float("inf")]}, 4, "scale"),
        ({**LINEAR, "scale": [1e-50]}, 4, "scale"),  # positive, but 0 in float32
        ({**LINEAR, "scale": [1.0, 1.0]}, 4, "2 values"),
        ({**LINEAR, "scale": [1.0], "offset": [0.0, 0.0, 0.0]}, 4, "3 values"),
        ({**LINEAR, "scale": [1.0], "offset": [float("nan")]}, 4, "offset"),
        ({**LINEAR, "scale": ["1"]}, 4, "number"),
        ({"method": "linear", "dtype": "int8", "offset": [0.0]}, 4, "scale"),
        ({"method": "binary", "dtype": "uint8"}, 100, "multiple of 8"),
        ({"method": "cubic", "dtype": "int8"}, 4, "cubic"),
        ({"method": "none", "dtype": "int8"}, 4, "int8"),
        ({"method": "sqrt", "dtype": "uint8"}, 4, "uint8"),
        ({"method": "sqrt", "dtype": "int8", "scale": [1.0]}, 4, "only used"),
        ({"method": "none", "dtype": "float32", "scale_column": "s"}, 4, "only used"),
        ({"method": "none", "dtype": "float32", "colour": "red"}, 4, "colour"),
        ({"method": "none", "dtype": "float32"}, 0, "dim"),
    ],
)
def test_bad_parameters_rejected(d: dict, dim: int, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        Quantization.from_dict(d, dim=dim)


def test_constructor_validates() -> None:
    with pytest.raises(QuantizationError, match="multiple of 8"):
        Quantization(method="binary", dtype="uint8", dim=100)
    with pytest.raises(QuantizationError, match="scale"):
        Quantization(method="linear", dtype="int8", dim=4, scale=(0.0,), offset=(0.0,))
    with pytest.raises(QuantizationError, match="multiple of 8"):
        fit(np.ones((2, 100), np.float32), method="binary")
    with pytest.raises(QuantizationError, match="'dimension'"):
        fit(V, method="sqrt", per="dimension")


def test_nan_input_names_row() -> None:
    v = V.copy()
    v[37, 2] = np.nan
    v[50, 0] = np.inf
    with pytest.raises(QuantizationError, match=r"row 37\b"):
        fit(v, method="linear")
    q = fit(V, method="linear")
    with pytest.raises(QuantizationError, match=r"row 37\b"):
        quantize(v, q)
    w = V.astype(np.float64)
    w[12, 0] = 1e300  # finite in float64 but not in float32
    with pytest.raises(QuantizationError, match=r"row 12\b"):
        quantize(w, fit(V, method="none"))


def test_dimension_and_dtype_mismatch() -> None:
    q = fit(V, method="linear")
    with pytest.raises(QuantizationError, match="dimension 32"):
        quantize(V[:, :32], q)
    codes, _ = quantize(V, q)
    with pytest.raises(QuantizationError, match="uint8"):
        dequantize(codes.view(np.uint8), q)


def test_frozen_parameters_clip_later_batches() -> None:
    sample = np.array([[0.5, -0.25], [-0.5, 0.1]], dtype=np.float32)
    q = fit(sample, method="linear")
    assert q.scale == (float(np.float32(0.5 / 127)),)
    later = np.array([[2.0, -3.0], [0.5, -0.5]], dtype=np.float32)
    codes, _ = quantize(later, q)
    assert codes.tolist() == [[127, -127], [127, -127]]
    assert np.allclose(dequantize(codes, q), [[0.5, -0.5], [0.5, -0.5]], rtol=1e-6)
    # Per-dimension too.
    qd = fit(sample, method="linear", per="dimension")
    codes, _ = quantize(later, qd)
    assert codes.tolist() == [[127, -127], [127, -127]]
    assert np.allclose(dequantize(codes, qd), [[0.5, -0.25], [0.5, -0.25]], rtol=1e-6)


def test_float64_input_records_original_dtype() -> None:
    q = fit(V.astype(np.float64), method="linear")
    assert q.original_dtype == "float64"
    codes, _ = quantize(V.astype(np.float64), q)
    assert np.array_equal(codes, quantize(V, q)[0])


# ---------------------------------------------------------------- properties

ARRAYS = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
    elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
)


@settings(deadline=None, max_examples=50)
@given(v=ARRAYS, per=st.sampled_from(["tensor", "dimension"]))
def test_property_linear_error_bound(v: np.ndarray, per: str) -> None:
    q = fit(v, method="linear", per=per)  # type: ignore[arg-type]
    codes, _ = quantize(v, q)
    assert codes.dtype == np.int8 and codes.min() >= -127
    v64 = v.astype(np.float64)
    maxabs = np.abs(v64).max(axis=0 if per == "dimension" else None)
    scale = np.where(maxabs == 0, 1.0, maxabs / 127)
    assert np.allclose(q.scale, np.atleast_1d(scale), rtol=1e-6, atol=1e-44)
    err = np.abs(dequantize(codes, q).astype(np.float64) - v64)
    assert np.all(err <= np.asarray(q.scale) / 2 * (1 + 1e-5) + 1e-37)


@settings(deadline=None, max_examples=50)
@given(v=ARRAYS)
def test_property_per_row_error_bound(v: np.ndarray) -> None:
    q = fit(v, method="per-row")
    codes, rs = quantize(v, q)
    assert rs is not None
    v64 = v.astype(np.float64)
    maxabs = np.abs(v64).max(axis=1)
    assert np.allclose(rs, np.where(maxabs == 0, 1.0, maxabs / 127), rtol=1e-6, atol=1e-44)
    err = np.abs(dequantize(codes, q, row_scale=rs).astype(np.float64) - v64)
    assert np.all(err <= rs.astype(np.float64)[:, None] / 2 * (1 + 1e-5) + 1e-37)


@pytest.mark.parametrize("method, dtype", [("none", "float32"), ("none", "float16"), ("linear", None), ("per-row", None),
                                           ("sqrt", None), ("binary", None)])
def test_codes_written_into_a_given_array_are_the_returned_codes(method, dtype) -> None:
    v = np.random.default_rng(5).normal(size=(40, 24)).astype(np.float32)
    q = fit(v, method=method, **({"dtype": dtype} if dtype else {}))
    codes, scale = quantize(v, q)
    out = np.full(codes.shape, 7, dtype=codes.dtype)
    got, got_scale = quantize(v, q, out=out, finite=True)
    assert got is out
    np.testing.assert_array_equal(out, codes)
    np.testing.assert_array_equal(got_scale, scale)
    # In place: the vectors may be the output array itself (stored float32).
    if q.dtype == "float32":
        same = v.copy()
        assert quantize(same, q, out=same)[0] is same
        np.testing.assert_array_equal(same, v)
    # Working in the input instead of a copy gives the same codes.
    scratch = v.copy()
    worked, worked_scale = quantize(scratch, q, out=np.empty_like(codes), overwrite_input=True)
    np.testing.assert_array_equal(worked, codes)
    np.testing.assert_array_equal(worked_scale, scale)
    assert np.array_equal(scratch, v) == (method in ("none", "binary", "sqrt"))  # the int8 forms worked in it


# ---------------------------------------------------------------- pixel arrays (y, x, dim)

PIXELS = _unit(6 * 7, 16, seed=3).reshape(6, 7, 16)
PIXEL_FORMS = [("none", "float32", 0.0), ("none", "float16", 1e-3), ("linear", "int8", 0.5 / 127 * 1.0001),
               ("per-row", "int8", 0.5 / 127 * 1.0001), ("sqrt", "int8", 0.0)]


def _with_holes(array: np.ndarray) -> np.ndarray:
    holed = array.copy()
    holed[0, 0] = np.nan
    holed[5, 3] = np.nan
    return holed


@pytest.mark.parametrize(("method", "dtype", "tolerance"), PIXEL_FORMS)
def test_pixel_round_trip_keeps_values_and_nodata(method: str, dtype: str, tolerance: float) -> None:
    array = _with_holes(PIXELS)
    q = fit(PIXELS[1:].reshape(-1, 16), method=method, dtype=dtype)
    codes, scale = quantize_pixels(array, q)
    assert codes.shape == (6, 7, 16) and codes.dtype == np.dtype(dtype)
    assert (scale is not None) == (method == "per-row")
    holes = np.zeros((6, 7), dtype=bool)
    holes[0, 0] = holes[5, 3] = True
    assert np.array_equal(nodata_pixels(codes, q), holes)
    out = dequantize_pixels(codes, q, scale=scale)
    assert out.shape == (6, 7, 16) and out.dtype == np.float32
    assert np.isnan(out[holes]).all() and np.isfinite(out[~holes]).all()
    if method == "sqrt":
        # v = sign(q) (|q| / 127.5)^2 with q = round(sign(v) sqrt|v| 127.5): error of half a code in sqrt space.
        expected = np.sign(PIXELS) * (np.minimum(np.rint(np.sqrt(np.abs(PIXELS)) * 127.5), 127) / 127.5) ** 2
        assert np.allclose(out[~holes], expected[~holes], atol=1e-6)
    elif method == "per-row":
        # Each pixel's own scale: max |v| / 127, so the error is at most half a step of that pixel.
        step = np.abs(PIXELS).max(axis=2, keepdims=True) / 127
        assert (np.abs(out - PIXELS)[~holes] <= (step * 0.5 * 1.0001).repeat(16, axis=2)[~holes]).all()
        assert np.array_equal(scale[holes], [1.0, 1.0])
    elif method == "linear":
        assert np.abs(out - PIXELS)[~holes].max() <= q.scale[0] * 0.5 * 1.0001
    else:
        assert np.abs(out - PIXELS)[~holes].max() <= tolerance


def test_int8_nodata_pixels_are_all_minus_128() -> None:
    q = fit(PIXELS.reshape(-1, 16), method="linear")
    codes, _ = quantize_pixels(_with_holes(PIXELS), q)
    assert (codes[0, 0] == NODATA_CODE).all() and (codes[5, 3] == NODATA_CODE).all()
    data = ~nodata_pixels(codes, q)
    assert data.sum() == 6 * 7 - 2 and codes[data].min() >= -127  # no quantiser writes the nodata code


def test_partly_nan_pixel_is_refused_by_position() -> None:
    array = PIXELS.copy()
    array[2, 4, 5] = np.nan
    with pytest.raises(QuantizationError, match=r"pixel \(row 2, col 4\)"):
        quantize_pixels(array, fit(PIXELS.reshape(-1, 16), method="sqrt"))


def test_pixel_forms_refuse_binary_and_bad_shapes() -> None:
    with pytest.raises(QuantizationError, match="not a pixel storage form"):
        quantize_pixels(PIXELS, fit(PIXELS.reshape(-1, 16), method="binary"))
    with pytest.raises(QuantizationError, match="3-D"):
        quantize_pixels(PIXELS[0], fit(PIXELS.reshape(-1, 16), method="sqrt"))
    q = fit(PIXELS.reshape(-1, 16), method="per-row")
    codes, scale = quantize_pixels(PIXELS, q)
    with pytest.raises(QuantizationError, match="per-pixel scale"):
        dequantize_pixels(codes, q)
    with pytest.raises(QuantizationError, match="shape"):
        dequantize_pixels(codes, q, scale=scale[:, :3])
