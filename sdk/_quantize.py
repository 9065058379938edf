"""Quantisation of embedding vectors: how float32 vectors become stored codes and back.

A product stores its vectors (float32, shape ``(n, D)``) in one of the forms below. The
de-quantisation column is normative (it is the spec); readers in any language must reproduce it.

=========== ============ ============= ==========================================================
method      stored dtype stored width  de-quantised value (float32)
=========== ============ ============= ==========================================================
``none``    float32      D             ``v = q``
``none``    float16      D             ``v = float32(q)``
``linear``  int8         D             ``v = q * scale + offset``; ``scale`` and ``offset`` are
                                       lists of length 1 (per-tensor) or D (per-dimension)
``per-row`` int8         D             ``v = q * s_row``; ``s_row`` is a per-row float32 stored in
                                       the column named by ``scale_column`` (default ``"scale"``)
``sqrt``    int8         D             ``v = sign(q) * (abs(q) / 127.5) ** 2`` (AlphaEarth form);
                                       ``q = -128`` means nodata and gives NaN
``binary``  uint8        D / 8         bit ``b_i = (v_i > 0)`` packed MSB-first (``np.packbits``
                                       order); ``v_i = (2 * b_i - 1) / sqrt(D)`` (unit vectors)
=========== ============ ============= ==========================================================

Quantisers (codes from vectors; the arithmetic is float32 throughout):

* ``linear`` (symmetric): ``scale = max|v| / 127`` over the fitting sample (per tensor, or per
  column with ``per="dimension"``; an all-zero column gets scale 1.0), ``offset = 0``,
  ``q = clip(round((v - offset) / scale), -127, 127)``.
* ``per-row``: ``s_row = max|v_row| / 127`` (1.0 for an all-zero row), ``q = round(v / s_row)``.
* ``sqrt``: ``q = clip(round(sign(v) * sqrt(|v|) * 127.5), -127, 127)``; meant for values in
  [-1, 1] (unit vectors); larger magnitudes clip.
* ``none``/float16: a cast; magnitudes above the float16 maximum (65504) are rejected.
* ``binary``: as in the table.

Fitting (:func:`fit`) is separate from applying (:func:`quantize`) so a streaming writer can fit on
its first batch and apply the frozen parameters to every later batch; values beyond the fitted range
clip. :func:`dequantize` is vectorised (lookup tables for ``sqrt`` and ``binary``).

Pixel products (one vector per pixel, arrays ``(H, W, D)``) use the same forms through
:func:`quantize_pixels` and :func:`dequantize_pixels`, a pixel being a row: the per-row scale is
TESSERA's per-pixel float32 scale, ``sqrt`` AlphaEarth's int8. A pixel without data is all NaN in
float forms and all ``-128`` (:data:`NODATA_CODE`, which no int8 quantiser writes) in int8 forms, with
per-row scale 1.0; it de-quantises to all NaN. A pixel that is partly NaN is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Mapping

import numpy as np

from ._errors import QuantizationError

__all__ = [
    "DEFAULT_DTYPES",
    "METHODS",
    "Method",
    "Quantization",
    "StoredDType",
    "NODATA_CODE",
    "dequantize",
    "dequantize_pixels",
    "fit",
    "nodata_pixels",
    "quantize",
    "quantize_pixels",
]

Method = Literal["none", "linear", "per-row", "sqrt", "binary"]
StoredDType = Literal["float32", "float16", "int8", "uint8"]

METHODS: tuple[str, ...] = ("none", "linear", "per-row", "sqrt", "binary")
# The stored dtypes each method allows; the first is the default chosen by fit().
ALLOWED_DTYPES: dict[str, tuple[str, ...]] = {
    "none": ("float32", "float16"),
    "linear": ("int8",),
    "per-row": ("int8",),
    "sqrt": ("int8",),
    "binary": ("uint8",),
}
DEFAULT_DTYPES: dict[str, str] = {method: dtypes[0] for method, dtypes in ALLOWED_DTYPES.items()}
DEFAULT_SCALE_COLUMN = "scale"
INT8_MAX = 127  # symmetric codes: -128 stays free (sqrt uses it for nodata)
NODATA_CODE = -128  # a pixel without data, in every int8 form
SQRT_SCALE = 127.5
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_TINY = np.float32(np.finfo(np.float32).smallest_subnormal)
_DICT_KEYS = frozenset({"method", "dtype", "original_dtype", "scale", "offset", "scale_column"})


def _float_tuple(values: Any, name: str) -> tuple[float, ...]:
    """``values`` as a tuple of Python floats, or QuantizationError."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise QuantizationError(f"{name} must be a list of numbers, got {values!r}")
    out = []
    for i, x in enumerate(list(values)):
        # bool is an int subclass but never a meaningful scale.
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise QuantizationError(f"{name}[{i}] must be a number, got {x!r}")
        out.append(float(x))
    return tuple(out)


