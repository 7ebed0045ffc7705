"""Intra-package import graph of gradmask: modules, edges, cycles (strongly connected components of
more than one module; a package's ``__init__`` counts as a module and its imports as edges, in-function
imports too) and imports placed inside functions. Static (ast), so it runs without torch.

    python .ci/import_graph.py [PACKAGE_DIR]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph(root: Path):
    modules = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    inner = 0
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        in_function, type_only = set(), set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for n in ast.walk(fn):
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        in_function.add(id(n))
            if isinstance(fn, ast.If) and "TYPE_CHECKING" in ast.unparse(fn.test):
                type_only.update(id(n) for n in ast.walk(fn))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(mod, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            targets = [t for t in targets if t.split(".")[0] == root.name]
            if not targets or id(node) in type_only:  # imports for type checkers only never run
                continue
            if id(node) in in_function:
                inner += 1
            for t in targets:
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                # a module importing its own package (``from . import x``) finds it already loading
                if t in modules and t != mod and not mod.startswith(t + "."):
                    edges[mod].add(t)
    return modules, edges, inner


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "gradmask").resolve()
    modules, edges, inner = graph(root)
    sccs = strongly_connected(edges)
    print(f"modules: {len(modules)}  edges: {sum(map(len, edges.values()))}  in-function imports: {inner}")
    print(f"cycles (strongly connected components of more than one module): {len(sccs)}, "
          f"modules in them: {sum(map(len, sccs))}")
    for c in sccs:
        print(f"  {len(c)}: {', '.join(c)}")
    # the same at the level of the sub-packages (gradmask.train, gradmask.compare, ...; a top-level
    # module stands for itself; every command module, ``*.cli``, belongs to the command line, gradmask.cli)
    def unit(m: str) -> str:
        return "gradmask.cli" if m.endswith(".cli") else ".".join(m.split(".")[:2])
    units: dict[str, set[str]] = {}
    for m, ts in edges.items():
        units.setdefault(unit(m), set()).update(unit(t) for t in ts if unit(t) != unit(m))
    for t in {t for ts in units.values() for t in ts}:
        units.setdefault(t, set())
    package_sccs = strongly_connected(units)
    print(f"sub-package cycles: {len(package_sccs)}")
    for c in package_sccs:
        print(f"  {len(c)}: {', '.join(c)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
