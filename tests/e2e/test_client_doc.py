"""The code of ``docs/client.md`` runs as written: a REST snapshot, then the live stream,
which carries on across a server restart with no update lost or repeated."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .child import Example
from .conftest import LiveServer, obs, settle, start_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
NOW = time.time() - 600


def first_python_block(markdown: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)
    assert blocks, "no python block in the document"
    return blocks[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def script(tmp_path: Path) -> Iterator[list[Example]]:
    started: list[Example] = []
    yield started
    for example in started:
        example.stop()


def ingest(server: LiveServer, *items: dict[str, object]) -> int:
    response = httpx.post(
        f"{server.base_url}/v2/ingest",
        json={"observations": list(items)},
        headers=server.headers,
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    return position


def test_the_client_doc_code_goes_from_rest_to_a_resumed_stream(
    tmp_path: Path, script: list[Example]
) -> None:
    code = tmp_path / "client_doc.py"
    code.write_text(first_python_block(DOC.read_text()))
    port = free_port()
    data = tmp_path / "data"
    with start_server(data, port=port) as first:
        ingest(
            first,
            obs("aave-v3", 100.0, NOW, name="Aave V3"),
            obs("lido", 50.0, NOW, name="Lido"),
        )
        with httpx.Client(base_url=first.base_url, timeout=10.0) as http:
            settle(http)
        env = {**os.environ, "DEFI_REALTIME_URL": first.base_url}
        child = Example(code, env=env)
        script.append(child)
        assert child.next_text() == "snapshot aave-v3 Aave V3 tvl=100.0"
        assert child.next_text() == "snapshot lido Lido tvl=50.0"
        # Possibly before the stream subscribed: `since` replays it all the same.
        live = ingest(first, obs("aave-v3", 90.0, NOW + 1))
        assert child.next_text() == f"live aave-v3 tvl=90.0 position={live}"
        key = first.api_key
    with start_server(data, api_key=key, port=port) as second:
        later = [ingest(second, obs("lido", 40.0 + step, NOW + 2 + step)) for step in range(3)]
        for step, position in enumerate(later):
            assert child.next_text() == f"live lido tvl={40.0 + step} position={position}"
        assert child.lines.empty()  # nothing twice
