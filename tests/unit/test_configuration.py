"""Configuration: one reference generated from the settings model, a ``.env`` file read,
a data directory that does not depend on the working directory, secrets never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from defi_realtime.entrypoints.configuration import effective, reference
from defi_realtime.entrypoints.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_docs_reference_is_the_generated_one() -> None:
    text = DOCS.read_text()
    match = re.search(r"<!-- reference:[^\n]*-->\n(.*)<!-- end of reference -->", text, re.S)
    assert match is not None
    assert match.group(1) == reference(), "run `make docs`"


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.alias, name
        assert field.description, f"{field.alias} has no description"
        assert f"`{field.alias}`" in reference()


def test_a_dot_env_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PORT", "REDIS_PREFIX", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("PORT=9001\nREDIS_PREFIX=fromfile:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "9002")
    settings = Settings()
    assert settings.redis_prefix == "fromfile:"
    assert settings.port == 9002


def test_the_default_data_dir_is_absolute_and_the_same_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    here = Settings().data_dir
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Settings().data_dir == here
    assert here.is_absolute()
    assert tmp_path not in here.parents


def test_effective_masks_secrets_and_says_what_was_set() -> None:
    settings = Settings(
        DATABASE_URL="postgresql://app:s3cret@db:5432/defi",
        SMTP_PASSWORD="hunter2",
        PORT=8123,
    )
    rows = {name: (value, origin) for name, value, origin in effective(settings)}
    assert rows["DATABASE_URL"] == ("postgresql://app:****@db:5432/defi", "set")
    assert rows["SMTP_PASSWORD"] == ("****", "set")
    assert rows["PORT"] == ("8123", "set")
    assert rows["REDIS_URL"] == ("unset", "default")
    assert "s3cret" not in repr(rows)
    assert "hunter2" not in repr(rows)
