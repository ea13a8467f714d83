"""Training throughput of the backbone/stem choices for 28 px grey images, measured side by
side in one run (forward + backward, batch 256, this machine's threads). Prints images/s and
the ratio to the preset's backbone (read from --params), which is how the default backbone was
picked (studies/default_preset).

    python benchmarks/backbone_throughput.py [--params params.yaml] [--steps 5] [--batch 256]
"""
from __future__ import annotations

import argparse
import time

import torch
import yaml

from clusterssl.backbones import create_backbone

CHOICES = {
    "resnet18 [1,1,1,1] half-width, small stem": dict(layers=[1, 1, 1, 1], channels=[32, 64, 128, 256], stem="small"),
    "resnet18 [1,1,1,1] half-width, standard stem": dict(layers=[1, 1, 1, 1], channels=[32, 64, 128, 256], stem="standard"),
    "resnet18 [1,1,1,1] half-width, cifar stem": dict(layers=[1, 1, 1, 1], channels=[32, 64, 128, 256], stem="cifar"),
    "resnet18 [1,1,1,1] full-width, small stem": dict(layers=[1, 1, 1, 1], channels=[64, 128, 256, 512], stem="small"),
    "resnet18 [2,2,2,2], small stem": dict(layers=[2, 2, 2, 2], channels=None, stem="small"),
}


def throughput(cfg: dict, batch: int, steps: int, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = create_backbone({"name": "resnet18", **cfg}, in_chans=1)
    x = torch.randn(batch, 1, 28, 28)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # warm-up
        model(x).sum().backward()
    t = time.perf_counter()
    for _ in range(steps):
        model(x).sum().backward()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, fwd+bwd, 28x28x1")
    preset = yaml.safe_load(open(args.params))["backbone"]
    choices = {f"{args.params}: {preset['name']} {preset['layers']}, channels {preset['channels']}, {preset['stem']} stem": preset, **CHOICES}
    rows = []
    for name, cfg in choices.items():
        for cl in (True, False):
            rows.append((name + (", channels_last" if cl else ""), throughput(cfg, args.batch, args.steps, cl)))
    ref = rows[0][1]
    for name, ips in rows:
        print(f"{ips:8.0f} img/s  x{ips / ref:5.2f}  {name}")


if __name__ == "__main__":
    main()
