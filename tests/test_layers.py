"""The layers hold: each package imports only the ones below it, and the code type-checks strictly.

    core        plain types and settings; imports nothing of ours
    pricing     prices and costs                       (core)
    ledger      logs, fold, snapshots, alerts          (core)
    analytics   ClickHouse store, sink, queries        (core, pricing, ledger)
    proxy       the HTTP surfaces and the composition root (anything below)

Every import of ours goes through the installed ``llmgw`` namespace: a bare ``import proxy``
would load a second copy of a module beside ``llmgw.proxy`` (two app keys, two registries).
docs/architecture.md explains the layers and where each kind of change goes.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "pricing", "ledger", "analytics", "proxy")
# Who may import whom (pricing and ledger are side by side: neither imports the other).
ALLOWED = {
    "core": set(),
    "pricing": {"core"},
    "ledger": {"core"},
    "analytics": {"core", "pricing", "ledger"},
    "proxy": {"core", "pricing", "ledger", "analytics"},
}


def _imports(path: Path, package: list[str]) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                out.append((node.lineno, "llmgw." + ".".join(base + ([node.module] if node.module else []))))
            elif node.module == "llmgw":
                out.extend((node.lineno, f"llmgw.{a.name}") for a in node.names)
            elif node.module:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return out


def _modules() -> list[tuple[str, Path, list[str]]]:
    mods = []
    for top in LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            package = list(rel if path.name == "__init__.py" else rel[:-1])
            if package and package[-1] == "__init__":
                package = package[:-1]
            mods.append((top, path, package))
    return mods


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = []
    for top, path, package in _modules():
        if top != layer:
            continue
        for line, target in _imports(path, package):
            parts = target.split(".")
            if parts[0] in LAYERS:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: bare `{target}` (use llmgw.{target})")
            elif parts[0] == "llmgw" and len(parts) > 1 and parts[1] != top and parts[1] not in ALLOWED[top]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {top} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_contract_itself_refuses_an_upward_import(tmp_path: Path) -> None:
    """The check above can fail: a ledger module importing the proxy is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from llmgw.proxy.app import create_app\nfrom ..core import events\n")
    targets = [t for _, t in _imports(bad, ["ledger"])]
    assert targets == ["llmgw.proxy.app", "llmgw.core"]
    assert "proxy" not in ALLOWED["ledger"] and "core" in ALLOWED["ledger"]


def test_tests_and_benchmarks_use_the_namespace_too() -> None:
    wrong = []
    for folder in ("tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, target in _imports(path, []):
                if target.split(".")[0] in LAYERS:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: bare `{target}`")
    assert not wrong, "\n".join(wrong)


def test_every_package_folder_is_installed_under_llmgw() -> None:
    """pyproject lists the packages by hand (the folders map to llmgw.*): a new subpackage must join."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"llmgw." + ".".join(d.relative_to(ROOT).parts) for top in LAYERS
               for d in [ROOT / top, *(ROOT / top).rglob("*")] if d.is_dir() and (d / "__init__.py").exists()}
    assert set(tool["packages"]) == folders
    assert tool["package-dir"] == {f"llmgw.{t}": t for t in LAYERS}


def test_the_packages_type_check_strictly() -> None:
    """``mypy --strict`` (settings in pyproject) over the installed names. mypy cannot follow setuptools'
    editable finder, so it reads a tree of links ``llmgw/<package> -> <folder>`` beside its cache."""
    tree = ROOT / ".mypy_cache" / "tree" / "llmgw"
    tree.mkdir(parents=True, exist_ok=True)
    for top in LAYERS:
        link = tree / top
        if not link.is_symlink():
            link.symlink_to(ROOT / top, target_is_directory=True)
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "llmgw"],
                         cwd=tree.parent, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
