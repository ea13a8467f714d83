"""How a pretraining run runs and what it leaves, for the training loop and for everything that
reads a trained encoder back (evaluate): the config a run reads, the device policy (deterministic
CUDA kernels unless `pretrain.deterministic` is false, bf16 autocast), seeds, SIGTERM handling,
and its checkpoint files, loaded with `weights_only=True` and checked against the current params
before use."""
from __future__ import annotations

import io
import os
import random
import re
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from . import paths
from .backbones import create_backbone
from .io import UserError, atomic_path
from .methods.base import Method, get_method

# --- the config a run reads ----------------------------------------------------------------------
PRETRAIN_KEYS = ("dataset", "data", "backbone", "augment", "pretrain")
RECIPE_SECTIONS = ("augment", "pretrain")  # a method's params may replace keys of these


def pretrain_config(params: dict, method: str) -> dict:
    """Exactly the params a pretraining run reads (DVC lists the same keys), with the method's
    own recipe (its `augment` / `pretrain` keys in method_params) in place of the shared keys."""
    own = dict(params["method_params"][method])
    cfg = {k: params[k] for k in PRETRAIN_KEYS}
    for section in RECIPE_SECTIONS:
        cfg[section] = {**params[section], **own.pop(section, {})}
    cfg["method"] = method
    cfg["method_params"] = own
    return cfg


def recipe(params: dict, method: str) -> dict:
    """The shared keys a method's recipe replaces, as {'section.key': value}."""
    own = params["method_params"][method]
    return {f"{section}.{k}": v for section in RECIPE_SECTIONS for k, v in own.get(section, {}).items()}


def build_method(cfg: dict, in_chans: int, num_classes: int, num_train: int) -> Method:
    backbone = create_backbone(cfg["backbone"], in_chans)
    return get_method(cfg["method"])(backbone, cfg["method_params"], num_classes, num_train)


# --- device policy and seeds ---------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    if not 0 <= seed < 2**32:  # numpy's range; the CLI refuses others, this catches any other way in
        raise UserError(f"seed {seed} is out of range: numpy and torch take seeds from 0 to {2**32 - 1}; pick one there")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("pretrain.device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'")
    return torch.device(name)


def deterministic_kernels(tcfg: dict) -> bool:
    """Whether a run's `pretrain` section asks for deterministic CUDA kernels: `deterministic`,
    true where a params file written before the key existed leaves it out (today's behaviour)."""
    return tcfg.get("deterministic", True)


def use_device(name: str, deterministic: bool = True) -> torch.device:
    """The device `pretrain.device` names, with CUDA switched to deterministic kernels so that a
    GPU run repeats, and resumes, bit for bit as a CPU run does: no cuDNN autotuning (each
    process may pick other convolution algorithms), deterministic cuDNN, cuBLAS and scatter
    kernels (CoKe's `index_add_`). On an H200 a step ran at 0.77-0.95x the speed of autotuned
    kernels (docs/gpu.md), so `deterministic=False` (`pretrain.deterministic: false`) turns the
    switches the other way: cuDNN autotunes, CUDA runs its default kernels, and a run repeats to
    rounding only. The switches are global and set both ways, so that a process that ran one
    mode before runs the one asked for now. CPU kernels are deterministic already and are left
    as they are either way."""
    device = pick_device(name)
    if device.type == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: in a stage's own process, after this
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = not deterministic, deterministic
    return device


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512_BF16 or AMX), where oneDNN's bf16
    convolutions beat fp32: on a 2-core AMD EPYC with AVX512_BF16 the default preset's pretraining
    step ran 1.24-1.30x and a fine-tuning step 1.45x as fast (benchmarks/train_step.py). Without
    them (AVX2, plain AVX-512) bf16 is emulated and slower than fp32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def bf16_autocast(tcfg: dict, device: torch.device) -> bool:
    """Whether `pretrain.amp` turns bf16 autocast on for `device`: "auto" on CUDA and on CPUs with
    bf16 units; "bf16" anywhere, which is how the tests exercise the GPU code path on any CPU;
    "fp32" never."""
    if tcfg["amp"] == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units())
    return tcfg["amp"] == "bf16"


