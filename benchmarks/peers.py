"""clusterssl's SimCLR pretraining side by side with its peers' in one run: lightly's documented
SimCLR pipeline, and solo-learn's where it installs. Prints images/s of a step and of a whole
epoch (data loading included), their ratios, the share of a step spent loading and augmenting
the images against the model step, and, after equal epochs, one shared evaluation of both
encoders, so that speed is never bought with a weaker recipe.

    python benchmarks/peers.py                                   # CPU, the default preset's prepared dataset
    python benchmarks/peers.py --steps 2 --turns 1 --epochs 0 --max-train 256 --workers 0
    python benchmarks/peers.py --device cuda --params config/presets/paper-cifar10.yaml --batch 512 --workers 8 --kernels autotuned

- clusterssl: the training loop's own pieces (`clusterssl.train`: `prepare_run`, `train_step`,
  `train_epoch`; `methods/simclr.py`; the batched augmentation of `clusterssl.augment` on the
  training device), with the preset's memory format and autocast.
- lightly (the `bench` extra; clusterssl itself never imports it): its per-sample
  `SimCLRTransform` on PIL images through a torch DataLoader, its `SimCLRProjectionHead` (with
  its defaults: a BatchNorm after the last layer too) and `NTXentLoss`, as its documentation's
  SimCLR example runs them, on the same timm backbone (`clusterssl.backbones`, the preset's
  `backbone`), with the same optimiser and parameter groups (`clusterssl.optim`), learning-rate
  schedule, batch, autocast and augmentation strengths (the settings SimCLRTransform cannot
  take are printed), in the contiguous layout its example uses (`--lightly-layout
  channels_last` shows how much of a gap in the model step is the layout).
- solo-learn: its one release on PyPI (1.0.2, 2021) pins torch 1.9.1 and pytorch-lightning
  1.4.7, which cannot install beside this project's torch; the script says so and skips it.
- Both run the same CUDA kernels: deterministic or autotuned (`--kernels`; default the preset's
  `pretrain.deterministic`).

The step contenders run in interleaved turns (`--turns` turns of `--steps` steps each, median
turn shown), so that a slow spell of a shared machine falls on all alike: each pipeline's whole
step (lightly's once per `--workers` count), and, for the shares, the two parts of a step timed
alone (clusterssl: taking the batch and augmenting two views; the model step on a fixed batch;
lightly: a batch from a loader without workers; the model step on a fixed batch). With loader
workers the loading overlaps the model step, so their share is what the step waits beyond the
model step. The epochs alternate between the two pipelines (lightly with its fastest worker
count), each training a fresh model from the same seed; the first epoch of each also pays its
start-up. Those same models are then scored with the project's linear probe on frozen features
(`eval.linear`, `clusterssl.evaluate`). On `--device cuda` (or with `--synthetic N`) the images
are random, CIFAR-shaped (`--shape`), and the probe is skipped: it would score noise.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from clusterssl import optim, paths, train
from clusterssl.augment import AugmentConfig, make_views
from clusterssl.backbones import create_backbone
from clusterssl.config import load_params, validate
from clusterssl.data import load_meta, load_prepared, write_prepared
from clusterssl.evaluate.features import encode
from clusterssl.evaluate.protocols import select_and_probe
from clusterssl.io import UserError
from clusterssl.methods.base import Method
from clusterssl.runtime import SigtermAtStepBoundary, bf16_autocast, deterministic_kernels, pretrain_config, use_device
from train_step import ms_per_call  # benchmarks/ is on sys.path when this file runs

METHOD = "simclr"


# --- the setup both pipelines share ---------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, help="default: the preset's pretrain.batch_size")
    ap.add_argument("--steps", type=int, default=20, help="steps per turn (0: no step turns)")
    ap.add_argument("--turns", type=int, default=5, help="turns per step contender; the median turn is shown")
    ap.add_argument("--epochs", type=int, default=2, help="equal epochs per pipeline, then the linear probe on both (0: none)")
    ap.add_argument("--max-train", type=int, help="train images (default: the preset's data.max_train)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="lightly's DataLoader workers, one contender each")
    ap.add_argument("--kernels", choices=["deterministic", "autotuned"],
                    help="CUDA kernels for both pipelines (default: the preset's pretrain.deterministic)")
    ap.add_argument("--synthetic", type=int, metavar="N", help="N random images instead of the prepared dataset (default on cuda: 50000)")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 32, 3], metavar=("H", "W", "C"), help="of the synthetic images")
    ap.add_argument("--lightly-layout", choices=["contiguous", "channels_last"], default="contiguous",
                    help="lightly's memory format: contiguous as its example runs; channels_last as clusterssl's presets, "
                         "to see how much of a gap in the model step is the layout")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def benchmark_params(args: argparse.Namespace, scratch: Path) -> dict:
    """The preset with this run's settings: device, batch, images, epochs (the schedule spans the
    equal epochs), kernels; run folders under `scratch`; synthetic images prepared there."""
    params = load_params(args.params)
    tcfg = params["pretrain"]
    tcfg.update(device=args.device, processes=1, epochs=max(1, args.epochs))
    if args.batch:  # in place of the shared batch and of the one SimCLR's own recipe may set
        tcfg["batch_size"] = args.batch
        params["method_params"][METHOD].get("pretrain", {}).pop("batch_size", None)
    if args.kernels:
        tcfg["deterministic"] = args.kernels == "deterministic"
    params["paths"] = {**params["paths"], "results": str(scratch / "results")}
    params["data"]["max_train"] = args.max_train if args.max_train is not None else params["data"]["max_train"]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is visible: run it on a machine with a GPU, or leave --device out (cpu)")
    synthetic = args.synthetic or (50000 if args.device == "cuda" else None)
    if synthetic:
        params["paths"]["data"] = str(scratch / "data")
        write_synthetic(params, synthetic, tuple(args.shape), args.seed)
    elif not (paths.prepared_dir(params, params["dataset"]) / "meta.json").exists():
        raise UserError(f"{paths.prepared_dir(params, params['dataset'])}/meta.json is missing: prepare the preset's dataset first "
                        f"(`clusterssl --params {args.params} data fetch`, then `... data prepare`), or pass --synthetic N")
    return validate(params, args.params)


def write_synthetic(params: dict, n: int, shape: tuple, seed: int) -> None:
    """n random uint8 images of `shape` (and a tenth as many test images) in the prepared format,
    under the preset's dataset name in this run's own data folder."""
    rng = np.random.default_rng(seed)
    split = lambda m: (rng.integers(0, 256, (m, *shape), dtype=np.uint8), rng.integers(0, 10, m))
    folder = paths.prepared_dir(params, params["dataset"])
    folder.mkdir(parents=True)
    write_prepared(folder, params["dataset"], [str(c) for c in range(10)], split(n), split(max(10, n // 10)))


def solo_learn_note() -> str:
    try:
        installed = version("solo-learn")
    except PackageNotFoundError:
        return (f"solo-learn: skipped: not installed. Its one release on PyPI, 1.0.2 (2021), pins torch==1.9.1 and "
                f"pytorch-lightning==1.4.7; this environment has torch {torch.__version__}, which the project pins")
    return f"solo-learn {installed}: skipped: installed, but this benchmark has no contender for it yet"


# --- clusterssl: the training loop's own pieces -------------------------------------------------------
class Ours:
    """A clusterssl SimCLR run (`train.prepare_run`), stepped by the loop's own `train_step`."""

    def __init__(self, params: dict, seed: int, held: contextlib.ExitStack, deterministic: bool):
        self.run = train.prepare_run(params, METHOD, seed, None, held)
        use_device(params["pretrain"]["device"], deterministic)  # the same kernels as lightly's model, whatever the loop set
        self.it, self.perm = 0, self.new_order()
        self.fixed = None  # the model step's batch, drawn at its first call

    def new_order(self) -> torch.Tensor:
        return torch.randperm(self.run.data.num_train, generator=self.run.order_gen).to(self.run.device)

    def advance(self) -> int:
        """The next step's index in the epoch, starting a new order when an epoch is used up."""
        if self.it == self.run.steps_per_epoch:
            self.it, self.perm = 0, self.new_order()
        self.it += 1
        return self.it - 1

    def step(self) -> None:
        train.train_step(self.run, 0, self.advance(), self.perm, None)

    def data_part(self) -> dict:
        """What a step does before the model: take the batch, augment two views, normalise."""
        run = self.run
        idx, x = train.next_batch(run, self.advance(), self.perm, None)
        views = make_views(x, run.model.view_spec, run.aug, run.gen)
        return {**train.training_batch(views, run.data.mean, run.data.std, run.memory_format), "index": idx, "epoch": 0}

    def model_part(self) -> None:
        """What a step does with the model, on one fixed batch."""
        run = self.run
        if self.fixed is None:
            self.fixed = self.data_part()
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            loss = run.step_fn(self.fixed)["loss"]
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()

    def epoch(self, epoch: int, sigterm: SigtermAtStepBoundary) -> float:
        """One whole epoch of the loop (`train.train_epoch`); its mean loss."""
        return train.train_epoch(self.run, epoch, train.Start(), sigterm, False)["loss"]


