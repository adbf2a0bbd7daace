"""Sign-in with an organisation's OpenID provider (issue 14), against a real one started by the
tests (node oidc-provider, tests/identityfixtures.py): the device authorization grant driven as
the CLI drives it, the provider's verification pages driven as a person would, and the API's
checks of the ID token (issuer, audience, signature by a published key, expiry, nonce, one use)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudland_cli.oidc import device_sign_in
from cloudland_cli.restclient import ApiClient
from tests.api.conftest import Api
from tests.identityfixtures import (
    CLIENT_ID, LOCAL_PASSWORD, OidcProvider, confirm_device, free_port, new_signing_key, organisation_with, serve
)

@pytest.fixture
def acme(api: Api, admin_headers: dict[str, str], oidc_provider: OidcProvider) -> int:
    """Organisation acme, trusting ``oidc_provider``."""
    return organisation_with(api.client, admin_headers, "acme", "oidc", oidc_provider.oidc_settings())


def me(api: Api, token: str) -> Any:
    return api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


class RecordingClient(ApiClient):
    """The CLI's API client, keeping the ID tokens it exchanges."""

    id_tokens: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if path == "/login/oidc":
            self.id_tokens.append(kwargs["json"]["id_token"])
        return super().request(method, path, **kwargs)


def sign_in_as(url: str, login: str, organisation: str = "acme") -> dict[str, Any]:
    """The CLI's device sign-in, with the person confirming the code the moment it is shown."""
    def show(text: str) -> None:
        confirm_device(text.split("open ", 1)[1].split()[0], login)

    with RecordingClient(url) as client:
        return device_sign_in(client, organisation, None, show, sleep=lambda _s: None)


def test_device_flow_sign_in_maps_the_groups_claim_to_roles(api: Api, acme: int) -> None:
    with serve(api.app) as url:
        alice = sign_in_as(url, "alice")
        bob = sign_in_as(url, "bob")
        with pytest.raises(Exception, match="'carol' is in no group that organisation 'acme'"):
            sign_in_as(url, "carol")
    account = me(api, alice["token"]).json()
    assert (account["username"], account["organisation"], account["role"]) == ("alice@acme", "acme", "admin")
    assert me(api, bob["token"]).json()["role"] == "member"


def test_roles_follow_the_claims_at_every_sign_in(api: Api, acme: int, oidc_provider: OidcProvider) -> None:
    before = dict(oidc_provider.accounts)
    try:
        with serve(api.app) as url:
            first = sign_in_as(url, "alice")["token"]
            oidc_provider.set_accounts({**before, "alice": {**before["alice"], "groups": ["cloud-users"]}})
            assert me(api, sign_in_as(url, "alice")["token"]).json()["role"] == "member"
            assert me(api, first).json()["role"] == "member"
    finally:
        oidc_provider.set_accounts(before)


def test_rotating_the_providers_key_fails_no_sign_in(api: Api, acme: int, oidc_provider: OidcProvider) -> None:
    import jwt

    # A kid of its own: the API's key cache outlives one test, and a provider never reuses a kid.
    new_kid = f"k2-{os.urandom(4).hex()}"
    _, new_jwk = new_signing_key(new_kid)
    with serve(api.app) as url:
        before = sign_in_as(url, "alice")  # the API has fetched the provider's keys (k1) just now
        try:
            oidc_provider.rotate([new_jwk, oidc_provider.jwk])  # the new key signs from now on; k1 still published
            rotated = time.monotonic()
            after = sign_in_as(url, "alice")  # signed by the new key, unknown to the API's cached keys
            took = time.monotonic() - rotated
            assert jwt.get_unverified_header(RecordingClient.id_tokens[-1])["kid"] == new_kid
            old = exchange(api, oidc_provider.sign(_claims(oidc_provider)))  # a k1 token still in flight
        finally:
            oidc_provider.rotate([oidc_provider.jwk])
    assert me(api, before["token"]).status_code == 200
    assert me(api, after["token"]).json()["role"] == "admin"
    assert old.status_code == 200, old.text
    assert took < 20  # a restart, a device flow and at most one cooldown's wait, on a loaded machine


