"""CORS for browser clients on other origins (``CORS_ALLOW_ORIGINS``), by Starlette's
``CORSMiddleware``.

Off by default: with no origin configured, a browser on another origin gets no
``Access-Control-Allow-Origin`` and cannot read the API (same-origin pages such as
``/docs`` need none). Listed origins may call every method with the API's own headers
(``X-API-Key``, ``Authorization``, ``Content-Type``) and read its rate-limit and request-id
headers. No credentials mode: keys travel in headers, never in cookies.
"""

from __future__ import annotations

from typing import Final

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

__all__ = ["cors_middleware"]

ALLOWED_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE")
ALLOWED_HEADERS: Final = ("X-API-Key", "Authorization", "Content-Type")
EXPOSED_HEADERS: Final = (
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-Request-ID",
)
MAX_AGE: Final = 600


def cors_middleware(origins: frozenset[str]) -> list[Middleware]:
    """The middleware for these origins (``*``: any origin), or none."""
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=sorted(origins),
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=MAX_AGE,
        )
    ]
