"""The ``eoembed`` command line: one program, one subcommand per verb.

Exit codes: 0 success (a valid product), 1 an invalid product or a failed job, 2 unreadable input or
bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ._export import FORMATS
FORMAT_HELP = ("table (default), csv (geometry as WKT, structs flattened), json / geojson (GeoJSON geometry), "
               "parquet / geoparquet (GeoParquet 1.1 `geo` metadata; need --out)")


def _validate(args: argparse.Namespace) -> int:
    from ._validate import validate

    report = validate(args.path, max_errors=args.max_errors, check_checksums=not args.no_checksums)
    print(report.to_json() if args.json else report)
    return 0 if report.ok else 1


def _pool(args: argparse.Namespace) -> int:
    from eoembed.producers.pool import pool

    out = pool(args.path, args.out, chip_size=args.chip_size, stride=args.stride, method=args.method,
               min_valid=args.min_valid, quantization=args.quantization, overwrite=args.overwrite)
    from ._read import open_product

    product = open_product(out)
    print(f"pooled {args.path} into {out}: {product.num_rows} chips of {args.chip_size} px ({args.method} of their pixels)")
    return 0


def _pixel_info(product) -> int:
    meta = product.metadata
    summary = {
        "path": str(product.path), "kind": "pixel", "tiles": len(product.tiles),
        "pixels": sum(t.geo.shape[0] * t.geo.shape[1] for t in product.tiles), "crs": product.crs,
        "spec_version": meta["spec_version"],
        "model": {k: meta["model"][k] for k in ("name", "version", "framework", "weights_sha256")},
        "bands": [b["name"] for b in meta["model"]["input"]["bands"]],
        "embedding": {k: v for k, v in meta["embedding"].items() if k != "quantization"},
        "quantization": meta["embedding"]["quantization"], "pixel": meta["pixel"],
        "bbox": product.collection["extent"]["spatial"]["bbox"][0],
        "interval": product.collection["extent"]["temporal"]["interval"][0],
    }
    print(json.dumps(summary, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    from ._damage import reading
    from ._open import open_product

    product = open_product(args.path, verify=args.verify)
    if getattr(product, "kind", "chip") == "pixel":
        return _pixel_info(product)
    meta = product.metadata
    with reading(product.path / "collection.json"):
        summary = {
            "path": str(product.path),
            "rows": product.num_rows,
            "files": len(product.files),
            "spec_version": meta["spec_version"],
            "model": {k: meta["model"][k] for k in ("name", "version", "framework", "weights_sha256")},
            "bands": [b["name"] for b in meta["model"]["input"]["bands"]],
            "embedding": {k: v for k, v in meta["embedding"].items() if k != "quantization"},
            "quantization": meta["embedding"]["quantization"],
            "grid": meta["grid"]["id"],
            "bbox": product.collection["extent"]["spatial"]["bbox"][0],
            "interval": product.collection["extent"]["temporal"]["interval"][0],
        }
    from ._diagnose import similarity_messages

    summary["warnings"] = similarity_messages(product)
    print(json.dumps(summary, indent=2))
    _warn(summary["warnings"])
    return 0


def write_table(table, *, fmt: str, out: str | None) -> None:
    """Print or save a query result in one of the export formats (see eoembed._export)."""
    from ._export import write_result

    write_result(table, fmt=fmt, out=out)


def _param_values(texts: Sequence[str]) -> list:
    """--param values: JSON where they look like JSON (numbers, lists, quoted text, true/false/null), else text."""
    values = []
    for text in texts:
        if text[:1] in "[{0123456789-\"" or text in ("true", "false", "null"):
            try:
                text = json.loads(text)
            except json.JSONDecodeError as error:
                raise SystemExit(f"eoembed: --param {text!r} is not valid JSON ({error}); quote text as '\"...\"'") from None
        values.append(text)
    return values


def _query(args: argparse.Namespace) -> int:
    from ._read import open_product

    params = _param_values(args.param)
    with open_product(args.path) as product:
        for attached in args.attach:
            name, _, path = attached.partition("=")
            if not path:
                raise SystemExit(f"eoembed query: --attach {attached!r} must be NAME=PRODUCT")
            product.attach(name, path)
        table = product.sql(args.sql, params or None)
    write_table(table, fmt="json" if args.json else args.format, out=args.out)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from ._preview import preview

    result = preview(args.path, args.out, bbox=args.bbox, where=args.where, params=_param_values(args.param) or None,
                     pca=args.pca, title=args.title, dpi=args.dpi)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        shares = ", ".join(f"{100 * v:.1f} %" for v in result.explained_variance[0])
        print(f"wrote {result.path}: {result.rows} chips, {result.canvas.shape[1]}x{result.canvas.shape[0]} px in "
              f"{result.crs}; PC1-3 explain {shares}" + (" (first group)" if len(result.explained_variance) > 1 else ""))
    return 0


def _completion(args: argparse.Namespace) -> int:
    from ._completion import bash_completion

    print(bash_completion(build_parser()))
    return 0


def _warn(messages: Sequence[str]) -> None:
    for message in messages:
        print(f"eoembed: warning: {message}", file=sys.stderr)


def _grids(args: argparse.Namespace) -> int:
    from ._grid import get_grid, list_grids

    for grid_id in list_grids():
        print(json.dumps(get_grid(grid_id).definition()))
    return 0


def _encoders(args: argparse.Namespace) -> int:
    from eoembed.producers.encoders import list_encoders

    for entry in list_encoders():
        print(json.dumps(entry))
    return 0


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files, folders (their GeoTIFFs), globs and list files (``.txt``/``.lst``, one path a line)."""
    import glob

    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.suffix == ".zarr":
            out.append(str(path))  # a cube store is a folder, but one input
        elif path.is_dir() and (any(path.glob("*.zarr.zip")) or any(path.glob("*/*.zarr.zip"))):
            out.append(str(path))  # Embed2Scale files in modality folders: the reader pairs them
        elif path.is_dir() and list(path.glob("*_B02.tif")):
            out.append(str(path))  # one patch stored one band per file
        elif path.is_dir() and any(list(d.glob("*_B02.tif")) for d in path.iterdir() if d.is_dir()):
            out += sorted(str(d) for d in path.iterdir() if d.is_dir() and list(d.glob("*_B02.tif")))
        elif path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
        elif path.suffix in (".txt", ".lst") and path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            out += [str((path.parent / line) if not Path(line).is_absolute() else line) for line in lines if line and not line.startswith("#")]
        elif any(ch in item for ch in "*?["):
            out += sorted(glob.glob(item, recursive=True))
        else:
            out.append(item)
    return out


