"""Authorization headers for requests to Label Studio's own host (media downloads).

Label Studio 1.23 accepts two kinds of API key in ``LABEL_STUDIO_API_KEY``:

* a **legacy token** (40 hex characters, off by default in new organisations): sent as
  ``Authorization: Token <key>``;
* a **personal access token** (PAT), a JWT *refresh* token: file URLs answer 401 to it, so it is
  exchanged at ``POST {LS}/api/token/refresh/ {"refresh": <PAT>}`` for a short-lived access token
  (300 s by default), sent as ``Authorization: Bearer <access>``. The access token is cached until
  shortly before its ``exp`` claim and exchanged again once when Label Studio answers 401.

A JWT whose ``token_type`` claim is ``access`` is sent as ``Bearer`` unchanged (it cannot be
refreshed). Headers are only ever produced for URLs on Label Studio's own origin (scheme, host
and port), so a token never leaves for a storage host or a redirect target. Errors name the
endpoint, never the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from xsam_backend.errors import MediaForbidden, MediaUnavailable

log = logging.getLogger(__name__)

TokenKind = Literal["none", "legacy", "refresh", "access"]

# Exchange the access token this long before it expires, so a request never races the expiry.
_EXPIRY_MARGIN_S = 30.0


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an absolute http(s) URL, default ports filled in; else ``None``.

    Hosts are lower-cased, so ``http://LS:80/x`` and ``http://ls/y`` share an origin.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, decoded **without verifying** its signature; ``None`` if not a JWT.

    Only used to tell token kinds apart and to read ``exp``; Label Studio verifies the token.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def token_kind(api_key: str | None) -> TokenKind:
    """Which kind of Label Studio API key ``api_key`` is (see the module docstring)."""
    if not api_key:
        return "none"
    claims = jwt_claims(api_key)
    if claims is None:
        return "legacy"
    return "access" if claims.get("token_type") == "access" else "refresh"


class LabelStudioAuth:
    """Builds the ``Authorization`` header for Label Studio's own host; thread-safe.

    ``session`` performs the token exchange; ``clock`` returns Unix seconds (a test seam).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        session: requests.Session,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        origin = origin_of(base_url)
        if origin is None:
            raise ValueError(f"Label Studio URL must be an absolute http(s) URL; got {base_url!r}")
        self._base_url = base_url.rstrip("/")
        self._origin = origin
        self._api_key = api_key or None
        self._kind = token_kind(self._api_key)
        self._session = session
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_renew_at = 0.0
        self.refresh_count = 0  # exchanges performed, for metrics and tests

    @property
    def kind(self) -> TokenKind:
        """The kind of the configured API key."""
        return self._kind

    def is_label_studio(self, url: str) -> bool:
        """Whether ``url`` (absolute) is on Label Studio's own origin."""
        return origin_of(url) == self._origin

    def headers_for(self, url: str) -> dict[str, str]:
        """``{"Authorization": ...}`` for a URL on Label Studio's origin, ``{}`` for any other URL.

        For a personal access token this may exchange it first (one POST, then cached). Raises
        :class:`MediaForbidden` when Label Studio rejects the token or it has expired, and
        :class:`MediaUnavailable` when the exchange endpoint cannot be reached.
        """
        if self._api_key is None or not self.is_label_studio(url):
            return {}
        if self._kind == "legacy":
            return {"Authorization": f"Token {self._api_key}"}
        if self._kind == "access":
            return {"Authorization": f"Bearer {self._api_key}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def invalidate(self) -> bool:
        """Forget the cached access token after a 401; ``True`` if a fresh exchange may help."""
        if self._kind != "refresh":
            return False
        with self._lock:
            self._access = None
            self._access_renew_at = 0.0
        return True

    def _access_token(self) -> str:
        with self._lock:
            if self._access is None or self._clock() >= self._access_renew_at:
                self._access, self._access_renew_at = self._exchange()
            return self._access

    def _exchange(self) -> tuple[str, float]:
        assert self._api_key is not None
        now = self._clock()
        expires = jwt_claims(self._api_key) or {}
        exp = expires.get("exp")
        if isinstance(exp, int | float) and exp <= now:
            when = datetime.fromtimestamp(exp, UTC).isoformat()
            raise MediaForbidden(
                f"LABEL_STUDIO_API_KEY is a personal access token that expired at {when}; "
                "create a new one in Label Studio (Account & Settings > Personal Access Token)"
            )
        endpoint = f"{self._base_url}/api/token/refresh/"
        try:
            response = self._session.post(endpoint, json={"refresh": self._api_key}, timeout=self._timeout_s)
        except requests.RequestException as exc:
            raise MediaUnavailable(
                f"cannot reach {endpoint} to exchange the personal access token: {type(exc).__name__}"
            ) from exc
        with response:
            if response.status_code in (401, 403):
                raise MediaForbidden(
                    f"Label Studio rejected LABEL_STUDIO_API_KEY at {endpoint} (HTTP {response.status_code}): "
                    "the personal access token is invalid, revoked, or from another Label Studio instance"
                )
            if response.status_code != 200:
                raise MediaUnavailable(f"{endpoint} answered HTTP {response.status_code} to a token refresh")
            try:
                access = response.json()["access"]
            except (ValueError, KeyError, TypeError):
                access = None
        if not isinstance(access, str) or not access:
            raise MediaUnavailable(f"{endpoint} answered without an access token")
        self.refresh_count += 1
        log.debug("exchanged the personal access token for an access token (%d so far)", self.refresh_count)
        return access, self._renew_at(access, now)

    def _renew_at(self, access: str, now: float) -> float:
        exp = (jwt_claims(access) or {}).get("exp")
        if not isinstance(exp, int | float):
            # Without an exp claim assume simplejwt's default lifetime of 300 s.
            return now + 300.0 - _EXPIRY_MARGIN_S
        margin = min(_EXPIRY_MARGIN_S, max(0.0, exp - now) / 2)
        return float(exp) - margin
