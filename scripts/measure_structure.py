"""Structure figures of the package, for issue 21's before/after table and docs/ARCHITECTURE.md.

Prints (or ``--json``): the ten longest functions, the CLI options declared by more than one
command (and whose help texts differ), import circles between modules, and imports that point up
the layer order below. Reads source with ``ast`` only, so it runs without torch.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

PKG = "lrfr_cli"
# Layer of each top-level module or package, low to high: a module may import its own layer or
# lower ones. The order is the one docs/ARCHITECTURE.md draws.
LAYERS: dict[str, int] = {
    "errors": 0, "constants": 0, "progress": 0, "registry": 0,
    "workspace": 1, "metrics": 1,
    "data": 2, "models": 2, "losses": 2, "align": 2,
    "engine": 3,
    "embed": 4, "finetune": 4, "sr": 4,
    "protocols": 5, "results": 5, "export": 5,
    "recipes": 6, "report": 6,
    "ui": 7, "help_layout": 7, "commands": 7, "cli": 7, "__main__": 7, "__init__": 0,
}
# engine/ holds the run-time primitives that every layer may use (device, processes, seeds,
# signals, atomic checkpoints) below the training loop that uses the models and losses.
MODULE_LAYERS: dict[str, int] = {
    f"engine.{m}": 1 for m in ("device", "distributed", "seed", "signals", "checkpoint")
}


def layer(mod: str) -> int:
    rel = mod.split(".", 1)[1] if "." in mod else "__init__"
    for key, value in MODULE_LAYERS.items():
        if rel == key or rel.startswith(key + "."):
            return value
    return LAYERS.get(top(mod), 9)


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted((root / PKG).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith(PKG):
        return []
    return [target] + [f"{target}.{a.name}" for a in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                cands = resolve(mod, is_pkg, node)
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names if a.name.startswith(PKG)]
            else:
                continue
            # the submodule if the name is one, else the module itself
            names = [c for c in cands[1:] if c in mods] or [c for c in cands[:1] if c in mods]
            for c in names:
                if c != mod:
                    graph[mod].add(c)
    return graph


def top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan); a package's __init__ is
    a module like the others, so importing a package that imports you back is a circle."""
    def edges(m):
        yield from graph.get(m, ())
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges(v):
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
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in sorted(graph.items()):
        for t in sorted(targets):
            a, b = layer(src), layer(t)
            if b > a:
                out.append(f"{src} -> {t}")
    return out


def longest_functions(root: Path, n: int = 10) -> list[tuple[int, int, str]]:
    """``(lines, body lines, name)``: body lines leave out the signature and the docstring, so a
    command whose options are its signature is measured by what it does."""
    rows = []
    for mod, path in modules(root).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and len(body) > 1:
                    body = body[1:]
                rows.append((node.end_lineno - node.lineno + 1, node.end_lineno - body[0].lineno + 1, f"{mod}.{node.name}"))
    return sorted(rows, reverse=True)[:n]


def options(root: Path) -> dict[str, dict[str, str]]:
    """long option name -> {command module: help text}, from typer.Option(...) calls in
    commands/ (and any module they use to declare shared options)."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for mod, path in modules(root).items():
        if ".commands." not in mod:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Option",)):
                continue
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("--")]
            help_ = next((k.value for k in node.keywords if k.arg == "help"), None)
            text = ast.unparse(help_) if help_ is not None else ""
            for nm in names[:1]:
                found[nm.split("/")[0]][mod.rsplit(".", 1)[-1]] = text
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    g = import_graph(a.root)
    opts = options(a.root)
    multi = {k: v for k, v in opts.items() if len(v) > 1}
    tf_shared = {k: v for k, v in multi.items() if {"train", "finetune"} <= set(v)}
    drift = {k: v for k, v in tf_shared.items() if len(set(v.values())) > 1}
    res = {
        "longest_functions": [{"lines": n, "body_lines": b, "function": f} for n, b, f in longest_functions(a.root)],
        "options_declared_more_than_once": len(multi),
        "declarations_of_those": sum(len(v) for v in multi.values()),
        "train_finetune_shared_declarations": len(tf_shared),
        "train_finetune_drifting_help": len(drift),
        "import_circles": circles(g),
        "upward_imports": upward(g),
    }
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print("Ten longest functions (lines, of them body: no signature, no docstring):")
    for r in res["longest_functions"]:
        print(f"  {r['lines']:4d} {r['body_lines']:4d}  {r['function']}")
    print(f"Options declared in more than one command module: {res['options_declared_more_than_once']} "
          f"({res['declarations_of_those']} declarations)")
    print(f"  declared in both train and finetune: {len(tf_shared)}, with differing help: {len(drift)}")
    print(f"Import circles: {len(res['import_circles'])}")
    for c in res["import_circles"]:
        print("  " + " <-> ".join(c))
    print(f"Upward imports: {len(res['upward_imports'])}")
    for u in res["upward_imports"]:
        print("  " + u)
    return 0


if __name__ == "__main__":
    sys.exit(main())
