"""Product locations: a local folder, or a URL read in place (``s3://``, ``gs://``, ``az://``,
``https://`` / ``http://``).

One layer for every reader: a location is a :class:`pathlib.Path` when local and a ``UPath``
(universal_pathlib over fsspec) when remote, so readers join, stat and open both alike. Data files
at a URL are opened without read-ahead, so pyarrow range-reads only the footer, row groups and
columns it needs. Credentials are those of the usual environment variables and profiles
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``); without any, S3 is read anonymously (public buckets).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

from ._errors import MissingDependencyError, StoreError
from ._optional import require

if TYPE_CHECKING:
    import duckdb
    from upath import UPath

#: URL schemes a product may live at, and the package that reads each.
SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "http": "aiohttp",
           "https": "aiohttp"}

Location = Union[Path, "UPath"]


def is_remote(location: object) -> bool:
    """Whether ``location`` (a string, a path or a UPath) names a product at a URL."""
    if isinstance(location, Path):
        return False
    text = str(location)
    return "://" in text and urlsplit(text).scheme.lower() in SCHEMES


def _s3_options() -> dict[str, Any]:
    """Anonymous access when no credential is configured: public buckets need no account."""
    import botocore.session

    if os.environ.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes"):
        return {"anon": True}
    return {} if botocore.session.Session().get_credentials() is not None else {"anon": True}


def location(path: str | os.PathLike | Any) -> Location:
    """The local Path or the UPath of ``path`` (raises StoreError for an unknown scheme and
    MissingDependencyError naming the package a scheme needs)."""
    if not is_remote(path):
        if isinstance(path, str) and "://" in path:
            raise StoreError(f"{path}: products are read from local folders or {', '.join(sorted(SCHEMES))} URLs")
        return Path(path)
    if not isinstance(path, str):
        return path  # already a UPath
    scheme = urlsplit(path).scheme.lower()
    package = SCHEMES[scheme]
    UPath = require("upath", extra="remote").UPath
    try:
        importlib.import_module(package)
    except ImportError as error:  # [remote] brings s3fs and aiohttp; gs:// and az:// need one more package
        hint = "pip install 'eoembed[remote]'" + ("" if package in ("s3fs", "aiohttp") else f" {package}")
        raise MissingDependencyError(f"reading {path} needs the Python package {package!r}: {hint}") from error
    options = _s3_options() if scheme == "s3" else {}
    return UPath(path.rstrip("/"), **options)


def open_input(path: Location) -> str | IO[bytes]:
    """What pyarrow opens: the local path, or a remote file read in exact ranges (no block cache,
    so a footer or a row group costs its own bytes and no more)."""
    if isinstance(path, Path):
        return str(path)
    return path.fs.open(path.path, "rb", cache_type="none")


def read_metadata(path: Location):
    """The Parquet footer of ``path`` (``pyarrow.parquet.FileMetaData``). At a URL it costs two exact
    range reads (length, then footer) instead of pyarrow's 64 KiB guess, which for a product of many
    files would be most of what opening it transfers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(path, Path):
        return pq.read_metadata(str(path))
    with open_input(path) as handle:
        handle.seek(-8, os.SEEK_END)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length + 8 > handle.size:
            raise ValueError(f"the last 8 bytes {tail!r} are not a Parquet footer's length and magic")
        handle.seek(-(length + 8), os.SEEK_END)
        footer = handle.read(length)
    # A footer parses alone: the offsets in it are only followed when row groups are read.
    return pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail))


def size_of(path: Location) -> int | None:
    """The size of the file ``path`` in bytes, None when there is none: one stat, or one HEAD request
    at a URL (an HTTP ``exists`` would GET the whole file)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def url(path: Location) -> str:
    """The URL (or local path) DuckDB reads ``path`` at."""
    if isinstance(path, Path):
        return str(path)
    text = str(path)
    scheme = urlsplit(text).scheme.lower()
    return "gs://" + text.split("://", 1)[1] if scheme == "gcs" else text


def configure_duckdb(con: "duckdb.DuckDBPyConnection", paths: list[Location]) -> None:
    """Load httpfs offline and give it the S3 endpoint and credentials of the environment, before
    the sandbox locks the configuration (HTTP(S) needs no setting)."""
    from ._query import _quote, extension_path

    schemes = {urlsplit(str(p)).scheme.lower() for p in paths if not isinstance(p, Path)}
    if not schemes:
        return
    con.execute(f"LOAD '{_quote(str(extension_path('httpfs')))}'")
    if "s3" in schemes:
        settings: dict[str, str] = {}  # none: DuckDB reads unsigned, as for a public bucket
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            settings = {"KEY_ID": key, "SECRET": secret}
            if os.environ.get("AWS_SESSION_TOKEN"):
                settings["SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            settings["REGION"] = region
        if endpoint:
            parts = urlsplit(endpoint)
            settings.update(ENDPOINT=parts.netloc, URL_STYLE="path", USE_SSL=str(parts.scheme == "https").lower())
        body = ", ".join(f"{k} {v}" if k == "USE_SSL" else f"{k} '{_quote(v)}'" for k, v in settings.items())
        if body:
            con.execute(f"CREATE SECRET eoembed_s3 (TYPE s3, {body})")
