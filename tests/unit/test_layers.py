"""The layer rule (docs/architecture.md, "The layer rule"), checked on every import of every module.

Imports are read with ``ast``, not by importing, so every import counts: function-local ones,
and those under ``if TYPE_CHECKING:`` (a type is a dependency too; hiding a cycle there, or in
a function, is not breaking it: the shared piece moves into a module both sides import).
"""

from __future__ import annotations

import ast
import configparser
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CORE, PROTO, API, LAUNCHER, AGENTS, CLI = (
    "cloudland", "cloudland_proto", "cloudland_api", "cloudland_launcher", "cloudland_agents", "cloudland_cli")
LAYERS = (CORE, PROTO, API, LAUNCHER, AGENTS, CLI)


@dataclass(frozen=True)
class Rule:
    """Modules of the ``importers`` packages may not import any of the ``forbidden`` ones."""

    text: str
    importers: frozenset[str]
    forbidden: frozenset[str]


def _rule(text: str, importers: set[str], forbidden: set[str]) -> Rule:
    return Rule(text, frozenset(importers), frozenset(forbidden))


RULES = (
    _rule("nothing imports cloudland_api but the API itself (and the tests)", set(LAYERS) - {API}, {API}),
    _rule("the core (cloudland) imports none of api, launcher, agents, cli", {CORE}, {API, LAUNCHER, AGENTS, CLI}),
    _rule("the API reaches the tree over gRPC: it imports none of launcher, agents, cli", {API},
          {LAUNCHER, AGENTS, CLI}),
    _rule("launcher imports none of api, agents, cli", {LAUNCHER}, {API, AGENTS, CLI}),
    _rule("agents import none of api, cli", {AGENTS}, {API, CLI}),
    _rule("the CLI imports no server code: none of api, launcher, agents", {CLI}, {API, LAUNCHER, AGENTS}),
    _rule("the contracts (cloudland_proto) import none of our other packages", {PROTO}, set(LAYERS) - {PROTO}),
)
CYCLE_RULE = "no import cycle between modules within a package"


@dataclass(frozen=True)
class Import:
    """One imported module, as written at ``path:line`` in module ``importer``."""

    importer: str
    target: str
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def packages_of(setup_cfg: Path) -> dict[str, Path]:
    """Import name -> folder of each layer, as setup.cfg installs them (package_dir)."""
    options = configparser.ConfigParser()
    options.read(setup_cfg)
    folders = {name: name for name in LAYERS}
    for line in options["options"]["package_dir"].splitlines():
        name, _, folder = line.partition("=")
        if name.strip() in folders:
            folders[name.strip()] = folder.strip()
    return {name: setup_cfg.parent / folder for name, folder in folders.items()}


def modules_of(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under each package's folder."""
    modules = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth: in functions, classes, try and if blocks."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is one of ours (or ``name``, for a third party)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """What ``module`` imports: our modules resolved to files' names, others as written."""
    is_package = path.name == "__init__.py"
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [_known(alias.name, modules) for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the module's own package, up level - 1
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [_known(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, modules)
                       for alias in node.names]
        for target in dict.fromkeys(targets):
            yield Import(module, target, path, node.lineno)


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (a closed path of modules) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan; a few hundred modules are well within the recursion limit
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_closed_path(component, edges) for component in components]


def _closed_path(component: list[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first within the component)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, {})):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component of two or more always has one


def check_layers(root: Path, packages: dict[str, Path]) -> list[str]:
    """Every violation of RULES and of CYCLE_RULE under ``packages``, one line each: file:line: rule: what."""
    modules = modules_of(packages)
    violations = []
    edges: dict[str, dict[str, Import]] = {}
    for module, path in modules.items():
        package = module.split(".")[0]
        for imp in imports_of(module, path, modules):
            imported = imp.target.split(".")[0]
            for rule in RULES:
                if package in rule.importers and imported in rule.forbidden:
                    violations.append(f"{imp.where(root)}: {rule.text}: {module} imports {imp.target}")
            if imported == package and imp.target != module and imp.target in modules:
                edges.setdefault(module, {}).setdefault(imp.target, imp)
    for cycle in _cycles(edges):
        steps = [edges[a][b] for a, b in zip(cycle, cycle[1:])]
        chain = " -> ".join(f"{step.importer} ({step.where(root)})" for step in steps) + f" -> {cycle[0]}"
        violations.append(f"{steps[0].where(root)}: {CYCLE_RULE}: {chain}")
    return violations


