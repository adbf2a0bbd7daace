"""The app's routers may be matched in any order: no two of them answer the same path
(api/app.py includes the hottest first, issue 15)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cloudland_api.app import create_app
from cloudland_api.settings import ApiSettings


def _routes(routes: list[Any], owner: object, found: list[tuple[object, Any]]) -> list[tuple[object, Any]]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router (FastAPI's own wrapper)
            _routes(route.original_router.routes, route, found)
        elif hasattr(route, "routes"):  # a plain Starlette router or mount
            _routes(route.routes, route, found)
        else:
            found.append((owner, route))
    return found


def test_no_two_routers_answer_one_path(tmp_path: Path) -> None:
    app = create_app(ApiSettings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", state_dir=tmp_path,
                                 root_endpoint=""))
    routes = _routes(app.router.routes, None, [])
    assert len(routes) > 100 and any(route.path == "/instances/{instance_id:int}" for _, route in routes)
    overlaps = []
    for owner, route in routes:
        concrete = re.sub(r"{[^}]+}", "1", route.path)
        overlaps += [f"{route.path} ~ {other.path}" for other_owner, other in routes
                     if other_owner is not owner and other.path_regex.fullmatch(concrete)]
    assert overlaps == []
    app.state.engine.dispose()
