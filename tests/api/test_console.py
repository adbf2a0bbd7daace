"""The console WebSocket's refusals, each a close code and a reason (no tree here).

Output relayed from a guest is proven through the real tree (tests/integration) and on
real QEMU guests (tests/realvm).
"""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from cloudland_api.models import Role
from cloudland_api.services.consoles import TICKET_LIFETIME_S, ConsoleTickets
from tests.api.conftest import Api, Launcher, running


def closed_with(api: Api, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    with api.client.websocket_connect(url, headers=headers or {}) as ws, pytest.raises(WebSocketDisconnect) as info:
        ws.receive_bytes()
    return info.value.code, str(info.value.reason)


def test_refusals(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    accepted = launch("busy")
    url = f"/api/v1/instances/{accepted['instances'][0]['id']}/console"
    assert closed_with(api, url) == (4401, "missing credentials: send 'Authorization: Bearer <token>' or a ?ticket= "
                                           "from .../console/ticket")
    code, reason = closed_with(api, url, {"Authorization": "Bearer garbage"})
    assert code == 4401
    code, reason = closed_with(api, url, admin_headers)
    assert code == 4409 and "is building: it has no domain to attach to" in reason
    assert closed_with(api, "/api/v1/instances/999999/console", admin_headers) == (4404, "instance 999999 not found")
    assert closed_with(api, "/api/v1/instances/0/console", admin_headers)[0] == 4404
    other = api.add_user("olga", "other-org", Role.admin)
    assert closed_with(api, url, other)[0] == 4404  # another organisation's instance


def test_a_token_in_the_url_is_refused(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    """URLs are logged (uvicorn's access log): a token is taken from the header only (issue 15)."""
    instance = running(api, launch)
    token = admin_headers["Authorization"].split()[1]
    assert closed_with(api, f"/api/v1/instances/{instance['id']}/console?token={token}") == (
        4401, "a token in the URL is refused (URLs are logged): send it in the Authorization header")


def ticket(api: Api, instance_id: int, headers: dict[str, str]) -> str:
    reply = api.client.post(f"/api/v1/instances/{instance_id}/console/ticket", headers=headers)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert set(body) == {"ticket", "expires_at"} and len(body["ticket"]) >= 40
    return str(body["ticket"])


def test_a_ticket_opens_the_console_once(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance, other = running(api, launch, "con"), running(api, launch, "con2", hypervisor=8)
    url = f"/api/v1/instances/{instance['id']}/console?ticket="
    one = ticket(api, instance["id"], admin_headers)
    # Let in: with no tree here, the console then ends saying so.
    assert closed_with(api, url + one) == (1011, "no tree is configured (CLOUDLAND_API_ROOT_ENDPOINT is empty)")
    used = (4401, "console ticket unknown, used or expired: ask POST .../console/ticket for another")
    assert closed_with(api, url + one) == used
    assert closed_with(api, url + "made-up") == used
    two = ticket(api, other["id"], admin_headers)
    assert closed_with(api, url + two) == (4401, f"the console ticket is not for instance {instance['id']}")
    assert closed_with(api, f"/api/v1/instances/{other['id']}/console?ticket={two}")[0] == 4401  # spent by the try
    reader = api.add_user("rita", "admin", Role.reader)  # any role may watch
    assert closed_with(api, url + ticket(api, instance["id"], reader))[0] == 1011


def test_a_ticket_expires(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    now = [1000.0]
    api.app.state.console_tickets = ConsoleTickets(clock=lambda: now[0])
    instance = running(api, launch)
    stale = ticket(api, instance["id"], admin_headers)
    fresh = ticket(api, instance["id"], admin_headers)
    now[0] += TICKET_LIFETIME_S
    url = f"/api/v1/instances/{instance['id']}/console?ticket="
    assert closed_with(api, url + stale)[0] == 4401
    now[0] -= 1
    assert closed_with(api, url + fresh)[0] == 1011


def test_ticket_refusals(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    building = launch("busy")["instances"][0]
    path = f"/api/v1/instances/{building['id']}/console/ticket"
    reply = api.client.post(path, headers=admin_headers)
    assert reply.status_code == 409 and "is building: it has no domain to attach to" in reply.json()["error"]["message"]
    assert api.client.post("/api/v1/instances/999999/console/ticket", headers=admin_headers).status_code == 404
    assert api.client.post(path, headers=api.add_user("olga", "other-org", Role.admin)).status_code == 404
    assert api.client.post(path).status_code == 401


def test_tickets_outstanding_are_bounded(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    api.app.state.console_tickets = ConsoleTickets(limit=2)
    instance = running(api, launch)
    ticket(api, instance["id"], admin_headers)
    ticket(api, instance["id"], admin_headers)
    reply = api.client.post(f"/api/v1/instances/{instance['id']}/console/ticket", headers=admin_headers)
    assert (reply.status_code, reply.headers["retry-after"]) == (429, str(TICKET_LIFETIME_S))
    assert reply.json()["error"] == {"code": "too_many_requests",
                                     "message": f"2 console tickets are outstanding: retry in {TICKET_LIFETIME_S} s"}
