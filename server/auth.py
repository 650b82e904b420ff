"""Bearer API keys: constant-time comparison against every configured key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="Required when the server has PLANNER_API_KEYS set.")


def key_matches(candidate: str, keys: list[bytes]) -> bool:
    """Compare against every key with hmac.compare_digest (no early exit on the first match)."""
    given = candidate.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


async def require_key(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """FastAPI dependency: 401 when keys are configured and the request has no valid Bearer key."""
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    if creds is None:
        raise HTTPException(
            401,
            "missing API key: send the header 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(creds.credentials, keys):
        raise HTTPException(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
