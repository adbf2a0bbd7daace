"""Verified tokens are kept for a moment, and a revocation in this process is seen at once
(api/tokencache.py, issue 15); on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text, update

from cloudland_api import tokencache
from cloudland_api.models import Membership, Role
from cloudland_api.services.identity import Caller
from cloudland_api.tokencache import TokenCache
from tests.api.conftest import Api

ME = "/api/v1/me"


def role(api: Api, headers: dict[str, str]) -> str:
    reply = api.client.get(ME, headers=headers)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["role"])


def test_a_change_behind_the_sessions_back_waits_for_the_ttl_one_through_them_is_seen_at_once(api: Api) -> None:
    api.app.state.token_cache.ttl_s = 600  # nothing expires during the test: only the epoch ends an entry
    bob = api.add_user("bob", "acme", Role.member)
    assert role(api, bob) == "member"
    # Another process on the same database (raw SQL: no Session of ours sees it): the cached
    # caller is still what the token proved, as ``ttl_s`` allows.
    with api.app.state.engine.begin() as connection:
        connection.execute(text("UPDATE memberships SET role = 'reader' WHERE user_id = "
                                "(SELECT id FROM users WHERE username = 'bob')"))
    assert role(api, bob) == "member"
    # A change through any session of this process (a bulk update here) ends every entry.
    with api.app.state.sessions() as session:
        session.execute(update(Membership).where(Membership.role == Role.reader).values(role=Role.admin))
        session.commit()
    assert role(api, bob) == "admin"


def test_logout_and_role_change_through_the_api_count_from_the_next_request(api: Api,
                                                                            admin_headers: dict[str, str]) -> None:
    api.app.state.token_cache.ttl_s = 600
    bob = api.add_user("bob", "acme", Role.member)
    assert role(api, bob) == "member"
    assert api.client.post("/api/v1/logout", headers=bob).status_code == 204
    assert api.client.get(ME, headers=bob).status_code == 401
    assert role(api, admin_headers) == "admin"


def test_what_was_read_before_a_change_is_not_kept() -> None:
    cache = TokenCache(ttl_s=600)
    caller = Caller(1, "bob", 1, Role.member)
    key = cache.key("token-1")
    read_in = tokencache.epoch.value
    tokencache.epoch.bump()  # an identity row changed while the token was being proven
    cache.put(key, caller, read_in)
    assert cache.get(key) is None
    cache.put(key, caller, tokencache.epoch.value)
    assert cache.get(key) == caller
    tokencache.epoch.bump()
    assert cache.get(key) is None