# --- lightly: its documented SimCLR pipeline -------------------------------------------------------------
class PilImages(torch.utils.data.Dataset):
    """uint8 NHWC images as PIL images (mode L or RGB) through a per-sample transform, as a
    torchvision dataset hands them to lightly's transform."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        x = self.images[i]
        return self.transform(Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)), 0


class LightlySimCLR(nn.Module):
    """lightly's documented SimCLR model on the preset's timm backbone."""

    parameter_groups = Method.parameter_groups  # clusterssl's optimiser groups: no weight decay on biases and norms

    def __init__(self, backbone: nn.Module, cfg: dict):
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(backbone.num_features, cfg["projector_hidden"], cfg["projector_out"],
                                                    num_layers=cfg["projector_layers"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def eval_encoder(self) -> nn.Module:  # what clusterssl.evaluate.features.encode reads
        return self.backbone

    def cluster_logits(self, features: torch.Tensor) -> None:
        return None


def lightly_transform(aug: AugmentConfig, size: int, channels: int, mean: torch.Tensor, std: torch.Tensor):
    """SimCLRTransform at the preset's augmentation strengths (colour only for RGB, as
    clusterssl's; no blur, which clusterssl's recipe has not either), normalised with the same
    train-set statistics."""
    from lightly.transforms import SimCLRTransform

    rgb = channels == 3
    return SimCLRTransform(input_size=size, cj_prob=aug.jitter_prob, cj_strength=1.0, cj_bright=aug.brightness,
                           cj_contrast=aug.contrast, cj_sat=aug.saturation if rgb else 0.0, cj_hue=aug.hue if rgb else 0.0,
                           min_scale=aug.crop_scale[0], random_gray_scale=aug.grayscale if rgb else 0.0, gaussian_blur=0.0,
                           hf_prob=aug.flip, normalize={"mean": mean.cpu().tolist(), "std": std.cpu().tolist()})


def unmatched(aug: AugmentConfig) -> list[str]:
    """The preset's augmentation settings that SimCLRTransform cannot take."""
    out = []
    if aug.crop_scale[1] != 1.0:
        out.append(f"crop scale up to {aug.crop_scale[1]} (lightly: 1.0)")
    if tuple(round(r, 3) for r in aug.crop_ratio) != (0.75, 1.333):
        out.append(f"crop ratio {aug.crop_ratio} (lightly: 3/4 to 4/3)")
    if aug.solarize > 0:
        out.append(f"solarize {aug.solarize} (lightly's SimCLRTransform: none)")
    return out


