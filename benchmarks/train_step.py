"""One pretraining step of a preset, its parts measured side by side in one run: the batched
augmentation against kornia's (DESIGN.md: a hand-written kernel stays only where it is
measurably faster), the augmentation's share of a step, and each method's step with the
preset's memory format against the other one and against `torch.compile`. Prints ratios and
images/s.

    python benchmarks/train_step.py [--params params.yaml] [--methods simclr carl] [--steps 10] [--rounds 5]
    python benchmarks/train_step.py --params config/presets/paper-cifar10.yaml --methods simclr --batch 512 --shape 32 32 3

kornia is in the `dev` extra. Random images of the shape of the preset's prepared dataset (or
`--shape`, for a dataset not prepared on this machine); the step is `make_views` +
`training_batch` + `training_step` (under bf16 autocast where `pretrain.amp` turns it on) +
the loop's per-step reads of the loss (its finite check and running sums) + backward + optimizer
step, as in `clusterssl.train`, on the preset's `pretrain.device` with the loop's deterministic
kernels (`clusterssl.runtime.use_device`); one contender leaves the reads out, which on a GPU is
what they cost, and one lets cuDNN autotune, which on a GPU is what determinism costs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from clusterssl.augment import AugmentConfig, ViewSpec, make_views
from clusterssl.io import UserError, read_json
from clusterssl.paths import prepared_dir
from clusterssl.optim import make_optimizer
from clusterssl.runtime import bf16_autocast, build_method, pretrain_config, use_device
from clusterssl.train import training_batch


def kornia_pipeline(cfg: AugmentConfig, size: int, channels: int) -> torch.nn.Module:
    """kornia's ops for the same augmentation as `clusterssl.augment.augment` (crop, flip,
    brightness/contrast and, for RGB, saturation/hue/grayscale with the same probabilities)."""
    import kornia.augmentation as K

    jitter = dict(brightness=cfg.brightness, contrast=cfg.contrast)
    if channels == 3:
        jitter.update(saturation=cfg.saturation, hue=cfg.hue)
    ops = [K.RandomResizedCrop((size, size), scale=cfg.crop_scale, ratio=cfg.crop_ratio),
           K.RandomHorizontalFlip(p=cfg.flip),
           K.ColorJitter(**jitter, p=cfg.jitter_prob)]
    if channels == 3 and cfg.grayscale > 0:
        ops.append(K.RandomGrayscale(p=cfg.grayscale))
    if cfg.solarize > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize))
    return torch.nn.Sequential(*ops)


def ms_per_call(fns: dict, steps: int, rounds: int = 5) -> dict:
    """Median ms per call of each function, timed in turns (`rounds` turns of `steps` calls each),
    so that a slow spell of a shared machine falls on every contender alike. On a GPU each turn
    ends when its kernels have run, not when they were queued."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for fn in fns.values():
        for _ in range(3):  # warm-up (and compilation)
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def step_fn(params: dict, method: str, x: torch.Tensor, channels_last: bool, compile: bool, reads: bool = True,
            deterministic: bool = True, amp: str | None = None):
    cfg = pretrain_config(params, method)
    if amp:
        cfg["pretrain"] = {**cfg["pretrain"], "amp": amp}
    torch.manual_seed(0)
    model = build_method(cfg, x.shape[1], 10, 60000).to(x.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = make_optimizer(model, cfg["pretrain"], cfg["pretrain"]["lr"] * len(x) / 256)
    aug, gen = AugmentConfig.from_params(cfg["augment"]), torch.Generator(x.device).manual_seed(0)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    train = torch.compile(model.training_step) if compile else model.training_step
    autocast = bf16_autocast(cfg["pretrain"], x.device)
    index = torch.arange(len(x), device=x.device)

    def step():
        if deterministic:
            return one_step()
        # the switches clusterssl.runtime.use_device sets are global: turned off for this step only
        was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        try:
            one_step()
        finally:
            torch.use_deterministic_algorithms(was[0])
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = was[1:]

    def one_step():
        batch = training_batch(make_views(x, model.view_spec, aug, gen), mean, std, fmt)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            terms = train({**batch, "index": index, "epoch": 3})
        loss = terms["loss"]
        if reads:  # as clusterssl.train does every step: the finite check and the running sums
            bool(torch.isfinite(loss))
            [float(v.detach()) for v in terms.values()]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_optimizer_step(0.5)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--methods", nargs="*", help="default: the preset's methods")
    ap.add_argument("--steps", type=int, default=10, help="calls per turn")
    ap.add_argument("--rounds", type=int, default=5, help="turns per contender; the median turn is shown")
    ap.add_argument("--batch", type=int, help="default: the preset's pretrain.batch_size")
    ap.add_argument("--shape", type=int, nargs=3, metavar=("H", "W", "C"),
                    help="image shape, for a dataset not prepared here (default: the prepared dataset's)")
    args = ap.parse_args()
    params = yaml.safe_load(open(args.params))
    meta = prepared_dir(params, params["dataset"]) / "meta.json"
    if args.shape:
        h, w, c = args.shape
    elif meta.exists():
        h, w, c = read_json(meta)["image_shape"]
    else:
        raise SystemExit(f"{meta} is missing: prepare the preset's dataset first (`clusterssl --params {args.params} data fetch`, "
                         f"then `... data prepare`, or any Snakemake run of the preset), or give its image shape with --shape H W C")
    try:
        device = use_device(params["pretrain"]["device"])  # as clusterssl.train does: deterministic kernels
    except UserError as exc:
        raise SystemExit(f"{args.params}: {exc}")
    batch = args.batch or params["pretrain"]["batch_size"]
    x = torch.rand(batch, c, h, w, device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; {args.params}: {params['dataset']}, {params['backbone']['name']}, "
          f"batch {batch} of {tuple(x.shape[1:])}, bf16 autocast {bf16_autocast(params['pretrain'], device)}; "
          f"median of {args.rounds} turns of {args.steps} calls each")

    cfg = AugmentConfig.from_params(params["augment"])
    gen = torch.Generator(device).manual_seed(0)
    kornia = kornia_pipeline(cfg, x.shape[-1], x.shape[1]).to(device)
    ours, theirs = ms_per_call({"ours": lambda: make_views(x, ViewSpec(), cfg, gen),
                                "kornia": lambda: [kornia(x) for _ in range(2)]}, args.steps, args.rounds).values()
    print(f"two augmented views: clusterssl.augment {ours:.2f} ms, kornia.augmentation {theirs:.2f} ms: "
          f"kornia x{theirs / ours:.2f} the time")

    preset_cl = params["pretrain"]["channels_last"]
    preset_amp = bf16_autocast(params["pretrain"], device)
    for method in args.methods or params["methods"]:
        variants = {"the preset (channels_last)" if preset_cl else "the preset (contiguous)": (preset_cl, False, True),
                    "contiguous" if preset_cl else "channels_last": (not preset_cl, False, True),
                    "the preset + torch.compile": (preset_cl, True, True),
                    # on a GPU each read waits for the step's kernels: what the loop would gain without them
                    "the preset without the loop's per-step reads of the loss": (preset_cl, False, False),
                    # the loop runs CUDA's deterministic kernels; what autotuned ones would gain (on a CPU
                    # the switches change nothing: a control)
                    "the preset with cuDNN autotuning, not bit for bit": (preset_cl, False, True, False),
                    # bf16 pays only where the CPU has bf16 units (AVX512_BF16, AMX) or on a GPU
                    f"the preset with bf16 autocast {'off' if preset_amp else 'on'}":
                        (preset_cl, False, True, True, "fp32" if preset_amp else "bf16")}
        times = ms_per_call({name: step_fn(params, method, x, *v) for name, v in variants.items()}, args.steps, args.rounds)
        ref = next(iter(times.values()))
        print(f"{method}: the augmentation is {ours / ref:.1%} of the preset's step")
        for name, ms in times.items():
            print(f"  {ms:7.1f} ms/step  {batch / ms * 1e3:8.0f} images/s  x{ref / ms:4.2f} speed  {name}")


if __name__ == "__main__":
    main()
