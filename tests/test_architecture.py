"""The import layers of docs/ARCHITECTURE.md hold for every import of every module (read with ``ast``)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flexitok"
LIBRARY_FORBIDDEN = {"cli", "demo"}  # what library code must never import
FRONTENDS = {"cli", "demo", "__main__", "__init__"}


def layers() -> dict[str, int]:
    """unit -> layer, from the ``layer N: a b c`` lines of docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = {u: int(n) for n, units in re.findall(r"^layer (\d+): (.+)$", text, re.M) for u in units.split()}
    assert table, "docs/ARCHITECTURE.md lost its layer table"
    return table


def unit_of(module: str) -> str:
    """``flexitok.models.generator`` -> ``models``; ``flexitok.bench`` -> ``bench``; ``flexitok`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str
    target: str


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for inner in node.body:  # the else branch runs
                skip.update(id(n) for n in ast.walk(inner))
    return skip


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every flexitok module ``path`` imports at run time (module level or inside functions) with its line."""
    package_parts = list(path.relative_to(ROOT).parent.parts)
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            if name == "flexitok":  # `from flexitok import x`: x may be a subpackage or a facade name
                found += [(f"flexitok.{a.name}", node.lineno) for a in node.names if (PACKAGE / a.name).exists()]
    return [(name, line) for name, line in found if name == "flexitok" or name.startswith("flexitok.")]


def edges() -> list[Edge]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        src = unit_of(".".join(p for p in rel.parts if p != "__init__")) if path.parent != PACKAGE else path.stem
        for target, line in imports_of(path):
            dst = unit_of(target)
            if dst != src:
                out.append(Edge(src, dst, f"{path.relative_to(ROOT)}:{line}", target))
    return out


def test_every_unit_has_a_layer() -> None:
    table = layers()
    units = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in PACKAGE.glob("*.py")}
    missing = sorted(units - set(table))
    assert not missing, f"add these to the layer table of docs/ARCHITECTURE.md: {missing}"


def test_no_upward_imports() -> None:
    table = layers()
    bad = [
        f"{e.where}: {e.src} (layer {table[e.src]}) imports {e.target} (layer {table[e.dst]})"
        for e in edges()
        if table[e.dst] > table[e.src]
    ]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_library_code_never_imports_the_frontends() -> None:
    bad = [f"{e.where}: {e.target}" for e in edges() if e.src not in FRONTENDS and e.dst in LIBRARY_FORBIDDEN]
    assert not bad, "library modules import flexitok.cli / flexitok.demo:\n" + "\n".join(bad)
    # The facade is for users: library modules import the module that defines a name.
    facade = [f"{e.where}" for e in edges() if e.src not in FRONTENDS and e.dst == "__init__"]
    assert not facade, "library modules import the flexitok facade:\n" + "\n".join(facade)


def test_no_import_cycles_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for e in edges():
        graph.setdefault(e.src, set()).add(e.dst)
    # Tarjan's strongly connected components; any component with two units is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles between subpackages: {cycles}"


def test_the_checker_sees_function_level_imports() -> None:
    # quickstart imports the pipeline inside a function.
    quickstart = {name for name, _ in imports_of(PACKAGE / "cli" / "quickstart.py")}
    assert "flexitok.pipelines" in quickstart


# ------------------------------------------------------------------------------------------ module level


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _resolve(base: str, names: list[str]) -> list[str]:
    """``from base import a, b``: the submodules among a, b, else the package ``base`` itself."""
    out = []
    for n in names:
        sub = f"{base}.{n}"
        path = ROOT / Path(*sub.split("."))
        out.append(sub if path.with_suffix(".py").exists() or (path / "__init__.py").exists() else base)
    return out


def module_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(flexitok module, line, at module level at run time) for every import in ``path``, TYPE_CHECKING blocks
    included (as not at module level: they do not run)."""
    package_parts = list(path.relative_to(ROOT).parent.parts)
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body} | {
        id(inner) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for inner in ast.walk(n)
    }
    typing_only = _type_checking_nodes(tree)
    found: list[tuple[str, int, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top and id(node) not in typing_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1] + ([node.module] or []))
            else:
                base = node.module or ""
            at_top = id(node) in top and id(node) not in typing_only
            found += [(m, node.lineno, at_top) for m in _resolve(base, [a.name for a in node.names])]
    return [f for f in found if f[0] == "flexitok" or f[0].startswith("flexitok.")]


def test_no_import_cycles_between_modules_type_checking_included() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = module_name(path)
        for dst, _, _ in module_imports(path):
            # A package's __init__ re-exporting its own modules is not a cycle with them.
            if dst != src and not src.startswith(dst + ".") and not dst.startswith(src + "."):
                graph.setdefault(src, set()).add(dst)
    cycles = []
    for start in sorted(graph):
        # Depth-first search for a path back to ``start``.
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, "import cycles between modules (TYPE_CHECKING imports count):\n" + "\n".join(sorted(set(cycles)))


def test_no_string_keyed_importlib_dispatch() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "importlib.import_module",
                "import_module",
                "__import__",
            ):
                arg = node.args[0] if node.args else None
                # Only a literal third-party name is allowed (probing an optional dependency).
                if not (isinstance(arg, ast.Constant) and not str(arg.value).startswith("flexitok")):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not bad, "import modules explicitly, not by a computed name:\n" + "\n".join(bad)


def test_no_function_level_import_of_a_module_already_imported() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found = module_imports(path)
        at_top = {m for m, _, top in found if top}
        typing_only = _type_checking_nodes(ast.parse(path.read_text()))
        lines_typing = {n.lineno for n in ast.walk(ast.parse(path.read_text())) if id(n) in typing_only}
        bad += [
            f"{path.relative_to(ROOT)}:{line} {m}"
            for m, line, top in found
            if not top and m in at_top and line not in lines_typing
        ]
    assert not bad, "function-level imports of modules the file imports at the top already:\n" + "\n".join(bad)


def _is_steps(name: str) -> bool:
    return name in ("steps", "timesteps") or name.endswith("_steps") and name != "warmup_steps"


def _is_guidance(name: str) -> bool:
    return "guidance" in name or name == "apg" or name.endswith("_apg")


def decode_settings_shapes() -> list[str]:
    """Every class, function signature or CLI flag set that spells out decoder settings (a number of sampler steps
    together with a guidance scale or APG switch)."""
    shapes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ClassDef):
                names = [
                    s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                ]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                flags = [
                    c.args[0].value
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call)
                    and isinstance(c.func, ast.Attribute)
                    and c.func.attr == "add_argument"
                    and c.args
                    and isinstance(c.args[0], ast.Constant)
                    and isinstance(c.args[0].value, str)
                ]
                names += [f.lstrip("-").replace("-", "_") for f in flags]
            if any(_is_steps(n) for n in names) and any(_is_guidance(n) for n in names):
                shapes.append(f"{path.relative_to(ROOT)}:{node.lineno} {getattr(node, 'name', '?')}")
    return shapes


def test_one_shape_of_decoder_settings() -> None:
    # DecodeConfig holds them; add_decode_args is the one set of CLI flags that builds it.
    assert decode_settings_shapes() == [
        "flexitok/cli/common.py:" + str(_line("flexitok/cli/common.py", "def add_decode_args(")) + " add_decode_args",
        "flexitok/sampling/decode.py:"
        + str(_line("flexitok/sampling/decode.py", "class DecodeConfig"))
        + " DecodeConfig",
    ]


def _line(rel: str, text: str) -> int:
    lines = (ROOT / rel).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(text))
