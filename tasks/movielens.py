"""MovieLens: fetch the GroupLens archives and read each release's file layout.

GroupLens is the canonical source. Its 100K release also ships inside the recbole wheel on PyPI
(converted to RecBole's tab-separated "atomic files"), which is the fallback where GroupLens
cannot be reached but a package registry can. Fetched files are copied byte for byte, so the
same source always gives identical files: DVC versions data/raw by content.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl

from tasks.errors import RecsysError
from tasks.io import atomic_path, file_sha256, staged_dir, write_json
from tasks.readers import (
    Tables,
    check_columns,
    read_delimited,
    reading,
    require_file,
)

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{archive}.zip"
DOWNLOAD_TIMEOUT_S = 10


@dataclass(frozen=True)
class Release:
    archive: str  # the zip's name on GroupLens, without .zip
    md5: str | None  # as GroupLens publishes it; ml-latest changes and has none
    files: tuple[str, ...]  # what the reader needs; the first holds the ratings


RELEASES = {
    "movielens-100k": Release(
        "ml-100k", "0e33842e24a9c977be4e0107933c0723", ("u.data", "u.item", "u.user")
    ),
    "movielens-1m": Release(
        "ml-1m", "c4d9eecfca2ab87c1945afe126590906", ("ratings.dat", "movies.dat", "users.dat")
    ),
    "movielens-20m": Release(
        "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", ("ratings.csv", "movies.csv")
    ),
    "movielens-25m": Release(
        "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", ("ratings.csv", "movies.csv")
    ),
    "movielens-latest": Release("ml-latest", None, ("ratings.csv", "movies.csv")),
}

RECBOLE_PACKAGE = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_DIR = "recbole/dataset_example/ml-100k"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")

# Every file name any reader uses: what is taken out of a zip given to ingest.
KNOWN_FILES = frozenset(RECBOLE_FILES).union(*(r.files for r in RELEASES.values()))

GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NO_GENRES = "(no genres listed)"  # ML-20M and later write this for an item without genres

# ML-1M users.dat stores occupations as codes; the names are those of the ML-1M README.
OCCUPATIONS_1M = {
    "0": "other",
    "1": "academic/educator",
    "2": "artist",
    "3": "clerical/admin",
    "4": "college/grad student",
    "5": "customer service",
    "6": "doctor/health care",
    "7": "executive/managerial",
    "8": "farmer",
    "9": "homemaker",
    "10": "K-12 student",
    "11": "lawyer",
    "12": "programmer",
    "13": "retired",
    "14": "sales/marketing",
    "15": "scientist",
    "16": "self-employed",
    "17": "technician/engineer",
    "18": "tradesman/craftsman",
    "19": "unemployed",
    "20": "writer",
}

# A trailing "(1995)" or "(1975-1979)" in a title is the release year.
TITLE_YEAR = r"\s*\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$"

INTERACTION_NAMES = ["user_id", "item_id", "rating", "timestamp"]
USER_NAMES = ["user_id", "age", "gender", "occupation", "zip_code"]


# ---- fetch ----------------------------------------------------------------------------------


class _Unreachable(Exception):
    """GroupLens could not be reached: the one failure the PyPI fallback answers."""


def fetch_movielens(name: str, out_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """Replace `out_dir` with the release's raw files as published, plus SOURCE.json."""
    release = RELEASES.get(name)
    if release is None:
        raise RecsysError(f"unknown MovieLens release {name!r}; valid: {', '.join(RELEASES)}")
    cache = cache_root(cache_dir)
    try:
        archive = _grouplens_archive(release, cache)
    except _Unreachable as exc:
        if name != "movielens-100k":
            raise RecsysError(
                f"{exc}; download it elsewhere and ingest the zip or its folder"
            ) from exc
        log.warning("%s; using MovieLens-100K from the %s wheel on PyPI", exc, RECBOLE_PACKAGE)
        return _fetch_from_recbole(Path(out_dir), cache)
    return _unpack_grouplens(name, release, archive, Path(out_dir))


