"""The architecture, read from the source: the import graph has no circle and no import that runs back up the
layers, and nothing under runner/ (the layer every recipe shares) names a recipe, so adding a recipe touches no
file there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("runner", "recipes", "bench", "studies")
# Lowest first: a module may import its own layer and those below, never one above.
LAYERS = [
    ("the shared core", lambda m: m.startswith("runner")),
    ("runner's features", lambda m: m.startswith(("runner.sweep", "runner.tune", "runner.lr_find",
                                                  "runner.report", "runner.sparsify"))),
    ("the recipes", lambda m: m.startswith("recipes")),
    ("bench and the studies", lambda m: m.startswith(("bench", "studies"))),
    ("the command line", lambda m: m == "runner.cli"),
]  # fmt: skip
RECIPES = sorted(p.stem for p in (REPO / "conf" / "recipe").glob("*.yaml"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports, at module level or inside a function (a lazy import is an edge too):
    `from a import b` counts as a.b where a.b is a module, else as a."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}  # fmt: skip
    return {name for name in found if name in known}


def layer(module: str) -> int:
    return max(i for i, (_, holds) in enumerate(LAYERS) if holds(module))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: imported(path, set(modules)) - {name} for name, path in modules.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the path that closes it, or None (depth-first search, three colours)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    """The checker itself: a circle through three modules is found, a diamond is not one."""
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_the_import_graph_has_no_circle(graph):
    assert cycle_in(graph) is None, " -> ".join(cycle_in(graph))


def test_no_import_runs_back_up_the_layers(graph):
    upward = [
        f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes: they may show `recipe=cifar10` as an example."""
    owners = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)),
    ]
    return {
        id(owner.body[0].value)
        for owner in owners
        if owner.body
        and isinstance(owner.body[0], ast.Expr)
        and isinstance(owner.body[0].value, ast.Constant)
    }


def recipe_references(path: Path) -> list[str]:
    """Where `path` imports a recipe module or looks a recipe up by a literal name: a string that is a recipe's
    name, its module path or its config file (help texts may still mention `recipe=cifar10` among other words)."""
    tree = ast.parse(path.read_text())
    skip, found = docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                f"line {node.lineno}: imports {n}"
                for n in names
                if n == "recipes" or n.startswith("recipes.")
            ]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value.strip()
            named = any(
                text in (r, f"recipes.{r}", f"recipe={r}")
                or f"recipes/{r}.py" in text
                or f"recipe/{r}.yaml" in text
                for r in RECIPES
            )
            found += [f"line {node.lineno}: {text!r}"] if named else []
    return found


def test_the_guard_catches_a_recipe_named_in_code(tmp_path):
    """The guard itself, on planted code: an import, a lookup by name and a config path are caught; a
    docstring and a help text that shows an example are not."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        '"""Docstring: recipe=cifar10 is fine here."""\n'
        "import recipes.cars\n"
        "from recipes import wikitext2\n"
        'HELP = "adamrun train recipe=cifar10 data=fashion_mnist"\n'
        "def f():\n"
        '    """recipes/cifar10.py, in a docstring."""\n'
        '    return recipe_module("cifar10"), open("conf/recipe/cars.yaml")\n'
    )
    found = recipe_references(planted)
    assert [line.split(":")[0] for line in found] == ["line 2", "line 3", "line 7", "line 7"], found


def test_runner_names_no_recipe():
    """Every file under runner/, not a hand-picked few: adding a recipe touches none of them."""
    found = {
        str(p.relative_to(REPO)): refs
        for p in sorted((REPO / "runner").rglob("*.py"))
        if (refs := recipe_references(p))
    }
    assert not found, found
