"""The import graph of `mgm/`, built from the source: no cycles, and no module imports a compat path.

Every `import` counts, at module level and inside functions (a lazy import is still a dependency);
only imports under `if TYPE_CHECKING:` are left out, since they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import mgm

PACKAGE = Path(mgm.__file__).resolve().parent

# Original module paths kept as thin re-exports for code written against the original package.
COMPAT_MODULES = (
    "mgm.mm_utils",
    "mgm.serve.engine",
    "mgm.serve.batcher",
    "mgm.model.mgm_arch",
    "mgm.model.language_model",
    "mgm.model.multimodal_encoder",
    "mgm.model.multimodal_projector",
)


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Import nodes of `tree`, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """{module: mgm modules it imports} (a `from package import name` names the submodule when it is one)."""
    names = _module_names()

    def owner(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        targets: set[str | None] = set()
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names if a.name.split(".")[0] == "mgm")
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "mgm":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in names else owner(base))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _is_compat(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in COMPAT_MODULES)


def test_the_graph_sees_real_edges():
    graph = import_graph()
    assert "mgm.inference.engine" in graph["mgm.inference.rows"] or "mgm.inference.rows" in graph["mgm.inference.engine"]
    assert "mgm.profile" in graph["mgm.model.builder"]
    assert all(c in graph for c in COMPAT_MODULES), [c for c in COMPAT_MODULES if c not in graph]


def test_no_import_cycle_inside_mgm():
    assert _cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_compat_path():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if _is_compat(t))
                 for m, targets in graph.items() if not _is_compat(m)}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_compat_paths_are_thin_re_exports():
    """A compat module defines no function or class of its own: it only imports and lists names."""
    names = _module_names()
    for module, path in names.items():
        if not _is_compat(module):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert own == [], (module, own)
