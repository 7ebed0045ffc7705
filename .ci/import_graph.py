"""Import cycles of gradmask on grimp's graph (the one ``lint-imports`` checks: imports inside
functions included, those under ``if TYPE_CHECKING`` left out, as in the contract).

Two levels: modules (strongly connected components of more than one module) and, for every
package, its direct children (a child package stands for everything below it; an edge between two
children is an import from anything in one to anything in the other).

    python .ci/import_graph.py [PACKAGE]      # exit status 1 when there is a cycle
"""
from __future__ import annotations

import sys
from typing import Iterable, Mapping


def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node of ``edges`` (node -> its targets;
    a target that is not a key is a node without edges), each sorted (Tarjan, iterative)."""
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, targets = work[-1]
            w = next(targets, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def package_cycles(edges: Mapping[str, Iterable[str]], children: Mapping[str, Iterable[str]]) -> dict[str, list]:
    """``{package: its cycles}`` for every package (``children``: package -> its direct children)
    whose direct children import each other in a cycle."""
    found = {}
    for package, kids in sorted(children.items()):
        kids = sorted(kids)
        squashed: dict[str, set[str]] = {k: set() for k in kids}
        for source, targets in edges.items():
            a = _owner(source, kids)
            for target in targets:
                b = _owner(target, kids)
                if a is not None and b is not None and a != b:
                    squashed[a].add(b)
        cycles = strongly_connected(squashed)
        if cycles:
            found[package] = cycles
    return found


def _owner(module: str, kids: list[str]):
    """The child of ``kids`` that ``module`` is or lies below, or None."""
    return next((k for k in kids if module == k or module.startswith(k + ".")), None)


def graph(package: str = "gradmask") -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(edges, children)`` of ``package``'s modules from grimp (``lint-imports``' graph)."""
    import grimp
    g = grimp.build_graph(package, cache_dir=None, exclude_type_checking_imports=True)
    edges = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    children = {m: set(g.find_children(m)) for m in g.modules if g.find_children(m)}
    return edges, children


def main(argv: list[str]) -> int:
    edges, children = graph(argv[1] if len(argv) > 1 else "gradmask")
    modules = strongly_connected(edges)
    packages = package_cycles(edges, children)
    print(f"modules: {len(edges)}  edges: {sum(map(len, edges.values()))}  packages: {len(children)}")
    print(f"module cycles: {len(modules)}")
    for c in modules:
        print(f"  {' <-> '.join(c)}")
    print(f"package cycles: {len(packages)}")
    for package, cycles in packages.items():
        for c in cycles:
            print(f"  in {package}: {' <-> '.join(c)}")
    return 1 if modules or packages else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
