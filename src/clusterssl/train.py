"""One training loop for every method.

Linear warm-up then cosine decay (per step, optim.py), seeds, AMP (bf16 on CUDA and on CPUs with bf16 units), channels_last,
optional torch.compile, a checkpoint every N epochs that a re-run resumes from (runtime.py), one
run at a time in a run folder (a lock, io.py), a tqdm progress bar, and `history.csv` with, per
epoch, the loss and each of its terms, an online k-NN monitor on a fixed train subset and, for
methods with prototypes, how many of them the epoch used and how evenly; each row also goes to
the run's live curves as its epoch ends (live.py). The run's config
resolution (`pretrain_config`, `recipe`) lives in runtime.py, below this module, because loading a
trained encoder back checks against it too."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, optim, paths
from .augment import AugmentConfig, make_views, normalise
from .config import fingerprint
from .data import load_meta, load_prepared
from .io import Preempted, UserError, atomic_path, folder_lock, remove_stale_temporaries, write_json
from .knn import knn_predict
from .live import live_log
from .methods.base import Method
from .optim import make_optimizer
from .runtime import (SigtermAtStepBoundary, bf16_autocast, build_method, deterministic_kernels, load_state, precision_name,
                      pretrain_config, recipe, save_state, seed_everything, use_device)

MONITOR_BANK, MONITOR_QUERY = 4000, 1000


def monitor_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The online k-NN monitor's fixed train-split indices (the same for every method and seed):
    a bank of up to MONITOR_BANK images and up to MONITOR_QUERY others (a quarter of small sets,
    at least one)."""
    order = np.random.default_rng(0).permutation(n)
    q = min(MONITOR_QUERY, max(1, n // 4))
    return np.sort(order[q : q + MONITOR_BANK]), np.sort(order[:q])


def training_batch(views: dict, mean: torch.Tensor, std: torch.Tensor, memory_format: torch.memory_format) -> dict:
    """`make_views`' output as `training_step` takes it (the caller adds `index` and `epoch`)."""
    return {k: [normalise(v, mean, std, memory_format) for v in vs] if isinstance(vs, list) else normalise(vs, mean, std, memory_format)
            for k, vs in views.items()}


# --- the images -----------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """The images pretraining reads: uint8 NCHW on the device, or streamed from shards (`images`
    None: batches come from loader workers, the statistics from prepare)."""

    split: object  # the labelled train split (data.Split or data.shards.ShardedSplit)
    images: torch.Tensor | None  # train, then the extra splits: the monitor's indices are train's
    num_train: int
    in_chans: int
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def streamed(self) -> bool:
        return self.split.streamed


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


def load_training_set(params: dict, device: torch.device) -> TrainingSet:
    prepared = paths.prepared_dir(params, params["dataset"])
    meta = load_meta(prepared)
    train = load_prepared(prepared, "train", params["data"]["max_train"])
    if len(train) == 0:  # nothing to train on, nor for the monitor to score
        raise UserError(f"{prepared}: its train split holds no images; delete {prepared} and run "
                        f"`clusterssl data prepare {params['dataset']}` again, from complete raw data")
    num_classes = len(meta["classes"])
    if train.streamed:  # shards (data/shards.py)
        if params["data"]["extra_pretrain_splits"]:
            raise UserError(f"data.extra_pretrain_splits: {params['dataset']} is prepared in shards, which take no extra splits; set it to []")
        mean, std = (torch.tensor(v, device=device) for v in (train.pixel_mean, train.pixel_std))
        return TrainingSet(train, None, len(train), meta["image_shape"][2], num_classes, mean, std)
    pool = np.concatenate([train.images, *(s.images for s in extra_pretrain_splits(params, prepared, meta))])
    images = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous().to(device)
    del pool
    mean = images.float().mean(dim=(0, 2, 3)) / 255
    std = images.float().std(dim=(0, 2, 3)) / 255
    return TrainingSet(train, images, len(images), images.shape[1], num_classes, mean, std)


# --- the run --------------------------------------------------------------------------------------
@dataclass
class Run:
    """What the loop of one pretraining run (on this process) reads and updates."""

    name: str  # the method
    seed: int
    cfg: dict  # pretrain_config: what the checkpoint records and load_trained checks
    recipe: dict  # the shared keys the method's recipe replaced, for config.json
    device: torch.device
    world: int
    rank: int
    out: Path
    data: TrainingSet
    model: Method
    step_fn: Callable[[dict], dict]  # the model's training_step, under DDP and torch.compile where on
    opt: torch.optim.Optimizer
    batch: int  # global, split over the processes
    steps_per_epoch: int
    base_lr: float
    amp: bool
    aug: AugmentConfig
    gen: torch.Generator  # augmentations: each process its own
    order_gen: torch.Generator  # the epoch's order: the same on every process
    fingerprint: str
    history: list[dict] = field(default_factory=list)

    @property
    def tcfg(self) -> dict:
        return self.cfg["pretrain"]

    @property
    def local_batch(self) -> int:
        return self.batch // self.world

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.tcfg["epochs"]

    @property
    def writer(self) -> bool:
        return self.rank == 0  # one process writes the run's files

    @property
    def resume_file(self) -> Path:
        return self.out / "resume.pt"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.tcfg["channels_last"] else torch.contiguous_format


def start_process(tcfg: dict, seed: int, threads: int | None) -> tuple[torch.device, int, int]:
    """Threads, seeds and device of this process, in its torchrun group if it has one: (device,
    world size, rank)."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)  # the same on every process: methods' own random draws agree
    device = use_device(tcfg["device"], deterministic_kernels(tcfg))
    device = distributed.init(device.type) or device  # under torchrun: join the group, take this process's GPU
    world, rank = distributed.world_size(), distributed.rank()
    if distributed.launched_by_torchrun() and world != tcfg["processes"]:
        raise UserError(f"torchrun started {world} processes but pretrain.processes is {tcfg['processes']}; "
                        "launch with `clusterssl pretrain` alone: it starts torchrun with the right number")
    return device, world, rank


def step_function(model: Method, tcfg: dict, device: torch.device, world: int) -> Callable[[dict], dict]:
    step_fn = model.training_step
    if world > 1:
        # unused parameters: SwAV's frozen prototypes, CADC's centres before its k-means; buffers
        # (queues, CoKe's heads, BatchNorm statistics) are kept identical by the methods themselves
        step_fn = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True, broadcast_buffers=False)
    if tcfg["compile"]:
        step_fn = torch.compile(step_fn)
    return step_fn


