"""Reading a file in a second process while this one writes it to the event store.

``defi-realtime ingest`` is CPU-bound in Python: the reader (gzip, JSON, reshaping, slugs,
validation: ``application.importing.prepare``) and the writer (domain commands, events,
their JSON, the inserts) took turns on one core under the GIL. Here the read side runs in a
forked child and hands validated chunks over a bounded queue, so the two use both cores
(docs/benchmarks.md). Where ``fork`` is not available the chunks are prepared in this
process, as before.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from ..adapters.defillama_files import Format, read_items
from ..application.importing import Prepared, SlugRegistry, prepare

# Chunks (5,000 items each) the child may read ahead of the writer.
READ_AHEAD: Final = 4
# How often a parent waiting for the next chunk checks that the child is still alive.
CHECK_EVERY: Final = 1.0
_DONE: Final = "done"
_FAILED: Final = "failed"


class ReadError(RuntimeError):
    """Reading the file failed in the reading process."""


def _prepared(
    path: Path, fmt: Format, source: str | None, registry: SlugRegistry
) -> Iterator[Prepared]:
    items = (
        (item.kind, item.item, item.error) for item in read_items(path, source=source, fmt=fmt)
    )
    return prepare(items, resolve_slugs=fmt != "observations-jsonl", registry=registry)


def _read(path: Path, fmt: Format, source: str | None, chunks: Any) -> None:
    """The child: every prepared chunk, then how many slugs were renamed (or the failure)."""
    try:
        registry = SlugRegistry()
        for chunk in _prepared(path, fmt, source, registry):
            chunks.put(chunk)
        chunks.put((_DONE, registry.renamed))
    except BaseException as error:
        chunks.put((_FAILED, f"{type(error).__name__}: {error}"))


class FileReader:
    """The prepared chunks of a file, read in a child process when it can be forked.

    Start it before any thread or connection exists in this process (a fork copies only
    the calling thread); iterate it once; ``renamed`` is known when the iteration ended.
    """

    def __init__(self, path: Path, fmt: Format, source: str | None = None) -> None:
        self.path, self.fmt, self.source = path, fmt, source
        self.renamed = 0
        self._process: BaseProcess | None = None
        self._chunks: Any = None

    def __enter__(self) -> FileReader:
        if "fork" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("fork")
            self._chunks = context.Queue(maxsize=READ_AHEAD)
            self._process = context.Process(
                target=_read,
                args=(self.path, self.fmt, self.source, self._chunks),
                name="defi-realtime-reader",
                daemon=True,
            )
            self._process.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is not None:
            if process.is_alive():
                process.terminate()  # the import stopped early (an error, Ctrl-C)
            process.join()
            self._chunks.close()

    def __iter__(self) -> Iterator[Prepared]:
        if self._process is None:
            registry = SlugRegistry()
            yield from _prepared(self.path, self.fmt, self.source, registry)
            self.renamed = registry.renamed
            return
        while True:
            message = self._next()
            if isinstance(message, Prepared):
                yield message
                continue
            kind, detail = message
            if kind == _DONE:
                self.renamed = int(detail)
                return
            raise ReadError(f"reading {self.path} failed: {detail}")

    def _next(self) -> Any:
        assert self._process is not None
        while True:
            try:
                return self._chunks.get(timeout=CHECK_EVERY)
            except queue.Empty:
                if not self._process.is_alive() and self._chunks.empty():
                    raise ReadError(
                        f"the reading process ended (exit code {self._process.exitcode}) "
                        "before it finished the file"
                    ) from None
