"""The package's layout, read from the source with `ast` (every import: module level and inside functions,
absolute and relative):

  1. the method (fdpg_core/*.py and fdpg_core/fast/*.py) never imports the experiment kit (fdpg_core.kit), and the
     fast paths never import fdpg_core.sampling (sampling calls them, handing them what they need);
  2. the import graph of fdpg_core has no cycle;
  3. the method's top level stays small: at most TOP_LEVEL_BUDGET lines in fdpg_core/*.py together.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fdpg_core"
TOP_LEVEL_BUDGET = 2500


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The fdpg_core modules that `module` imports anywhere in `source` (a `from P import n` names the submodule
    P.n when it is one, else P)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m == "fdpg_core" or m.startswith("fdpg_core.")}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = sorted((root / "fdpg_core").rglob("*.py"))
    names = {_module_name(f, root): f for f in files}
    return {m: _imports(f.read_text(), m, f.name == "__init__.py", set(names)) for m, f in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [m0, m1, ..., m0] of the graph, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def _is_method(m: str) -> bool:
    return not (m == "fdpg_core.kit" or m.startswith("fdpg_core.kit."))


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The checks below can only fail if the reader finds imports: module level, in a function, relative."""
    pkg = tmp_path / "fdpg_core"
    (pkg / "kit").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from fdpg_core.a import f\n")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from .kit import b\n    return b\n")
    (pkg / "kit" / "__init__.py").write_text("")
    (pkg / "kit" / "b.py").write_text("def g():\n    from .. import a\n    import fdpg_core.kit.c\n")
    (pkg / "kit" / "c.py").write_text("from fdpg_core import a\n")
    graph = import_graph(tmp_path)
    assert graph == {"fdpg_core": {"fdpg_core.a"}, "fdpg_core.a": {"fdpg_core.kit.b"}, "fdpg_core.kit": set(),
                     "fdpg_core.kit.b": {"fdpg_core.a", "fdpg_core.kit.c"}, "fdpg_core.kit.c": {"fdpg_core.a"}}
    assert find_cycle(graph) == ["fdpg_core.a", "fdpg_core.kit.b", "fdpg_core.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_the_graph_is_the_package():
    graph = import_graph()
    assert {"fdpg_core.sampling", "fdpg_core.train", "fdpg_core.fast.decoders", "fdpg_core.kit.zoo"} <= set(graph)
    assert "fdpg_core.fast.draw" in graph["fdpg_core.sampling"]  # a module-level import
    assert "fdpg_core.fast.decoders" in graph["fdpg_core.sampling"]  # imported inside functions
    assert "fdpg_core.kit.scorers" in graph["fdpg_core.kit.zoo"]  # `from fdpg_core.kit import scorers as _sc`


def test_the_method_never_imports_the_kit():
    graph = import_graph()
    bad = {m: sorted(n for n in deps if not _is_method(n)) for m, deps in graph.items() if _is_method(m)}
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"the method imports the experiment kit: {bad}"
    fast = {m: sorted(deps & {"fdpg_core.sampling"}) for m, deps in graph.items() if m.startswith("fdpg_core.fast")}
    fast = {m: v for m, v in fast.items() if v}
    assert not fast, f"fdpg_core.fast imports sampling (sampling calls the fast paths, not the reverse): {fast}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle (module-level or inside functions): " + " -> ".join(cycle)


def test_top_level_line_budget():
    counts = {p.name: len(p.read_text().splitlines()) for p in sorted(PKG.glob("*.py"))}
    total = sum(counts.values())
    assert total <= TOP_LEVEL_BUDGET, (
        f"the method's top level (fdpg_core/*.py) has {total} lines, over the budget of {TOP_LEVEL_BUDGET} by "
        f"{total - TOP_LEVEL_BUDGET}: move accelerated paths to fdpg_core/fast and experiment code to fdpg_core/kit "
        f"({counts})")
