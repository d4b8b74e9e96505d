"""The package layout, read from the source with ast: the dependency direction between sub-packages, no
private names used across modules, no import cycles.

The direction: runtime (helpers any layer may use) and models at the bottom, then weights, data, engine,
then tasks / metrics / training / bench side by side, then cli. A module may import from its own layer and
the layers below. ``inceptionv3/__init__.py`` (the lazy public API) may name anything; ``__version__`` may
be read from the package root by anyone.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "inceptionv3"

# Sub-package (or top-level module) -> its layer; a module may import only from layers <= its own.
LAYERS = {
    "lazy": 0, "runtime": 0,
    "models": 1,
    "weights": 2,
    "data": 3,
    "engine": 4,
    "tasks": 5, "metrics": 5, "training": 5, "bench": 5, "serve": 5,
    "cli": 6, "__main__": 6, "demo": 6,
}


@dataclass(frozen=True)
class Import:
    importer: str          # dotted module name
    line: int
    target: str            # the dotted module imported (or imported from)
    names: tuple[str, ...]  # the names a `from` import takes ((): a plain import)
    module_level: bool     # runs when the importer is imported (not inside a function or TYPE_CHECKING)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _deferred(node: ast.AST) -> bool:
    """Whether the imports inside ``node`` wait for a call (a function) or never run (TYPE_CHECKING)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return True
    return isinstance(node, ast.If) and _is_type_checking(node)


def _imports(name: str) -> list[Import]:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(name, child.lineno, a.name, (), module_level) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append(Import(name, child.lineno, _resolve(name, child),
                                    tuple(a.name for a in child.names), module_level))
            elif _deferred(child):
                visit(child, False)
            else:
                visit(child, module_level)

    visit(tree, True)
    return [i for i in found if i.target == ROOT or i.target.startswith(ROOT + ".")]


IMPORTS = {name: _imports(name) for name in MODULES}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None   # None: the package root


def _submodules(imp: Import) -> list[str]:
    """The names of a `from` import that are sub-modules of its target (`from ..engine import runner`)."""
    return [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in MODULES]


def _targets(imp: Import) -> list[str]:
    """The modules an import runs: its target, and the sub-modules it names."""
    return [imp.target, *_submodules(imp)]


def test_every_layer_is_known():
    unknown = sorted({_layer_of(m) for m in MODULES} - set(LAYERS) - {None})
    assert not unknown, f"sub-packages without a layer in LAYERS: {unknown}"


def test_dependency_direction():
    bad = []
    for imports in IMPORTS.values():
        for imp in imports:
            src = _layer_of(imp.importer)
            if src is None:
                continue   # the public API names everything, lazily
            subs = _submodules(imp)
            for target in subs or [imp.target]:
                dst = _layer_of(target)
                if dst is None:
                    names = set(imp.names) - {"__version__"} - {s.rsplit(".", 1)[1] for s in subs}
                    if names:
                        bad.append(f"{imp.importer}:{imp.line} takes {sorted(names)} from the package root")
                    continue
                if dst == "cli" and src not in ("cli", "__main__"):
                    bad.append(f"{imp.importer}:{imp.line} imports {target}: only the cli imports the cli")
                elif LAYERS[dst] > LAYERS[src]:
                    bad.append(f"{imp.importer}:{imp.line} ({src}) imports {target} ({dst}, a higher layer)")
    assert not bad, "imports against the dependency direction:\n" + "\n".join(sorted(set(bad)))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_across_modules():
    bad = []
    for name, imports in IMPORTS.items():
        for imp in imports:
            if imp.target != name:
                bad += [f"{name}:{imp.line} takes {n} from {imp.target}" for n in imp.names if _private(n)]
        # `from pkg import module` then `module._name`, or `import a.b as m` then `m._name`
        aliases: dict[str, str] = {}
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, node)
                for a in node.names:
                    if f"{target}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in MODULES:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                bad.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles():
    # Only imports that run at import time can make a cycle; a function-level import is a deferred edge.
    graph = {name: sorted({t for imp in imports if imp.module_level for t in _targets(imp)
                           if t in MODULES and t != name})
             for name, imports in IMPORTS.items()}
    cycles, seen, stack, on_stack = [], set(), [], set()

    def walk(node: str) -> None:
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt in on_stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                walk(nxt)
        stack.pop()
        on_stack.discard(node)

    for name in graph:
        if name not in seen:
            walk(name)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