def checked_batch(params: dict, method_name: str, data: TrainingSet) -> int:
    """The global batch, once it is clear that the training images fill one (UserError: fewer
    images than a batch left no step to take)."""
    batch = pretrain_config(params, method_name)["pretrain"]["batch_size"]
    own = "pretrain.batch_size" in recipe(params, method_name)  # the method's recipe sets it
    key = f"method_params.{method_name}.pretrain.batch_size" if own else "pretrain.batch_size"
    prepared, limit = paths.prepared_dir(params, params["dataset"]), params["data"]["max_train"]
    if data.num_train < batch and limit is not None and limit < batch:
        raise UserError(f"data.max_train is {limit} but {key} is {batch}: a step needs a whole batch; "
                        f"raise data.max_train to at least {batch} (or null: all images) or lower {key}")
    if data.num_train < batch:
        raise UserError(f"{prepared}: {params['dataset']} has {data.num_train} training images but {key} is {batch}: "
                        f"a step needs a whole batch; lower {key} to at most {data.num_train}")
    return batch


def claim_run_folder(out: Path, rank: int, held: contextlib.ExitStack) -> None:
    """The writer (rank 0) makes the run folder, locks it until `held` closes (the whole run: a
    second run on the folder stops at once) and removes what killed writes left in it. Every
    process stops if it could not, so none waits for a writer that stopped."""
    refused = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        try:
            held.enter_context(folder_lock(out, "clusterssl pretrain"))
        except UserError as exc:
            refused = str(exc)
        else:
            remove_stale_temporaries(out)
    refused = distributed.gather_objects(refused)[0]
    if refused:
        raise UserError(refused)