def _parse_time(text: str | None):
    """An instant, or (start, end) for an interval or a bare date (that whole day)."""
    from ._when import parse_interval

    if not text:
        return None
    from ._errors import TimeFormatError
    from ._when import parse_interval

    try:
        start, end = parse_interval(text)
    except TimeFormatError as error:
        raise TimeFormatError(f"--datetime {text!r}: {error}") from None
    return start if start == end else (start, end)


def _ranks_on_this_node() -> int:
    """Ranks sharing this node, from the launcher's environment (MPICH hydra, Open MPI, SLURM)."""
    import os

    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "").split("(")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _produce(args: argparse.Namespace) -> int:
    import os
    import tomllib

    # Thread pools are sized when torch is first imported: give each rank its share of the cores now.
    threads = max(1, (os.cpu_count() or 1) // _ranks_on_this_node())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    from eoembed.producers.distribute import JobConfig, main_job

    settings: dict = {}
    if args.config:
        settings = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        base = Path(args.config).parent
        settings["inputs"] = [str(base / p) if not Path(p).is_absolute() else p for p in settings.get("inputs", [])]
        if isinstance(settings.get("s1_root"), str) and not Path(settings["s1_root"]).is_absolute():
            settings["s1_root"] = str(base / settings["s1_root"])
        for stack in settings.get("stacks", []):
            if isinstance(stack, dict) and isinstance(stack.get("files"), list):
                stack["files"] = [str(base / p) if not Path(p).is_absolute() else p for p in stack["files"]]
    flags = {
        "encoder": args.encoder, "chip_size": args.chip_size, "stride": args.stride, "grid": args.grid,
        "quantization": args.quantization, "min_valid_fraction": args.min_valid, "nodata": args.nodata,
        "unit_chips": args.unit_chips, "license": args.license, "collection_id": args.collection_id,
        "s1_root": args.s1_root,
        "bands": args.bands.split(",") if args.bands else None,
        "prefetch": args.prefetch, "align": args.align, "resolution": args.resolution, "resampling": args.resampling,
        "empty_chips": args.empty_chips, "outside_grid": args.outside_grid, "s2_offset": args.s2_offset,
        "mask_clouds": False if args.keep_clouds else None,
        "level": args.level, "tile_size": args.tile_size, "tile_format": args.tile_format,
    }
    if args.level == "pixel" and args.chip_size is None:
        flags["chip_size"] = 1  # a per-pixel encoder reads one pixel (its bands, or its time series)
    settings.update({k: v for k, v in flags.items() if v is not None})
    settings["inputs"] = expand_inputs(list(args.inputs) or settings.get("inputs", []))
    settings["stacks"] = [{"files": s.split(",")} for s in args.stack] or settings.get("stacks", [])
    settings["out"] = args.out or settings.get("out")
    if not (settings["inputs"] or settings["stacks"]) or not settings["out"]:
        raise SystemExit("eoembed produce: give INPUT paths (or --stack) and --out (or both in --config)")
    time_text = args.datetime or settings.pop("datetime", None)
    settings["time"] = _parse_time(time_text)
    settings["resume"] = args.resume
    settings["overwrite"] = args.overwrite
    settings["progress"] = not args.no_progress
    if "encoder_options" not in settings and args.encoder_option:
        settings["encoder_options"] = {}
    for option in args.encoder_option:
        key, _, value = option.partition("=")
        settings.setdefault("encoder_options", {})[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return main_job(JobConfig(**settings))


def _train(args: argparse.Namespace) -> int:
    import os

    # Thread pools are sized when torch is first imported: give each rank its share of the cores now.
    threads = max(1, (os.cpu_count() or 1) // _ranks_on_this_node())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    from eoembed._errors import TrainingConfigError
    from eoembed.producers.train import main_train
    from eoembed.producers.trainconfig import load_config

    overrides = {"out": args.out, "epochs": args.epochs, "progress": False if args.no_progress else None}
    try:
        config = load_config(args.config, **overrides)
    except TrainingConfigError as error:
        print(f"eoembed train: {error}", file=sys.stderr)
        return 2
    config.inputs = expand_inputs(config.inputs)
    return main_train(config, resume=args.resume, overwrite=args.overwrite)


def _demo(args: argparse.Namespace) -> int:
    from eoembed.producers.demo import run_demo

    return run_demo(out=Path(args.out), overwrite=args.overwrite, chip_size=args.chip_size)


# -- few-shot learning and evaluation --------------------------------------------------------------


def _shot_list(text: str) -> list[int]:
    try:
        shots = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots takes comma-separated integers such as 1,5,10, not {text!r}") from None
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"--shots needs integers >= 1, got {text!r}")
    return shots


def _class_names(text: str) -> dict[int, str]:
    names = {}
    for item in text.split(","):
        code, sep, name = item.partition("=")
        if not sep or not code.strip().lstrip("-").isdigit() or not name.strip():
            raise argparse.ArgumentTypeError(f"--classes takes CODE=NAME pairs such as 1=developed,5=forest, not {item!r}")
        names[int(code)] = name.strip()
    return names


def _pixel_product(path: str):
    """The opened product when ``path`` is a pixel product (few-shot and predict then work per pixel), else None."""
    from ._open import open_product

    product = open_product(path)
    return product if getattr(product, "kind", "chip") == "pixel" else None


def _fewshot(args: argparse.Namespace) -> int:
    import json
    import warnings

    from ._errors import FewShotWarning
    from ._fewshot import fewshot_splits, splits_table

    splits = {"both": [args.block, None], "blocked": [args.block], "random": [None]}[args.split]
    pixels = _pixel_product(args.product)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FewShotWarning)
        if pixels is not None:
            from ._pixel_fewshot import fewshot_pixels

            reports = fewshot_pixels(pixels, args.labels, label_field=args.label_field or "label", labels_crs=args.labels_crs,
                                     drop_classes=args.drop, splits=splits, shots=args.shots, method=args.method,
                                     episodes=args.episodes, queries=args.queries, seed=args.seed, k=args.k)
        else:
                reports = fewshot_splits(args.product, args.labels, label_field=args.label_field, min_overlap=args.min_overlap,
                                     drop_classes=args.drop, labels_crs=args.labels_crs, purity=args.purity, classes=args.classes,
                                     splits=splits, shots=args.shots, method=args.method, episodes=args.episodes,
                                     queries=args.queries, seed=args.seed, k=args.k)
    told = {w for report in reports for w in report.warnings}
    for warning in caught:
        if issubclass(warning.category, FewShotWarning) and str(warning.message) not in told:
            print(f"warning: {warning.message}", file=sys.stderr)
    if args.plot:
        reports[0].plot(args.plot)
    if args.json:
        print(json.dumps({"splits": [report.to_dict() for report in reports]}, indent=2))
    else:
        print(_without_warnings(splits_table(reports)))
        for message in dict.fromkeys(w for report in reports for w in report.warnings):
            print(f"warning: {message}", file=sys.stderr)
    return 0


def _without_warnings(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("warning: "))


def _predict(args: argparse.Namespace) -> int:
    import warnings

    from ._errors import FewShotWarning
    from ._predict import predict

    pixels = _pixel_product(args.product)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FewShotWarning)
        if pixels is not None:
            from ._pixel_predict import predict_pixels

            out = predict_pixels(pixels, args.labels, out=args.out, label_field=args.label_field or "label", method=args.method,
                                 drop_classes=args.drop, labels_crs=args.labels_crs, source_id=args.source_id,
                                 map_path=args.map, k=args.k)
        else:
            out = predict(args.product, args.labels, out=args.out, label_field=args.label_field, method=args.method,
                          min_overlap=args.min_overlap, drop_classes=args.drop, labels_crs=args.labels_crs,
                          purity=args.purity, classes=args.classes, map_path=args.map, k=args.k)
    for warning in caught:
        if issubclass(warning.category, FewShotWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    print(f"wrote {out}" + (f" and {args.map}" if args.map else ""))
    return 0


def _neuco(args: argparse.Namespace) -> int:
    import json

    from ._neuco import neuco_evaluate

    given = {"k_folds": args.k_folds, "epochs": args.epochs, "batch_size": args.batch_size,
             "learning_rate": args.learning_rate, "task_filter": args.task}
    settings = {key: value for key, value in given.items() if value is not None}
    # The blocked run goes first so that a block that cannot be used fails before the long random run.
    reports = [neuco_evaluate(args.embeddings, tasks=args.annotation_path, config=args.config, block=block, **settings)
               for block in ([args.block, None] if args.block else [None])][::-1]
    if args.json:
        print(json.dumps(reports[0].to_dict() if len(reports) == 1 else {"splits": [r.to_dict() for r in reports]}, indent=2))
    else:
        print("\n\n".join(report.table() for report in reports))
    return 0


def _embed2scale(args: argparse.Namespace) -> int:
    from ._embed2scale import read_embed2scale, write_embed2scale

    if args.action == "export":
        print(f"wrote {write_embed2scale(args.source, args.target)}")
        return 0
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, vectors = read_embed2scale(args.source)
    if args.dim is not None:
        vectors = vectors[:, : args.dim]
    table = pa.table({"id": pa.array(ids, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(vectors).reshape(-1), pa.float32()), vectors.shape[1])})
    pq.write_table(table, args.target)
    print(f"wrote {args.target}: {len(ids)} samples, {vectors.shape[1]}-d")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .importers import import_product

    options = {}
    for option in args.option:
        key, sep, value = option.partition("=")
        if not sep:
            raise SystemExit(f"eoembed import: --option {option!r} must be KEY=VALUE")
        try:
            options[key] = json.loads(value)  # numbers and lists; anything else stays text
        except ValueError:
            options[key] = value
    if args.level == "pixel":
        from ._pixel_import import import_pixels

        chip_only = [flag for flag, given in (("--repair", args.repair), ("--grid", args.grid), ("--normalize", args.normalize),
                                              ("--license", args.license), ("--quantization", args.quantization != "none"),
                                              ("--metric", args.metric != "cosine")) if given]
        if chip_only:
            raise SystemExit(f"eoembed import --level pixel: {', '.join(chip_only)} apply to chip imports only; "
                             "pixel tiles keep the source's codes and contract")
        out = import_pixels(args.kind, args.sources, out=args.out, format=args.tile_format, tile_size=args.tile_size,
                            overwrite=args.overwrite, **options)
        print(f"wrote pixel product {out} from {len(args.sources)} {args.kind} tile(s)")
        return 0
    report = import_product(args.kind, args.sources, out=args.out, grid=args.grid, repair=args.repair, quantization=args.quantization,
                            metric=args.metric, normalize=args.normalize, license=args.license,
                            overwrite=args.overwrite, **options)
    print(report)
    return 0


