"""Imports run one way: bench/ -> services/ -> shared/, and no service imports another.

``services/cli.py`` and ``services/db_cli.py`` are the composition root (the ``tagloop`` command
and ``tagloop db migrate`` wire every service together); bench/ reaches the command line through
the ``tagloop.commands`` entry points, not by being imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = {ROOT / "services" / "cli.py", ROOT / "services" / "db_cli.py"}


def imported_modules(relpath: Path, source: str) -> set[str]:
    """Every module ``source`` (the file at ``relpath``) imports, at the top or inside functions."""
    package = ".".join(relpath.with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, str(relpath))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(relpath: Path, source: str) -> list[str]:
    """What the file at ``relpath`` (relative to the repository) imports against the layering."""
    layer, service = relpath.parts[0], relpath.parts[1] if len(relpath.parts) > 2 else None
    in_root = ROOT / relpath in COMPOSITION_ROOT
    bad = []
    for module in sorted(imported_modules(relpath, source)):
        top = module.split(".")
        upward = top[0] == "bench" or (layer == "shared" and top[0] == "services")
        sideways = layer == "services" and not in_root and top[0] == "services" and top[1:2] not in ([], [service])
        if layer in {"shared", "services"} and (upward or sideways):
            bad.append(module)
    return bad


def python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def test_the_checker_sees_what_it_must_forbid() -> None:
    source = "from services.trainer.labels import build_vocabulary\nimport bench.loop\nfrom . import pipeline\n"
    assert violations(Path("services/tagger/probe.py"), source) == [
        "bench.loop", "services.trainer.labels", "services.trainer.labels.build_vocabulary",
    ]
    assert violations(Path("services/cli.py"), source) == ["bench.loop"]
    assert violations(Path("shared/probe.py"), "from services import cli\n") == ["services", "services.cli"]


@pytest.mark.parametrize("path", python_files("shared", "services"), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    relpath = path.relative_to(ROOT)
    assert violations(relpath, path.read_text()) == [], f"{relpath} imports across layers"


def test_bench_reaches_the_command_line_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="tagloop.commands")}
    assert plugins.get("bench") == "bench.cli:register"
    from services.cli import app

    names = {c.name for c in app.registered_commands}
    groups = {g.name: {c.name for c in g.typer_instance.registered_commands} for g in app.registered_groups}
    assert "demo" in names
    assert {"tagger", "feedback", "learner", "train", "trainer", "tag-runtime", "all"} <= groups["bench"]
    assert "loop" in groups["eval"]
