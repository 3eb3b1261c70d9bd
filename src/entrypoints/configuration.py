"""The configuration reference and a node's effective configuration, from ``Settings``.

Both are rendered from the settings model's fields (alias, default, description), so the
reference in docs/configuration.md cannot drift from what the code reads: a test compares
the two.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .settings import Settings

__all__ = ["effective", "reference"]

# Settings whose value is a secret: never printed.
_SECRETS: Final = frozenset({"smtp_password", "session_secret"})
_MASK: Final = "****"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(see description)"
    if field.default is None or field.default is PydanticUndefined:
        return "unset"
    if field.default == "":
        return "empty"
    return f"`{field.default}`"


def reference() -> str:
    """Every variable a process reads, as the Markdown table of docs/configuration.md."""
    lines = ["| variable | default | what it does |", "| --- | --- | --- |"]
    for field in Settings.model_fields.values():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{field.alias}` | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "unset"
    if name in _SECRETS:
        return _MASK
    text = str(value)
    if name.endswith("_url"):
        # A password inside a URL (postgresql://user:secret@host/db) is a secret too.
        parts = urlsplit(text)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", f":{_MASK}@", 1)
            text = urlunsplit(parts._replace(netloc=netloc))
    return text


def effective(settings: Settings) -> list[tuple[str, str, str]]:
    """``(variable, value, "set" | "default")`` for each setting, secrets masked."""
    rows = []
    for name, field in Settings.model_fields.items():
        origin = "set" if name in settings.model_fields_set else "default"
        rows.append((str(field.alias), _shown(name, getattr(settings, name)), origin))
    return rows