def _importers(args: argparse.Namespace) -> int:
    from .importers import list_importers

    for entry in list_importers():
        print(json.dumps(entry))
    return 0


def add_import_commands(sub) -> None:
    p = sub.add_parser("import", help="import embeddings of another system (clay, earthindex, majortom, planet, embed2scale, "
                                      "alphaearth, tessera; see `eoembed importers`) into a product")
    p.add_argument("kind", help="source format (see `eoembed importers`)")
    p.add_argument("sources", nargs="+", help="files of that format")
    p.add_argument("--out", required=True, help="product folder to write")
    p.add_argument("--repair", action="append", default=[], metavar="NAME",
                   help="repair a reported defect of the source (e.g. lonlat, drop-empty); repeat")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="importer option, e.g. chip_size=8, datetime=2023, footprints=FILE, model_name=NAME; repeat")
    p.add_argument("--grid", help="grid for grid_cell (default majortom-10km)")
    p.add_argument("--quantization", choices=["none", "float16", "int8", "int8-per-dimension", "int8-per-row", "sqrt", "binary"],
                   default="none")
    p.add_argument("--metric", choices=["cosine", "euclidean", "dot"], default="cosine")
    p.add_argument("--normalize", action="store_true", help="make the vectors unit length")
    p.add_argument("--license", help="SPDX licence of the embeddings (default: what the source states)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.add_argument("--level", choices=["chip", "pixel"], default="chip",
                   help="pixel: keep alphaearth / tessera tiles per pixel as a pixel product (default: %(default)s)")
    p.add_argument("--tile-size", type=int, default=512, help="pixel level: tile edge in pixels (default: %(default)s)")
    p.add_argument("--tile-format", choices=["zarr", "cog"], default="zarr", help="pixel level: tile files (default: %(default)s)")
    p.set_defaults(func=_import)
    sub.add_parser("importers", help="list the import kinds and their repairs").set_defaults(func=_importers)


