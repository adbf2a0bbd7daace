"""``cloudland group`` against a real API (issue 14): create, add-user, grant on the organisation
and on a project, show, list, revoke, remove-user, delete; and ``project grant`` by a project's
own admin, which acts in that project."""

from __future__ import annotations

import json
from pathlib import Path

from cloudland_api.models import Role
from tests.api.conftest import Api
from tests.identityfixtures import run_cli, serve

PASSWORD = "pw-" + "x" * 8


def test_groups_from_the_cli(api: Api, tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    api.add_user("owner", "acme", Role.admin, PASSWORD)
    api.add_user("bob", "acme", Role.reader, PASSWORD)
    api.add_user("mia", "acme", Role.reader, PASSWORD)
    with serve(api.app) as url:
        def login(username: str, where: Path) -> None:
            done = run_cli(where, "login", "--endpoint", url, "--username", username, "--password-stdin",
                           stdin=PASSWORD + "\n")
            assert done.exit_code == 0, done.output

        login("owner", config)
        assert run_cli(config, "project", "create", "dev").exit_code == 0
        made = run_cli(config, "group", "create", "ops", "--role", "member")
        assert made.exit_code == 0 and "group" in made.output and "ops created" in made.output, made.output
        added = run_cli(config, "group", "add-user", "ops", "bob")
        assert added.exit_code == 0 and "bob is in group ops" in added.output, added.output
        granted = run_cli(config, "group", "grant", "ops", "--role", "admin", "--project", "dev")
        assert granted.exit_code == 0 and "ops is admin on project dev" in granted.output, granted.output
        shown = json.loads(run_cli(config, "group", "show", "ops", "--json").output)
        assert [m["username"] for m in shown["members"]] == ["bob"] and shown["role"] == "member"
        assert [(p["project"], p["role"]) for p in shown["projects"]] == [("dev", "admin")]
        listed = run_cli(config, "group", "list")
        assert listed.exit_code == 0 and "ops" in listed.output and "member" in listed.output, listed.output
        # Bob, admin of dev through ops, grants mia a role there (acting in dev), not on default.
        bob = tmp_path / "bob.json"
        login("bob", bob)
        assert json.loads(run_cli(bob, "whoami", "--json").output)["role"] == "member"
        done = run_cli(bob, "project", "grant", "dev", "mia", "--role", "member")
        assert done.exit_code == 0 and "mia is member on project dev" in done.output, done.output
        refused = run_cli(bob, "project", "grant", "default", "mia", "--role", "admin")
        assert refused.exit_code != 0 and "needs admin in project 'default'" in refused.output, refused.output
        assert run_cli(bob, "project", "revoke", "dev", "mia").exit_code == 0
        # Taken away again.
        assert run_cli(config, "group", "revoke", "ops", "--project", "dev").exit_code == 0
        assert run_cli(config, "group", "revoke", "ops").exit_code == 0
        assert run_cli(config, "group", "remove-user", "ops", "bob").exit_code == 0
        assert json.loads(run_cli(bob, "whoami", "--json").output)["role"] == "reader"
        shown = json.loads(run_cli(config, "group", "show", "ops", "--json").output)
        assert (shown["role"], shown["members"], shown["projects"]) == (None, [], [])
        bad = run_cli(config, "group", "grant", "ops", "--role", "owner")
        assert bad.exit_code == 2 and "role must be admin, member or reader" in bad.output, bad.output
        deleted = run_cli(config, "group", "delete", "ops", "--yes")
        assert deleted.exit_code == 0 and "deleted" in deleted.output
        assert json.loads(run_cli(config, "group", "list", "--json").output)["items"] == []
