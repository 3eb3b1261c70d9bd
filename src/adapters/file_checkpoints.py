"""``CheckpointStore`` in a directory of files: one file per checkpoint, replaced atomically.

A checkpoint is written to a temporary file beside its target, flushed to disk
(``fsync``), then renamed over the target (``os.replace``, atomic on POSIX), and the
directory is flushed so the rename itself survives a power cut. A crash before the rename
leaves the old file untouched (the temporary one is swept on the next write); after it, the
new file is whole. Readers never see a half-written record.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Final

__all__ = ["FileCheckpointStore"]

_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SUFFIX: Final = ".ckpt"
STALE_AFTER: Final = 3_600.0  # seconds


class FileCheckpointStore:
    """Checkpoints as ``<directory>/<name>.ckpt`` (the directory is created when missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid checkpoint name: {name!r}")
        return self.directory / f"{name}{SUFFIX}"

    def load(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def save(self, name: str, data: bytes) -> None:
        target = self.path(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sweep(name)
        handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._sync_directory()

    def _sweep(self, name: str) -> None:
        """Remove what a writer killed before its rename left behind. Only old leftovers:
        another process of the node (``serve --workers``) may be writing a younger one."""
        stale = time.time() - STALE_AFTER
        for leftover in self.directory.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
