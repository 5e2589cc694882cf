"""Who may see the status page: the API's own rule, plus a login cookie for browsers.

A browser cannot send `Authorization: Bearer` when it opens a page, and a key in the URL
(`?key=`) would land in its history, in proxies' logs and in `Referer` headers, so the page
offers a login form instead: the operator types one of `CASCADE_API_KEYS` once, and cascade
answers with a signed cookie naming the key's owner id.

Contracts:
- With auth off (no `CASCADE_API_KEYS`; loopback only unless the operator allowed more), every
  caller is the local owner, as for the API.
- With auth on, a status route accepts a valid `Authorization: Bearer <key>` or a valid login
  cookie; nothing else. The cookie is accepted by the status routes only, never by the API.
- The cookie holds the owner id, an expiry and an HMAC over both, never the key. It is
  `HttpOnly` (scripts cannot read it), `SameSite=Strict` (other sites' pages cannot make the
  browser send it) and `Secure` when the request came over https. It stops working when it
  expires (`COOKIE_SECONDS`), when the key it was issued for is removed from the settings, and
  when the signing secret changes: the secret is derived from `CASCADE_SECRET_KEY` when set
  (cookies then survive restarts and work on every API process), else random per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from fastapi import Request, Response

from app.api.auth import ANONYMOUS_OWNER, authenticate
from app.config import Settings
from app.errors import AuthenticationError

COOKIE_NAME = "cascade_status"
COOKIE_SECONDS = 12 * 3600


class StatusAuth:
    """Issues and checks the status page's login cookies for one API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secret = settings.secret_key
        self._secret = (
            hashlib.sha256(b"cascade status cookie\0" + secret.get_secret_value().encode()).digest()
            if secret is not None
            else secrets.token_bytes(32)
        )

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, owner: str, *, now: float | None = None) -> str:
        """A cookie value for `owner`, valid for `COOKIE_SECONDS`."""
        expires = int(now if now is not None else time.time()) + COOKIE_SECONDS
        payload = f"{owner}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    def owner(self, cookie: str, *, now: float | None = None) -> str | None:
        """The owner a cookie names, or None when it is forged, expired or its key is gone."""
        owner, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(
            signature, self._sign(f"{owner}.{expires}")
        ):
            return None
        if int(expires) < (now if now is not None else time.time()):
            return None
        if owner not in self.settings.api_key_digests.values():
            return None
        return owner

    def set_cookie(self, response: Response, request: Request, owner: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            self.issue(owner),
            max_age=COOKIE_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")


async def status_owner(request: Request) -> str:
    """FastAPI dependency of the status routes: the caller's owner id (see the contracts);
    raises `AuthenticationError` otherwise."""
    settings: Settings = request.app.state.services.settings
    if not settings.auth_enabled:
        return ANONYMOUS_OWNER
    if request.headers.get("authorization"):
        return await authenticate(request)
    cookie = request.cookies.get(COOKIE_NAME)
    auth: StatusAuth = request.app.state.status_auth
    owner = auth.owner(cookie) if cookie else None
    if owner is None:
        raise AuthenticationError(
            "log in on the status page, or send `Authorization: Bearer <key>`",
            code="missing_api_key",
        )
    return owner