def add_fewshot_commands(sub) -> None:
    from ._blocks import DEFAULT_BLOCK

    def labels_options(p) -> None:
        p.add_argument("product", help="product folder")
        p.add_argument("--labels", required=True, help="GeoJSON, GeoPackage, shapefile or GeoParquet of points or polygons, "
                                                      "or a single-band class raster (GeoTIFF)")
        p.add_argument("--label-field", help="the column holding the class (vector labels)")
        p.add_argument("--purity", type=float, default=0.6,
                       help="class raster: least share of a chip's pixels in its majority class (default: %(default)s)")
        p.add_argument("--classes", type=_class_names, metavar="CODE=NAME,...",
                       help="class raster: names of the codes (default: the raster's category names, else the codes)")
        p.add_argument("--labels-crs", help="CRS of the label file when it declares none (e.g. EPSG:32119)")
        p.add_argument("--min-overlap", type=float, default=0.5, help="fraction of a chip a polygon must cover (default: %(default)s)")
        p.add_argument("--drop", action="append", default=[], metavar="CLASS", help="leave out a class; repeat")
        p.add_argument("--k", type=int, default=5, help="neighbours for --method knn (default: %(default)s)")

    p = sub.add_parser("fewshot", help="episodic few-shot evaluation of a product against labels")
    labels_options(p)
    p.add_argument("--shots", type=_shot_list, default=[1, 5, 10], help="comma-separated shot counts (default: 1,5,10)")
    p.add_argument("--method", choices=["prototype", "knn", "logreg"], default="prototype")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--queries", type=int, default=15, help="query chips per class and episode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="FILE.png", help="also draw accuracy (and macro-F1) against shots here (first split)")
    p.add_argument("--block", default=DEFAULT_BLOCK, metavar="SIZE",
                   help="spatial block edge, e.g. 2km, 500m or 8cells (chips); support and query chips never share a "
                        "block (default: %(default)s, the NC scene's autocorrelation range)")
    p.add_argument("--split", choices=["both", "blocked", "random"], default="both",
                   help="blocked split, random split, or both side by side (default: %(default)s)")
    p.set_defaults(func=_fewshot)

    p = sub.add_parser("predict", help="train on the labelled chips (or pixels) and map a class onto every chip (or pixel)")
    labels_options(p)
    p.add_argument("--out", required=True, help="prediction to write: GeoParquet (chip product) or a GeoTIFF map (pixel product)")
    p.add_argument("--source-id", help="pixel product: map this scene only")
    p.add_argument("--map", help="also draw the prediction as a PNG map here")
    p.add_argument("--method", choices=["prototype", "knn", "logreg"], default="logreg")
    p.set_defaults(func=_predict)

    p = sub.add_parser("neuco", help="NeuCo-Bench (Embed2Scale) linear-probe scores of a product or submission CSV")
    p.add_argument("embeddings", help="product folder or submission CSV")
    p.add_argument("--annotation-path", required=True, metavar="FOLDER",
                   help="folder of <task>__<type>.csv task files (columns id, label; type classification or regression)")
    p.add_argument("--config", metavar="CONFIG.yaml", help="NeuCo-Bench YAML config (k_folds, epochs, batch_size, learning_rate, ...)")
    p.add_argument("--k-folds", type=int, help="shuffle-split folds (NeuCo-Bench: 40)")
    p.add_argument("--epochs", type=int, help="probe epochs per fold (NeuCo-Bench: 20)")
    p.add_argument("--batch-size", type=int, help="probe batch size (NeuCo-Bench: 64)")
    p.add_argument("--learning-rate", type=float, help="AdamW learning rate (NeuCo-Bench: 0.001)")
    p.add_argument("--task", action="append", metavar="NAME", help="score only this task; repeat (NeuCo-Bench's task_filter)")
    p.add_argument("--block", metavar="SIZE", help="products: also score folds that hold out spatial blocks of SIZE "
                                                   "(e.g. 2km, 8cells) beside NeuCo-Bench's random folds")
    p.set_defaults(func=_neuco)

    p = sub.add_parser("embed2scale", help="export a product to an Embed2Scale submission CSV, or import one")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("source", help="export: product folder; import: submission CSV")
    p.add_argument("target", help="export: CSV to write; import: Parquet file (id, embedding) to write")
    p.add_argument("--dim", type=int, help="import: keep the first DIM numbers (drop the zero padding)")
    p.set_defaults(func=_embed2scale)