@dataclass
class Theirs:
    """lightly's pipeline: a model, its loss, the same optimiser and schedule, and one DataLoader
    per worker count."""

    model: LightlySimCLR
    criterion: nn.Module
    opt: torch.optim.Optimizer
    loaders: dict
    device: torch.device
    amp: bool
    memory_format: torch.memory_format
    base_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    step_count: int = 0


def make_theirs(params: dict, workers: list[int], seed: int, layout: str) -> Theirs:
    from lightly.loss import NTXentLoss

    cfg = pretrain_config(params, METHOD)
    tcfg, device = cfg["pretrain"], torch.device(params["pretrain"]["device"])
    data = train.load_training_set(params, torch.device("cpu"))  # the same images and statistics as clusterssl's run
    if data.images is None:
        raise UserError(f"{params['dataset']} is prepared in shards; peers.py reads datasets held in memory: pick another, or pass --synthetic N")
    images = data.images.permute(0, 2, 3, 1).numpy()
    dataset = PilImages(images, lightly_transform(AugmentConfig.from_params(cfg["augment"]), images.shape[1], images.shape[3], data.mean, data.std))
    torch.manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = LightlySimCLR(create_backbone(cfg["backbone"], data.in_chans), cfg["method_params"]).to(device, memory_format=fmt)
    batch = tcfg["batch_size"]
    base_lr = tcfg["lr"] * batch / 256
    loaders = {w: torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=w,
                                              persistent_workers=w > 0, pin_memory=device.type == "cuda",
                                              generator=torch.Generator().manual_seed(seed)) for w in workers}
    steps = len(dataset) // batch
    return Theirs(model, NTXentLoss(temperature=cfg["method_params"]["temperature"]), optim.make_optimizer(model, tcfg, base_lr),
                  loaders, device, bf16_autocast(tcfg, device), fmt, base_lr, steps, steps * tcfg["epochs"], tcfg["warmup_epochs"] * steps)


