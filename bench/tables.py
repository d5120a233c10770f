"""Regenerate the benchmark tables of README.md and docs/benchmarks.md (and bench/results/*.md)
from the committed JSON.

Figures pasted by hand drift from the measurements they came from, so every block of those
documents between

    <!-- generated: bench/results/<name>.json table=<id> -->
    ...
    <!-- /generated -->

is rewritten from `bench/bench_<name>.py`'s `tables(result)[id]`, the same function that script
uses when it writes bench/results/<name>.md. The prose around the blocks is never touched.

    python -m bench.tables            # rewrite the blocks and the .md files in place
    python -m bench.tables --check    # exit 1 naming each block or .md that differs
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tasks.errors import RecsysError  # noqa: E402
from tasks.io import atomic_path  # noqa: E402

OPEN = re.compile(r"^<!-- generated: (?P<source>\S+) table=(?P<table>[\w-]+) -->\n", re.MULTILINE)
CLOSE = "<!-- /generated -->"
ANY_OPEN = re.compile(r"^<!-- generated", re.MULTILINE)
ANY_CLOSE = re.compile(r"^<!-- /generated -->$", re.MULTILINE)
DOCS = ("README.md", "docs/benchmarks.md")  # the documents whose generated blocks are checked
# bench/results/<name>.json comes from bench/bench_<name>.py, except the results a script writes
# beside its own (their tables() renders them too): <name> -> the script's <name>.
SCRIPTS = {"scale_pipeline": "scale"}  # bench_scale.py --pipeline


@dataclass(frozen=True)
class Block:
    """One generated block of a markdown file: where it is and what it should hold."""

    source: str  # bench/results/<name>.json, relative to the repository root
    table: str
    line: int  # 1-based line of the opening marker
    start: int  # character offsets of the body (between the two marker lines)
    end: int

    @property
    def name(self) -> str:
        return f"{self.source} table={self.table}"


def find_blocks(text: str, where: str = "README.md") -> list[Block]:
    """Every generated block of `text`; a marker left open is an error, not a silent skip."""
    blocks = []
    for match in OPEN.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        end = text.find("\n" + CLOSE, match.end() - 1)
        nested = OPEN.search(text, match.end(), end if end >= 0 else len(text))
        if end < 0 or nested:
            raise RecsysError(f"{where}:{line}: generated block has no {CLOSE} before the next one")
        body_end = max(end + 1, match.end())
        blocks.append(Block(match["source"], match["table"], line, match.end(), body_end))
    if len(ANY_OPEN.findall(text)) != len(blocks):
        raise RecsysError(
            f"{where}: a line starting '<!-- generated' is not of the form "
            "'<!-- generated: bench/results/<name>.json table=<id> -->'"
        )
    if len(ANY_CLOSE.findall(text)) != len(blocks):
        raise RecsysError(f"{where}: a {CLOSE} line closes no generated block")
    return blocks


def script(name: str) -> ModuleType:
    """The bench/bench_<script>.py module that writes and renders bench/results/<name>.json."""
    return importlib.import_module(f"bench.bench_{SCRIPTS.get(name, name)}")


def tables_function(source: str, where: str) -> Callable[[dict], dict[str, str]]:
    """bench/results/<name>.json is written by bench/bench_<name>.py (or the script SCRIPTS
    names), whose tables() renders it."""
    name = Path(source).stem
    file = f"bench/bench_{SCRIPTS.get(name, name)}.py"
    try:
        module = script(name)
    except ModuleNotFoundError as exc:
        raise RecsysError(f"{where}: {source}: no script {file} renders it") from exc
    if not hasattr(module, "tables"):
        raise RecsysError(f"{where}: {file} has no tables(result) function")
    return module.tables


def load_result(root: Path, source: str, where: str) -> dict:
    path = root / source
    if not path.is_file():
        raise RecsysError(f"{where}: {source}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecsysError(f"{source}: not valid JSON ({exc})") from exc


def render(root: Path, block: Block, where: str = "README.md") -> str:
    """The body a block should have: its table from the JSON, one trailing newline."""
    here = f"{where}:{block.line}"
    rendered = tables_function(block.source, here)(load_result(root, block.source, here))
    if block.table not in rendered:
        known = ", ".join(sorted(rendered))
        raise RecsysError(f"{here}: {block.source} has no table '{block.table}' (has: {known})")
    return rendered[block.table].rstrip("\n") + "\n"


def regenerate(text: str, root: Path, where: str = "README.md") -> tuple[str, list[Block]]:
    """`text` with every generated block rewritten from its JSON, and the blocks that changed."""
    out, changed, last = [], [], 0
    for block in find_blocks(text, where):
        body = render(root, block, where)
        if text[block.start : block.end] != body:
            changed.append(block)
        out += [text[last : block.start], body]
        last = block.end
    out.append(text[last:])
    return "".join(out), changed


def result_markdowns(results: Path) -> dict[Path, str]:
    """Each bench/results/<name>.md as its script's markdown() renders it from <name>.json."""
    expected = {}
    for path in sorted(results.glob("*.json")):
        expected[path.with_suffix(".md")] = script(path.stem).markdown(json.loads(path.read_text()))
    return expected


def differences(docs: Path | list[Path], root: Path) -> list[str]:
    """One line per document block or results .md whose text differs from what its JSON gives."""
    lines = []
    for doc in [docs] if isinstance(docs, Path) else docs:
        _, changed = regenerate(doc.read_text(), root, doc.name)
        lines += [
            f"{doc.name}:{b.line}: generated block {b.name} differs from the JSON" for b in changed
        ]
    for md, want in result_markdowns(root / "bench" / "results").items():
        if not md.is_file() or md.read_text() != want:
            lines.append(f"{md.relative_to(root)} differs from {md.stem}.json")
    return lines


def write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--readme",
        type=Path,
        action="append",
        help="a document to regenerate (repeatable; default: README.md and docs/benchmarks.md)",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="where bench/results/ lies")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    docs = args.readme or [ROOT / doc for doc in DOCS if (ROOT / doc).is_file()]
    try:
        if args.check:
            lines = differences(docs, args.root)
            for line in lines:
                print(line, file=sys.stderr)
            if lines:
                print("regenerate with: python -m bench.tables", file=sys.stderr)
            return 1 if lines else 0
        for doc in docs:
            text, changed = regenerate(doc.read_text(), args.root, doc.name)
            if changed:
                write(doc, text)
            for b in changed:
                print(f"rewrote {doc.name}:{b.line} {b.name}")
        for md, want in result_markdowns(args.root / "bench" / "results").items():
            if not md.is_file() or md.read_text() != want:
                write(md, want)
                print(f"rewrote {md.relative_to(args.root)}")
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
