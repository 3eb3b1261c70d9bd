"""Log redaction and request ids (entrypoints/logs.py)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from defi_realtime.entrypoints.logs import (
    REQUEST_ID,
    Redact,
    RequestContext,
    _request_id,
    logging_config,
    redact,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("/v2/realtime?api_key=drt_abcdefghijkl", "/v2/realtime?api_key=[REDACTED]"),
        ("/x?limit=5&token=abc.def&b=1", "/x?limit=5&token=[REDACTED]&b=1"),
        ("Bearer eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl here", "Bearer [REDACTED] here"),
        ("/x?API-KEY=s3cret", "/x?API-KEY=[REDACTED]"),
        ("/x?access_token=a&password=b", "/x?access_token=[REDACTED]&password=[REDACTED]"),
        ("key drt_AbC-123_xyz09 in text", "key [REDACTED] in text"),
        ("/v2/protocols?limit=5&sort=tvl", "/v2/protocols?limit=5&sort=tvl"),
        ("monkey=1", "monkey=1"),
    ],
)
def test_redact(raw: str, clean: str) -> None:
    assert redact(raw) == clean


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (b"abc-123", True),
        (b"client.id:42_x", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"has space", False),
        (b"-leading", False),
        (b"\xff\xfe", False),
        (b"", False),
    ],
)
def test_request_id_is_kept_only_when_sane(header: bytes, kept: bool) -> None:
    scope = {"headers": [(b"x-request-id", header)]}
    request_id = _request_id(scope)
    assert (request_id == header.decode("latin-1")) is kept
    if not kept:
        assert len(request_id) == 32


def test_a_record_is_rendered_redacted_with_its_request_id() -> None:
    stream = io.StringIO()
    config = logging_config("info", "json")
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContext())
    handler.addFilter(Redact())
    formatter_config = dict(config["formatters"]["default"])
    factory = formatter_config.pop("()")
    module, name = factory.rsplit(".", 1)
    formatter = getattr(__import__(module, fromlist=[name]), name)(**formatter_config)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    token = REQUEST_ID.set("req-1")
    try:
        try:
            raise ValueError("bad key drt_0123456789abcdef")
        except ValueError:
            logger.exception("GET %s failed", "/v2/realtime?api_key=drt_0123456789abcdef")
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert record["request_id"] == "req-1"
    assert record["message"] == "GET /v2/realtime?api_key=[REDACTED] failed"
    assert "drt_0123" not in stream.getvalue()
    assert "ValueError: bad key [REDACTED]" in record["exc_info"]
