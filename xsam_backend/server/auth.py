"""Optional HTTP basic auth on every route but ``/health``."""

from __future__ import annotations

import base64
import hmac

from flask import Request


def basic_auth_ok(request: Request, user: str, password: str) -> bool:
    """Whether the request's ``Authorization: Basic`` header carries ``user:password``.

    Compares in constant time; a missing or malformed header is simply not OK.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    given_user, sep, given_password = given.partition(":")
    expected = f"{user}:{password}".encode()
    return bool(sep) and hmac.compare_digest(f"{given_user}:{given_password}".encode(), expected)
