"""Reading raw files: what every source reader shares (tasks/ingest.py, tasks/movielens.py).

Each helper turns a library's error into one RecsysError line that names the file.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tasks.errors import RecsysError


@dataclass(frozen=True)
class Tables:
    """What a reader found: interactions always, items and users where the source has them."""

    interactions: pl.DataFrame
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def reading(file: Path) -> Iterator[None]:
    """Turn a library's error while reading `file` into one line that names it."""
    try:
        yield
    except RecsysError:
        raise
    except zipfile.BadZipFile as exc:
        raise RecsysError(f"{file}: not a valid zip file (truncated or corrupt?)") from exc
    except UnicodeDecodeError as exc:
        raise RecsysError(
            f"{file}: not valid {exc.encoding} text (byte {exc.start}: {first_line(exc)})"
        ) from exc
    except (pl.exceptions.PolarsError, OSError, EOFError, zlib.error) as exc:
        raise RecsysError(f"{file}: cannot read: {first_line(exc)}") from exc


def require_file(file: Path) -> Path:
    if not file.is_file():
        raise RecsysError(f"{file}: no such file")
    if file.stat().st_size == 0:
        raise RecsysError(f"{file}: file is empty")
    return file


def read_text(file: Path, encoding: str = "utf-8") -> str:
    require_file(file)
    with reading(file):
        text = file.read_bytes().decode(encoding)
    if not text.strip():
        raise RecsysError(f"{file}: file is empty")
    return text


def read_delimited(
    file: Path, sep: str, names: list[str] | None = None, encoding: str = "utf-8"
) -> pl.DataFrame:
    """Read delimited text as String columns, with a header row when `names` is None.

    Strings first so that ids keep their exact spelling ("007" stays "007"); callers cast the
    rest. `sep` may be longer than one character (MovieLens-1M's `::`).
    """
    text = read_text(file, encoding)
    if names is not None:
        line = text.split("\n", 1)[0].rstrip("\r")
        fields = line.count(sep) + 1
        if fields != len(names):
            raise RecsysError(
                f"{file}: expected {len(names)} fields separated by {sep!r}, "
                f"found {fields} in line 1: {line[:80]!r}"
            )
    if len(sep) > 1:
        text, sep = text.replace(sep, "\x1f"), "\x1f"
    with reading(file):
        return pl.read_csv(
            text.encode(),
            separator=sep,
            has_header=names is None,
            new_columns=names,
            infer_schema=False,
            quote_char=None,
        )


def check_columns(file: Path, found: list[str], needed: list[str], hint: str = "") -> None:
    missing = [name for name in needed if name not in found]
    if missing:
        shown = ", ".join(repr(name) for name in found[:20]) + (" ..." if len(found) > 20 else "")
        raise RecsysError(
            f"{file}: missing column(s) {', '.join(missing)}; columns found: {shown}{hint}"
        )
