"""The package's shape, read from its source with `ast` (nothing is imported): each module imports
only from its own layer or the layers below it (function-local imports included), the top-level
modules import each other without cycles, and no function or method is longer than 80 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "clusterssl"

#: The layer order, lowest first, in this one place: a module may import from its own layer and from
#: those listed before it, never from a later one. A name is a top-level module or subpackage of
#: clusterssl (a subpackage's modules share its layer).
#: - registry (lists the methods by reading their source, imports io) is foundation: config
#:   validates params against the registry's methods.
#: - config and paramdoc (the params reference, from config's schema) sit with data, not below it:
#:   config completes the schema's dataset choices from data's registry and loads its plugins.
#: - distributed (torch.distributed wrappers, imports nothing of clusterssl) and cluster (fits the
#:   workflow's resource requests to the nodes, imports io; only workflow/rules use it) are helpers
#:   at the bottom: the methods' losses gather over processes, so distributed must sit below methods.
#: - paths sits with data, not below it: `paths.is_sharded` asks data's registry (SOURCES) whether a
#:   dataset is prepared in shards; nothing below data reads a path.
#: - runtime (device policy, seeds, preemption, checkpoints, the run's config), optim (optimisers,
#:   learning-rate schedule) and knn (the weighted k-NN the training monitor and the evaluation share)
#:   sit below train, so that evaluate reads checkpoints without the training loop and the loop's
#:   monitor never reaches up into evaluate. live (the live training curves, through dvclive) sits
#:   with them: train writes through it and dvcgen reads its file layout.
#: - tune (hyper-parameter search: pretrains and evaluates candidates), readme (the README's result
#:   tables, from a report's files) and dvcgen (dvc.yaml, from stages and paths) sit beside report:
#:   tools the CLI runs, which nothing else in the package imports.
LAYERS: list[tuple[str, ...]] = [
    ("io", "stages", "registry", "distributed", "cluster"),
    ("data", "paths", "config", "paramdoc"),
    ("augment", "backbones", "methods"),
    ("runtime", "optim", "knn", "live"),
    ("train",),
    ("evaluate",),
    ("report", "tune", "readme", "dvcgen"),
    ("cli",),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    """The top-level module or subpackage of clusterssl that `module` belongs to (None: not ours,
    or the package itself)."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any depth (function-local ones
    too); `from . import x` names the module x."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            # `from . import x` and `from clusterssl import x` name the module x
            whole = not node.module or target == PACKAGE
            out += [(node.lineno, f"{target}.{a.name}" if whole else target) for a in node.names]
    return out


def layer_violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """One message per import of `module` from a layer above its own."""
    unit = _unit(module)
    if unit is None:
        return []
    if unit not in LAYER:
        return [f"{module}: not in any layer of tests/test_layout.py's LAYERS; add '{unit}' to the layer it belongs to"]
    bad = []
    for line, target in imported_modules(module, source, is_package):
        other = _unit(target)
        if other is None or other == unit:
            continue
        if other not in LAYER:
            bad.append(f"{module} (line {line}) imports {target}: '{other}' is in no layer of LAYERS")
        elif LAYER[other] > LAYER[unit]:
            bad.append(f"{module} (line {line}) imports {target}: layer {LAYER[other]} {LAYERS[LAYER[other]]} is above "
                       f"{unit}'s layer {LAYER[unit]} {LAYERS[LAYER[unit]]}")
    return bad


def long_functions(name: str, source: str, limit: int = MAX_LINES) -> list[str]:
    """One message per function or method (nested ones too) longer than `limit` lines."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                out.append(f"{name}: {node.name}() at line {node.lineno} is {length} lines (at most {limit})")
    return out


def _sources():
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    assert files, f"no sources under {SRC / PACKAGE}"
    return [(f, _module_name(f), f.read_text()) for f in files]


def test_every_module_imports_only_from_its_own_layer_or_below():
    bad = [msg for f, module, text in _sources() for msg in layer_violations(module, text, f.name == "__init__.py")]
    assert not bad, "imports against the layer order (tests/test_layout.py LAYERS):\n" + "\n".join(bad)


def test_top_level_modules_import_each_other_without_cycles():
    graph: dict[str, set[str]] = {}
    for f, module, text in _sources():
        unit = _unit(module)
        if unit is not None:
            graph.setdefault(unit, set()).update(
                u for _, t in imported_modules(module, text, f.name == "__init__.py") if (u := _unit(t)) not in (None, unit))
    cycle = _find_cycle(graph)
    assert cycle is None, "an import cycle between modules of clusterssl: " + " -> ".join(cycle or [])


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_function_is_longer_than_80_lines():
    bad = [msg for f, _, text in _sources() for msg in long_functions(str(f.relative_to(SRC.parent)), text)]
    assert not bad, "functions over the limit; split them into well-named helpers:\n" + "\n".join(bad)


# --- the checks themselves can fail ------------------------------------------------------------------
def test_layer_check_names_the_module_and_its_upward_import():
    source = "from . import paths\nfrom .io import UserError\n\ndef f():\n    from .evaluate.protocols import knn\n"
    bad = layer_violations("clusterssl.train", source)
    assert len(bad) == 1 and bad[0].startswith("clusterssl.train (line 5) imports clusterssl.evaluate.protocols"), bad
    assert "above train's layer" in bad[0]
    # relative imports from a subpackage, `from .. import x`, and absolute ones resolve alike
    expected = (f"clusterssl.data.cifar (line 1) imports clusterssl.report: layer {LAYER['report']} {LAYERS[LAYER['report']]} is above "
                f"data's layer {LAYER['data']} {LAYERS[LAYER['data']]}")
    assert layer_violations("clusterssl.data.cifar", "from .. import report\n") == [expected]
    assert layer_violations("clusterssl.methods.base", "import clusterssl.train\n")
    assert layer_violations("clusterssl.io", "from clusterssl import data\n")
    assert layer_violations("clusterssl.methods", "from .carl import CARL\nfrom ..augment import ViewSpec\n", is_package=True) == []
    assert "in no layer" in layer_violations("clusterssl.train", "from .newthing import x\n")[0]
    assert "not in any layer" in layer_violations("clusterssl.newthing", "")[0]


def test_cycle_check_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_length_check_names_file_function_and_length():
    body = "\n".join(f"        x{i} = {i}" for i in range(80))
    source = f"def short():\n    pass\n\nclass C:\n    def long(self):\n{body}\n"
    assert long_functions("src/x.py", source) == ["src/x.py: long() at line 5 is 81 lines (at most 80)"]
    assert long_functions("src/x.py", source, limit=81) == []


@pytest.mark.parametrize("unit", sorted(LAYER))
def test_every_layer_name_is_a_module_of_the_package(unit):
    assert (SRC / PACKAGE / f"{unit}.py").is_file() or (SRC / PACKAGE / unit).is_dir(), unit
