"""Rewrite the generated table of docs/configuration.md from the settings model."""

from __future__ import annotations

import re
from pathlib import Path

from defi_realtime.entrypoints.configuration import reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def main() -> None:
    text = DOC.read_text()
    new = re.sub(
        r"(<!-- reference:[^\n]*-->\n).*(<!-- end of reference -->)",
        lambda match: match.group(1) + reference() + match.group(2),
        text,
        flags=re.S,
    )
    DOC.write_text(new)


if __name__ == "__main__":
    main()
