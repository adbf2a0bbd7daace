"""``cloudland login --oidc``: sign in with an organisation's OpenID provider by the device
authorization grant (RFC 8628), so a terminal without a browser will do.

1. The API names the provider's endpoints, its client id and a nonce (``POST /login/oidc/start``).
2. The provider gives a device code and a user code (``device_authorization_endpoint``); the
   user opens the verification URL anywhere and enters the code.
3. The CLI polls the token endpoint no faster than the ``interval`` it was given (default 5 s),
   waiting on ``authorization_pending``, slowing by 5 s on ``slow_down``, until ``expires_in``.
4. The provider's ID token is exchanged at the API (``POST /login/oidc``), which checks it and
   answers a CloudLand token; the ID token itself is never stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx

from cloudland.errors import ApiUnreachable, InvalidRequest, Unauthorized
from cloudland_cli.restclient import ApiClient

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL_S = 5
SLOW_DOWN_S = 5


def _post(url: str, form: dict[str, str], what: str) -> tuple[int, dict[str, Any]]:
    try:
        reply = httpx.post(url, data=form, timeout=30)
    except httpx.HTTPError as exc:
        raise ApiUnreachable(f"the OpenID provider's {what} {url} did not answer: {exc}") from exc
    try:
        body: dict[str, Any] = reply.json()
    except ValueError as exc:
        raise InvalidRequest(f"the OpenID provider's {what} {url} answered {reply.status_code} without JSON") from exc
    return reply.status_code, body


def device_sign_in(client: ApiClient, organisation: str, lifetime_s: int | None,
                   show: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Run the device grant with ``organisation``'s provider (``show`` tells the user where to go)
    and answer the API's ``{token, expires_at}``."""
    start: dict[str, Any] = client.request("POST", "/login/oidc/start", json={"organisation": organisation})
    status, device = _post(start["device_authorization_endpoint"],
                           {"client_id": start["client_id"], "scope": start["scope"], "nonce": start["nonce"]},
                           "device authorization endpoint")
    if status != 200 or "device_code" not in device:
        raise InvalidRequest(f"the OpenID provider {start['issuer']} refused the device authorization: "
                             f"{device.get('error_description') or device.get('error') or status}")
    where = device.get("verification_uri_complete") or device["verification_uri"]
    show(f"To sign in to {organisation!r}, open {where}\nand confirm the code {device['user_code']} "
         f"(within {device.get('expires_in', 600)} s).")
    interval = float(device.get("interval") or DEFAULT_INTERVAL_S)
    deadline = time.monotonic() + float(device.get("expires_in") or 600)
    form = {"grant_type": DEVICE_GRANT, "device_code": device["device_code"], "client_id": start["client_id"]}
    while True:
        sleep(interval)
        if time.monotonic() > deadline:
            raise Unauthorized("the device code expired before the sign-in was confirmed; run the login again")
        status, answer = _post(start["token_endpoint"], form, "token endpoint")
        error = answer.get("error")
        if status == 200 and answer.get("id_token"):
            break
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_S
            continue
        if error in ("access_denied", "expired_token"):
            raise Unauthorized(f"the OpenID provider says {error}: {answer.get('error_description', '')}".rstrip(": "))
        raise InvalidRequest(f"the OpenID provider's token endpoint answered {status}: "
                             f"{answer.get('error_description') or error or 'no ID token'}")
    body: dict[str, Any] = {"organisation": organisation, "id_token": answer["id_token"]}
    if lifetime_s is not None:
        body["lifetime_s"] = lifetime_s
    reply: dict[str, Any] = client.request("POST", "/login/oidc", json=body)
    return reply
