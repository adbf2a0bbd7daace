"""``cloudland project`` and ``quota`` against a real API (issue 14): create, use (the profile's
current project), --project for one call, grant, quota show and set, delete."""

from __future__ import annotations

import json
from pathlib import Path

from cloudland_api.models import Role
from tests.api.conftest import Api
from tests.identityfixtures import run_cli, serve


def test_projects_and_quotas_from_the_cli(api: Api, tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    with serve(api.app) as url:
        done = run_cli(config, "login", "--endpoint", url, "--username", api.admin.username, "--password-stdin",
                       stdin=api.admin.password + "\n")
        assert done.exit_code == 0, done.output
        made = run_cli(config, "project", "create", "dev")
        assert made.exit_code == 0 and "project" in made.output and "dev created" in made.output, made.output
        listed = json.loads(run_cli(config, "project", "list", "--json").output)["items"]
        assert [(p["name"], p["role"]) for p in listed] == [("default", "admin"), ("dev", "admin")]
        # One call in dev; then dev as the profile's current project.
        assert run_cli(config, "--project", "dev", "vpc", "create", "v1").exit_code == 0
        assert json.loads(run_cli(config, "whoami", "--json").output)["project"] == "default"
        assert json.loads(run_cli(config, "vpc", "list", "--json").output)["items"] == []
        used = run_cli(config, "project", "use", "dev")
        assert used.exit_code == 0 and "acts in project dev" in used.output, used.output
        assert [v["name"] for v in json.loads(run_cli(config, "vpc", "list", "--json").output)["items"]] == ["v1"]
        # Quotas: the operator limits dev's networks; the next create is refused naming the quota.
        limited = run_cli(config, "quota", "set", "networks=1", "ports=none")
        assert limited.exit_code == 0 and "networks=1, ports=none" in limited.output, limited.output
        shown = run_cli(config, "quota", "show")
        assert shown.exit_code == 0 and "networks" in shown.output and "project dev" in shown.output, shown.output
        quota = {line["resource"]: line for line in json.loads(run_cli(config, "quota", "show", "--json").output)["items"]}
        assert (quota["networks"]["used"], quota["networks"]["limit"], quota["ports"]["limit"]) == (1, 1, None)
        refused = run_cli(config, "vpc", "create", "v2")
        assert refused.exit_code != 0 and "quota networks of project 'dev' exceeded" in refused.output, refused.output
        bad = run_cli(config, "quota", "set", "networks")
        assert bad.exit_code == 2 and "KEY=NUMBER" in bad.output
        # Grant a role by username; a project that holds a VPC is not deleted.
        api.add_user("bob", "admin", Role.reader)
        granted = run_cli(config, "project", "grant", "dev", "bob", "--role", "member")
        assert granted.exit_code == 0 and "bob is member on project dev" in granted.output, granted.output
        held = run_cli(config, "project", "delete", "dev", "--yes")
        assert held.exit_code != 0 and "still holds vpcs" in held.output, held.output
        assert run_cli(config, "project", "use").exit_code == 0
        assert json.loads(run_cli(config, "whoami", "--json").output)["project"] == "default"
        unknown = run_cli(config, "--project", "nope", "vpc", "list")
        assert unknown.exit_code != 0 and "project 'nope' not found" in unknown.output, unknown.output
