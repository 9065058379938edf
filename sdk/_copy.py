"""``eoembed copy SRC DST``: a product from a folder or URL to another, in an order that never leaves
a valid-looking half: every other file first (data files with their SHA-256 checked against the
manifest as they stream), then ``manifest.parquet``, then ``collection.json``, the file that makes a
location a product. A reader of DST during the copy gets ProductNotFoundError.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from contextlib import contextmanager
from typing import IO, Any, Iterator

from ._errors import EoembedError, ProductExistsError, StoreError
from ._stac import MANIFEST
from ._store import Location, location

_CHUNK = 8 << 20  # bytes per read: large enough for object stores, small enough to stream
_LAST = (MANIFEST, "collection.json")


def files_under(root: Location) -> list[str]:
    """The relative paths of every file of the product at ``root``: listed in a folder or an object
    store; over HTTP, which publishes no listing, those its documents and manifest name."""
    if getattr(root, "protocol", "") in ("http", "https"):
        return _referenced(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _referenced(root: Location) -> list[str]:
    """collection.json, the manifest and its data files, and every product file a JSON document
    links or lists as an asset, followed from collection.json (hrefs kept inside the product)."""
    import pyarrow.parquet as pq

    from ._damage import read_json, reading
    from ._paths import inside, is_url
    from ._store import open_input

    with reading(root / MANIFEST):
        found = {MANIFEST, *pq.read_table(open_input(root / MANIFEST), columns=["path"]).column("path").to_pylist()}
    pending = ["collection.json"]
    while pending:
        rel = pending.pop()
        found.add(rel)
        document = read_json(root / rel)
        hrefs = [link.get("href") for link in document.get("links", []) if isinstance(link, dict)]
        hrefs += [asset.get("href") for asset in document.get("assets", {}).values() if isinstance(asset, dict)]
        base = posixpath.dirname(rel)
        for href in hrefs:
            if not isinstance(href, str) or is_url(href):
                continue  # references outside the product (source imagery, licences)
            name = inside(root, href, base=base, where=f"{root / rel}").relative_to(root).as_posix()
            if name not in found and name.endswith(".json"):
                pending.append(name)
            found.add(name)
    return sorted(found)


def copy_file(source: Location, target: Location, *, sha256: str | None = None) -> int:
    """Stream ``source`` to ``target``; with ``sha256`` the bytes must hash to it (DamagedProductError
    otherwise, and ``target`` is removed). Returns the bytes copied."""
    from ._damage import damaged, reading

    digest, size = hashlib.sha256(), 0
    with reading(source), source.open("rb") as reader, _writing(target) as writer:
        while block := reader.read(_CHUNK):
            digest.update(block)
            with _written(target):
                writer.write(block)
            size += len(block)
    if sha256 is not None and digest.hexdigest() != sha256:
        target.unlink()
        raise damaged(source, f"has another SHA-256 than the manifest says ({sha256}); nothing after it was copied")
    return size


@contextmanager
def _written(target: Location) -> Iterator[None]:
    """A failure to write ``target`` as a StoreError naming it (not as damage of the source)."""
    try:
        yield
    except EoembedError:
        raise
    except Exception as error:
        raise StoreError(f"{target} cannot be written ({type(error).__name__}: {error}); check that the folder or "
                         "bucket exists and the credentials may write there") from error


@contextmanager
def _writing(target: Location) -> Iterator[IO[bytes]]:
    with _written(target):
        if isinstance(target, Path):
            target.parent.mkdir(parents=True, exist_ok=True)
        handle = target.open("wb")
    try:
        yield handle
    finally:
        with _written(target):
            handle.close()


def download(root: Location, folder: Path) -> Path:
    """Every file under ``root`` into ``folder`` as they are (no check: the validator reports)."""
    for rel in files_under(root):
        copy_file(root / rel, folder / rel)
    return folder


def copy(source: str | os.PathLike, target: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Copy a product between folders and object stores (either way); returns files and bytes copied.

    The source is opened (so checked) first; a target that already holds a product is refused unless
    ``overwrite``."""
    from ._read import Product

    product = Product(source)
    destination = location(target) if not isinstance(target, Path) else target
    if (destination / "collection.json").exists() and not overwrite:
        raise ProductExistsError(f"{destination} already holds a product; pass overwrite=True (--overwrite) to replace it")
    sha = dict(zip(product.manifest.column("path").to_pylist(), product.manifest.column("sha256").to_pylist()))
    names = files_under(product.path)
    missing = [name for name in _LAST if name not in names]
    if missing:
        raise StoreError(f"{product.path} lists no {missing} in its folder; is it a product folder?")
    if overwrite:
        for name in reversed(_LAST):  # the old product stops being one before its files change
            if (destination / name).exists():
                (destination / name).unlink()
    ordered = [n for n in names if n not in _LAST] + list(_LAST)
    size = sum(copy_file(product.path / n, destination / n, sha256=sha.get(n)) for n in ordered)
    return {"source": str(product.path), "target": str(destination), "files": len(ordered), "bytes": size}
