"""``POST /v2/auth/token``: a short-lived session token for a browser, minted from its key.

Only a key mints a token (a token cannot mint the next one: a stolen token ends when it
expires). A token works as long as its key does (``sessions.py``).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from .auth import KeyHolder, require_key
from .errors import ApiError
from .operations import Operation, OperationRoute, json_answer
from .schemas.auth import SessionTokenAnswer
from .schemas.common import NoParameters
from .sessions import SessionTokens

__all__ = ["MINT_TOKEN", "auth_routes"]

MINT_TOKEN = Operation(
    "POST",
    "createSessionToken",
    "Mint a short-lived session token from the API key (for browsers: /v2/realtime?token=...)",
    NoParameters,
    SessionTokenAnswer,
    access="key",
    errors=(403,),
    description="Send the key itself (X-API-Key or Authorization: Bearer <key>); a "
    "session token cannot mint another. The token expires after SESSION_TOKEN_TTL seconds, "
    "and stops working as soon as its key is revoked.",
)


def auth_routes() -> list[OperationRoute]:
    async def mint(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        user = request.user
        if isinstance(user, KeyHolder) and user.via != "key":
            raise ApiError(403, "key_required", "a session token is minted from an API key")
        sessions: SessionTokens = request.app.state.sessions
        minted = sessions.mint(key)
        return json_answer(
            SessionTokenAnswer(
                token=minted.token,
                expires_in=max(0, int(minted.expires_at - time.time())),
                expires_at=int(minted.expires_at),
            )
        )

    return [OperationRoute("/v2/auth/token", MINT_TOKEN.serve(mint))]
