"""Path containment: every href a reader follows must name a file inside the product.

Products are shared and opened on other machines, so whatever a manifest, an item or an index asset
says, a reader never follows it out of the product folder (spec Section 9).
"""

from __future__ import annotations

import os
import posixpath
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath

from ._errors import UnsafePathError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def is_url(href: str) -> bool:
    """Whether ``href`` names something outside any folder (``https://``, ``file:``, ``s3:``...)."""
    return bool(_SCHEME.match(href))


@lru_cache(maxsize=256)
def _real(root: str) -> Path:
    return Path(os.path.realpath(root))  # once per product folder: readers resolve many hrefs in it


def inside(root, href: object, *, base: str = "", where: str) -> Path:
    """The file ``href`` (written in ``where``, relative to folder ``base`` of the product) names.

    Raises UnsafePathError for a non-string or empty href, a scheme, an absolute path, a backslash
    or NUL, and any path that leaves ``root`` (through ``..`` or a symbolic link). The result keeps
    the spelling of ``root``, so it compares equal to other paths built from it.
    """
    advice = "products must use relative hrefs to files inside the product folder; fix or rewrite the product"
    if not isinstance(href, str) or not href:
        raise UnsafePathError(f"{where}: href {href!r} is not a relative path; {advice}")
    if is_url(href):
        raise UnsafePathError(f"{where}: href {href!r} has a scheme, so it points outside the product; {advice}")
    if href.startswith("/") or "\\" in href or "\0" in href:
        raise UnsafePathError(f"{where}: href {href!r} is an absolute or non-POSIX path; {advice}")
    if not isinstance(root, Path):
        # A product at a URL has no symbolic links: the normalised relative path is the whole check.
        rel = posixpath.normpath(posixpath.join(base or ".", href))
        if rel in (".", "..") or rel.startswith("../"):
            raise UnsafePathError(f"{where}: href {href!r} leaves the product {root}; {advice}")
        return root / rel
    real_root = _real(str(root))
    target = Path(os.path.realpath(real_root / base / PurePosixPath(href)))
    if not target.is_relative_to(real_root):
        raise UnsafePathError(f"{where}: href {href!r} leaves the product folder {root}; {advice}")
    return root / target.relative_to(real_root)