@dataclass(frozen=True)
class Quantization:
    """How the stored ``embedding`` column de-quantises to float32 vectors of dimension ``dim``.

    Construction validates (see :meth:`validate`); ``scale``/``offset`` lists are stored as tuples
    so the object stays hashable, a ``linear`` quantisation without ``offset`` gets ``(0.0,)`` and a
    ``per-row`` one without ``scale_column`` gets ``"scale"``.
    """

    method: Method
    dtype: StoredDType
    dim: int
    original_dtype: str = "float32"
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    scale_column: str | None = None
    # float32 copies of scale/offset, shaped to broadcast against (n, D); not part of equality.
    _scale32: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _offset32: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ before validation.
        if self.scale is not None:
            object.__setattr__(self, "scale", _float_tuple(self.scale, "scale"))
        if self.offset is not None:
            object.__setattr__(self, "offset", _float_tuple(self.offset, "offset"))
        if self.method == "linear" and self.offset is None and self.scale is not None:
            object.__setattr__(self, "offset", (0.0,))
        if self.method == "per-row" and self.scale_column is None:
            object.__setattr__(self, "scale_column", DEFAULT_SCALE_COLUMN)
        self.validate()
        if self.method == "linear":
            assert self.scale is not None and self.offset is not None
            object.__setattr__(self, "_scale32", np.asarray(self.scale, dtype=np.float32))
            object.__setattr__(self, "_offset32", np.asarray(self.offset, dtype=np.float32))

    def validate(self) -> None:
        """Raise :class:`QuantizationError` unless the parameters are complete and usable."""
        if self.method not in METHODS:
            raise QuantizationError(f"unknown quantization method {self.method!r}; use one of {list(METHODS)}")
        allowed = ALLOWED_DTYPES[self.method]
        if self.dtype not in allowed:
            raise QuantizationError(
                f"dtype {self.dtype!r} does not fit quantization method {self.method!r}; use {' or '.join(allowed)}"
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim < 1:
            raise QuantizationError(f"dim must be a positive integer, got {self.dim!r}")
        if not isinstance(self.original_dtype, str) or not self.original_dtype:
            raise QuantizationError(f"original_dtype must be a non-empty string, got {self.original_dtype!r}")
        if self.method == "binary" and self.dim % 8:
            raise QuantizationError(
                f"binary quantization needs a dimension that is a multiple of 8, got dim={self.dim}; "
                "use another method or pad the vectors"
            )
        if self.method == "linear":
            if self.scale is None or self.offset is None:
                raise QuantizationError("linear quantization needs both 'scale' and 'offset'; fit() chooses them")
            for name, values in (("scale", self.scale), ("offset", self.offset)):
                if len(values) not in (1, self.dim):
                    raise QuantizationError(
                        f"{name} has {len(values)} values; linear quantization needs 1 (per-tensor) "
                        f"or dim={self.dim} (per-dimension)"
                    )
                # The values are applied in float32: they must be finite there, not just as float64.
                with np.errstate(over="ignore"):
                    as32 = np.asarray(values, dtype=np.float64).astype(np.float32)
                bad = ~np.isfinite(as32)
                if name == "scale":
                    bad |= ~(as32 > 0)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    need = "finite and > 0 in float32" if name == "scale" else "finite in float32"
                    raise QuantizationError(f"{name}[{i}] = {values[i]!r} is invalid: every {name} must be {need}")
        else:
            for name in ("scale", "offset"):
                if getattr(self, name) is not None:
                    raise QuantizationError(f"{name!r} is only used by method 'linear', not {self.method!r}; drop it")
        if self.method == "per-row":
            if not isinstance(self.scale_column, str) or not self.scale_column:
                raise QuantizationError(f"scale_column must be a non-empty column name, got {self.scale_column!r}")
        elif self.scale_column is not None:
            raise QuantizationError(f"'scale_column' is only used by method 'per-row', not {self.method!r}; drop it")

    def stored_width(self) -> int:
        """Number of stored elements per vector: ``dim``, or ``dim // 8`` for binary."""
        return self.dim // 8 if self.method == "binary" else self.dim

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable ``quantization`` object of the footer (``dim`` lives beside it)."""
        out: dict[str, Any] = {"method": self.method, "dtype": self.dtype, "original_dtype": self.original_dtype}
        if self.scale is not None:
            out["scale"] = list(self.scale)
        if self.offset is not None:
            out["offset"] = list(self.offset)
        if self.scale_column is not None:
            out["scale_column"] = self.scale_column
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, dim: int) -> "Quantization":
        """Rebuild from :meth:`to_dict` output (a footer's ``quantization`` object), validating it."""
        if not isinstance(d, Mapping):
            raise QuantizationError(f"quantization must be an object, got {d!r}")
        unknown = sorted(set(d) - _DICT_KEYS)
        if unknown:
            raise QuantizationError(f"unknown quantization field(s) {unknown}; allowed: {sorted(_DICT_KEYS)}")
        for key in ("method", "dtype"):
            if key not in d:
                raise QuantizationError(f"quantization object lacks {key!r}: {dict(d)!r}")
        if d["method"] == "linear" and ("scale" not in d or "offset" not in d):
            raise QuantizationError(f"linear quantization needs both 'scale' and 'offset', got {dict(d)!r}")
        return cls(
            method=d["method"],
            dtype=d["dtype"],
            dim=dim,
            original_dtype=d.get("original_dtype", "float32"),
            scale=d.get("scale"),
            offset=d.get("offset"),
            scale_column=d.get("scale_column"),
        )


def _as_float32(vectors: Any, *, dim: int | None = None, what: str = "vectors", check_finite: bool = True) -> np.ndarray:
    """2-D finite float32 view/copy of ``vectors``; errors name the first bad row."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise QuantizationError(f"{what} must be a 2-D array (n, D), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise QuantizationError(f"{what} must be real numbers, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise QuantizationError(
            f"{what} have dimension {arr.shape[1]} but the quantization is for dim={dim}; fit a new one"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, reported below
        out = arr.astype(np.float32, copy=False)
    if not check_finite:
        return out
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        col = int(np.flatnonzero(~finite[row])[0])
        value = arr[row, col]
        if np.isfinite(value):
            raise QuantizationError(
                f"{what} row {row} holds {value!r}, beyond the float32 range; rescale the vectors"
            )
        raise QuantizationError(
            f"{what} row {row} holds a non-finite value ({value!r} at column {col}); "
            "drop or repair that row before quantizing"
        )
    return out


def _safe_scale(maxabs: np.ndarray) -> np.ndarray:
    """float32 ``maxabs / 127``, kept finite and > 0: 1.0 where maxabs is 0, the smallest float32 on underflow."""
    scale = (maxabs.astype(np.float32) / np.float32(INT8_MAX)).astype(np.float32)
    scale[scale == 0] = _TINY
    scale[maxabs == 0] = 1.0
    return scale


def fit(
    vectors: np.ndarray,
    *,
    method: Method,
    dtype: StoredDType | None = None,
    per: Literal["tensor", "dimension"] = "tensor",
) -> Quantization:
    """Choose quantisation parameters from a sample of vectors (float, shape ``(n, D)``).

    Only ``linear`` has fitted parameters (symmetric: ``scale = max|v| / 127``, ``offset = 0``,
    per tensor or per dimension); for the other methods this checks the input and records the
    dimension. ``dtype`` defaults to float32 for ``none``, int8 for ``linear``/``per-row``/``sqrt``
    and uint8 for ``binary``.
    """
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization method {method!r}; use one of {list(METHODS)}")
    if per not in ("tensor", "dimension"):
        raise QuantizationError(f"per must be 'tensor' or 'dimension', got {per!r}")
    if per != "tensor" and method != "linear":
        raise QuantizationError(f"per={per!r} only applies to method 'linear', not {method!r}")
    arr = np.asarray(vectors)
    original = arr.dtype.name if arr.dtype.kind in "fiu" else "float32"
    v = _as_float32(arr)
    dim = v.shape[1]
    if dtype is None:
        dtype = DEFAULT_DTYPES[method]  # type: ignore[assignment]
    if method != "linear":
        return Quantization(method=method, dtype=dtype, dim=dim, original_dtype=original)  # type: ignore[arg-type]
    if len(v) == 0:
        raise QuantizationError("cannot fit linear quantization on 0 vectors; pass a non-empty sample")
    maxabs = np.abs(v).max(axis=0 if per == "dimension" else None, keepdims=False)
    scale = _safe_scale(np.atleast_1d(maxabs))
    # Python floats of float32 values: exact in JSON, so a reader applies exactly what the writer did.
    return Quantization(
        method="linear",
        dtype=dtype,  # type: ignore[arg-type]
        dim=dim,
        original_dtype=original,
        scale=tuple(float(s) for s in scale),
        offset=(0.0,) * len(scale),
    )


def _round_clip_int8(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """In place: round half to even, clip to [-127, 127], then cast to int8 (into ``out`` if given)."""
    np.rint(x, out=x)
    np.clip(x, -INT8_MAX, INT8_MAX, out=x)
    if out is None:
        return x.astype(np.int8)
    np.copyto(out, x, casting="unsafe")  # whole numbers within int8: the cast astype would make
    return out


def quantize(vectors: np.ndarray, quantization: Quantization, *, finite: bool = False,
             out: np.ndarray | None = None, overwrite_input: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode vectors ``(n, D)`` with frozen parameters.

    Returns ``(codes, row_scale)``: codes of shape ``(n, stored_width)`` in the stored dtype, and
    the float32 per-row scales ``(n,)`` for ``per-row`` (``None`` otherwise). ``finite=True``
    says the caller has already checked that every value is finite (the writer does); ``out``, an
    array of the codes' shape and dtype, receives the codes (``vectors`` may be ``out`` itself);
    ``overwrite_input=True`` lets the int8 forms work in ``vectors`` (float32, no longer needed)
    instead of in a copy.
    """
    codes, row_scale = _encode(vectors, quantization, finite=finite, out=out, overwrite_input=overwrite_input)
    if out is None or codes is out:
        return codes, row_scale
    np.copyto(out, codes, casting="no")
    return out, row_scale


def _encode(vectors: np.ndarray, quantization: Quantization, *, finite: bool, out: np.ndarray | None,
            overwrite_input: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The codes, written into ``out`` where the form allows (every form but binary)."""
    q = quantization
    v = _as_float32(vectors, dim=q.dim, check_finite=not finite)
    work = v if overwrite_input and v is vectors and v.flags.writeable else None  # float32 scratch, or None: copy
    n = len(v)
    if q.method == "none":
        if q.dtype == "float32":
            return np.ascontiguousarray(v), None
        maxabs = float(np.abs(v).max()) if n else 0.0
        if maxabs > FLOAT16_MAX:
            raise QuantizationError(
                f"vectors reach magnitude {maxabs!r}, beyond the float16 maximum {FLOAT16_MAX}; "
                "store float32 or rescale"
            )
        if out is None:
            return v.astype(np.float16), None
        np.copyto(out, v, casting="same_kind")  # the rounding astype makes
        return out, None
    if q.method == "binary":
        return np.packbits(v > 0, axis=1), None
    # over/under: a subnormal scale may push |v / scale| to inf; clipping makes that 127 anyway.
    with np.errstate(over="ignore", under="ignore"):
        if q.method == "linear":
            if np.any(q._offset32):
                work = np.subtract(v, q._offset32, out=work)
            elif work is None:
                work = v.copy()
            work /= q._scale32
            return _round_clip_int8(work, out), None
        if q.method == "per-row":
            row_scale = _safe_scale(np.abs(v).max(axis=1))
            work = np.divide(v, row_scale[:, None], out=work)
            return _round_clip_int8(work, out), row_scale
    # sqrt
    work = np.sqrt(np.abs(v))  # not in v: copysign needs its signs
    work *= np.float32(SQRT_SCALE)
    np.copysign(work, v, out=work)
    return _round_clip_int8(work, out), None


@lru_cache(maxsize=1)
def _sqrt_table() -> np.ndarray:
    # Indexed by the uint8 view of the int8 code (q mod 256) so lookup needs no widening pass;
    # entry u holds the value of q = int8(u): the table of q + 128, rotated by 128.
    q = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64)
    table = np.sign(q) * (np.abs(q) / SQRT_SCALE) ** 2
    table[q == -128] = np.nan  # nodata
    return table.astype(np.float32)


@lru_cache(maxsize=16)
def _binary_table(dim: int) -> np.ndarray:
    # Row b holds the 8 values of byte b, MSB first: one gather decodes 8 dimensions at a time.
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    return ((2.0 * bits - 1.0) / math.sqrt(dim)).astype(np.float32)


def dequantize(
    codes: np.ndarray, quantization: Quantization, *, row_scale: np.ndarray | None = None
) -> np.ndarray:
    """Decode stored codes ``(n, stored_width)`` to float32 vectors ``(n, D)`` (the table above).

    ``row_scale`` (float32, ``(n,)``) is required for ``per-row``. For ``none``/float32 the result
    may share memory with ``codes``.
    """
    q = quantization
    codes = np.asarray(codes)
    width = q.stored_width()
    if codes.ndim != 2 or codes.shape[1] != width:
        raise QuantizationError(
            f"codes have shape {codes.shape} but {q.method}/{q.dtype} with dim={q.dim} stores (n, {width})"
        )
    if codes.dtype != np.dtype(q.dtype):
        raise QuantizationError(f"codes have dtype {codes.dtype} but the quantization stores {q.dtype}")
    n = len(codes)
    if q.method == "none":
        return codes.astype(np.float32, copy=False)
    if q.method == "binary":
        # take(axis=0) copies whole 32-byte rows; measured ~2x faster than table[codes].
        return np.take(_binary_table(q.dim), codes, axis=0).reshape(n, q.dim)
    if q.method == "sqrt":
        # Fancy indexing, not np.take: take with uint8 indices is ~6x slower (it widens per element).
        return _sqrt_table()[codes.view(np.uint8)]
    out = np.empty((n, q.dim), dtype=np.float32)
    if q.method == "linear":
        np.multiply(codes, q._scale32, out=out)  # int8 -> float32 inside the ufunc: no temporary
        if np.any(q._offset32):
            out += q._offset32
        return out
    # per-row
    if row_scale is None:
        raise QuantizationError(f"per-row codes need row_scale, the float32 {q.scale_column!r} column")
    rs = np.asarray(row_scale, dtype=np.float32)
    if rs.shape != (n,):
        raise QuantizationError(f"row_scale has shape {rs.shape} but there are {n} rows of codes; pass one scale per row")
    np.multiply(codes, rs[:, None], out=out)
    return out


# -- pixels: arrays (H, W, D), a pixel being a row ------------------------------------------------


def _pixel_array(array: Any, *, what: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise QuantizationError(f"{what} must be a 3-D array (y, x, dim), got shape {arr.shape}")
    return arr


def quantize_pixels(array: Any, quantization: Quantization) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode a pixel array ``(H, W, D)`` of float vectors; all-NaN pixels are nodata.

    Returns ``(codes, scale)``: codes ``(H, W, stored_width)`` in the stored dtype (nodata pixels
    all :data:`NODATA_CODE` or all NaN), and for ``per-row`` the float32 per-pixel scales ``(H, W)``
    (1.0 at nodata pixels), else ``None``. A pixel with some but not all values NaN, or with an
    infinite value, raises :class:`QuantizationError` naming it.
    """
    q = quantization
    if q.method == "binary":
        raise QuantizationError("binary codes are not a pixel storage form; use float32, float16, linear, per-row or sqrt")
    arr = _pixel_array(array, what="pixel embeddings")
    h, w, d = arr.shape
    if d != q.dim:
        raise QuantizationError(f"pixel embeddings have dimension {d} but the quantization is for dim={q.dim}; fit a new one")
    with np.errstate(over="ignore"):
        rows = arr.reshape(h * w, d).astype(np.float32, copy=False)
    nan = np.isnan(rows)
    nodata = nan.all(axis=1)
    bad = ~np.isfinite(rows).all(axis=1) & ~nodata
    if bad.any():
        y, x = divmod(int(np.flatnonzero(bad)[0]), w)
        raise QuantizationError(
            f"pixel (row {y}, col {x}) holds NaN or infinity in some dimensions only; a pixel without data is NaN "
            "in every dimension: mask the whole pixel or repair it"
        )
    valid = ~nodata
    codes = np.empty((h * w, q.stored_width()), dtype=np.dtype(q.dtype))
    codes[nodata] = np.nan if q.method == "none" else NODATA_CODE
    scale = np.ones(h * w, dtype=np.float32) if q.method == "per-row" else None
    if valid.any():
        got, row_scale = quantize(rows[valid], q, finite=True)
        codes[valid] = got
        if scale is not None:
            scale[valid] = row_scale
    return codes.reshape(h, w, -1), None if scale is None else scale.reshape(h, w)


def nodata_pixels(codes: Any, quantization: Quantization) -> np.ndarray:
    """Boolean ``(H, W)``: the pixels whose stored codes mark them as without data."""
    codes = _pixel_array(codes, what="pixel codes")
    if quantization.method == "none":
        return np.isnan(codes).all(axis=2)
    return (codes == NODATA_CODE).all(axis=2)


def dequantize_pixels(codes: Any, quantization: Quantization, *, scale: Any = None) -> np.ndarray:
    """Decode pixel codes ``(H, W, stored_width)`` to float32 ``(H, W, D)``; nodata pixels become NaN.

    ``scale`` (float32 ``(H, W)``) is required for ``per-row``.
    """
    codes = _pixel_array(codes, what="pixel codes")
    h, w, _ = codes.shape
    if quantization.method == "per-row":
        if scale is None:
            raise QuantizationError(f"per-row pixel codes need their per-pixel scale, the float32 {quantization.scale_column!r} array")
        scale = np.asarray(scale)
        if scale.shape != (h, w):
            raise QuantizationError(f"per-pixel scale has shape {scale.shape} but the codes are {h} x {w} pixels")
        scale = scale.reshape(h * w)
    out = dequantize(codes.reshape(h * w, -1), quantization, row_scale=scale).reshape(h, w, quantization.dim)
    if quantization.method != "none":
        out = np.array(out, copy=True) if not out.flags.writeable else out
        out[nodata_pixels(codes, quantization)] = np.nan
    return out
