"""The shape of the code, as a newcomer meets it: module and function lengths, and the import graph
between nanobard's modules (with any cycle), read with ``ast``.

    .venv/bin/python benchmarks/code_shape.py [SRC] [--dot graph.dot] [--longer-than 60]
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def scan(src: Path) -> tuple[dict[str, int], list[tuple[str, str, int]], dict[str, set[str]]]:
    """(lines per module, (module, function, lines) for every function, imports between modules)."""
    lines: dict[str, int] = {}
    funcs: list[tuple[str, str, int]] = []
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(src.rglob("*.py")):
        mod = module_name(path, src.parent)
        text = path.read_text()
        lines[mod] = len(text.splitlines())
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((mod, node.name, node.end_lineno - node.lineno + 1))
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("nanobard")
            ):
                target = node.module
                names = [a.name for a in node.names]
                subs = [
                    f"{target}.{n}"
                    for n in names
                    if (src / Path(*f"{target}.{n}".split(".")[1:])).with_suffix(".py").exists()
                ]
                for t in subs or [target]:
                    if t != mod:
                        graph[mod].add(t)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("nanobard") and a.name != mod:
                        graph[mod].add(a.name)
    return lines, funcs, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, stack, state = [], [], {}

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src", nargs="?", default="src/nanobard")
    ap.add_argument("--dot", help="also write the import graph in Graphviz DOT")
    ap.add_argument("--longer-than", type=int, default=60, help="list functions longer than this")
    args = ap.parse_args()
    lines, funcs, graph = scan(Path(args.src))
    print(f"{'module':<32} {'lines':>6} {'longest function':>34}")
    for mod, n in sorted(lines.items(), key=lambda kv: -kv[1]):
        mine = [f for f in funcs if f[0] == mod]
        longest = max(mine, key=lambda f: f[2]) if mine else ("", "-", 0)
        print(f"{mod:<32} {n:>6} {longest[1] + ' ' + str(longest[2]):>34}")
    print(
        f"\nmodules over 400 lines: {sum(n > 400 for n in lines.values())}; "
        f"functions over 80 lines: {sum(f[2] > 80 for f in funcs)}"
    )
    print(f"functions over {args.longer_than} lines:")
    for mod, name, n in sorted(funcs, key=lambda f: -f[2]):
        if n > args.longer_than:
            print(f"  {mod}.{name}: {n}")
    print("\nimports between modules (module -> what it imports):")
    for mod in sorted(lines):
        print(
            f"  {mod} -> "
            f"{', '.join(sorted(t.removeprefix('nanobard.') for t in graph.get(mod, ()))) or '-'}"
        )
    print(f"cycles: {cycles(graph) or 'none'}")
    if args.dot:
        edges = "".join(f'  "{a}" -> "{b}";\n' for a in sorted(graph) for b in sorted(graph[a]))
        Path(args.dot).write_text(f"digraph nanobard {{\n  rankdir=LR;\n{edges}}}\n")


if __name__ == "__main__":
    main()
