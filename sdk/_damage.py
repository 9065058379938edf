"""The I/O boundary of readers: failures of pyarrow, json, numpy or the file system while reading a
product become one DamagedProductError naming the file (and row or column), never a raw library error."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ._errors import DamagedProductError, EoembedError

# What libraries raise for bytes that are not what they should be (pyarrow's ArrowInvalid is a
# ValueError, ArrowIOError an OSError; json's JSONDecodeError and UnicodeDecodeError are ValueErrors;
# faiss raises RuntimeError for an index file it cannot read).
_INPUT_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, RuntimeError)


def _is_input_error(error: BaseException) -> bool:
    if isinstance(error, _INPUT_ERRORS):
        return True
    arrow = sys.modules.get("pyarrow")  # only a loaded pyarrow can have raised one of its errors
    return arrow is not None and isinstance(error, arrow.ArrowException)


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())  # one line: library messages often span several
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_ADVICE = "the product is damaged: run `eoembed validate` on it and write it again"


def damaged(path: str | Path, problem: str, *, row: int | None = None, column: str | None = None,
            advice: str = _ADVICE) -> DamagedProductError:
    """The error for ``problem`` in file ``path`` (at ``row`` / ``column`` when known)."""
    place = "".join([f", row {row}" if row is not None else "", f", column {column!r}" if column else ""])
    return DamagedProductError(f"{path}{place}: {problem}; {advice}")


@contextmanager
def reading(path: str | Path, *, row: int | None = None, column: str | None = None,
            advice: str = _ADVICE) -> Iterator[None]:
    """Turn a library's failure to read ``path`` inside the block into a DamagedProductError."""
    try:
        yield
    except EoembedError:
        raise
    except Exception as error:
        if not _is_input_error(error):
            raise
        if isinstance(error, FileNotFoundError):
            problem = "is missing"
        elif isinstance(error, KeyError):
            problem = f"lacks the field {error}"
        else:
            problem = f"cannot be read ({_reason(error)})"
        raise damaged(path, problem, row=row, column=column, advice=advice) from error


def read_json(path: Path) -> dict:
    """A JSON object document of a product (DamagedProductError when unreadable or not an object)."""
    with reading(path):
        document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise damaged(path, f"holds a JSON {type(document).__name__}, not an object")
    return document
