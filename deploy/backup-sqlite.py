#!/usr/bin/env python3
"""Online backup of an embedded defi-realtime (SQLite files under DATA_DIR).

    python deploy/backup-sqlite.py DATA_DIR BACKUP_DIR

Safe while the server runs: SQLite's backup API copies a consistent snapshot of each file.
``history.sqlite`` (read model, followers' positions, delivery record) is copied before
``events.sqlite`` (the event store) and ``audit.sqlite`` (the audit log, when there is one),
so the positions in the backup are never ahead of the events in it: after a restore,
followers resume at or before the head and nothing is skipped.
To restore, stop the server and put the files into its DATA_DIR (docs/deployment.md).
Standard library only, so it runs with any Python 3.11.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

# This order: positions are never ahead of the events they refer to (the audit records in
# history.sqlite refer to audit.sqlite's positions, ADR 0041).
FILES = ("history.sqlite", "events.sqlite", "audit.sqlite")
# Made on the first audited request: a DATA_DIR from before the audit trail has none.
OPTIONAL = frozenset({"audit.sqlite"})


def backup(data_dir: Path, target: Path) -> list[Path]:
    """Copy each file of ``data_dir`` into ``target`` (created); returns the copies."""
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in FILES:
        source_path = data_dir / name
        if not source_path.exists() and name in OPTIONAL:
            continue
        if not source_path.exists():
            raise SystemExit(f"{source_path} does not exist (is {data_dir} a DATA_DIR?)")
        partial = target / f"{name}.partial"
        partial.unlink(missing_ok=True)
        source = sqlite3.connect(source_path)
        copy = sqlite3.connect(partial)
        try:
            # The server may hold a write lock for a moment (group commit): wait for it.
            source.execute("PRAGMA busy_timeout = 30000")
            source.backup(copy)
        finally:
            copy.close()
            source.close()
        final = target / name
        partial.replace(final)
        copies.append(final)
    return copies


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    for path in backup(Path(argv[1]), Path(argv[2])):
        print(f"backed up {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
