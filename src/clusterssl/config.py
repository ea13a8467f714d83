"""Load, complete and validate params: params.yaml, presets merged onto it, and the one schema
(its static part in schemas/params.schema.yaml, each method's part from the method registry)."""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import yaml

from . import registry
from .io import UserError
from .stages import lookup

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.yaml"
BASE_PARAMS = "params.yaml"  # what presets are merged onto
RECIPE_KEYS = ("augment", "pretrain")  # a method's own values of these shared sections
# a value that starts like a URL (pipe:, http:, s3:, file:): data readers such as WebDataset would
# open it as one, and `pipe:` runs a shell command
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def load_schema(plugins: list[str] | tuple[str, ...] = ()) -> dict:
    """The params schema, with `methods` and `method_params` completed from the method registry,
    `dataset` and `eval.transfer.datasets` from the dataset registry (clusterssl/data/registry.py)."""
    from . import data  # here: most importers of config need no dataset

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    known = registry.methods(plugins)
    props = schema["properties"]
    datasets = data.with_plugins(plugins)
    # `x-registry` (ignored by validation) tells docs/parameters.md to name the registry, not its
    # current names, so that a new method or dataset leaves that page as it is
    filled = [(props["methods"]["oneOf"][1]["items"], "method", list(known)),
              (props["dataset"], "dataset", list(datasets)),
              # transfer reads a dataset whole into memory: not the ones prepared in shards
              (props["eval"]["properties"]["transfer"]["properties"]["datasets"]["items"], "dataset prepared as arrays (not shards)",
               [name for name, source in datasets.items() if not data.registry.is_sharded(source)])]
    for node, kind, names in filled:
        node.update({"enum": names, "x-registry": kind})
    recipe = {
        "augment": {"$ref": "#/$defs/augment_keys", "description": "this method's recipe: replaces these shared augment keys"},
        "pretrain": {"$ref": "#/$defs/recipe_pretrain_keys", "unevaluatedProperties": False,
                     "description": "this method's recipe: replaces these shared pretrain keys (batch_size, optimizer, lr, momentum, "
                                    "weight_decay, warmup_epochs; epochs and the machine settings are shared by all methods)"},
    }
    props["method_params"].update(additionalProperties=False, properties={
        name: {"type": "object", "additionalProperties": False, "required": list(spec.defaults),
               "properties": {**recipe, **spec.params_schema}}
        for name, spec in known.items()
    })
    # a protocol that declares its settings (clusterssl/registry.py) has its own eval section
    props["eval"]["properties"].update({
        name: {"type": "object", "additionalProperties": False, "required": list(spec.defaults), "properties": spec.params_schema}
        for name, spec in registry.protocols().items() if spec.defaults is not None
    })
    return schema


def merge(base: dict, overlay: dict) -> dict:
    """`overlay` onto a copy of `base`, section by section (a list or a value replaces)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def complete(params: dict) -> dict:
    """Fill, in place, each registered method's block from the defaults its file declares (a block
    may name only what it changes), likewise the eval section of a protocol that declares its
    settings, and drop recipes set to null (a preset takes back a recipe of params.yaml so);
    return `params`."""
    plugins = params.get("plugins", [])
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        from . import data

        data.use_plugins(plugins)  # first: a module that cannot be found leaves both registries as they were
        registry.use_plugins(plugins)  # the same modules may register methods, datasets or both
    own = params.get("method_params")
    if isinstance(own, dict):
        for name, spec in registry.methods().items():
            block = own.get(name, {})
            if isinstance(block, dict):
                block = merge(spec.defaults, block)
                own[name] = {k: v for k, v in block.items() if not (k in RECIPE_KEYS and v is None)}
    evaluation = params.get("eval")
    if isinstance(evaluation, dict):
        for name, spec in registry.protocols().items():
            if spec.defaults is not None and isinstance(evaluation.get(name, {}), dict):
                evaluation[name] = merge(spec.defaults, evaluation.get(name, {}))
    return params


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        # the missing key is named in the message, not in the path
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        parts.append(missing)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        extra = error.message.split("'")[1] if "'" in error.message else "?"
        parts.append(extra)
    return ".".join(parts) or "<top level>"


def validate(params: dict, source: str = "params") -> dict:
    """`params`, completed in place (see `complete`), validated and returned. Raise UserError
    naming the first offending key."""
    params = complete(params)
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        e = errors[0]
        hint = e.schema.get("description", "")
        raise UserError(
            f"{source}: invalid value for key '{_key_path(e)}': {e.message}"
            + (f" ({hint})" if hint else "")
            + f". Fix it in {source} (the schema is {SCHEMA_PATH.name})."
        )
    for key, folder in params["paths"].items():
        if scheme := URL_SCHEME.match(folder):
            raise UserError(
                f"{source}: invalid value for key 'paths.{key}': {folder!r} starts like a URL ({scheme.group()}); paths are "
                f"local folders, not URLs: give a folder (relative or absolute), or write ./{folder} if a folder's name has a colon"
            )
    if params["dataset"] in params["eval"]["transfer"]["datasets"]:
        raise UserError(
            f"{source}: invalid value for key 'eval.transfer.datasets': it lists the pretraining dataset "
            f"'{params['dataset']}'; transfer evaluates on other datasets: remove it from the list"
        )
    ranges = ["augment.crop_scale", "augment.crop_ratio", "augment.local_scale", "eval.semisup.crop_scale"]
    ranges += [f"method_params.{m}.{key}" for m, own in params["method_params"].items()
               for key in ("augment.crop_scale", "augment.crop_ratio", "augment.local_scale") if key.split(".")[1] in own.get("augment", {})]
    for key in ranges:
        lo, hi = lookup(params, key)
        if lo > hi:
            raise UserError(f"{source}: invalid value for key '{key}': low {lo} > high {hi}; swap them")
    return params


class ParamsLoader(yaml.SafeLoader):
    """YAML as params files are written: also `1e-05` is a float (YAML 1.2, what DVC writes after
    `dvc exp run -S`), where PyYAML's YAML 1.1 reads a string."""


ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                   list("-+0123456789."))


