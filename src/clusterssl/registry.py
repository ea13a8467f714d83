"""Which methods exist, and the facts each declares, read without importing them.

A method is a class decorated with `@register("name")` in a module: the built-in ones are the
modules of `clusterssl/methods/`, others come from an installed package's entry point in the
group `clusterssl.methods` (its value names the module) or from the params key `plugins` (a
list of importable module names). The class declares, as literals:

    @register("mymethod", order=50)   # order: where `methods: all` and the report put it
    class MyMethod(Method):
        provenance = "what follows the authors, what is assumed"
        defaults = {"temperature": 0.2, ...}                     # its method_params block
        params_schema = {"temperature": {"type": "number"}, ...}  # JSON schema of each key

They are read from the module's source (`ast.literal_eval`), not by importing it: the workflow
validates its config at every start, and importing a method imports torch (over a second)."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .io import UserError

ENTRY_POINT_GROUP = "clusterssl.methods"
BUILTIN_DIR = Path(__file__).parent / "methods"
BUILTIN_HELPERS = {"__init__", "base", "common"}  # modules of methods/ that hold no method
DECLARED = ("provenance", "defaults", "params_schema")
PLUGIN_ORDER = 1000  # plugins without an `order` come after the built-in methods


@dataclass(frozen=True)
class MethodSpec:
    name: str
    module: str
    order: int
    provenance: str
    defaults: dict
    params_schema: dict


def literal(node: ast.expr, what: str, where: str):
    """The value of a literal in a module's source; UserError naming it otherwise."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise UserError(f"{where}: {what} must be a literal (it is read without importing the module)") from None


def decorated(path: str | Path, decorator: str) -> list[tuple[ast.ClassDef | ast.FunctionDef, list, dict]]:
    """(node, args, kwargs) of each top-level class or function of the Python file `path` decorated
    with `@decorator(...)`, the decorator's arguments read as literals: how the registries learn
    what a module declares without importing it."""
    out = []
    for node in ast.parse(Path(path).read_text(), str(path)).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", None)) == decorator:
                    what = f"the arguments of @{decorator} on {node.name}"
                    out.append((node, [literal(a, what, str(path)) for a in deco.args],
                                {k.arg: literal(k.value, what, str(path)) for k in deco.keywords}))
    return out


def _declared(cls: ast.ClassDef, where: str) -> dict:
    facts = {}
    for stmt in cls.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else getattr(stmt, "target", None)
        if isinstance(target, ast.Name) and target.id in DECLARED and stmt.value is not None:
            facts[target.id] = literal(stmt.value, f"`{target.id}` of class {cls.name}", where)
    missing = [k for k in DECLARED if k not in facts]
    if missing:
        raise UserError(f"{where}: class {cls.name} is registered but does not declare {', '.join(missing)} (see clusterssl/registry.py)")
    if set(facts["defaults"]) != set(facts["params_schema"]):
        raise UserError(f"{where}: class {cls.name}: `defaults` and `params_schema` must have the same keys "
                        f"(only in defaults: {sorted(set(facts['defaults']) - set(facts['params_schema']))}; "
                        f"only in params_schema: {sorted(set(facts['params_schema']) - set(facts['defaults']))})")
    return facts