def precision_name(autocast: bool) -> str:
    """How a run's config.json and a fine-tuning's metrics record the precision `bf16_autocast`
    chose (the report's run record reads it)."""
    return "bf16" if autocast else "fp32"


# --- preemption ----------------------------------------------------------------------------------
class SigtermAtStepBoundary:
    """While active, SIGTERM (how SLURM and most schedulers preempt) only raises a flag that the
    training loop reads between two steps, so it can save a resume point and stop cleanly."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# --- checkpoint files ----------------------------------------------------------------------------
def save_state(state: dict, path: Path) -> None:
    """torch.save, atomically: a kill mid-write leaves the previous file (or none), never half of one.
    It writes into an open file: given a path, torch names the archive's inner folder after it (a
    random temporary name here), so equal weights gave other bytes and DVC saw a change. It is
    serialised in memory first: torch's own writer reports a full disk as "enforce fail at
    inline_container.cc", a plain write as the OSError (no space left) that it is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def refusal(exc: Exception) -> str:
    """Why torch.load refused a file, in one line: for a pickle that calls a function
    weights-only loading does not allow, that function's name (torch names it deep in a long
    message)."""
    text = str(exc).strip()
    blocked = re.search(r"GLOBAL ([\w.]*\w)", text)
    if blocked:
        return f"it would call {blocked.group(1)}, which weights-only loading refuses"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_state(path: Path, device: torch.device, what: str, fix: str = "") -> dict:
    """A file this project wrote with torch.save, loaded without running any code it may hold
    (weights_only: tensors, dicts, lists, numbers and strings only). UserError if it is not one,
    ending with `fix` where given."""
    fix = f"; {fix}" if fix else ""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError, zip/EOF errors, RuntimeError: all mean "not ours"
        raise UserError(f"{path}: not a clusterssl {what} (torch.load, weights only: {refusal(exc)}){fix}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a clusterssl {what} (it holds a {type(state).__name__}, not a dict){fix}")
    return state


CHECKPOINT_KEYS = ("config", "seed", "model", "in_chans", "num_classes", "num_train", "mean", "std")


def load_trained(params: dict, method: str, seed: int, device: torch.device = torch.device("cpu")) -> tuple[Method, dict]:
    """The encoder `clusterssl pretrain --method method --seed seed` made with these params.
    Refuses a checkpoint made by another method, seed or pretraining config (e.g. copied over)."""
    checkpoint = paths.run_files(params, method, seed)[0]
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: checkpoint not found; run `clusterssl pretrain --method {method} --seed {seed}` first")
    fix = f"delete it and run `clusterssl pretrain --method {method} --seed {seed}`"
    state = load_state(checkpoint, device, "checkpoint", fix)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict):
        raise UserError(f"{checkpoint}: not a clusterssl checkpoint (missing {', '.join(missing) or 'config'}); {fix}")
    saved, expected = state["config"], pretrain_config(params, method)
    if saved.get("method") != method or state["seed"] != seed:
        raise UserError(
            f"{checkpoint}: holds a {saved.get('method')!r} run with seed {state['seed']} "
            f"(backbone {saved.get('backbone', {}).get('name')!r}, dataset {saved.get('dataset')!r}), "
            f"not {method!r} seed {seed}; {fix}"
        )
    differ = sorted(k for k in saved.keys() | expected.keys() if saved.get(k) != expected.get(k))
    if differ:
        raise UserError(f"{checkpoint}: made with other params ({', '.join(differ)} differ from the current ones); {fix}")
    try:
        model = build_method(saved, state["in_chans"], state["num_classes"], state["num_train"])
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{checkpoint}: its weights do not fit the {method} model ({str(exc)[:200]}); {fix}") from None
    return model.to(device).eval(), state