def prepare_run(params: dict, method_name: str, seed: int, threads: int | None, held: contextlib.ExitStack) -> Run:
    """Everything before the first step; the run's folder is made only once data and params passed
    (a failed start leaves nothing), and stays locked until `held` closes."""
    cfg = pretrain_config(params, method_name)
    tcfg = cfg["pretrain"]
    device, world, rank = start_process(tcfg, seed, threads)
    out = paths.run_dir(params, method_name, seed)
    data = load_training_set(params, device)
    batch = checked_batch(params, method_name, data)
    model = build_method(cfg, data.in_chans, data.num_classes, data.num_train).to(device)
    model.check_schedule(tcfg["epochs"])
    if batch % world:
        raise UserError(f"pretrain.batch_size {batch} does not split evenly over pretrain.processes {world}; "
                        f"make it a multiple of {world}")
    claim_run_folder(out, rank, held)
    if world > 1:
        model = distributed.sync_batchnorm(model)
    if tcfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = data.split.steps_per_epoch(batch) if data.streamed else data.num_train // batch
    base_lr = tcfg["lr"] * batch / 256
    opt = make_optimizer(model, tcfg, base_lr)
    amp = bf16_autocast(tcfg, device)
    step_fn = step_function(model, tcfg, device, world)
    aug = AugmentConfig.from_params(cfg["augment"])
    gen = torch.Generator(device=device).manual_seed(seed + 7919 * rank)  # each process augments its own images
    order_gen = torch.Generator().manual_seed(seed)
    return Run(name=method_name, seed=seed, cfg=cfg, recipe=recipe(params, method_name), device=device, world=world,
               rank=rank, out=out, data=data, model=model, step_fn=step_fn, opt=opt, batch=batch,
               steps_per_epoch=steps_per_epoch, base_lr=base_lr, amp=amp, aug=aug, gen=gen, order_gen=order_gen,
               fingerprint=fingerprint({**cfg, "seed": seed}))


# --- resume points ----------------------------------------------------------------------------------
@dataclass
class Start:
    """Where the loop starts: epoch and step, and the rest of the epoch a SIGTERM interrupted."""

    epoch: int = 0
    step: int = 0
    mid_epoch: dict | None = None  # its order, running sums and prototype counts