def their_model_step(theirs: Theirs, views) -> torch.Tensor:
    """As lightly's example steps: both views through the model, NT-Xent, backward, step (with
    clusterssl's schedule); the loss, left on the device as the example leaves it."""
    step = min(theirs.step_count, theirs.total_steps - 1)  # the step turns may run past the schedule's end
    optim.set_lr(theirs.opt, step, theirs.total_steps, theirs.warmup_steps, theirs.base_lr)
    theirs.step_count += 1
    x0, x1 = (v.to(theirs.device, non_blocking=True).contiguous(memory_format=theirs.memory_format) for v in views)
    with torch.autocast(theirs.device.type, dtype=torch.bfloat16, enabled=theirs.amp):
        loss = theirs.criterion(theirs.model(x0), theirs.model(x1))
    theirs.opt.zero_grad(set_to_none=True)
    loss.backward()
    theirs.opt.step()
    return loss.detach()


def endless(loader):
    """The loader's batches of views, epoch after epoch."""
    while True:
        for views, _ in loader:
            yield views


def their_epoch(theirs: Theirs, workers: int) -> float:
    """One whole epoch through the DataLoader; its mean loss."""
    theirs.model.train()
    losses = [their_model_step(theirs, views) for views, _ in theirs.loaders[workers]]
    return float(sum(losses)) / len(losses)