def source_of(module: str, what: str) -> str | None:
    """The Python source file of `module`, found without importing it (None for a module with no
    source, e.g. a compiled one); one UserError naming it where it cannot be found. Both
    registries (methods here, datasets in data/registry.py) find their modules so."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        spec, reason = None, f": {exc}"
    else:
        reason = ""
    if spec is None or not spec.origin:
        raise UserError(f"module '{module}' ({what}) cannot be found{reason}; install its package, or put it on PYTHONPATH")
    return spec.origin if spec.origin.endswith(".py") else None


def entry_point_modules(group: str) -> list[str]:
    """The modules installed packages name under the entry-point group `group`."""
    return [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=group)]


def read_module(module: str) -> list[MethodSpec]:
    """The methods a module registers, from its source."""
    origin = source_of(module, "a method module")
    if origin is None:
        raise UserError(f"method module '{module}' has no Python source to read its declarations from")
    return [MethodSpec(args[0], module, kwargs.get("order", PLUGIN_ORDER), **_declared(node, origin))
            for node, args, kwargs in decorated(origin, "register") if isinstance(node, ast.ClassDef)]


def _modules(plugins: tuple[str, ...]) -> list[str]:
    builtin = [f"clusterssl.methods.{f.stem}" for f in sorted(BUILTIN_DIR.glob("*.py")) if f.stem not in BUILTIN_HELPERS]
    return list(dict.fromkeys([*builtin, *entry_point_modules(ENTRY_POINT_GROUP), *plugins]))


@functools.lru_cache(maxsize=None)
def _specs(plugins: tuple[str, ...]) -> dict[str, MethodSpec]:
    found: dict[str, MethodSpec] = {}
    for module in _modules(plugins):
        for spec in read_module(module):
            if spec.name in found:
                raise UserError(f"method '{spec.name}' is registered twice: in {found[spec.name].module} and in {module}; rename one")
            found[spec.name] = spec
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


_plugins: list[str] = []  # modules named by the params key `plugins` of the params loaded in this process


def use_plugins(modules: list[str]) -> None:
    """Add the params' `plugins` modules to this process's registry (clusterssl.config calls it)."""
    _plugins.extend(m for m in modules if m not in _plugins)


def methods(plugins: list[str] | tuple[str, ...] = ()) -> dict[str, MethodSpec]:
    """Every registered method by name, in report order: built-in, installed, then `plugins`."""
    return _specs(tuple(dict.fromkeys([*_plugins, *plugins])))


def method(name: str) -> MethodSpec:
    known = methods()
    if name not in known:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(known)}")
    return known[name]


# --- protocols on frozen features ------------------------------------------------------------------
# A protocol is a function of a module in clusterssl/evaluate/ decorated with `@protocol(...)`:
#
#     @protocol("mine", order=40, columns=[["mine_top1", ["top1"], True, "mine top-1 %"]],
#               defaults={"k": 5}, params_schema={"k": {"type": "integer", "minimum": 1}})
#     def mine(features: dict, cfg: dict, seed: int) -> dict: ...   # cfg: params["eval"]
#
# It reads `eval.<name>` (its `defaults` fill that section where the params do not set it), writes
# results/metrics/.../<name>.json, and adds its `columns` to the report: [column, path inside the
# metrics, scaled to percent? (null: a count), header].
EVALUATE_DIR = Path(__file__).parent / "evaluate"
PROTOCOL_FUNCTIONS: dict = {}  # name -> function, filled as the evaluate modules are imported


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    module: str
    order: int
    columns: list
    defaults: dict | None
    params_schema: dict | None


def protocol(name: str, order: int = PLUGIN_ORDER, columns: list = (), defaults: dict | None = None, params_schema: dict | None = None):
    """Register a frozen-feature protocol (see above); the arguments are read from the source."""

    def deco(fn):
        PROTOCOL_FUNCTIONS[name] = fn
        return fn

    return deco


@functools.lru_cache(maxsize=None)
def protocols() -> dict[str, ProtocolSpec]:
    """Every frozen-feature protocol by name, in report order."""
    found = {}
    for path in sorted(EVALUATE_DIR.glob("*.py")):
        for node, args, kwargs in decorated(path, "protocol"):
            spec = ProtocolSpec(args[0], f"clusterssl.evaluate.{path.stem}", kwargs.get("order", PLUGIN_ORDER), kwargs.get("columns", []),
                                kwargs.get("defaults"), kwargs.get("params_schema"))
            if spec.name in found:
                raise UserError(f"protocol '{spec.name}' is registered twice: in {found[spec.name].module} and in {spec.module}")
            found[spec.name] = spec
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


def protocol_function(name: str):
    """The function of the protocol `name`, importing the module that declares it."""
    if name not in protocols():
        raise UserError(f"unknown protocol '{name}'; choose one of: {', '.join(protocols())}")
    importlib.import_module(protocols()[name].module)
    return PROTOCOL_FUNCTIONS[name]