def resume_state(run: Run, **extra) -> dict:
    """Called on every process (it gathers each one's augmentation generator); rank 0 saves it."""
    if run.world > 1:
        extra["rank_gens"] = distributed.gather_objects(run.gen.get_state())
    return {"fingerprint": run.fingerprint, "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
            "gen": run.gen.get_state(), "order_gen": run.order_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": run.history, **extra}


def restore(run: Run, state: dict) -> Start:
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.gen.set_state((state["rank_gens"][run.rank] if run.world > 1 else state["gen"]).cpu())
    run.order_gen.set_state(state["order_gen"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    run.history = state["history"]
    if "step" not in state:
        return Start(state["epoch"])
    # saved on SIGTERM between two steps of an epoch
    usage, device = state.get("usage"), run.device
    usage = None if usage is None else usage.to(device) if run.rank == 0 else torch.zeros_like(usage, device=device)
    return Start(state["epoch"], state["step"], {"perm": state["perm"].to(device), "sums": state["sums"], "usage": usage})


def resume(run: Run) -> Start:
    """An interrupted run left resume.pt; it is used only if it was made by this exact config."""
    if not run.resume_file.exists():
        return Start()
    try:
        state = load_state(run.resume_file, run.device, "resume checkpoint")
        if state.get("fingerprint") != run.fingerprint:
            raise UserError(f"{run.resume_file}: made with other params than this run's")
        start = restore(run, state)
    except (UserError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        # never trusted and never in the way of later runs: set aside for a look
        aside = run.resume_file.with_name("resume.pt.rejected")
        if run.writer:
            os.replace(run.resume_file, aside)
        if not isinstance(exc, UserError):
            reason = f"{run.resume_file}: {type(exc).__name__}: {str(exc)[:200]}"
            raise UserError(f"{reason}; moved it to {aside}: run the same command again to train from epoch 1") from None
        # refused before anything was loaded: train from the start
        print(f"not resuming: {exc}; moved it to {aside}; training from epoch 1", flush=True)
        return Start()
    print(f"resuming {run.out} at epoch {start.epoch + 1}, step {start.step}")
    return start


# --- features of the encoder during training ----------------------------------------------------------
def in_order(x: torch.Tensor):
    return ((slice(i, i + 1024), x[i : i + 1024]) for i in range(0, len(x), 1024))


@torch.no_grad()
def encode(run: Run, encoder: torch.nn.Module, chunks, n: int) -> torch.Tensor:
    """n rows of features in index order; `chunks` yields (indices, uint8 NCHW images on the
    device), in any order (shards come in any order)."""
    was_training = encoder.training
    encoder.eval()
    feats = None
    for idx, x in chunks:
        f = encoder(normalise(x.float() / 255, run.data.mean, run.data.std, run.memory_format))
        if feats is None:
            feats = torch.empty(n, f.shape[1], device=run.device, dtype=f.dtype)
        feats[idx] = f
    encoder.train(was_training)
    return feats


def train_set_encoder(run: Run) -> Callable[[], torch.Tensor]:
    """What `on_epoch_start` gets: a call that encodes the whole train set with the backbone."""
    device, data = run.device, run.data
    if data.streamed:
        chunks = lambda: ((torch.from_numpy(idx).to(device), torch.from_numpy(x).to(device).permute(0, 3, 1, 2))
                          for idx, x in data.split.chunks())
    else:
        chunks = lambda: in_order(data.images)
    return lambda: encode(run, run.model.backbone, chunks(), data.num_train)


@dataclass
class Monitor:
    """The online k-NN monitor's fixed subset of the train split: bank images first, then queries."""

    images: torch.Tensor
    bank_labels: torch.Tensor
    query_labels: torch.Tensor


def make_monitor(run: Run) -> Monitor:
    train = run.data.split
    bank, query = monitor_split(len(train))
    if run.data.streamed:  # drawn once, encoded each epoch
        images = torch.from_numpy(train.take(np.concatenate([bank, query]))).permute(0, 3, 1, 2).contiguous().to(run.device)
    else:
        images = run.data.images[torch.from_numpy(np.concatenate([bank, query])).to(run.device)]
    return Monitor(images, torch.from_numpy(train.labels[bank]), torch.from_numpy(train.labels[query]))


def online_knn(run: Run, monitor: Monitor) -> float:
    """The monitor: k-NN (k = 20) top-1 of the evaluation encoder on a fixed subset of the train
    split (labels only score it; the test split is never read)."""
    f = encode(run, run.model.eval_encoder(), in_order(monitor.images), len(monitor.images)).float().cpu()
    n = len(monitor.bank_labels)
    pred = knn_predict(f[:n], monitor.bank_labels, f[n:], k=20, temperature=0.1)
    return round(100 * float((torch.from_numpy(pred) == monitor.query_labels).float().mean()), 2)


# --- the loop -------------------------------------------------------------------------------------------
def stop_for_sigterm(run: Run, epoch: int, it: int, perm: torch.Tensor, sums: dict) -> None:
    """Saves a resume point at step `it` of `epoch` (every process takes part) and stops."""
    usage = getattr(run.model, "usage_counts", None)
    usage = None if usage is None else distributed.sum_no_grad(usage).cpu()
    state = resume_state(run, epoch=epoch, step=it, perm=perm.cpu(), sums=distributed.average(sums), usage=usage)
    if run.writer:
        save_state(state, run.resume_file)
    raise Preempted(
        f"{run.name}: stopped by SIGTERM at epoch {epoch + 1}, step {it}; saved {run.resume_file}: "
        "run the same command again to resume from there"
    )


def refuse_non_finite(run: Run, epoch: int, it: int, terms: dict) -> None:
    loss = terms["loss"]
    bad = [f"{k} = {float(v)}" for k, v in terms.items() if k != "loss" and not torch.isfinite(v).all()]
    kept = f"; {run.resume_file} (the last epoch checkpoint) is kept" if run.resume_file.exists() else ""
    raise UserError(
        f"{run.name}: loss became {loss.item()} at epoch {epoch + 1}, step {it} "
        f"({', '.join(bad) or 'no single term is non-finite: their sum overflowed'}){kept}; "
        "lower pretrain.lr or raise the method's temperature in params"
    )


def next_batch(run: Run, it: int, perm: torch.Tensor, stream) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of step `it`: (indices, float images in [0, 1], NCHW on the device)."""
    if run.data.streamed:
        idx, x = next(stream)
        return idx.to(run.device), x.to(run.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    first = it * run.batch + run.rank * run.local_batch
    idx = perm[first : first + run.local_batch]
    return idx, run.data.images[idx].float().div_(255)


def train_step(run: Run, epoch: int, it: int, perm: torch.Tensor, stream) -> tuple[float, dict]:
    """One optimiser step; (its learning rate, the loss and its terms)."""
    step = epoch * run.steps_per_epoch + it
    lr = optim.set_lr(run.opt, step, run.total_steps, run.tcfg["warmup_epochs"] * run.steps_per_epoch, run.base_lr)
    idx, x = next_batch(run, it, perm, stream)
    views = make_views(x, run.model.view_spec, run.aug, run.gen)
    b = training_batch(views, run.data.mean, run.data.std, run.memory_format)
    b["index"], b["epoch"] = idx, epoch
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        terms = run.step_fn(b)
    loss = terms["loss"]
    if distributed.any_process(not torch.isfinite(loss)):
        refuse_non_finite(run, epoch, it, terms)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.model.after_optimizer_step((step + 1) / run.total_steps)
    return lr, terms


def train_epoch(run: Run, epoch: int, start: Start, sigterm: SigtermAtStepBoundary, progress: bool) -> dict:
    """One epoch, or the rest of the one a SIGTERM interrupted; its row of the history, without
    the monitor and the prototype use."""
    if start.mid_epoch is None:
        run.model.on_epoch_start(epoch, train_set_encoder(run))
        sums: dict[str, float] = {}
        perm = torch.randperm(run.data.num_train, generator=run.order_gen).to(run.device)
        first_step = 0
    else:  # the epoch a SIGTERM interrupted: same order, same running sums, its start hook already ran
        sums, perm, first_step = start.mid_epoch["sums"], start.mid_epoch["perm"], start.step
        run.model.usage_counts = start.mid_epoch["usage"]
    stream = None
    if run.data.streamed:  # this process's share of the epoch, in the order seeded by (seed, epoch)
        stream = run.data.split.batches(run.seed, epoch, run.rank, run.world, run.local_batch, run.steps_per_epoch,
                                        skip=first_step, pin=run.device.type == "cuda")
    run.model.train()
    t0 = time.time()
    bar = tqdm(range(first_step, run.steps_per_epoch), desc=f"{run.name} epoch {epoch + 1}/{run.tcfg['epochs']}",
               disable=not progress, mininterval=5, leave=False)
    for it in bar:
        if distributed.any_process(sigterm.received):
            stop_for_sigterm(run, epoch, it, perm, sums)
        lr, terms = train_step(run, epoch, it, perm, stream)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if it % 20 == 0:
            bar.set_postfix(loss=f"{terms['loss'].item():.3f}")
    run.model.on_epoch_end(epoch)
    dt = time.time() - t0  # training only: the monitor is not in images/s
    sums = distributed.average(sums)
    return {"epoch": epoch + 1, **{k: v / run.steps_per_epoch for k, v in sums.items()}, "lr": lr, "seconds": round(dt, 2),
            "images_per_s": round((run.steps_per_epoch - first_step) * run.batch / dt, 1)}


def train_epochs(run: Run, start: Start, monitor: Monitor, progress: bool,
                 log_epoch: Callable[[dict], None] = lambda row: None) -> None:
    """The epochs from `start` on, each logged to the history (and given to `log_epoch`: the live
    curves), with a resume point every `pretrain.checkpoint_every` epochs and on SIGTERM."""
    epochs = run.tcfg["epochs"]
    with SigtermAtStepBoundary() as sigterm:
        for epoch in range(start.epoch, epochs):
            row = train_epoch(run, epoch, start, sigterm, progress)
            start = Start()
            run.history.append({**row, "online_knn20_top1": online_knn(run, monitor), **run.model.take_usage()})
            if run.writer:
                print(json.dumps(run.history[-1]), flush=True)
                log_epoch(run.history[-1])
            if (epoch + 1) % run.tcfg["checkpoint_every"] == 0 and epoch + 1 < epochs:
                state = resume_state(run, epoch=epoch + 1)
                if run.writer:
                    save_state(state, run.resume_file)


def write_history(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)


def write_outputs(run: Run) -> None:
    """checkpoint.pt, history.csv and config.json (which also records the method's recipe and
    provenance for the report); the resume point goes."""
    d = run.data
    save_state({"config": run.cfg, "seed": run.seed, "model": run.model.state_dict(), "in_chans": d.in_chans,
                "num_classes": d.num_classes, "num_train": d.num_train, "mean": d.mean.cpu(), "std": d.std.cpu()},
               run.out / "checkpoint.pt")
    write_history(run.history, run.out / "history.csv")
    write_json(run.out / "config.json", {**run.cfg, "seed": run.seed, "device": str(run.device), "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "train_images": d.num_train,
                                         "autocast": precision_name(run.amp),
                                         "recipe": run.recipe, "provenance": type(run.model).provenance})
    if run.resume_file.exists():
        os.remove(run.resume_file)


def pretrain(params: dict, method_name: str, seed: int, threads: int | None = None, progress: bool = True) -> Path:
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
        run = prepare_run(params, method_name, seed, threads, held)
        start = resume(run)
        monitor = make_monitor(run)
        # live curves from the writer only; a resumed run's are rewritten from its restored history
        with live_log(paths.live_dir(params, method_name, seed) if run.writer else None, run.history) as log_epoch:
            train_epochs(run, start, monitor, progress, log_epoch)
        if run.writer:  # one process writes the run's files
            write_outputs(run)
    return run.out
