"""The package's layout: every module imports in a fresh interpreter, no import cycles (module-level
or hidden in functions), and the data-type module imports nothing else of spark_voice."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "spark_voice"


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    for n in names:
        # the deepest spark_voice module the name refers to
        while n and n not in known:
            n = n.rpartition(".")[0]
        if n:
            targets.add(n)
    return targets


def _imports(tree: ast.AST, include_functions: bool, in_function: bool = False) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(child, (ast.Import, ast.ImportFrom)) and (include_functions or not fn):
            out.append(child)
        out += _imports(child, include_functions, fn)
    return out


def import_graph(*, include_functions: bool) -> dict[str, set[str]]:
    """module -> spark_voice modules it imports (TYPE_CHECKING blocks left out)."""
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"

        for node in _imports(tree, include_functions):
            graph[mod] |= _resolve(mod, is_pkg, node, known) - {mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges into a package's __init__ from its own submodules are the package importing itself."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def test_no_import_cycles_at_module_level():
    assert cycles(_without_packages(import_graph(include_functions=False))) == []


def test_no_import_cycles_hidden_in_functions():
    assert cycles(_without_packages(import_graph(include_functions=True))) == []


def test_types_module_imports_nothing_of_the_package():
    assert import_graph(include_functions=True)["spark_voice.types"] == set()


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(m for m in modules() if not m.endswith(".__main__"))  # those run the CLI
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'spark_voice' or m.startswith('spark_voice.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        print(f'{name}: {type(exc).__name__}: {exc}')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "", r.stdout


SIGNATURE_MODULES = ("spark_voice.pipeline", "spark_voice.serve")


def test_no_bare_any_in_pipeline_and_server_signatures():
    """Backends are typed by their Protocols; `Any` alone never stands for a parameter or result."""
    found = []
    for mod, path in modules().items():
        if not mod.startswith(SIGNATURE_MODULES):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            anns = [(a.arg, a.annotation) for a in args] + [("return", node.returns)]
            found += [f"{mod}.{node.name}({name})" for name, ann in anns
                      if ann is not None and ast.unparse(ann).replace('"', "") in ("Any", "Any | None")]
    assert found == []


MAX_LINES = 400


def test_long_modules_say_why():
    """A module over ~400 lines says at the top why it is one file (a `Length:` line in its docstring)."""
    long = []
    for mod, path in modules().items():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and not re.search(r"^Length: ", doc, re.M):
            long.append(f"{mod} ({text.count(chr(10))} lines)")
    assert long == []