# -- search and indexes -------------------------------------------------------------------------


def _under_mpi() -> bool:
    import os

    return any(os.environ.get(name) for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"))


def _search_query(args: argparse.Namespace):
    import numpy as np

    given = [x for x in (args.chip, args.point, args.vector) if x]
    if len(given) != 1:
        raise SystemExit("eoembed search: give exactly one of --chip ID, --point LON,LAT or --vector FILE")
    if args.chip:
        return args.chip[0] if len(args.chip) == 1 else list(args.chip)
    if args.point:
        points = []
        for text in args.point:
            try:
                lon, lat = (float(v) for v in text.split(","))
            except ValueError:
                raise SystemExit(f"eoembed search: --point {text!r} must be LON,LAT (degrees)") from None
            points.append((lon, lat))
        return points[0] if len(points) == 1 else points
    path = Path(args.vector)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; --vector takes a .npy file or a text file of numbers")
    from ._damage import reading

    with reading(path, advice="--vector takes a .npy file or a text file of numbers"):
        vectors = np.load(path, allow_pickle=False) if path.suffix == ".npy" else \
            np.loadtxt(path, dtype=np.float32, delimiter=None, ndmin=1)
        return np.asarray(vectors, dtype=np.float32)


def _search(args: argparse.Namespace) -> int:
    from ._diagnose import similarity_messages
    from ._read import open_product

    options = dict(k=args.k, bbox=args.bbox, datetime=args.datetime, where=args.where,
                   params=_param_values(args.param) or None,
                   metric=args.metric, mode=args.mode, candidates=args.candidates,
                   **({"nprobe": args.nprobe} if args.nprobe is not None else {}))
    product = open_product(args.path)
    if not _under_mpi():
        table = product.search(_search_query(args), **options)
        _warn(similarity_messages(product, metric=args.metric))
    else:
        from ._optional import require

        MPI = require("mpi4py.MPI", extra="mpi")

        from ._errors import EoembedError
        from ._search import distributed_search

        try:
            table = distributed_search(product, _search_query(args), comm=MPI.COMM_WORLD, **options)
        except (EoembedError, FileNotFoundError, SystemExit):
            raise  # raised alike on every rank (inputs are checked everywhere): no rank waits
        except BaseException:
            import traceback

            traceback.print_exc()
            MPI.COMM_WORLD.Abort(1)  # one failing rank must not hang the others
        if table is None:
            return 0
    write_table(table, fmt="json" if args.json else args.format, out=args.out)
    return 0


def _index(args: argparse.Namespace) -> int:
    from ._read import open_product

    product = open_product(args.path)
    if args.action == "list":
        from ._index import list_indexes

        for entry in list_indexes(product):
            print(json.dumps({k: v for k, v in entry.items() if k != "scale"}))
        return 0
    if not args.kind:
        raise SystemExit("eoembed index build: give --kind int8|binary|hnsw|ivf|ivf-rabitq")
    from ._diagnose import recall_messages

    given = {"nlist": args.nlist, "sample": args.sample, "bits": args.bits, "rerank": args.rerank,
             "batch_size": args.batch_size}
    options = {name: value for name, value in given.items() if value is not None}
    unused = sorted(set(options) - {"ivf": {"nlist"}, "ivf-rabitq": set(given)}.get(args.kind, set()))
    if unused:
        raise SystemExit(f"eoembed index build: --{', --'.join(o.replace('_', '-') for o in unused)} "
                         f"does not apply to --kind {args.kind}")
    report = product.build_index(kind=args.kind, metric=args.metric, recall_queries=args.recall_queries, **options)
    print(json.dumps(report, indent=1))
    _warn(recall_messages(report))
    return 0


def _subset(args: argparse.Namespace) -> int:
    from ._exchange import subset

    out = subset(args.path, out=args.out, bbox=args.bbox, datetime=args.datetime, where=args.where,
                 params=_param_values(args.param) or None, overwrite=args.overwrite)
    return _report_product(out, "wrote")


def _merge(args: argparse.Namespace) -> int:
    from ._exchange import merge

    return _report_product(merge(args.paths, out=args.out, on_duplicate=args.on_duplicate, overwrite=args.overwrite), "wrote")


def _append(args: argparse.Namespace) -> int:
    from ._exchange import append, append_scenes

    products = [p for p in args.inputs if (Path(p) / "collection.json").is_file()]
    scenes = expand_inputs([p for p in args.inputs if p not in products])
    if not (products or scenes):
        raise SystemExit(f"eoembed append: no product or scene found in {args.inputs}")
    path = args.path
    if products:
        path = append(path, products, on_duplicate=args.on_duplicate)
    if scenes:
        path = append_scenes(path, scenes, time=_parse_time(args.datetime), nodata=args.nodata,
                             on_duplicate=args.on_duplicate, progress=not args.no_progress)
    return _report_product(path, "appended to")


def _report_product(path, verb: str) -> int:
    from ._read import open_product

    product = open_product(path)
    print(f"{verb} {product.path}: {product.num_rows} chips in {len(product.files)} data files")
    return 0


def add_exchange_commands(sub) -> None:
    p = sub.add_parser("subset", help="a new product holding just the chips in a bbox / time / SQL selection")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="product folder to write")
    p.add_argument("--bbox", help="xmin,ymin,xmax,ymax in lon/lat: chips intersecting it")
    p.add_argument("--datetime", help="ISO time or START/END (.. for open): chips whose time overlaps it")
    p.add_argument("--where", help="one boolean SQL expression over the embeddings columns, values as ? with --param")
    p.add_argument("--param", action="append", default=[], help="a bound parameter for each ? in --where; repeat")
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.set_defaults(func=_subset)

    p = sub.add_parser("merge", help="combine products of one model contract into one")
    p.add_argument("paths", nargs="+", metavar="PRODUCT")
    p.add_argument("--out", required=True, help="product folder to write")
    p.add_argument("--on-duplicate", choices=["error", "first", "last"], default="error",
                   help="a chip id in several products: refuse (default), or keep the first / last product's chip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.set_defaults(func=_merge)

    p = sub.add_parser("append", help="add products, or new scenes produced with the product's recorded settings, "
                                      "as a new version of the product")
    p.add_argument("path", metavar="PRODUCT")
    p.add_argument("inputs", nargs="+", help="products, or scenes (GeoTIFFs, folders, globs, .txt lists) to produce")
    p.add_argument("--on-duplicate", choices=["error", "first"], default="error",
                   help="a chip id the product holds: refuse (default), or skip it (keep the product's chip)")
    p.add_argument("--datetime", help="acquisition time of the new scenes (ISO 8601) or START/END")
    p.add_argument("--nodata", type=float, help="nodata value overriding the new scenes' own")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_append)


