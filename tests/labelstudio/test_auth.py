"""LabelStudioAuth against a real token refresh endpoint on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
from ls_http_server import LEGACY_TOKEN, LabelStudioTestServer, make_jwt

from xsam_backend.errors import MediaForbidden, MediaUnavailable
from xsam_backend.labelstudio.auth import LabelStudioAuth, jwt_claims, origin_of, token_kind


@pytest.fixture
def server() -> Iterator[LabelStudioTestServer]:
    srv = LabelStudioTestServer()
    srv.start()
    yield srv
    srv.stop()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_token_kinds_and_claims() -> None:
    assert token_kind(None) == "none" and token_kind("") == "none"
    assert token_kind(LEGACY_TOKEN) == "legacy"
    assert token_kind(make_jwt({"token_type": "refresh", "exp": 1})) == "refresh"
    assert token_kind(make_jwt({"token_type": "access", "exp": 1})) == "access"
    assert jwt_claims(make_jwt({"exp": 5, "x": "y"})) == {"exp": 5, "x": "y"}
    for not_jwt in ("a.b", "a.!!!.c", "a..c", "x.bm90IGpzb24.y", "x.WzFd.y"):  # "not json", "[1]"
        assert jwt_claims(not_jwt) is None


def test_origin_of() -> None:
    assert origin_of("http://LS:80/x") == origin_of("http://ls/y") == ("http", "ls", 80)
    assert origin_of("https://ls/x") == ("https", "ls", 443)
    assert origin_of("s3://bucket/key") is None and origin_of("/data/upload/1/a.png") is None


def test_headers_only_for_label_studio_origin(server: LabelStudioTestServer) -> None:
    auth = LabelStudioAuth(server.base_url + "/", LEGACY_TOKEN, session=requests.Session())
    assert auth.headers_for(server.url("/data/upload/1/a.png")) == {"Authorization": f"Token {LEGACY_TOKEN}"}
    for other in (
        server.url("/data/upload/1/a.png", host="localhost"),
        f"http://127.0.0.1:{server.port + 1}/a.png",
        f"https://127.0.0.1:{server.port}/a.png",
        "http://storage.example/a.png",
    ):
        assert auth.headers_for(other) == {}
    assert (
        LabelStudioAuth(server.base_url, None, session=requests.Session()).headers_for(server.url("/x")) == {}
    )
    assert server.refresh_calls == 0


def test_access_token_key_is_sent_as_is(server: LabelStudioTestServer) -> None:
    access = make_jwt({"token_type": "access", "exp": int(time.time()) + 60})
    auth = LabelStudioAuth(server.base_url, access, session=requests.Session())
    assert auth.headers_for(server.url("/x")) == {"Authorization": f"Bearer {access}"}
    assert not auth.invalidate()
    assert server.refresh_calls == 0


def test_pat_is_refreshed_only_when_the_access_token_nears_expiry(server: LabelStudioTestServer) -> None:
    clock = Clock()
    auth = LabelStudioAuth(server.base_url, server.pat, session=requests.Session(), clock=clock)
    first = auth.headers_for(server.url("/data/upload/1/a.png"))
    assert first["Authorization"].startswith("Bearer ")
    assert first["Authorization"][len("Bearer ") :] in server.issued
    assert server.refresh_calls == 1
    for _ in range(5):
        clock.now += 40  # 200 s of a 300 s lifetime: still valid
        assert auth.headers_for(server.url("/x")) == first
    assert server.refresh_calls == 1
    clock.now += 75  # 275 s: inside the 30 s margin before exp
    second = auth.headers_for(server.url("/x"))
    assert second != first
    assert server.refresh_calls == 2 == auth.refresh_count
    assert server.requests[0].path == "/api/token/refresh/" and server.requests[0].authorization is None


def test_invalidate_forces_one_new_exchange(server: LabelStudioTestServer) -> None:
    auth = LabelStudioAuth(server.base_url, server.pat, session=requests.Session())
    auth.headers_for(server.url("/x"))
    assert auth.invalidate()
    auth.headers_for(server.url("/x"))
    auth.headers_for(server.url("/x"))
    assert server.refresh_calls == 2


def test_concurrent_callers_share_one_exchange(server: LabelStudioTestServer) -> None:
    auth = LabelStudioAuth(server.base_url, server.pat, session=requests.Session())
    results: list[dict[str, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(auth.headers_for(server.url("/x")))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.refresh_calls == 1
    assert len(results) == 8 and all(r == results[0] for r in results)


def test_rejected_and_expired_pats(server: LabelStudioTestServer) -> None:
    other_pat = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 1000, "jti": "other"})
    auth = LabelStudioAuth(server.base_url, other_pat, session=requests.Session())
    with pytest.raises(MediaForbidden, match="rejected LABEL_STUDIO_API_KEY") as info:
        auth.headers_for(server.url("/x"))
    assert other_pat not in info.value.message

    expired = make_jwt({"token_type": "refresh", "exp": int(time.time()) - 10})
    auth = LabelStudioAuth(server.base_url, expired, session=requests.Session())
    with pytest.raises(MediaForbidden, match="expired"):
        auth.headers_for(server.url("/x"))
    assert server.refresh_calls == 1  # only the rejected one reached the server


def test_unreachable_refresh_endpoint(server: LabelStudioTestServer) -> None:
    base = server.base_url
    server.stop()
    auth = LabelStudioAuth(
        base, make_jwt({"token_type": "refresh", "exp": 2**40}), session=requests.Session()
    )
    with pytest.raises(MediaUnavailable, match="api/token/refresh"):
        auth.headers_for(base + "/x")
    server.start()  # the fixture stops it again


def test_base_url_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        LabelStudioAuth("localhost:8080", LEGACY_TOKEN, session=requests.Session())
