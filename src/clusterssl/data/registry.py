"""Which datasets exist, and the facts each declares: found, not listed by hand.

A dataset module declares what it provides in a module-level dict `DATASETS` (name -> source):

    DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}     # objects (cifar.py, imagenet.py)
    DATASETS = {"digits": sys.modules[__name__]}               # the module is the source (digits.py)

The modules are the package's own (every module of `clusterssl/data/` that assigns `DATASETS`),
those named by installed packages' entry points in the group `clusterssl.datasets` (the value
names the module), and those named by the params key `plugins` (the key methods use too: a
plugin module may register methods, datasets or both). Whether a module assigns `DATASETS` is
read from its source first: only dataset modules are imported, so a methods-only plugin (which
imports torch) is not. Dataset modules import torch only inside functions: the workflow imports
this package at every start.

A source provides:
    fetch(raw_dir)                    bring the raw files into raw_dir
    load_raw(raw_dir)                 -> ((train_images, train_labels), (test_images, test_labels)),
                                         images uint8 N x H x W x C; optionally load_extra(raw_dir)
                                         -> {split: (images, labels)}
      or SHARDED = True and prepare_into(raw_dir, out_dir) -> {split: count} (written as shards)
    SHAPE                             (height, width, channels) of the prepared images
    CLASSES                           the class names, or NUM_CLASSES and read_classes(raw_dir)
    TITLE (optional)                  the name tables show (default: the dataset's name)"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..io import UserError
from ..registry import entry_point_modules, source_of

ENTRY_POINT_GROUP = "clusterssl.datasets"
PACKAGE = __name__.rpartition(".")[0]
# a dataset's name becomes folder names under data/ and results/: a plain name, never a path
NAME = re.compile(r"[a-z][a-z0-9_]*")

SOURCES: dict[str, object] = {}  # name -> source: built-in, installed, then `plugins` (filled by refresh)
_declared_in: dict[str, str] = {}  # name -> the module that declares it
_plugins: list[str] = []  # modules named by the params key `plugins` in this process


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    title: str
    shape: tuple[int, int, int]  # height, width, channels of the prepared images
    num_classes: int
    sharded: bool
    module: str


def _assigns_datasets(module: str, where: str) -> bool:
    """Whether `module` assigns DATASETS at its top level, read from its source (not imported)."""
    origin = source_of(module, where)
    if origin is None:  # no source to read (a compiled module): ask it
        return hasattr(_import(module, where), "DATASETS")
    text = Path(origin).read_text()
    if "DATASETS" not in text:
        return False
    tree = ast.parse(text, origin)
    targets = [t for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    return any(isinstance(t, ast.Name) and t.id == "DATASETS" for t in targets)


def _import(module: str, where: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"module '{module}' ({where}) cannot be imported ({type(exc).__name__}: {exc})") from None


def _missing_facts(source) -> list[str]:
    names = dir(source)  # dir, not hasattr: a property (ImageNet's CLASSES reads a file) is not evaluated
    missing = [] if callable(getattr(source, "fetch", None)) else ["fetch(raw_dir)"]
    if getattr(source, "SHARDED", False):
        missing += [] if callable(getattr(source, "prepare_into", None)) else ["prepare_into(raw_dir, out_dir) (it is SHARDED)"]
    elif not callable(getattr(source, "load_raw", None)):
        missing.append("load_raw(raw_dir)")
    shape = getattr(source, "SHAPE", None)
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        missing.append("SHAPE (height, width, channels)")
    if "CLASSES" not in names and not ("NUM_CLASSES" in names and "read_classes" in names):
        missing.append("CLASSES (or NUM_CLASSES and read_classes(raw_dir))")
    return missing


def read_module(module: str, where: str) -> dict[str, object]:
    """The datasets `module` declares ({} where it assigns no DATASETS: it is not imported)."""
    if not _assigns_datasets(module, where):
        return {}
    declared = getattr(_import(module, where), "DATASETS", None)
    if not isinstance(declared, dict):
        raise UserError(f"{module}: DATASETS must be a dict of dataset name -> source (see clusterssl/data/registry.py)")
    for name, source in declared.items():
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            raise UserError(f"{module}: dataset name {name!r} must be lowercase letters, digits and _ "
                            "(it names folders under data/ and results/)")
        missing = _missing_facts(source)
        if missing:
            raise UserError(f"{module}: dataset '{name}' does not declare {', '.join(missing)} (see clusterssl/data/registry.py)")
    return declared


def _modules(plugins) -> list[tuple[str, str]]:
    """(module, where it was named) of every dataset module: the package's, installed, `plugins`."""
    package = sys.modules[PACKAGE]
    builtin = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)
    installed = entry_point_modules(ENTRY_POINT_GROUP)
    named = {f"{PACKAGE}.{m}": "built in" for m in builtin}
    for module in installed:
        named.setdefault(module, f"an entry point in the group {ENTRY_POINT_GROUP}")
    for module in plugins:
        named.setdefault(module, "params key plugins")
    return list(named.items())


def _add(modules, sources: dict, declared_in: dict) -> None:
    for module, where in modules:
        for name, source in read_module(module, where).items():
            if name in declared_in and declared_in[name] != module:
                raise UserError(f"dataset '{name}' is registered twice: in {declared_in[name]} and in {module}; rename one")
            sources[name], declared_in[name] = source, module


def refresh() -> dict[str, object]:
    """Find every dataset again (SOURCES updated in place): the package's modules, installed
    packages' entry points, and the `plugins` this process was given; SOURCES is returned."""
    sources: dict[str, object] = {}
    declared_in: dict[str, str] = {}
    _add(_modules(_plugins), sources, declared_in)
    SOURCES.clear()
    SOURCES.update(sources)
    _declared_in.clear()
    _declared_in.update(declared_in)
    return SOURCES


def _new(plugins) -> list[tuple[str, str]]:
    return [(m, "params key plugins") for m in dict.fromkeys(plugins) if m not in _declared_in.values() and m not in _plugins]


def use_plugins(modules: list[str]) -> None:
    """Add the datasets of the params' `plugins` modules to SOURCES (clusterssl.config calls it)."""
    new = _new(modules)
    sources, declared_in = dict(SOURCES), dict(_declared_in)
    _add(new, sources, declared_in)  # all or nothing: a bad module leaves SOURCES as it was
    SOURCES.update(sources)
    _declared_in.update(declared_in)
    _plugins.extend(m for m, _ in new)


def with_plugins(plugins: list[str] | tuple[str, ...] = ()) -> dict[str, object]:
    """SOURCES and the datasets of `plugins` (not added to SOURCES): what a params file with that
    `plugins` key can name."""
    sources, declared_in = dict(SOURCES), dict(_declared_in)
    _add(_new(plugins), sources, declared_in)
    return sources


def is_sharded(source) -> bool:
    return bool(getattr(source, "SHARDED", False))


def describe(name: str, source=None) -> DatasetFacts:
    """The facts `name`'s module declares (read without fetching anything)."""
    source = SOURCES[name] if source is None else source
    count = source.NUM_CLASSES if "NUM_CLASSES" in dir(source) else len(source.CLASSES)
    return DatasetFacts(name, getattr(source, "TITLE", name), tuple(source.SHAPE), int(count), is_sharded(source),
                        _declared_in.get(name, getattr(source, "__module__", getattr(source, "__name__", "?"))))