# --- the turns and what they print -------------------------------------------------------------------------
def print_header(params: dict, args: argparse.Namespace, deterministic: bool) -> None:
    tcfg, device = pretrain_config(params, METHOD)["pretrain"], torch.device(params["pretrain"]["device"])
    meta, limit = load_meta(paths.prepared_dir(params, params["dataset"])), params["data"]["max_train"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    source = "random, synthetic" if args.device == "cuda" or args.synthetic else params["dataset"]
    print(f"torch {torch.__version__}, {where}; {args.params}: {min(meta['num_train'], limit or meta['num_train'])} {source} train "
          f"images of {tuple(meta['image_shape'])}, backbone {params['backbone']}, batch {tcfg['batch_size']}, {tcfg['optimizer']} "
          f"lr {tcfg['lr']} per 256, bf16 autocast {bf16_autocast(tcfg, device)}, "
          f"{'deterministic' if deterministic else 'autotuned'} kernels, seed {args.seed}")
    aug = AugmentConfig.from_params(pretrain_config(params, METHOD)["augment"])
    print(f"lightly {version('lightly')}: SimCLRTransform per image through a DataLoader, SimCLRProjectionHead, NTXentLoss "
          f"(temperature {params['method_params'][METHOD]['temperature']}); {args.lightly_layout} layout"
          f"{', as its example runs' if args.lightly_layout == 'contiguous' else ' (its example: contiguous)'}")
    for note in unmatched(aug):
        print(f"  not matched: {note}")
    print(solo_learn_note())


def step_contenders(ours: Ours, theirs: Theirs) -> dict:
    """Whole steps of each pipeline (lightly: one per worker count), then their two parts."""
    batches = {w: endless(loader) for w, loader in theirs.loaders.items()}
    fns = {"clusterssl": ours.step}
    fns.update({f"lightly, {w} workers": (lambda b=b: their_model_step(theirs, next(b))) for w, b in batches.items()})
    fns["clusterssl: data + augmentation"] = ours.data_part
    fns["clusterssl: model step"] = ours.model_part
    if 0 in batches:  # with workers the loading overlaps the model step: only a serial loader times alone
        fns["lightly: data + augmentation"] = lambda: [v.to(theirs.device) for v in next(batches[0])]
    fixed = next(next(iter(batches.values())))
    fns["lightly: model step"] = lambda: their_model_step(theirs, fixed)
    return fns


def print_steps(times: dict, batch: int) -> None:
    """Each whole step, the ratios of images/s, and where a step's time goes."""
    whole = [name for name in times if ":" not in name]
    for name in whole:
        print(f"  {times[name]:8.1f} ms/step  {batch / times[name] * 1e3:8.0f} images/s  {name}")
    ours, ours_model, theirs_model = times["clusterssl"], times["clusterssl: model step"], times["lightly: model step"]
    for name in whole[1:]:
        print(f"ratio, step: clusterssl {times[name] / ours:.2f}x the images/s of {name}")
    print(f"ratio, model step alone: clusterssl {theirs_model / ours_model:.2f}x lightly's ({ours_model:.1f} against {theirs_model:.1f} ms)")
    # the two parts of a serial step, each timed alone: shares of their sum, which is about the step
    serial = {"clusterssl": (times["clusterssl: data + augmentation"], ours_model)}
    if "lightly: data + augmentation" in times:
        serial["lightly, 0 workers"] = (times["lightly: data + augmentation"], theirs_model)
        print(f"ratio, data + augmentation alone: clusterssl {serial['lightly, 0 workers'][0] / serial['clusterssl'][0]:.2f}x lightly's")
    for name, (data, model) in serial.items():
        print(f"  share, {name}: data loading + augmentation {data:.1f} ms, model step {model:.1f} ms: "
              f"{data / (data + model):.0%} and {model / (data + model):.0%} of a step")
    for name in whole[1:]:
        if name not in serial:  # loader workers overlap the model step: what they leave the step waiting
            print(f"  share, {name}: waiting for the loader (the step less the model step alone) "
                  f"{max(0.0, times[name] - theirs_model) / times[name]:.0%} of a step")


def step_turns(params: dict, args: argparse.Namespace, deterministic: bool) -> int:
    """The step contenders in turns; returns lightly's fastest worker count."""
    with contextlib.ExitStack() as held:
        ours = Ours(params, args.seed, held, deterministic)
        theirs = make_theirs(params, args.workers, args.seed, args.lightly_layout)
        times = ms_per_call(step_contenders(ours, theirs), args.steps, args.turns)
    print(f"step (augmentation of two views, forward, backward, optimiser step; median of {args.turns} turns of {args.steps} steps):")
    print_steps(times, pretrain_config(params, METHOD)["pretrain"]["batch_size"])
    return min(args.workers, key=lambda w: times[f"lightly, {w} workers"])


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, what fn returned), its kernels finished."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def epoch_turns(params: dict, args: argparse.Namespace, deterministic: bool, workers: int) -> None:
    """Equal epochs, alternating, each pipeline on a fresh model; then the shared evaluation."""
    device = torch.device(params["pretrain"]["device"])
    with contextlib.ExitStack() as held, SigtermAtStepBoundary() as sigterm:
        ours = Ours(params, args.seed, held, deterministic)
        theirs = make_theirs(params, [workers], args.seed, args.lightly_layout)
        seconds = {"clusterssl": [], f"lightly, {workers} workers": []}
        for epoch in range(args.epochs):
            (a, loss_a), (b, loss_b) = timed(lambda: ours.epoch(epoch, sigterm), device), timed(lambda: their_epoch(theirs, workers), device)
            seconds["clusterssl"].append(a)
            seconds[f"lightly, {workers} workers"].append(b)
            print(f"  epoch {epoch + 1}: clusterssl {a:.1f} s (mean loss {loss_a:.3f}), lightly, {workers} workers {b:.1f} s (mean loss {loss_b:.3f})")
        images = ours.run.steps_per_epoch * ours.run.batch
        median = {name: statistics.median(s) for name, s in seconds.items()}
        for name, s in median.items():
            print(f"  {s:8.1f} s/epoch  {images / s:8.0f} images/s  {name} (median of {args.epochs} epochs, data loading included)")
        print(f"ratio, epoch: clusterssl {median[f'lightly, {workers} workers'] / median['clusterssl']:.2f}x the images/s of lightly, {workers} workers")
        if args.device == "cuda" or args.synthetic:
            print("linear probe: skipped: the images are random")
        else:
            print_quality(params, args, ours, theirs)


