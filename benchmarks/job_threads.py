"""Pretraining jobs one after another with every core each, against side by side with a share
of the cores each: the same steps, timed both ways in one run. On a 2-core CPU the workflow's
pretraining jobs asked for all the cores and so ran one after another; this says whether the
cores do more work as one-thread jobs side by side.

    python benchmarks/job_threads.py [--params params.yaml] [--methods carl simclr] [--cores 2] [--steps 30] [--rounds 3]

Each job is a process that builds a method's model and step as `benchmarks/train_step.py` does
(the preset's recipe, batch and memory format, random images of `--shape` or the prepared
dataset's), warms up, waits for a common start time and then times `--steps` steps. Both
layouts run in each turn, in alternating order; the median turn is shown.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

WARMUP = 3


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from train_step import step_fn

    params = yaml.safe_load(open(args.params))
    h, w, c = args.shape
    x = torch.rand(params["pretrain"]["batch_size"], c, h, w)
    step = step_fn(params, args.worker, x, params["pretrain"]["channels_last"], False)
    for _ in range(WARMUP):
        step()
    time.sleep(max(0.0, args.start - time.time()))
    t0 = time.time()
    for _ in range(args.steps):
        step()
    print(json.dumps({"method": args.worker, "start": t0, "end": time.time()}))


def run_jobs(args, methods: list[str], threads: int, together: bool) -> float:
    """Seconds from the first timed step to the last, for all `methods`' jobs."""
    def launch(method: str, start: float) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--params", args.params, "--steps", str(args.steps), "--shape", *map(str, args.shape),
               "--worker", method, "--threads", str(threads), "--start", str(start)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def result(proc: subprocess.Popen) -> dict:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a job failed (exit {proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])

    if together:  # a start time late enough for every job to have built and warmed up
        start = time.time() + args.startup
        done = [result(p) for p in [launch(m, start) for m in methods]]
        return max(d["end"] for d in done) - min(d["start"] for d in done)
    return sum(d["end"] - d["start"] for d in (result(launch(m, 0.0)) for m in methods))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--methods", nargs="*", help="default: the preset's methods")
    ap.add_argument("--cores", type=int, default=2, help="the cores the jobs share")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per job")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, metavar=("H", "W", "C"), default=[28, 28, 1])
    ap.add_argument("--startup", type=float, default=30.0, help="seconds the side-by-side jobs get to build and warm up")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    methods = args.methods or yaml.safe_load(open(args.params))["methods"]
    share = max(1, args.cores // len(methods))
    layouts = {f"one after another, {args.cores} threads each": (args.cores, False),
               f"side by side, {share} thread{'s' * (share > 1)} each": (share, True)}
    print(f"{args.params}: {', '.join(methods)}; {args.steps} steps each of {tuple(args.shape)} images; median of {args.rounds} turns")
    times = {name: [] for name in layouts}
    for r in range(args.rounds):
        for name in (list(layouts) if r % 2 == 0 else list(layouts)[::-1]):
            times[name].append(run_jobs(args, methods, *layouts[name]))
    ref = None
    for name, ts in times.items():
        t = statistics.median(ts)
        ref = ref or t
        print(f"  {t:7.1f} s  x{ref / t:4.2f} speed  {name}  (turns: {', '.join(f'{v:.1f}' for v in ts)})")


if __name__ == "__main__":
    main()
