"""Build or update an index from JSONL(.gz) passages, streaming in constant memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retrieval_core.backends.base import IndexReport, SearchBackend
from retrieval_core.documents import Document, MalformedLineError, iter_passages


@dataclass
class IndexRun:
    """Backend report plus the malformed input lines that were skipped."""

    report: IndexReport
    read: int = 0
    malformed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "read": self.read,
            "malformed": len(self.malformed),
            "malformed_lines": self.malformed[:20],
        }


def _warn(message: str) -> None:
    """On stderr, above the progress bar, so stdout stays the JSON report."""
    tqdm.write(message, file=sys.stderr)


def _stream(paths: Sequence[Path], on_malformed: str, run: IndexRun) -> Iterator[Document]:
    for path in paths:
        errors: list[MalformedLineError] = []
        source = iter_passages(path, errors=None if on_malformed == "fail" else errors)
        for doc in source:
            while errors:
                error = errors.pop(0)
                run.malformed.append(str(error))
                _warn(f"skipped malformed line: {error}")
            run.read += 1
            yield doc
        for error in errors:
            run.malformed.append(str(error))
            _warn(f"skipped malformed line: {error}")


def index_files(
    backend: SearchBackend,
    paths: Sequence[str | Path],
    on_malformed: str = "skip",
    progress: bool = True,
    **backend_options: Any,
) -> IndexRun:
    """Upsert every passage in ``paths`` into ``backend``.

    ``on_malformed="fail"`` raises :class:`MalformedLineError` (file:line: reason) at the first bad
    line; the tantivy index is then left as it was (nothing is committed), an Elasticsearch rebuild is
    discarded. ``"skip"`` reports each bad line and goes on.
    """
    if on_malformed not in ("skip", "fail"):
        raise ValueError(f"on_malformed: expected 'skip' or 'fail', got {on_malformed!r}")
    resolved = [Path(p) for p in paths]
    for path in resolved:
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
    bar = tqdm(unit="doc", desc="indexing", file=sys.stderr, disable=not progress, mininterval=0.5)
    run = IndexRun(report=IndexReport())
    try:
        run.report = backend.index_documents(
            _stream(resolved, on_malformed, run),
            progress=bar.update,
            **backend_options,
        )
    finally:
        bar.close()
    return run
