"""Optional dependencies: one way to import a package that an extra of ``eoembed`` provides.

``pip install eoembed`` reads, validates, queries and exact-searches products. Everything else comes
with an extra (see ``[project.optional-dependencies]`` in pyproject.toml); a call that needs a missing
one raises :class:`~eoembed.MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import MissingDependencyError

#: What each extra enables, for the messages (pyproject.toml lists what each installs).
EXTRAS = {
    "search": "compressed search (int8, binary, ivf, hnsw) and search indexes",
    "mpi": "MPI runs (mpirun -n N)",
    "produce": "producing products from imagery and importing GeoTIFF embeddings",
    "learn": "torch tensors and datasets, few-shot learning and prediction",
    "plot": "maps, previews (PNG and COG) and training curves",
    "fewshot": "label files (vector geometries) and few-shot evaluation",
    "zarr": "Zarr data cubes and Embed2Scale .zarr.zip files as producer inputs, Zarr tiles of pixel products",
    "pandas": "pandas DataFrames (to_pandas)",
    "remote": "products read where they live (s3://, https://)",
}


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` (e.g. ``"faiss"``, ``"mpi4py.MPI"``), or say which extra installs it."""
    if extra not in EXTRAS:  # a typo here would send users to an extra that does not exist
        raise ValueError(f"unknown extra {extra!r}; eoembed has {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        missing = isinstance(error, ModuleNotFoundError) and (error.name or "").partition(".")[0] == top
        state = "is not installed" if missing else f"is installed but cannot be imported ({error})"
        raise MissingDependencyError(
            f"the Python package {top!r} {state}; it is needed for {EXTRAS[extra]}: pip install 'eoembed[{extra}]'"
        ) from error


def available(module: str) -> bool:
    """Whether ``module`` imports (for checks that are skipped, not failed, without an extra)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
