"""The console WebSocket's refusals, each a close code and a reason (no tree here).

Output relayed from a guest is proven through the real tree (tests/integration) and on
real QEMU guests (tests/realvm).
"""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from cloudland_api.models import Role
from tests.api.conftest import Api, Launcher, running


def closed_with(api: Api, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    with api.client.websocket_connect(url, headers=headers or {}) as ws, pytest.raises(WebSocketDisconnect) as info:
        ws.receive_bytes()
    return info.value.code, str(info.value.reason)


def test_refusals(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    accepted = launch("busy")
    url = f"/api/v1/instances/{accepted['instances'][0]['id']}/console"
    assert closed_with(api, url) == (4401, "missing bearer token: send 'Authorization: Bearer <token>' or ?token=")
    code, reason = closed_with(api, url, {"Authorization": "Bearer garbage"})
    assert code == 4401
    code, reason = closed_with(api, url, admin_headers)
    assert code == 4409 and "is building: it has no domain to attach to" in reason
    assert closed_with(api, "/api/v1/instances/999999/console", admin_headers) == (4404, "instance 999999 not found")
    assert closed_with(api, "/api/v1/instances/0/console", admin_headers)[0] == 4404
    other = api.add_user("olga", "other-org", Role.admin)
    assert closed_with(api, url, other)[0] == 4404  # another organisation's instance


def test_token_in_the_query_and_no_tree(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = running(api, launch)
    token = admin_headers["Authorization"].split()[1]
    code, reason = closed_with(api, f"/api/v1/instances/{instance['id']}/console?token={token}")
    assert (code, reason) == (1011, "no tree is configured (CLOUDLAND_API_ROOT_ENDPOINT is empty)")