def add_search_commands(sub) -> None:
    p = sub.add_parser("search", help="nearest chips to a chip, a place or a vector (under mpirun: files split across ranks)")
    p.add_argument("path")
    p.add_argument("--chip", action="append", help="chip id to search from; repeat for a batch")
    p.add_argument("--point", action="append", help="LON,LAT: the chip covering this place; repeat for a batch")
    p.add_argument("--vector", help=".npy file (D,) or (m, D), or a text file of D numbers")
    p.add_argument("-k", type=int, default=10, help="hits per query (default: %(default)s)")
    p.add_argument("--bbox", help="xmin,ymin,xmax,ymax in lon/lat: only chips intersecting it")
    p.add_argument("--datetime", help="ISO time or START/END (.. for open): only chips whose time overlaps it")
    p.add_argument("--where", help="one boolean SQL expression over the embeddings columns, values as ? with --param")
    p.add_argument("--param", action="append", default=[], help="a bound parameter for each ? in --where; repeat")
    p.add_argument("--metric", choices=["cosine", "l2", "ip"], help="default: the product's metric")
    p.add_argument("--mode", choices=["exact", "int8", "binary", "hnsw", "ivf", "ivf-rabitq"], default="exact")
    p.add_argument("--nprobe", type=int, help="ivf / ivf-rabitq: inverted lists probed per query (default 16)")
    p.add_argument("--candidates", type=int, help="rows re-ranked exactly after a compressed or index scan "
                   "(binary: calibrated on the product by default)")
    p.add_argument("--format", choices=FORMATS, default="table", help=FORMAT_HELP)
    p.add_argument("--out", help="write the hits to this file")
    p.set_defaults(func=_search)

    p = sub.add_parser("index", help="build or list search indexes (assets of the product's items)")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("path")
    p.add_argument("--kind", choices=["int8", "binary", "hnsw", "ivf", "ivf-rabitq"])
    p.add_argument("--nlist", type=int, help="ivf / ivf-rabitq: inverted lists (default about 2 sqrt(rows) for ivf-rabitq)")
    p.add_argument("--sample", type=int, help="ivf-rabitq: rows drawn from the whole product to train the lists")
    p.add_argument("--bits", type=int, help="ivf-rabitq: bits a dimension in the codes, 1 to 8 (default 1; more "
                   "bits rank better, so fewer candidates are re-ranked)")
    p.add_argument("--rerank", choices=["stored", "float16"], help="ivf-rabitq: the re-rank rows: the stored codes "
                   "(default: exact, 1 byte a value for int8 products) or float16 (the default for per-row codes)")
    p.add_argument("--batch-size", type=int, help="ivf-rabitq: rows decoded at a time while streaming (bounds memory)")
    p.add_argument("--metric", choices=["cosine", "l2", "ip"], help="default: the product's metric")
    p.add_argument("--recall-queries", type=int, default=100, help="rows used as queries to measure recall@10")
    p.set_defaults(func=_index)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._spec import SPEC_VERSION

    parser = argparse.ArgumentParser(prog="eoembed", description="Earth-observation embedding products: produce, validate, query.")
    parser.add_argument("--version", action="version", version=f"eoembed {__version__} (spec {SPEC_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="write a product from real Landsat-7 imagery, validate it and query it")
    p.add_argument("--out", default="demo/nc-landsat7", help="product folder to write (default: %(default)s)")
    p.add_argument("--chip-size", type=int, default=8, help="chip size in pixels (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.set_defaults(func=_demo)

    p = sub.add_parser("produce", help="encode imagery into a product (run under mpirun/srun for many ranks)")
    p.add_argument("inputs", nargs="*", help="GeoTIFFs, folders, globs, a .txt list of paths, or a STAC ItemCollection .json")
    p.add_argument("--out", help="product folder to write")
    p.add_argument("--encoder", help="encoder name (see `eoembed encoders`); default stats")
    p.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE", help="encoder option; repeat")
    p.add_argument("--chip-size", type=int, help="chip size in pixels")
    p.add_argument("--stride", type=int, help="stride in pixels (default: the chip size)")
    p.add_argument("--level", choices=["chip", "pixel"],
                   help="chip (default): one vector per chip, GeoParquet; pixel: one vector per pixel, tiles (spec Section 12)")
    p.add_argument("--tile-size", type=int, help="pixel level: tile edge in pixels (default 256)")
    p.add_argument("--tile-format", choices=["zarr", "cog"], help="pixel level: Zarr v3 zip stores (default) or COGs")
    p.add_argument("--grid", help="grid for grid_cell: majortom-10km (default) or utm-10000m")
    p.add_argument("--align", choices=["scene", "cell"],
                   help="cut chips on each scene's pixel grid (scene, default) or on the lattice of each grid cell (cell)")
    p.add_argument("--resolution", type=float, help="cell lattice pixel size in metres (default: the inputs' own)")
    p.add_argument("--resampling", help="resampling onto a cell lattice: bilinear (default), nearest, cubic, average, ...")
    p.add_argument("--quantization", "--dtype", dest="quantization",
                   choices=["none", "float32", "float16", "int8", "int8-per-dimension", "int8-per-row", "sqrt", "binary"])
    p.add_argument("--datetime", help="acquisition time (ISO 8601) or START/END, for scenes without TIFFTAG_DATETIME")
    p.add_argument("--nodata", type=float, help="nodata value overriding the scenes' own")
    p.add_argument("--min-valid", type=float, help="drop chips with a smaller valid-pixel fraction (default 0.5)")
    p.add_argument("--unit-chips", type=int, help="chips per work unit (default 1024)")
    p.add_argument("--empty-chips", choices=["drop", "keep"],
                   help="chips whose vector is all zeros (a constant-zero DEM tile): drop (default; counted in the "
                        "summary and errors.json) or keep (the product then declares nodata_zero_vector)")
    p.add_argument("--outside-grid", choices=["drop", "error"],
                   help="chips outside the grid's latitude range: drop (default; counted) or error (refuse the job)")
    p.add_argument("--license", help="SPDX licence of the embeddings")
    p.add_argument("--collection-id")
    p.add_argument("--s1-root", help="BigEarthNet: folder of S1 patches whose VV/VH join each S2 patch")
    p.add_argument("--bands", help="encoder inputs in order: source band names or 1-based indexes, NEW=OLD renames "
                   "(e.g. red=3,green=2,blue=1)")
    p.add_argument("--prefetch", type=int, help="chip batches read ahead while encoding (default: 2 on a GPU, 0 on the CPU)")
    p.add_argument("--s2-offset", type=int, help="Embed2Scale files: S2 values stored this far above reflectance x 10000 "
                   "(default 1000, as SSL4EO-S12 v1.1; 0 for the challenge's downstream files)")
    p.add_argument("--keep-clouds", action="store_true", help="Embed2Scale files: pixels the cloud mask marks stay valid")
    p.add_argument("--stack", action="append", default=[], metavar="A.tif,B.tif",
                   help="scenes of one place at several dates (or sensors) stacked into one input, bands named "
                        "BAND@DATE; repeat for more places (times and labels in a TOML [[stacks]] table)")
    p.add_argument("--config", help="TOML file with the same keys (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run, skipping committed units; refused when any setting differs from the "
                        "first start's (only --no-progress and --prefetch may change)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_produce)

    p = sub.add_parser("train", help="train a compressor on chips of real imagery (run under mpirun/srun for many ranks)")
    p.add_argument("--config", required=True, help="TOML training config (see examples/train-nc-autoencoder.toml)")
    p.add_argument("--out", help="folder for checkpoints, the loss curve and encoder.pt (overrides the config)")
    p.add_argument("--epochs", type=int, help="train up to this many epochs (overrides the config; may grow on --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the out folder")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run's checkpoints in the out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("pool", help="a chip product from a pixel product: each chip the mean (or max) of its pixels")
    p.add_argument("path", help="pixel product (eoembed produce --level pixel)")
    p.add_argument("--out", required=True, help="chip product folder to write")
    p.add_argument("--chip-size", type=int, required=True, help="chip edge in pixels")
    p.add_argument("--stride", type=int, help="distance between chips in pixels (default: the chip size)")
    p.add_argument("--method", choices=["mean", "max"], default="mean", help="pooling of the pixels with data (default: mean)")
    p.add_argument("--min-valid", type=float, default=0.5, help="leave out chips with a smaller fraction of pixels with data")
    p.add_argument("--quantization", "--dtype", dest="quantization", default="none",
                   choices=["none", "float32", "float16", "int8", "int8-per-dimension", "int8-per-row", "sqrt", "binary"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.set_defaults(func=_pool)

    p = sub.add_parser("validate", help="check a product, collection.json or data file against the spec")
    p.add_argument("path")
    p.add_argument("--max-errors", type=int, default=None, help="stop recording errors after N")
    p.add_argument("--no-checksums", action="store_true", help="skip the sha256 of data files")
    p.set_defaults(func=_validate)

    p = sub.add_parser("query", help="run one read-only SQL query over a product (view `embeddings`, similarity "
                       "search as `knn(query, k)`); it reads the data files of this product and of attached ones only")
    p.add_argument("path")
    p.add_argument("sql")
    p.add_argument("--param", action="append", default=[], help="a bound parameter for each ? (JSON or text); repeat")
    p.add_argument("--attach", action="append", default=[], metavar="NAME=PRODUCT",
                   help="another product as view NAME (join on chip_id); repeat")
    p.add_argument("--format", choices=FORMATS, default="table", help=FORMAT_HELP)
    p.add_argument("--out", help="write the result to this file")
    p.set_defaults(func=_query)

    p = sub.add_parser("copy", help="copy a product between folders and object stores (s3://...), either way; "
                       "checksums checked, collection.json written last")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--overwrite", action="store_true", help="replace a product already at the target")
    p.set_defaults(func=_copy)

    p = sub.add_parser("info", help="summarise a product's metadata")
    p.add_argument("path")
    p.add_argument("--verify", action="store_true", help="also check every data file's SHA-256 against the manifest")
    p.set_defaults(func=_info)

    p = sub.add_parser("preview", help="picture of a product: its first three principal components as RGB (PNG or COG)")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="preview.png (a figure with scale bar and legend) or preview.tif (a COG)")
    p.add_argument("--bbox", help="xmin,ymin,xmax,ymax in lon/lat: only chips intersecting it")
    p.add_argument("--where", help="SQL predicate over the embeddings view, values as ? with --param")
    p.add_argument("--param", action="append", default=[], help="a bound parameter for each ? in --where; repeat")
    p.add_argument("--pca", choices=["product", "cell", "scene"], default="product",
                   help="one PCA over the selection (default), or one per grid cell or per scene")
    p.add_argument("--title", help="figure title (default: the collection id and encoder)")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default: %(default)s)")
    p.set_defaults(func=_preview)

    p = sub.add_parser("completion", help="print a bash completion script: eval \"$(eoembed completion bash)\"")
    p.add_argument("shell", choices=["bash"])
    p.set_defaults(func=_completion)

    add_search_commands(sub)
    add_exchange_commands(sub)
    sub.add_parser("grids", help="list the built-in grids").set_defaults(func=_grids)
    sub.add_parser("encoders", help="list the registered encoders").set_defaults(func=_encoders)
    add_fewshot_commands(sub)
    add_import_commands(sub)
    add_common_options(sub)
    return parser


# Verbs whose result is a report or a table: `--json` prints it as JSON on stdout.
JSON_VERBS = ("validate", "info", "query", "search", "index", "preview", "fewshot", "neuco")


def add_common_options(sub) -> None:
    """-q/--quiet and -v/--verbose on every verb, and --json on the verbs that print a result."""
    for name, p in sub.choices.items():
        group = p.add_argument_group("output")
        loudness = group.add_mutually_exclusive_group()
        loudness.add_argument("-q", "--quiet", action="store_true", help="no progress bar, per-unit or info lines: results, warnings and errors only")
        loudness.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
        if name in JSON_VERBS:
            group.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def configure_output(args: argparse.Namespace) -> None:
    """One place for what -q/-v mean: the log level, and no progress lines when quiet."""
    import logging

    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    logging.getLogger("eoembed").setLevel(level)
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True


def value_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, on every verb, that takes a value."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= value_options(child)
        elif action.option_strings and action.nargs != 0:
            found.update(action.option_strings)
    return found


def _copy(args) -> int:
    from ._copy import copy

    done = copy(args.source, args.target, overwrite=args.overwrite)
    print(f"copied {done['files']} files ({done['bytes']} bytes) from {done['source']} to {done['target']}")
    return 0


def join_negative_values(argv: Sequence[str], options: set[str]) -> list[str]:
    """``--point -78.7,35.7`` as ``--point=-78.7,35.7``: argparse takes a value that starts with '-' and
    is not a plain number for an option, so negative coordinates and bboxes need the joined form."""
    out: list[str] = []
    for token in argv:
        previous = out[-1] if out else ""
        if previous in options and token[:1] == "-" and token[1:2].isdigit() or previous in options and token[:2] == "-.":
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from ._errors import EoembedError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(join_negative_values(argv, value_options(parser)))
    configure_output(args)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader (e.g. `| head`) left: stop quietly, as other shell tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FileNotFoundError as error:
        print(f"eoembed: {error}", file=sys.stderr)
        return 2
    except EoembedError as error:
        print(f"eoembed: {error}", file=sys.stderr)
        return 2 if args.command in ("validate", "info", "query", "search", "index", "preview") else 1
    except KeyboardInterrupt:  # Ctrl-C (or a launcher's SIGINT) before the command's own handling began
        resumable = args.command in ("produce", "train")
        print(f"eoembed {args.command}: interrupted" + ("; re-run with --resume to finish" if resumable else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
