"""One training loop for every method.

SGD / LARS / Adam / AdamW, linear warm-up then cosine decay (per step), seeds, AMP (bf16 on CUDA),
channels_last, optional torch.compile, a checkpoint every N epochs that a re-run resumes
from, a tqdm progress bar, and `history.csv` with, per epoch, the loss and each of its terms, an
online k-NN monitor on a fixed train subset and, for methods with prototypes, how many of them
the epoch used and how evenly."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, paths
from .augment import AugmentConfig, make_views, normalise
from .backbones import create_backbone
from .config import fingerprint
from .data import load_meta, load_prepared
from .io import Preempted, UserError, atomic_path, write_json
from .methods.base import Method, get_method

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("pretrain.device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'")
    return torch.device(name)


def use_device(name: str) -> torch.device:
    """The device `pretrain.device` names, with CUDA switched to deterministic kernels so that a
    GPU run repeats, and resumes, bit for bit as a CPU run does: no cuDNN autotuning (each
    process may pick other convolution algorithms), deterministic cuDNN, cuBLAS and scatter
    kernels (CoKe's `index_add_`). On an H200 a step ran at 0.77-0.95x the speed of autotuned
    kernels (docs/gpu.md). CPU kernels are deterministic already and are left as they are."""
    device = pick_device(name)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: in a stage's own process, after this
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    return device


def bf16_autocast(tcfg: dict, device: torch.device) -> bool:
    """Whether `pretrain.amp` turns bf16 autocast on for `device`: "auto" on CUDA only (CPUs
    without bf16 units run it slower than fp32); "bf16" anywhere, which is how the tests exercise
    the GPU code path on CPU."""
    return tcfg["amp"] == "bf16" or (tcfg["amp"] == "auto" and device.type == "cuda")


def build_method(cfg: dict, in_chans: int, num_classes: int, num_train: int) -> Method:
    backbone = create_backbone(cfg["backbone"], in_chans)
    return get_method(cfg["method"])(backbone, cfg["method_params"], num_classes, num_train)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017); parameter
    groups marked `lars_exclude` (biases, norms) get plain SGD, as in SimCLR/BYOL."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad.clone()
                if not g["lars_exclude"]:
                    pn, dn = torch.norm(p), torch.norm(d)
                    d.mul_(torch.where((pn > 0) & (dn > 0), g["eta"] * pn / dn, torch.ones_like(pn)))
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def training_batch(views: dict, mean: torch.Tensor, std: torch.Tensor, memory_format: torch.memory_format) -> dict:
    """`make_views`' output as `training_step` takes it (the caller adds `index` and `epoch`)."""
    return {k: [normalise(v, mean, std, memory_format) for v in vs] if isinstance(vs, list) else normalise(vs, mean, std, memory_format)
            for k, vs in views.items()}


def make_optimizer(method: Method, cfg: dict, lr: float) -> torch.optim.Optimizer:
    groups = method.parameter_groups()
    wd = cfg["weight_decay"]
    for g in groups:
        g.setdefault("weight_decay", wd)
    name = cfg["optimizer"]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    for g in groups:
        g.pop("lars_exclude", None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "adam":  # CC's and CADC's code: Adam, weight decay as an L2 term in the gradient
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def lr_at(step: int, total: int, warmup: int, base: float, final_ratio: float = 0.0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


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


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files that a killed run's atomic writes left behind (nothing else writes here)."""
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


MONITOR_BANK, MONITOR_QUERY = 4000, 1000


def monitor_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The online k-NN monitor's fixed train-split indices (the same for every method and seed):
    a bank of up to MONITOR_BANK images and up to MONITOR_QUERY others (a quarter of small sets)."""
    order = np.random.default_rng(0).permutation(n)
    q = min(MONITOR_QUERY, n // 4)
    return np.sort(order[q : q + MONITOR_BANK]), np.sort(order[:q])


def extra_pretrain_splits(params: dict, prepared: Path, meta: dict) -> list:
    """The prepared splits `data.extra_pretrain_splits` adds to train for pretraining (STL-10's
    unlabeled images); their labels are never read."""
    names = params["data"]["extra_pretrain_splits"]
    have = meta.get("splits", {"train": 0, "test": 0})
    for name in names:
        if name not in have or name in ("train", "test"):
            raise UserError(f"data.extra_pretrain_splits: '{name}' is not an extra split of {params['dataset']} "
                            f"(it has: {', '.join(sorted(set(have) - {'train', 'test'})) or 'none'}); remove it from the list")
    return [load_prepared(prepared, name) for name in names]


def pretrain(params: dict, method_name: str, seed: int, threads: int | None = None, progress: bool = True) -> Path:
    cfg = pretrain_config(params, method_name)
    tcfg = cfg["pretrain"]
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)  # the same on every process: methods' own random draws agree
    device = use_device(tcfg["device"])
    device = distributed.init(device.type) or device  # under torchrun: join the group, take this process's GPU
    world, rank = distributed.world_size(), distributed.rank()
    if distributed.launched_by_torchrun() and world != tcfg["processes"]:
        raise UserError(f"torchrun started {world} processes but pretrain.processes is {tcfg['processes']}; "
                        "launch with `clusterssl pretrain` alone: it starts torchrun with the right number")
    out = paths.run_dir(params, method_name, seed)

    prepared = paths.prepared_dir(params, params["dataset"])
    meta = load_meta(prepared)
    train = load_prepared(prepared, "train", params["data"]["max_train"])
    num_classes = len(meta["classes"])
    if train.streamed:  # shards (data/shards.py): batches come from loader workers, statistics from prepare
        if params["data"]["extra_pretrain_splits"]:
            raise UserError(f"data.extra_pretrain_splits: {params['dataset']} is prepared in shards, which take no extra splits; set it to []")
        images, num_train, in_chans = None, len(train), meta["image_shape"][2]
        mean, std = (torch.tensor(v, device=device) for v in (train.pixel_mean, train.pixel_std))
    else:
        pool = np.concatenate([train.images, *(s.images for s in extra_pretrain_splits(params, prepared, meta))])
        # uint8 NCHW; labelled train images first, so the monitor's indices below are theirs
        images = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous().to(device)
        del pool
        num_train, in_chans = len(images), images.shape[1]
        mean = images.float().mean(dim=(0, 2, 3)) / 255
        std = images.float().std(dim=(0, 2, 3)) / 255

    model = build_method(cfg, in_chans, num_classes, num_train).to(device)
    model.check_schedule(tcfg["epochs"])
    batch = min(tcfg["batch_size"], num_train)  # the global batch, split over the processes
    if batch % world:
        raise UserError(f"pretrain.batch_size {batch} does not split evenly over pretrain.processes {world}; "
                        f"make it a multiple of {world}")
    local_batch = batch // world
    writer = rank == 0  # one process writes the run's files
    if writer:
        out.mkdir(parents=True, exist_ok=True)  # only once data and params passed: a failed start leaves nothing
        remove_stale_temporaries(out)
    if world > 1:
        model = distributed.sync_batchnorm(model)
    channels_last = tcfg["channels_last"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = train.steps_per_epoch(batch) if train.streamed else num_train // batch
    total_steps = steps_per_epoch * tcfg["epochs"]
    base_lr = tcfg["lr"] * batch / 256
    opt = make_optimizer(model, tcfg, base_lr)
    amp = bf16_autocast(tcfg, device)
    step_fn = model.training_step
    if world > 1:
        # unused parameters: SwAV's frozen prototypes, CADC's centres before its k-means; buffers
        # (queues, CoKe's heads, BatchNorm statistics) are kept identical by the methods themselves
        step_fn = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True, broadcast_buffers=False)
    if tcfg["compile"]:
        step_fn = torch.compile(step_fn)
    aug = AugmentConfig.from_params(cfg["augment"])
    gen = torch.Generator(device=device).manual_seed(seed + 7919 * rank)  # each process augments its own images
    order_gen = torch.Generator().manual_seed(seed)

    # resume: an interrupted run left resume.pt; use it only if it was made by this exact config
    fp = fingerprint({**cfg, "seed": seed})
    resume_file = out / "resume.pt"
    history: list[dict] = []
    start_epoch, start_step, mid_epoch = 0, 0, None
    if resume_file.exists():
        try:
            state = _load_state(resume_file, device, "resume checkpoint")
            if state.get("fingerprint") != fp:
                raise UserError(f"{resume_file}: made with other params than this run's")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state((state["rank_gens"][rank] if world > 1 else state["gen"]).cpu())
            order_gen.set_state(state["order_gen"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            history, start_epoch = state["history"], state["epoch"]
            if "step" in state:  # saved on SIGTERM between two steps of an epoch
                usage = state.get("usage")
                start_step, mid_epoch = state["step"], {"perm": state["perm"].to(device), "sums": state["sums"],
                                                        "usage": None if usage is None else usage.to(device) if rank == 0 else torch.zeros_like(usage, device=device)}
        except (UserError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            # never trusted and never in the way of later runs: set aside for a look
            aside = resume_file.with_name("resume.pt.rejected")
            if writer:
                os.replace(resume_file, aside)
            reason = exc if isinstance(exc, UserError) else f"{resume_file}: {type(exc).__name__}: {str(exc)[:200]}"
            if isinstance(exc, UserError):  # refused before anything was loaded: train from the start
                print(f"not resuming: {reason}; moved it to {aside}; training from epoch 1", flush=True)
            else:
                raise UserError(f"{reason}; moved it to {aside}: run the same command again to train from epoch 1") from None
        else:
            print(f"resuming {out} at epoch {start_epoch + 1}, step {start_step}")

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    norm = lambda v: normalise(v, mean, std, memory_format)

    @torch.no_grad()
    def encode(encoder: torch.nn.Module, chunks, n: int) -> torch.Tensor:
        """n rows of features in index order; `chunks` yields (indices, uint8 NCHW images on the
        device), in any order (shards come in any order)."""
        was_training = encoder.training
        encoder.eval()
        feats = None
        for idx, x in chunks:
            f = encoder(norm(x.float() / 255))
            if feats is None:
                feats = torch.empty(n, f.shape[1], device=device, dtype=f.dtype)
            feats[idx] = f
        encoder.train(was_training)
        return feats

    in_order = lambda x: ((slice(i, i + 1024), x[i : i + 1024]) for i in range(0, len(x), 1024))
    if train.streamed:
        train_chunks = lambda: ((torch.from_numpy(idx).to(device), torch.from_numpy(x).to(device).permute(0, 3, 1, 2)) for idx, x in train.chunks())
    else:
        train_chunks = lambda: in_order(images)
    encode_train_set = lambda: encode(model.backbone, train_chunks(), num_train)
    bank, query = monitor_split(len(train))
    if train.streamed:  # drawn once, encoded each epoch
        monitor_images = torch.from_numpy(train.take(np.concatenate([bank, query]))).permute(0, 3, 1, 2).contiguous().to(device)
    else:
        monitor_images = images[torch.from_numpy(np.concatenate([bank, query])).to(device)]
    bank_labels, query_labels = torch.from_numpy(train.labels[bank]), torch.from_numpy(train.labels[query])

    def online_knn() -> float:
        """The monitor: k-NN (k = 20) top-1 of the evaluation encoder on a fixed subset of the
        train split (labels only score it; the test split is never read)."""
        from .evaluate.protocols import knn_predict

        f = encode(model.eval_encoder(), in_order(monitor_images), len(monitor_images)).float().cpu()
        pred = knn_predict(f[: len(bank)], bank_labels, f[len(bank):], k=20, temperature=0.1)
        return round(100 * float((torch.from_numpy(pred) == query_labels).float().mean()), 2)

    def resume_state(**extra) -> dict:
        """Called on every process (it gathers each one's augmentation generator); rank 0 saves it."""
        if world > 1:
            extra["rank_gens"] = distributed.gather_objects(gen.get_state())
        return {"fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(), "gen": gen.get_state(),
                "order_gen": order_gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history, **extra}

    with SigtermAtStepBoundary() as sigterm:
        for epoch in range(start_epoch, tcfg["epochs"]):
            if mid_epoch is None:
                model.on_epoch_start(epoch, encode_train_set)
                sums: dict[str, float] = {}
                perm = torch.randperm(num_train, generator=order_gen).to(device)
                first_step = 0
            else:  # the epoch a SIGTERM interrupted: same order, same running sums, its start hook already ran
                sums, perm, first_step = mid_epoch["sums"], mid_epoch["perm"], start_step
                model.usage_counts, mid_epoch = mid_epoch["usage"], None
            if train.streamed:  # this process's share of the epoch, in the order seeded by (seed, epoch)
                stream = train.batches(seed, epoch, rank, world, local_batch, steps_per_epoch, skip=first_step, pin=device.type == "cuda")
            model.train()
            t0 = time.time()
            bar = tqdm(range(first_step, steps_per_epoch), desc=f"{method_name} epoch {epoch + 1}/{tcfg['epochs']}", disable=not progress, mininterval=5, leave=False)
            for it in bar:
                if distributed.any_process(sigterm.received):
                    usage = getattr(model, "usage_counts", None)
                    usage = None if usage is None else distributed.sum_no_grad(usage).cpu()
                    state = resume_state(epoch=epoch, step=it, perm=perm.cpu(), sums=distributed.average(sums), usage=usage)
                    if writer:
                        with atomic_path(resume_file) as tmp:
                            torch.save(state, tmp)
                    raise Preempted(
                        f"{method_name}: stopped by SIGTERM at epoch {epoch + 1}, step {it}; saved {resume_file}: "
                        "run the same command again to resume from there"
                    )
                step = epoch * steps_per_epoch + it
                lr = lr_at(step, total_steps, tcfg["warmup_epochs"] * steps_per_epoch, base_lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                if train.streamed:
                    idx, x = next(stream)
                    idx, x = idx.to(device), x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                else:
                    idx = perm[it * batch + rank * local_batch : it * batch + (rank + 1) * local_batch]
                    x = images[idx].float().div_(255)
                views = make_views(x, model.view_spec, aug, gen)
                b = training_batch(views, mean, std, memory_format)
                b["index"], b["epoch"] = idx, epoch
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    terms = step_fn(b)
                loss = terms["loss"]
                if distributed.any_process(not torch.isfinite(loss)):
                    bad = [f"{k} = {float(v)}" for k, v in terms.items() if k != "loss" and not torch.isfinite(v).all()]
                    kept = f"; {resume_file} (the last epoch checkpoint) is kept" if resume_file.exists() else ""
                    raise UserError(
                        f"{method_name}: loss became {loss.item()} at epoch {epoch + 1}, step {it} "
                        f"({', '.join(bad) or 'no single term is non-finite: their sum overflowed'}){kept}; "
                        "lower pretrain.lr or raise the method's temperature in params"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.after_optimizer_step((step + 1) / total_steps)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if it % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            model.on_epoch_end(epoch)
            dt = time.time() - t0  # training only: the monitor below is not in images/s
            sums = distributed.average(sums)
            history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}, "lr": lr, "seconds": round(dt, 2),
                            "images_per_s": round((steps_per_epoch - first_step) * batch / dt, 1),
                            "online_knn20_top1": online_knn(), **model.take_usage()})
            if writer:
                print(json.dumps(history[-1]), flush=True)
            if (epoch + 1) % tcfg["checkpoint_every"] == 0 and epoch + 1 < tcfg["epochs"]:
                state = resume_state(epoch=epoch + 1)
                if writer:
                    with atomic_path(resume_file) as tmp:
                        torch.save(state, tmp)

    if not writer:
        return out
    with atomic_path(out / "checkpoint.pt") as tmp:
        torch.save({"config": cfg, "seed": seed, "model": model.state_dict(), "in_chans": in_chans, "num_classes": num_classes, "num_train": num_train, "mean": mean.cpu(), "std": std.cpu()}, tmp)
    with atomic_path(out / "history.csv") as tmp:
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)
    write_json(out / "config.json", {**cfg, "seed": seed, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "train_images": num_train})
    if resume_file.exists():
        os.remove(resume_file)
    return out


def _load_state(path: Path, device: torch.device, what: str) -> dict:
    """A file this project wrote with torch.save, loaded without running any code it may hold
    (weights_only: tensors, dicts, lists, numbers and strings only). UserError if it is not one."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError, zip/EOF errors, RuntimeError: all mean "not ours"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a clusterssl {what} (torch.load, weights only: {reason})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a clusterssl {what} (it holds a {type(state).__name__}, not a dict)")
    return state


def load_trained(params: dict, method: str, seed: int, device: torch.device = torch.device("cpu")) -> tuple[Method, dict]:
    """The encoder `clusterssl pretrain --method method --seed seed` made with these params.
    Refuses a checkpoint made by another method, seed or pretraining config (e.g. copied over)."""
    checkpoint = paths.run_files(params, method, seed)[0]
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: checkpoint not found; run `clusterssl pretrain --method {method} --seed {seed}` first")
    fix = f"delete it and run `clusterssl pretrain --method {method} --seed {seed}`"
    state = _load_state(checkpoint, device, "checkpoint")
    missing = [k for k in ("config", "seed", "model", "in_chans", "num_classes", "num_train", "mean", "std") if k not in state]
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
