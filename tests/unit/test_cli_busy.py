"""The CLI's REST client and a busy API: a 429 (unserved) is sent again after its Retry-After, a
few times, then is Overloaded; a streamed upload, whose body is spent, is not (issue 15)."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from cloudland.errors import Overloaded
from cloudland_cli import restclient
from cloudland_cli.restclient import BUSY_RETRIES, ApiClient

BUSY = {"error": {"code": "too_many_requests", "message": "the API is busy: 64 requests in progress"}}


def client_answering(answers: list[httpx.Response], calls: list[str]) -> ApiClient:
    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    client = ApiClient("http://api.test", token="t")
    client._http = httpx.Client(base_url="http://api.test/api/v1", transport=httpx.MockTransport(handle))
    return client


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(restclient.time, "sleep", waits.append)
    return waits


def busy(retry_after: str = "2") -> httpx.Response:
    return httpx.Response(429, json=BUSY, headers={"Retry-After": retry_after})


def test_a_429_is_sent_again_after_retry_after(slept: list[float]) -> None:
    calls: list[str] = []
    client = client_answering([busy(), busy("999"), httpx.Response(200, json={"items": []})], calls)
    assert client.get("/flavors") == {"items": []}
    assert calls == ["GET /api/v1/flavors"] * 3
    assert slept == [2.0, restclient.MAX_RETRY_AFTER_S]  # a Retry-After is capped


def test_still_busy_after_the_retries_is_overloaded(slept: list[float]) -> None:
    calls: list[str] = []
    client = client_answering([busy("x")], calls)
    with pytest.raises(Overloaded, match="the API is busy: 64 requests in progress"):
        client.post("/flavors", {"name": "x"})
    assert len(calls) == 1 + BUSY_RETRIES and slept == [1.0] * BUSY_RETRIES  # no number: 1 s


def test_a_streamed_upload_is_not_sent_again(slept: list[float], tmp_path: Path) -> None:
    calls: list[str] = []
    client = client_answering([busy()], calls)
    image = tmp_path / "tiny.img"
    image.write_bytes(b"\0" * 10)
    with pytest.raises(Overloaded):
        client.upload("/images/1/file", image)
    assert calls == ["PUT /api/v1/images/1/file"] and slept == []
