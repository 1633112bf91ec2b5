"""The shape the code promises: one declaration of the fast-path options, backends that load their
package only when used, config tables declared by the backends, no getattr probes of sessions,
no import cycles, no oversized modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from posture import entry, options

SRC = Path(__file__).resolve().parents[2] / "src" / "posture"


def _typer_params(command: str) -> dict[str, tuple[str, object]]:
    import typer

    from posture import cli

    click_cmd = typer.main.get_command(cli.app).commands[command]  # type: ignore[attr-defined]
    return {p.name: (p.opts[0], p.default) for p in click_cmd.params if p.opts[0].startswith("--")}


@pytest.mark.parametrize("command, declared", [("exec", options.EXEC), ("escalate", options.ESCALATE)])
def test_fast_path_and_typer_share_one_declaration(command: str, declared: tuple[options.Option, ...]) -> None:
    typer_side = _typer_params(command)
    for opt in declared:
        assert typer_side.get(opt.dest) == (opt.flag, opt.default), (command, opt)
    extra = set(typer_side) - {o.dest for o in declared} - {"abort"}  # --abort goes to typer on purpose
    assert not extra, f"typer's {command} has options the fast path does not know: {extra}"


def test_fast_path_parses_what_typer_accepts() -> None:
    parsed = entry.parse_exec(["--level", "l2", "--profile=shell", "--untrusted-input", "proj", "--", "make", "-j2"])
    assert parsed == {"level": "l2", "profile": "shell", "intent": None, "untrusted_input": True, "network": None, "session": None, "on_trigger": None,
                      "path": Path("proj"), "argv": ["make", "-j2"]}
    assert entry.parse_exec(["--bogus", "--", "x"]) is None  # unusual: typer answers it
    assert entry.parse_escalate(["--to", "l4", "--reason", "r"]) == {"session": None, "to": "l4", "reason": "r"}
    assert entry.parse_escalate(["--abort"]) is None


def test_loading_plugins_imports_no_backend_package() -> None:
    code = ("import sys; from posture import plugins; plugins.backends(); plugins.config_extensions(); "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['posture','l2'],['posture','l3'],['posture','l4'],['posture','netd']) ))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_backend_tables_come_from_the_backends() -> None:
    from posture import config, plugins

    ext = plugins.config_extensions()
    assert set(ext.tables) == {"l2", "l3", "l4"}
    assert not {"l2", "l3", "l4"} & set(config.CORE_USER_SCHEMA)
    user, repo, ignored = config.schemas(ext)
    assert "l3" in user and "l3" not in repo and "l3" in ignored


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def test_the_core_never_probes_a_session_with_getattr() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr") and node.args:
                target = node.args[0]
                name = getattr(target, "id", None) or getattr(target, "attr", None)
                if name in ("session", "settings", "view", "record", "backend"):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def test_no_module_is_oversized() -> None:
    big = [f"{p.relative_to(SRC)}: {n}" for p in _modules() if (n := len(p.read_text().splitlines())) > 520]
    assert not big, big


def _imports_of(path: Path) -> set[str]:
    """Modules of posture that `path` imports (absolute names), at any depth in the file."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    if rel.name == "__init__":
        package = list(rel.parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                mod = node.module or ""
            if mod.startswith("posture"):
                found.add(mod)
                for alias in node.names:
                    found.add(f"{mod}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("posture"))
    return found


def test_no_import_cycles_between_modules() -> None:
    names = {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in _modules()}
    graph = {name: {m for m in _imports_of(path) if m in names and m != name} for name, path in names.items()}
    # a package's __init__ may be imported by its own members; that is not a cycle of modules
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