def cache_root(cache_dir: str | Path | None = None) -> Path:
    root = cache_dir or os.environ.get("RECSYS_CACHE") or "~/.cache/recsys"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _grouplens_archive(release: Release, cache: Path) -> Path:
    """The release's zip in the cache, downloaded when absent or failing its checksum."""
    url = GROUPLENS_URL.format(archive=release.archive)
    target = cache / f"{release.archive}.zip"
    if target.exists() and (release.md5 is None or _md5(target) == release.md5):
        return target
    _download(url, target)
    digest = _md5(target)
    if release.md5 is not None and digest != release.md5:
        target.unlink()
        raise RecsysError(f"{url}: md5 {digest} does not match the published {release.md5}")
    return target


def _download(url: str, target: Path) -> None:
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            atomic_path(target) as tmp,
            open(tmp, "wb") as fh,
        ):
            shutil.copyfileobj(response, fh, 1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Unreachable(f"cannot download {url} ({reason})") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _unpack_grouplens(name: str, release: Release, archive: Path, out_dir: Path) -> Path:
    """Copy the files the reader needs, and the README (the licence), out of the zip."""
    with reading(archive), zipfile.ZipFile(archive) as zf, staged_dir(out_dir, [archive]) as tmp:
        members = _members_by_name(zf)
        missing = [f for f in release.files if f not in members]
        if missing:
            raise RecsysError(f"{archive}: no {', '.join(missing)} inside")
        readmes = sorted(f for f in members if f.lower().startswith("readme"))
        files = [*release.files, *readmes]
        for file in files:
            _copy_member(zf, members[file], tmp / file)
        write_json(
            {
                "dataset": name,
                "url": GROUPLENS_URL.format(archive=release.archive),
                "md5": _md5(archive),
                "sha256": file_sha256(archive),
                "files": files,
            },
            tmp / "SOURCE.json",
        )
    return out_dir


def _fetch_from_recbole(out_dir: Path, cache: Path) -> Path:
    wheel = _recbole_wheel(cache)
    with reading(wheel), zipfile.ZipFile(wheel) as zf, staged_dir(out_dir, [wheel]) as tmp:
        for file in RECBOLE_FILES:
            _copy_member(zf, f"{RECBOLE_DIR}/{file}", tmp / file)
        write_json(
            {
                "dataset": "movielens-100k",
                "url": "https://pypi.org/project/recbole/1.2.1/",
                "package": RECBOLE_PACKAGE,
                "sha256": RECBOLE_SHA256,
                "files": list(RECBOLE_FILES),
                "note": f"GroupLens's ml-100k as converted by RecBole, from {RECBOLE_DIR}",
            },
            tmp / "SOURCE.json",
        )
    return out_dir


def _recbole_wheel(cache: Path) -> Path:
    """The recbole wheel in the cache, fetched with pip (no install) and checked by sha256."""
    wheel = cache / RECBOLE_WHEEL
    if wheel.exists() and file_sha256(wheel) == RECBOLE_SHA256:
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [
            sys.executable,
            *("-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"),
            *("--dest", tmp, RECBOLE_PACKAGE),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        got = Path(tmp) / RECBOLE_WHEEL
        if result.returncode != 0 or not got.exists():
            detail = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise RecsysError(f"cannot download {RECBOLE_PACKAGE} from PyPI either: {detail}")
        digest = file_sha256(got)
        if digest != RECBOLE_SHA256:
            raise RecsysError(f"{RECBOLE_WHEEL}: sha256 {digest}, expected {RECBOLE_SHA256}")
        os.replace(got, wheel)
    return wheel


def _members_by_name(zf: zipfile.ZipFile) -> dict[str, str]:
    """Base name -> member: releases keep their files under a folder named after the zip."""
    return {
        PurePosixPath(member).name: member
        for member in zf.namelist()
        if not member.endswith("/") and "__MACOSX" not in member
    }


def _copy_member(zf: zipfile.ZipFile, member: str, dest: Path) -> None:
    with zf.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


# ---- read -----------------------------------------------------------------------------------


def read_movielens(source: str, path: Path) -> Tables:
    """Read a release from its folder or from its zip as GroupLens publishes it."""
    with as_folder(Path(path)) as folder:
        return READERS[source](folder)


@contextlib.contextmanager
def as_folder(path: Path) -> Iterator[Path]:
    """Yield a folder with the release's files: `path`, or the files taken out of a zip."""
    if path.is_dir():
        yield path
        return
    if path.suffix.lower() != ".zip":
        raise RecsysError(f"{path}: expected a MovieLens folder or its .zip archive")
    require_file(path)
    with tempfile.TemporaryDirectory(prefix="recsys-ingest-") as tmp:
        folder = Path(tmp)
        with reading(path), zipfile.ZipFile(path) as zf:
            for name, member in _members_by_name(zf).items():
                if name in KNOWN_FILES:
                    _copy_member(zf, member, folder / name)
        try:
            yield folder
        except RecsysError as exc:  # name the file inside the zip, not the temporary copy
            raise RecsysError(str(exc).replace(f"{folder}{os.sep}", f"{path}/")) from exc


def read_ml100k(folder: Path) -> Tables:
    """GroupLens layout (u.data, u.item, u.user) or RecBole's conversion (ml-100k.inter ...)."""
    if (folder / "u.data").exists():
        return Tables(
            read_ratings("movielens-100k", folder / "u.data"),
            _optional(folder / "u.item", _read_ml100k_items),
            _optional(folder / "u.user", _read_ml100k_users),
        )
    if (folder / "ml-100k.inter").exists():
        return Tables(
            _typed_interactions(
                _read_atomic(folder / "ml-100k.inter", INTERACTION_NAMES), folder / "ml-100k.inter"
            ),
            _optional(folder / "ml-100k.item", _read_recbole_items),
            _optional(folder / "ml-100k.user", _read_recbole_users),
        )
    raise RecsysError(
        f"{folder}: no u.data (GroupLens layout) or ml-100k.inter (RecBole layout) in it"
    )


def read_ml1m(folder: Path) -> Tables:
    """`::`-separated .dat files; movies.dat is latin-1."""
    return Tables(
        read_ratings("movielens-1m", folder / "ratings.dat"),
        _optional(folder / "movies.dat", _read_ml1m_items),
        _optional(folder / "users.dat", _read_ml1m_users),
    )


def read_ml_csv(folder: Path) -> Tables:
    """ML-20M, ML-25M and ml-latest: ratings.csv and movies.csv, no users.

    Ratings are scanned lazily and cast in the scan, so 25M rows stay fast and lean.
    """
    return Tables(
        _read_ratings_csv(folder / "ratings.csv"),
        _optional(folder / "movies.csv", _read_csv_items),
    )


def _read_ratings_csv(file: Path) -> pl.DataFrame:
    ratings = require_file(file)
    types = {"rating": pl.Float64, "timestamp": pl.Int64}
    scan = pl.scan_csv(ratings, infer_schema=False, schema_overrides=types)
    with reading(ratings):
        found = scan.collect_schema().names()
    check_columns(ratings, found, ["userId", "movieId", "rating", "timestamp"])
    renamed = scan.select(
        pl.col("userId").alias("user_id"),
        pl.col("movieId").alias("item_id"),
        "rating",
        "timestamp",
    )
    return _typed_interactions(renamed, ratings)


# The ratings file of each release, by the suffix it has: an incoming file in that form is read
# as one (tasks/incoming.py), so new interactions can arrive in the source's own format.
RATINGS_SUFFIXES = {
    "movielens-100k": ".data",
    "movielens-1m": ".dat",
    "movielens-20m": ".csv",
    "movielens-25m": ".csv",
    "movielens-latest": ".csv",
}


def read_ratings(source: str, file: Path) -> pl.DataFrame:
    """One ratings file in `source`'s layout (u.data, ratings.dat or ratings.csv) by any name."""
    if source == "movielens-100k":
        return _typed_interactions(read_delimited(file, "\t", INTERACTION_NAMES), file)
    if source == "movielens-1m":
        return _typed_interactions(read_delimited(file, "::", INTERACTION_NAMES), file)
    return _read_ratings_csv(file)


READERS: dict[str, Callable[[Path], Tables]] = {
    "movielens-100k": read_ml100k,
    "movielens-1m": read_ml1m,
    "movielens-20m": read_ml_csv,
    "movielens-25m": read_ml_csv,
    "movielens-latest": read_ml_csv,
}


def _optional(file: Path, reader: Callable[[Path], pl.DataFrame]) -> pl.DataFrame | None:
    """Items and users are read where the release has them; only ratings are required."""
    return reader(file) if file.exists() else None


def _typed_interactions(frame: pl.DataFrame | pl.LazyFrame, file: Path) -> pl.DataFrame:
    """MovieLens ids, ratings and epoch seconds, cast strictly: a bad value is an error."""
    with reading(file):
        return (
            frame.lazy()
            .select(
                "user_id",
                "item_id",
                pl.col("timestamp").cast(pl.Int64),
                pl.col("rating").cast(pl.Float64),
            )
            .collect(engine="streaming")
        )


def _read_atomic(file: Path, needed: list[str]) -> pl.DataFrame:
    """A RecBole atomic file: tab-separated with typed headers such as `user_id:token`."""
    raw = read_delimited(file, "\t")
    frame = raw.rename({name: name.split(":", 1)[0] for name in raw.columns})
    check_columns(file, frame.columns, needed)
    return frame


def _title_and_year(title: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Split "Heat (1995)" into "Heat" and 1995; titles without a year keep a null year."""
    clean = title.str.replace(TITLE_YEAR, "").str.strip_chars()
    return clean.alias("title"), title.str.extract(TITLE_YEAR, 1).cast(pl.Int32).alias("year")


def _genre_list(genres: pl.Expr) -> pl.Expr:
    """An item without genres gets an empty list, never null or a placeholder name."""
    kept = genres.list.eval(pl.element().filter((pl.element() != "") & (pl.element() != NO_GENRES)))
    return kept.fill_null(pl.lit([], dtype=pl.List(pl.String))).alias("genres")


def _typed_users(users: pl.DataFrame, file: Path) -> pl.DataFrame:
    with reading(file):
        return users.select(
            "user_id", pl.col("age").cast(pl.Int32), "gender", "occupation", "zip_code"
        )


def _read_ml100k_items(file: Path) -> pl.DataFrame:
    """u.item: `|`-separated latin-1, 5 fields then one 0/1 flag per genre."""
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES_100K]
    raw = read_delimited(file, "|", names, encoding="latin-1")
    flags = [pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in GENRES_100K]
    title, year = _title_and_year(pl.col("title"))
    # A title without "(year)" falls back to its release date, e.g. "01-Jan-1995".
    release_year = pl.col("release_date").str.extract(r"(\d{4})\s*$", 1).cast(pl.Int32)
    with reading(file):
        return raw.select(
            "item_id",
            title,
            _genre_list(pl.concat_list(flags).list.drop_nulls()),
            year.fill_null(release_year),
        )


def _read_ml100k_users(file: Path) -> pl.DataFrame:
    return _typed_users(read_delimited(file, "|", USER_NAMES), file)


def _read_recbole_items(file: Path) -> pl.DataFrame:
    """RecBole keeps the year apart already (release_year) and joins genres with spaces."""
    raw = _read_atomic(file, ["item_id", "movie_title", "release_year", "class"])
    title, title_year = _title_and_year(pl.col("movie_title"))
    # Its release_year holds "unkonwn" or "V" for a few items: the title may still have a year.
    year = pl.col("release_year").cast(pl.Int32, strict=False).fill_null(title_year)
    with reading(file):
        return raw.select(
            "item_id",
            title,
            _genre_list(pl.col("class").str.extract_all(r"\S+")),
            year.alias("year"),
        )


def _read_recbole_users(file: Path) -> pl.DataFrame:
    return _typed_users(_read_atomic(file, USER_NAMES), file)


def _read_ml1m_items(file: Path) -> pl.DataFrame:
    raw = read_delimited(file, "::", ["item_id", "title", "genres"], encoding="latin-1")
    title, year = _title_and_year(pl.col("title"))
    with reading(file):
        return raw.select("item_id", title, _genre_list(pl.col("genres").str.split("|")), year)


def _read_ml1m_users(file: Path) -> pl.DataFrame:
    names = ["user_id", "gender", "age", "occupation", "zip_code"]
    raw = read_delimited(file, "::", names)
    return _typed_users(raw.with_columns(pl.col("occupation").replace(OCCUPATIONS_1M)), file)


def _read_csv_items(file: Path) -> pl.DataFrame:
    require_file(file)
    with reading(file):
        raw = pl.read_csv(file, infer_schema=False)
    check_columns(file, raw.columns, ["movieId", "title", "genres"])
    title, year = _title_and_year(pl.col("title"))
    with reading(file):
        return raw.select(
            pl.col("movieId").alias("item_id"),
            title,
            _genre_list(pl.col("genres").str.split("|")),
            year,
        )
