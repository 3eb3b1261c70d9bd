"""A Python script in a child process whose stdout is read line by line, with bounded waits
(the examples, and the code of the docs)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = 30.0


class Example:
    """An example script in a child process, its stdout read as JSON lines (bounded)."""

    def __init__(self, script: str | Path, *args: str, env: dict[str, str] | None = None) -> None:
        # stderr to a file: a pipe nobody reads could fill and block the child.
        self.errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        stdout = self.process.stdout
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(line) for line in stdout], daemon=True
        )
        self.reader.start()

    def next_line(self, timeout: float = WAIT) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; {self.stderr()}") from None
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read()

    def wait(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # this test's own child, by its handle
        self.process.wait(10)
        self.reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.errors.close()

    def next_text(self, timeout: float = WAIT) -> str:
        """The next line as it is."""
        try:
            return self.lines.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; {self.stderr()}") from None
