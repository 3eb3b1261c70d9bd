"""Suite-wide defaults.

Rate limits (ADR 0036) are on in the product; the suite's tests send hundreds of requests
a minute from 127.0.0.1 with free-tier keys, so they run with ``RATE_LIMITS=off`` unless
they turn the limits on themselves (``rate_limits=True``, as the tests of the limits do).
Set before any ``Settings`` is read; child processes (``serve``, workers) inherit it.

Freezing the collector at ready (``GC_FREEZE``, ADR 0044) is off too: in-process servers
would freeze the whole test process and collect it at every start; the collector settings'
tests turn it on.

A connection left open (a psycopg connection garbage-collected while open warns, and the
suite makes warnings errors) is reported at the end of the module that leaked it: each
module ends with a full collection, instead of whichever later test the collector happens
to run in.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RATE_LIMITS", "off")
os.environ.setdefault("GC_FREEZE", "false")


@pytest.fixture(autouse=True, scope="module")
def _collect_after_each_module() -> Iterator[None]:
    yield
    gc.collect()