def read_yaml_mapping(path: str | Path, what: str, hint: str = "") -> dict:
    """A YAML file holding a mapping (params, a search file); one UserError naming the file
    (and, for a syntax error, its line) otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} file not found{hint}")
    try:
        content = yaml.load(path.read_text(), Loader=ParamsLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping of {what} keys at the top level")
    return content


def load_params(*files: str | Path, config: dict | None = None) -> dict:
    """params.yaml (or the first file) with each further file merged onto it in turn, as
    `snakemake --configfile` merges a preset, then `config` (`snakemake --config` values, typed):
    completed and validated."""
    files = files or (BASE_PARAMS,)
    params: dict = {}
    for f in files:
        params = merge(params, read_yaml_mapping(f, "params", " (pass --params FILE or run from the project root)"))
    return validate(merge(params, config or {}), " + ".join([*map(str, files), *(["--config"] if config else [])]))


def hydra_value(value) -> str:
    """`value` in the override grammar `dvc exp run -S key=value` reads (Hydra's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):  # Hydra reads 1e-05 as a string: its floats need a point
        mantissa, e, exponent = repr(value).partition("e")
        return mantissa + ("" if "." in mantissa or not e else ".0") + e + exponent
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no override syntax for {value!r}")


def dvc_overrides(overlay: dict, prefix: str = "") -> list[str]:
    """`++key=value` for each value a preset sets (sections walked down to their values), the
    arguments of `dvc exp run -S` that turn params.yaml into the preset merged onto it."""
    out = []
    for key, value in overlay.items():
        if isinstance(value, dict) and value:
            out += dvc_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"++{prefix}{key}={hydra_value(value)}")
    return out


def typed(value):
    """A `snakemake --config` value typed as YAML types it: Snakemake reads the items of a list or
    mapping given there as strings (`seeds=[0,1,2]` arrives as ['0', '1', '2'])."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


def snakemake_config(entries: list[str]) -> dict:
    """`snakemake --config KEY=VALUE ...` as the workflow reads it: Snakemake's own parser, then
    `typed` (the Snakefile does the same), so a value means what it meant to the run."""
    from snakemake.cli import parse_config

    from .io import UserError

    try:
        return typed(parse_config(entries))
    except (ValueError, AttributeError) as exc:
        raise UserError(f"--config {' '.join(entries)}: {exc} (write KEY=VALUE, as given to snakemake --config)") from None


def write_merged_params(params: dict, folder: str | Path) -> Path:
    """Write `params` (validated again here) to `<folder>/<fingerprint>.yaml` for the verbs to
    read and return that path; an existing file is not touched, so re-running the workflow does
    not change its mtime."""
    from .io import write_text

    params = validate(params, "the merged Snakemake config")
    text = yaml.safe_dump(params, sort_keys=False)
    path = Path(folder) / f"{fingerprint(params)}.yaml"
    if not path.exists() or path.read_text() != text:
        write_text(path, text)
    return path


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (used to match checkpoints to their config)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
