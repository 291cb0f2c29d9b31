"""The package's imports point down DESIGN.md's layers and have no cycles.

Walks every module's imports with ast (function-level imports included: a lazy import that
points up is still a dependency that points up) and fails on any edge from a lower layer to a
higher one, and on any import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustscale"

# Lower number = lower layer. A module may import modules of its own layer or below; a
# subpackage's modules share its layer unless named here. The stages follow DESIGN.md's
# recipe -> train -> run directory -> eval -> zoo -> analysis, with two deliberate placements:
# the run-directory contract (runs.py: typed records, one reader/writer per file) sits below
# every stage that writes or reads it, and evaluation sits below training, whose --final-eval
# evaluates the run it has just trained.
LAYERS: dict[str, int] = {
    "robustscale.errors": 0,
    "robustscale._callable": 0,
    "robustscale.files": 0,
    "robustscale.device": 0,
    "robustscale.progress": 0,
    "robustscale.threads": 0,
    "robustscale.site_config": 0,
    "robustscale.recipe": 1,
    "robustscale.checkpoint_io": 2,
    "robustscale.attacks": 2,
    "robustscale.data": 2,
    "robustscale.models": 2,
    "robustscale.losses": 3,
    "robustscale.cost": 3,
    "robustscale.trackers": 3,
    "robustscale.foreign_checkpoints": 3,
    "robustscale.runs": 4,
    "robustscale.evaluate": 5,
    "robustscale.train": 6,
    "robustscale.zoo": 7,
    "robustscale.export": 7,
    "robustscale.analysis": 8,
    "robustscale.sweep": 9,
    "robustscale.demo": 10,
    "robustscale.study": 10,
    "robustscale.commands": 11,
    "robustscale.cli": 12,
    "robustscale.__main__": 12,
}
ROOT_LAYER = 13  # the package __init__: lazy exports of anything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(name: str) -> int | None:
    if name == "robustscale":
        return ROOT_LAYER
    best = None
    for prefix, rank in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, rank)
    return None if best is None else best[1]


def imports_of(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("robustscale"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("robustscale"):
                continue
            out.add(mod)
            for alias in node.names:  # `from robustscale.train import checkpoint` imports a module
                if (
                    (PACKAGE.parent / (mod + "." + alias.name).replace(".", "/"))
                    .with_suffix(".py")
                    .exists()
                ):
                    out.add(mod + "." + alias.name)
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path, name):
            # an import of a package's attribute resolves to the deepest known module
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported != name and imported in modules:
                targets.add(imported)
        edges[name] = targets
    return edges


def test_every_module_has_a_layer():
    missing = sorted(m for m in graph() if layer(m) is None)
    assert not missing, f"modules with no layer in LAYERS: {missing}"


def test_imports_point_down():
    upward = []
    for src, targets in graph().items():
        for dst in targets:
            if dst == "robustscale" or src.startswith(dst + "."):
                continue  # a package's own __init__ seen from inside it
            if layer(dst) > layer(src):
                upward.append(f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})")
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if nxt == "robustscale" or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
