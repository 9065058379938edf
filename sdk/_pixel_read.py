"""Reading pixel products: windows as xarray DataArrays ``(y, x, dim)``, points as vectors.

:class:`PixelProduct` checks on opening what :class:`~eoembed._read.Product` checks for chips
(version, sections, manifest sizes, each tile's metadata against the Collection; SHA-256 with
``verify``), then reads only the tiles a request touches, only the window it needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _quantize
from ._damage import damaged, read_json
from ._errors import CoordinateRangeError, ModelContractMismatchError, SpecError
from ._optional import require
from ._spec import READABLE_SPEC_VERSIONS, SPEC_VERSION, check_footer
from ._stac import MANIFEST
from ._tiles import TileGeo, read_tile

__all__ = ["PixelProduct"]

_SECTIONS = ("model", "embedding", "grid", "pixel")


@dataclass(frozen=True)
class _TileRef:
    path: Path
    geo: TileGeo
    source_id: str


class PixelProduct:
    """A pixel product on disk (spec Section 12). Opening reads the manifest and each tile's metadata."""

    kind = "pixel"

    def __init__(self, path: str | os.PathLike, *, verify: bool = False) -> None:
        import pyarrow.parquet as pq

        from ._read import _resolve
        from ._write import contract_difference, sha256_file

        from ._store import size_of

        self.path = _resolve(path)  # a local folder, or a UPath whose tiles are read in place
        self.collection: dict[str, Any] = read_json(self.path / "collection.json")
        version = self.collection.get("eoembed:spec_version")
        if version not in READABLE_SPEC_VERSIONS:
            raise SpecError(f"{self.path} was written for eoembed spec {version!r}; this reader implements {SPEC_VERSION} "
                            f"and reads {', '.join(READABLE_SPEC_VERSIONS)}: upgrade eoembed or convert the product")
        self.metadata: dict[str, Any] = {"spec_version": version, "license": self.collection.get("license"),
                                         "provenance": self.collection.get("eoembed:provenance")}
        for section in _SECTIONS:
            if f"eoembed:{section}" not in self.collection:
                raise SpecError(f"{self.path / 'collection.json'} lacks 'eoembed:{section}'")
            self.metadata[section] = self.collection[f"eoembed:{section}"]
        check_footer(self.metadata, where=str(self.path / "collection.json"))
        embedding = self.metadata["embedding"]
        self.quantization = _quantize.Quantization.from_dict(embedding["quantization"], dim=int(embedding["dim"]))
        from ._store import open_input

        manifest = pq.read_table(open_input(self.path / MANIFEST)).to_pylist()
        self.tiles: list[_TileRef] = []
        for index, row in enumerate(manifest):
            from ._paths import inside

            tile_path = inside(self.path, row["path"], where=f"{self.path / MANIFEST} row {index}")
            size = size_of(tile_path)  # one stat, or one HEAD request at a URL
            if size is None:
                raise damaged(tile_path, f"is listed in {MANIFEST} row {index} but missing; the product is incomplete")
            if size != row["bytes"]:
                raise damaged(tile_path, f"has {size} bytes, but {MANIFEST} row {index} says {row['bytes']}")
            if verify and sha256_file(tile_path) != row["sha256"]:
                raise damaged(tile_path, f"has another SHA-256 than {MANIFEST} row {index} says")
            tile = read_tile(tile_path, data=False)
            for section in ("spec_version", "license", *_SECTIONS):
                if tile.metadata.get(section) != self.metadata.get(section):
                    if section == "model":
                        raise ModelContractMismatchError(f"{tile_path} was made by another model than collection.json says "
                                                         f"({contract_difference(self.metadata['model'], tile.metadata.get('model') or {})})")
                    raise SpecError(f"{tile_path}: metadata '{section}' disagrees with collection.json; run `eoembed validate`")
            self.tiles.append(_TileRef(tile_path, tile.geo, str(tile.tile.get("source_id"))))

    # -- facts ------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.quantization.dim

    @property
    def model(self) -> dict[str, Any]:
        return self.metadata["model"]

    @cached_property
    def crs(self) -> str | None:
        """The CRS of every tile (``EPSG:...``), or None when the tiles lie in several."""
        codes = {t.geo.code for t in self.tiles}
        return codes.pop() if len(codes) == 1 else None

    def __repr__(self) -> str:
        q = self.quantization
        return (f"PixelProduct({str(self.path)!r}, tiles={len(self.tiles)}, dim={q.dim}, "
                f"stored={q.dtype}/{q.method}, model={self.model['name']!r} {self.model['version']!r})")

    # -- windows ----------------------------------------------------------------------------------

    def _tiles_of(self, source_id: str | None) -> list[_TileRef]:
        tiles = [t for t in self.tiles if source_id is None or t.source_id == source_id]
        if not tiles:
            raise SpecError(f"{self.path} has no tile of source {source_id!r}; its sources are "
                            f"{sorted({t.source_id for t in self.tiles})}")
        return tiles

    def _grid(self, source_id: str | None = None) -> tuple[str, float, float, float, float]:
        """(crs, a, e, x origin, y origin) of the one pixel grid all tiles (of ``source_id``) lie on, or SpecError."""
        tiles = self._tiles_of(source_id)
        codes = sorted({t.geo.code for t in tiles})
        if len(codes) > 1:
            raise SpecError(f"{self.path}: its tiles lie in several CRSs ({codes}); sample points, or read one "
                            "scene (source_id=)")
        a, _, _, _, e, _ = tiles[0].geo.transform
        x0 = min(t.geo.transform[2] for t in tiles)
        y0 = max(t.geo.transform[5] for t in tiles)
        for t in tiles:
            ta, _, tc, _, te, tf = t.geo.transform
            off = ((tc - x0) / a, (tf - y0) / e)
            if ta != a or te != e or any(abs(o - round(o)) > 1e-6 for o in off):
                raise SpecError(f"{self.path}: tile {t.path.name} is not on the pixel grid of the others; read one "
                                "scene (source_id=)")
        return codes[0], a, e, x0, y0

    def _bbox_in(self, bbox: Sequence[float], crs: Any, source_id: str | None) -> tuple[float, float, float, float]:
        from pyproj import CRS, Transformer

        if len(bbox) != 4 or not np.isfinite(np.asarray(bbox, dtype=float)).all() or bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
            raise CoordinateRangeError(f"bbox must be (xmin, ymin, xmax, ymax) with xmin < xmax and ymin < ymax, got {bbox!r}")
        target = self._grid(source_id)[0]
        source = CRS.from_user_input(crs if crs is not None else target)
        if source == CRS.from_user_input(target):
            return tuple(float(v) for v in bbox)  # type: ignore[return-value]
        return Transformer.from_crs(source, target, always_xy=True).transform_bounds(*bbox, densify_pts=21)

    def _window_of(self, bbox: Sequence[float], crs: Any, source_id: str | None) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) on the product grid covering ``bbox`` (end exclusive)."""
        _, a, e, x0, y0 = self._grid(source_id)
        xmin, ymin, xmax, ymax = self._bbox_in(bbox, crs, source_id)
        col0, col1 = int(np.floor((xmin - x0) / a)), int(np.ceil((xmax - x0) / a))
        row0, row1 = int(np.floor((ymax - y0) / e)), int(np.ceil((ymin - y0) / e))
        return row0, col0, row1, col1

    def to_numpy(self, window: tuple[int, int, int, int] | None = None, *, bbox: Sequence[float] | None = None,
                 crs: Any = None, source_id: str | None = None) -> np.ndarray:
        """De-quantised float32 ``(rows, cols, dim)`` of a window ``(row0, col0, row1, col1)`` of the
        product's pixel grid (its top-left pixel is (0, 0)), or of the pixels covering ``bbox`` (in
        ``crs``, default the tiles' CRS). Pixels without data, or outside every tile, are NaN.
        ``source_id`` restricts the grid and the tiles to one scene's."""
        if (window is None) == (bbox is None):
            raise SpecError("give exactly one of window=(row0, col0, row1, col1) or bbox=(xmin, ymin, xmax, ymax)")
        if window is None:
            window = self._window_of(bbox, crs, source_id)  # type: ignore[arg-type]
        row0, col0, row1, col1 = (int(v) for v in window)
        if row1 <= row0 or col1 <= col0:
            raise SpecError(f"window {window} is empty; give row0 < row1 and col0 < col1")
        _, a, e, x0, y0 = self._grid(source_id)
        out = np.full((row1 - row0, col1 - col0, self.dim), np.nan, dtype=np.float32)
        for t in self._tiles_of(source_id):
            r = int(round((t.geo.transform[5] - y0) / e))
            c = int(round((t.geo.transform[2] - x0) / a))
            rows, cols = t.geo.shape
            top, left = max(row0, r), max(col0, c)
            bottom, right = min(row1, r + rows), min(col1, c + cols)
            if top >= bottom or left >= right:
                continue
            tile = read_tile(t.path, window=(top - r, left - c, bottom - r, right - c))
            out[top - row0:bottom - row0, left - col0:right - col0] = _quantize.dequantize_pixels(
                tile.codes, self.quantization, scale=tile.scale)
        return out

    def read(self, bbox: Sequence[float], *, crs: Any = None, source_id: str | None = None):
        """The pixels covering ``bbox`` (in ``crs``, default the tiles' CRS; ``"OGC:CRS84"`` for
        lon/lat) as an xarray DataArray ``(y, x, dim)`` with pixel-centre coordinates, the CRS as
        ``attrs['crs']`` and a CF ``spatial_ref`` coordinate (rioxarray and GDAL read it).
        ``source_id`` reads one scene of a product whose scenes lie on different grids."""
        xr = require("xarray", extra="zarr")
        from pyproj import CRS

        row0, col0, row1, col1 = self._window_of(bbox, crs, source_id)
        values = self.to_numpy((row0, col0, row1, col1), source_id=source_id)
        code, a, e, x0, y0 = self._grid(source_id)
        transform = (a, 0.0, x0 + col0 * a, 0.0, e, y0 + row0 * e)
        xs = transform[2] + (np.arange(col1 - col0) + 0.5) * a
        ys = transform[5] + (np.arange(row1 - row0) + 0.5) * e
        wkt = CRS.from_user_input(code).to_wkt()
        spatial_ref = xr.DataArray(0, attrs={"crs_wkt": wkt, "spatial_ref": wkt,
                                             "GeoTransform": " ".join(repr(float(v)) for v in (transform[2], a, 0.0, transform[5], 0.0, e))})
        return xr.DataArray(values, dims=("y", "x", "dim"),
                            coords={"y": ys, "x": xs, "dim": np.arange(self.dim), "spatial_ref": spatial_ref},
                            attrs={"crs": code, "transform": list(transform), "grid_mapping": "spatial_ref"},
                            name="embedding")

    # -- similarity -------------------------------------------------------------------------------

    def search(self, query: Any, *, k: int = 10, window: tuple[int, int, int, int] | None = None,
               bbox: Sequence[float] | None = None, crs: Any = None, metric: str = "cosine", source_id: str | None = None):
        """The ``k`` pixels of a window (or of the pixels covering ``bbox``) nearest to ``query`` (a
        vector of ``dim`` numbers, or a ``(lon, lat)`` point: the vector of its pixel), by the chip
        search's exact engine. A pyarrow Table, best first: ``rank``, ``row``, ``col`` (product grid),
        ``x``, ``y`` (pixel centre in the tiles' CRS) and ``distance`` (cosine ``1 - cos``, l2, ip ``-<x, q>``)."""
        import pyarrow as pa

        from ._errors import SearchError
        from ._search import _prepare_queries, exact_scores, to_distance, top_k

        if metric not in ("cosine", "l2", "ip"):
            raise SearchError(f"metric {metric!r} is not one of cosine, l2, ip")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SearchError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape == (2,) and self.dim != 2:
            q = self.sample(q[None])[0]
            if np.isnan(q).any():
                raise SearchError(f"the point {list(np.asarray(query, dtype=float))} lies on no pixel with data")
        if q.shape != (self.dim,) or not np.isfinite(q).all():
            raise SearchError(f"query must be {self.dim} finite numbers or a (lon, lat) point, got shape {q.shape}")
        if window is None and bbox is None:
            raise SearchError("give the pixels to search: window=(row0, col0, row1, col1) or bbox=")
        if window is None:
            window = self._window_of(bbox, crs, source_id)  # type: ignore[arg-type]
        values = self.to_numpy(window, source_id=source_id)
        row0, col0 = int(window[0]), int(window[1])
        flat = values.reshape(-1, self.dim)
        rows = np.flatnonzero(~np.isnan(flat).any(axis=1))
        vectors = np.ascontiguousarray(flat[rows])
        queries = _prepare_queries(q[None], metric)
        scores = exact_scores(vectors, np.linalg.norm(vectors, axis=1), queries, metric)[:, 0]
        best = top_k(scores, k)
        best = best[np.argsort(-scores[best], kind="stable")]
        distance = to_distance(scores[best][:, None], queries, metric)[:, 0]
        r, c = np.divmod(rows[best], values.shape[1])
        _, a, e, x0, y0 = self._grid(source_id)
        return pa.table({"rank": np.arange(1, len(best) + 1, dtype=np.int32), "row": (r + row0).astype(np.int64),
                         "col": (c + col0).astype(np.int64), "x": x0 + (c + col0 + 0.5) * a, "y": y0 + (r + row0 + 0.5) * e,
                         "distance": distance.astype(np.float64)})

    # -- points -----------------------------------------------------------------------------------

    def sample(self, points: Any, *, crs: Any = None) -> np.ndarray:
        """The vector of the pixel under each point: float32 ``(n, dim)``, NaN where a point lies in
        no tile or on a pixel without data. ``points`` is a GeoDataFrame / GeoSeries of points (its
        CRS is used), or ``(n, 2)`` coordinates in ``crs`` (default ``"OGC:CRS84"``: lon, lat)."""
        from pyproj import CRS, Transformer

        xy, source = _points(points, crs)
        out = np.full((len(xy), self.dim), np.nan, dtype=np.float32)
        for code in sorted({t.geo.code for t in self.tiles}):
            target = CRS.from_user_input(code)
            if source == target:
                px, py = xy[:, 0], xy[:, 1]
            else:
                px, py = Transformer.from_crs(source, target, always_xy=True).transform(xy[:, 0], xy[:, 1])
            px, py = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
            for t in (t for t in self.tiles if t.geo.code == code):
                a, _, c, _, e, f = t.geo.transform
                rows, cols = t.geo.shape
                col, row = np.floor((px - c) / a), np.floor((py - f) / e)
                hit = np.flatnonzero((col >= 0) & (col < cols) & (row >= 0) & (row < rows) & np.isnan(out[:, 0]))
                if not len(hit):
                    continue
                r, k = row[hit].astype(int), col[hit].astype(int)
                window = (int(r.min()), int(k.min()), int(r.max()) + 1, int(k.max()) + 1)
                tile = read_tile(t.path, window=window)
                values = _quantize.dequantize_pixels(tile.codes, self.quantization, scale=tile.scale)
                out[hit] = values[r - window[0], k - window[1]]
        return out


def _points(points: Any, crs: Any):
    """(n, 2) float64 coordinates and their pyproj CRS."""
    from pyproj import CRS

    if hasattr(points, "geometry") or type(points).__name__ == "GeoSeries":
        geoms = points.geometry if hasattr(points, "geometry") else points
        if geoms.crs is None and crs is None:
            raise CoordinateRangeError("the points have no CRS; set one (gdf.set_crs) or pass crs=")
        if not (geoms.geom_type == "Point").all():
            raise CoordinateRangeError("sample() takes points; for polygons sample their pixels' centres")
        return np.column_stack([geoms.x.to_numpy(), geoms.y.to_numpy()]).astype(np.float64), CRS.from_user_input(crs or geoms.crs)
    xy = np.asarray(points, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise CoordinateRangeError(f"points must be (n, 2) coordinates or a GeoDataFrame of points, got shape {xy.shape}")
    source = CRS.from_user_input(crs if crs is not None else "OGC:CRS84")
    if source.is_geographic and (np.abs(xy[:, 0]) > 180).any() | (np.abs(xy[:, 1]) > 90).any():
        raise CoordinateRangeError(f"points are not lon/lat degrees (e.g. {xy[0].tolist()}); pass crs= their CRS")
    return xy, source