def print_quality(params: dict, args: argparse.Namespace, ours: Ours, theirs: Theirs) -> None:
    """Both encoders through one evaluation: the project's linear probe on frozen features."""
    prepared, run = paths.prepared_dir(params, params["dataset"]), ours.run
    train_split, test_split = load_prepared(prepared, "train", params["eval"]["max_train"]), load_prepared(prepared, "test")
    lin, batch = params["eval"]["linear"], params["eval"]["batch_size"]
    top1 = {}
    for name, model in (("clusterssl", run.model), ("lightly", theirs.model)):
        (train_x, _), (test_x, _) = (encode(model, s, run.data.mean, run.data.std, run.device, batch) for s in (train_split, test_split))
        top1[name] = 100 * select_and_probe(train_x, train_split.labels, test_x, test_split.labels, lin["epochs"], lin["lr"],
                                            lin["weight_decay"], lin["batch_size"], args.seed, lin["val_fraction"])["top1"]
    print(f"linear probe after {args.epochs} equal epochs (eval.linear, {len(train_split)} train and {len(test_split)} test features): "
          f"clusterssl {top1['clusterssl']:.2f} %, lightly {top1['lightly']:.2f} %: clusterssl {top1['clusterssl'] - top1['lightly']:+.2f} points")


def main() -> None:
    args = parse_args()
    if importlib.util.find_spec("lightly") is None:  # the bench extra; clusterssl itself never needs it
        raise SystemExit("peers.py compares with lightly, which is not installed: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory(prefix="clusterssl-peers-") as scratch:
        try:
            params = benchmark_params(args, Path(scratch))
            deterministic = deterministic_kernels(params["pretrain"])
            use_device(params["pretrain"]["device"], deterministic)
            print_header(params, args, deterministic)
            workers = step_turns(params, args, deterministic) if args.steps > 0 else args.workers[0]
            if args.epochs > 0:
                print(f"epochs (each pipeline trains a fresh model; lightly with {workers} workers, its fastest step above):")
                epoch_turns(params, args, deterministic, workers)
        except UserError as exc:
            raise SystemExit(f"peers.py: {exc}")


if __name__ == "__main__":
    main()