def test_the_providers_id_token_is_a_bearer_token_too(api: Api, acme: int, oidc_provider: OidcProvider) -> None:
    """An API call with the provider's own token, its role from the token's groups at each request."""
    before = dict(oidc_provider.accounts)
    unknown = oidc_provider.sign(_claims(oidc_provider, sub="dave", preferred_username="dave"))
    reply = me(api, unknown)
    assert reply.status_code == 401 and "sign in once with `cloudland login --oidc" in reply.text
    try:
        with serve(api.app) as url:
            sign_in_as(url, "alice")
            as_admin = RecordingClient.id_tokens[-1]
            oidc_provider.set_accounts({**before, "alice": {**before["alice"], "groups": ["cloud-users"]}})
            sign_in_as(url, "alice")
            as_member = RecordingClient.id_tokens[-1]
    finally:
        oidc_provider.set_accounts(before)
    account = me(api, as_admin).json()
    assert (account["username"], account["organisation"], account["role"]) == ("alice@acme", "acme", "admin")
    assert me(api, as_member).json()["role"] == "member"
    flavor = {"name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1}
    assert api.client.post("/api/v1/flavors", headers={"Authorization": f"Bearer {as_member}"},
                           json=flavor).status_code == 201
    assert api.client.delete("/api/v1/flavors/tiny", headers={"Authorization": f"Bearer {as_member}"}
                             ).status_code == 403
    # The same checks as the exchange: another audience, an expired token, another key.
    other_key, _ = new_signing_key("k1")
    for token, reason in [
            (oidc_provider.sign(_claims(oidc_provider, aud="another-client")), "no organisation trusts"),
            (oidc_provider.sign(_claims(oidc_provider, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
             "ID token expired"),
            (oidc_provider.sign(_claims(oidc_provider), key=other_key), "signature does not verify")]:
        reply = me(api, token)
        assert reply.status_code == 401 and reason in reply.text, reply.text
    assert api.client.post("/api/v1/logout", headers={"Authorization": f"Bearer {as_admin}"}).status_code == 400


def _claims(provider: OidcProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "alice", "preferred_username": "alice",
              "groups": ["cloud-admins"], "iat": now, "exp": now + 300, **changes}
    return {k: v for k, v in claims.items() if v is not None}


def exchange(api: Api, id_token: str, organisation: str = "acme") -> Any:
    return api.client.post("/api/v1/login/oidc", json={"organisation": organisation, "id_token": id_token})


def test_id_tokens_are_refused_with_the_reason(api: Api, acme: int, oidc_provider: OidcProvider) -> None:
    import jwt

    other_key, _ = new_signing_key("k-other")
    past = int(time.time()) - 3600
    cases = [
        (oidc_provider.sign(_claims(oidc_provider, aud="another-client")), "for another audience"),
        (oidc_provider.sign(_claims(oidc_provider, iat=past - 300, exp=past)), "ID token expired"),
        (oidc_provider.sign(_claims(oidc_provider), key=other_key), "signature does not verify"),
        (oidc_provider.sign(_claims(oidc_provider), key=other_key, kid="k-other"), "does not publish (kid 'k-other')"),
        (oidc_provider.sign(_claims(oidc_provider, iss="http://127.0.0.1:1")), "issued by another issuer"),
        (oidc_provider.sign(_claims(oidc_provider, nonce="made-up")), "nonce was not issued by this API"),
        (oidc_provider.sign(_claims(oidc_provider, sub=None)), "invalid ID token"),
        (jwt.encode(_claims(oidc_provider), "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256"),
         "algorithm 'HS256' is not accepted"),
        ("x" * 40, "not a JWT"),
    ]
    for token, reason in cases:
        reply = exchange(api, token)
        assert reply.status_code == 401, (reason, reply.text)
        assert reason in reply.json()["error"]["message"], reply.text
    assert exchange(api, oidc_provider.sign(_claims(oidc_provider)), organisation="admin").status_code == 400


def test_the_nonce_is_the_apis_and_an_id_token_is_exchanged_once(api: Api, acme: int, admin_headers: dict[str, str],
                                                                oidc_provider: OidcProvider,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    start = api.client.post("/api/v1/login/oidc/start", json={"organisation": "acme"})
    assert start.status_code == 200, start.text
    assert start.json()["device_authorization_endpoint"] == f"{oidc_provider.issuer}/device/auth"
    token = oidc_provider.sign(_claims(oidc_provider, nonce=start.json()["nonce"]))
    first = exchange(api, token)
    assert first.status_code == 200, first.text
    assert me(api, first.json()["token"]).json()["role"] == "admin"
    again = exchange(api, token)
    assert again.status_code == 401 and "already exchanged" in again.json()["error"]["message"]
    assert token not in caplog.text and first.json()["token"] not in caplog.text  # no token is ever logged
    # Another organisation's nonce does not do for this one.
    organisation_with(api.client, admin_headers, "beta", "oidc", oidc_provider.oidc_settings())
    beta_nonce = api.client.post("/api/v1/login/oidc/start", json={"organisation": "beta"}).json()["nonce"]
    reply = exchange(api, oidc_provider.sign(_claims(oidc_provider, nonce=beta_nonce)))
    assert reply.status_code == 401 and "another organisation" in reply.json()["error"]["message"]


def test_a_provider_that_does_not_answer_is_a_503_naming_it(api: Api, acme: int, admin_headers: dict[str, str],
                                                            oidc_provider: OidcProvider) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reply = api.client.put(f"/api/v1/organisations/{acme}/oidc", headers=admin_headers,
                           json=oidc_provider.oidc_settings(issuer=dead))
    assert reply.status_code == 200
    started = api.client.post("/api/v1/login/oidc/start", json={"organisation": "acme"})
    assert started.status_code == 503
    assert f"organisation 'acme''s OpenID provider {dead} did not answer" in started.json()["error"]["message"]
    assert exchange(api, oidc_provider.sign(_claims(oidc_provider, iss=dead))).status_code == 503
    # The local break-glass admin of the organisation is not the provider's to refuse.
    assert api.client.post("/api/v1/login", json={"username": "acme-admin", "password": LOCAL_PASSWORD,
                                                  "organisation": "acme"}).status_code == 200


@pytest.mark.parametrize(("change", "field"), [
    ({"issuer": "ftp://example.org"}, "issuer"),
    ({"client_id": ""}, "client_id"),
    ({"roles": {"g": "owner"}}, "roles"),
    ({"timeout_s": 100}, "timeout_s"),
])
def test_bad_settings_are_a_4xx_naming_the_field(api: Api, acme: int, admin_headers: dict[str, str],
                                                 oidc_provider: OidcProvider, change: dict[str, Any],
                                                 field: str) -> None:
    reply = api.client.put(f"/api/v1/organisations/{acme}/oidc", headers=admin_headers,
                           json=oidc_provider.oidc_settings(**change))
    assert 400 <= reply.status_code < 500 and field in reply.text, reply.text
    assert api.client.post("/api/v1/login/oidc", json={"organisation": "acme", "id_token": "a b"}).status_code == 422
    assert api.client.post("/api/v1/login/oidc/start", json={"organisation": "nowhere"}).status_code == 400


def test_cloudland_login_oidc_prints_a_url_and_a_code_and_polls(api: Api, acme: int, tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    env = {**os.environ, "CLOUDLAND_CONFIG": str(config), "CLOUDLAND_TOKEN": "", "CLOUDLAND_ENDPOINT": ""}
    cloudland = [sys.executable, "-m", "cloudland_cli"]
    with serve(api.app) as url:
        cli = subprocess.Popen([*cloudland, "login", "--oidc", "--organisation", "acme", "--endpoint", url],
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        try:
            assert cli.stderr is not None
            shown = cli.stderr.readline()
            assert "To sign in to 'acme', open http://" in shown, shown + cli.stderr.read()
            code_line = cli.stderr.readline()
            assert "confirm the code" in code_line
            confirm_device(shown.split("open ", 1)[1].split()[0], "alice")
            stdout, stderr = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 0, stderr
        assert "through 'acme''s OpenID provider" in stdout
        who = subprocess.run([*cloudland, "whoami", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert who.returncode == 0, who.stderr
    assert '"username": "alice@acme"' in who.stdout and '"role": "admin"' in who.stdout