def test_the_code_keeps_the_layer_rule() -> None:
    packages = packages_of(REPO / "setup.cfg")
    assert set(packages) == set(LAYERS) and all(folder.is_dir() for folder in packages.values()), packages
    assert len(modules_of(packages)) > 50  # the walk found the code, not an empty folder
    violations = check_layers(REPO, packages)
    assert not violations, "\n".join(violations)


# -- the checker itself, on small trees with a violation ---------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    packages = {name: tmp_path / name.removeprefix("cloudland_") for name in LAYERS}
    packages[CORE] = tmp_path / "cloudland"
    for folder in packages.values():
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
    return packages


CLEAN = {
    "cloudland/errors.py": "class CloudLandError(Exception):\n    pass\n",
    "cloudland/client.py": "from cloudland.errors import CloudLandError\nfrom cloudland_proto import wire\n",
    "proto/wire.py": "import json\n",
    "launcher/root.py": "from cloudland import client\n",
    "agents/leaf.py": "from cloudland_launcher.root import *\nimport cloudland.errors\n",
    "api/app.py": "from cloudland.client import CloudLandError\nfrom . import models\n",
    "api/models.py": "import sqlalchemy\n",
    "cli/main.py": "from cloudland_cli import tree\n",
    "cli/tree.py": "from cloudland_cli.common import out\n",
    "cli/common.py": "import rich\n",
}


def test_a_tree_that_keeps_the_rule_has_no_violation(tmp_path: Path) -> None:
    assert check_layers(tmp_path, _tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(("path", "text", "rule"), [
    ("cloudland/config.py", "import os\n\n\ndef f():\n    from cloudland_cli import main\n", RULES[1].text),
    ("cli/vm.py", "from cloudland_api.schemas import JobPublic\n", RULES[0].text),
    ("cli/vm.py", "import cloudland_launcher.root\n", RULES[5].text),
    ("launcher/hostd.py", "x = 1\nfrom cloudland_agents import leaf\n", RULES[3].text),
    ("agents/ops.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cloudland_cli import common\n",
     RULES[4].text),
    ("api/sync.py", "try:\n    import cloudland_launcher\nexcept ImportError:\n    pass\n", RULES[2].text),
    ("proto/build.py", "from cloudland.config import DEFAULT_GRPC\n", RULES[6].text),
])
def test_a_forbidden_import_is_reported_with_its_file_line_and_rule(tmp_path: Path, path: str, text: str,
                                                                    rule: str) -> None:
    violations = check_layers(tmp_path, _tree(tmp_path, CLEAN | {path: text}))
    line = 1 + text.splitlines().index(next(x for x in text.splitlines() if "cloudland" in x))
    assert any(v.startswith(f"{path}:{line}: {rule}: ") for v in violations), violations


def test_an_import_cycle_is_reported_even_through_a_function_local_import(tmp_path: Path) -> None:
    files = CLEAN | {"cli/common.py": "import rich\n\n\ndef run():\n    from cloudland_cli.main import app\n"}
    violations = check_layers(tmp_path, _tree(tmp_path, files))
    assert violations == [
        f"cli/common.py:5: {CYCLE_RULE}: cloudland_cli.common (cli/common.py:5) -> "
        "cloudland_cli.main (cli/main.py:1) -> cloudland_cli.tree (cli/tree.py:1) -> cloudland_cli.common"
    ]


def test_a_relative_import_cycle_is_reported(tmp_path: Path) -> None:
    files = CLEAN | {"api/models.py": "from .app import thing\n"}
    violations = check_layers(tmp_path, _tree(tmp_path, files))
    assert [v.split(": ")[1] for v in violations] == [CYCLE_RULE], violations
    assert "cloudland_api.app (api/app.py:2) -> cloudland_api.models (api/models.py:1)" in violations[0]


def test_an_import_only_for_type_checkers_makes_a_cycle_too(tmp_path: Path) -> None:
    files = CLEAN | {"cli/common.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from cloudland_cli.main import app\n"}
    violations = check_layers(tmp_path, _tree(tmp_path, files))
    assert [v.split(": ")[:2] for v in violations] == [["cli/common.py:3", CYCLE_RULE]], violations
