"""`clusterssl <verb>`: argument parsing only; one verb per workflow stage."""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from pathlib import Path

from . import registry
from .io import UserError


def _params(args):
    from .config import load_params

    return load_params(args.params, *args.preset)


def cmd_fetch(args):
    from . import data, paths

    p = _params(args)
    print(data.fetch(args.dataset or p["dataset"], paths.raw_dir(p, args.dataset or p["dataset"])))


def cmd_prepare(args):
    from . import data, paths

    p = _params(args)
    name = args.dataset or p["dataset"]
    print(data.prepare(name, paths.raw_dir(p, name), paths.prepared_dir(p, name)))


def cmd_split(args):
    from . import data, paths
    from .data.splits import write_split

    p = _params(args)
    name = args.dataset or p["dataset"]
    if args.fraction not in p["eval"]["semisup"]["fractions"]:
        raise UserError(f"--fraction {args.fraction} is not one of eval.semisup.fractions {p['eval']['semisup']['fractions']} in {args.params}")
    labels = data.load_prepared(paths.prepared_dir(p, name), "train").labels
    print(write_split(labels, args.fraction, args.seed, paths.split_file(p, name, args.fraction, args.seed)))


def cmd_pretrain(args):
    from . import distributed
    from .methods.base import get_method
    from .train import pretrain

    p = _params(args)
    get_method(args.method)
    processes = p["pretrain"]["processes"]
    if processes > 1 and not distributed.launched_by_torchrun():
        import torch

        from .runtime import pick_device

        gpus = torch.cuda.device_count()
        if pick_device(p["pretrain"]["device"]).type == "cuda" and processes > gpus:
            # NCCL takes one GPU per process; without this, torchrun's processes fail one by one
            raise UserError(f"{args.params}: pretrain.processes is {processes} but {gpus} GPU(s) are visible, and each "
                            f"process takes one; set pretrain.processes to at most {gpus}, or pretrain.device to cpu "
                            "for CPU processes (gloo)")
        # the same command again, once per process, under torchrun (one node; a cluster job
        # asks the scheduler for that many GPUs on it)
        import signal
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "clusterssl.cli", *(sys.argv[1:] if args.argv is None else args.argv)]
        proc = subprocess.Popen(cmd)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))  # preemption reaches the processes
        try:
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code:
            err = UserError(f"pretraining with {processes} processes failed (torchrun exit status {code}); the processes' errors are above")
            err.exit_status = code
            raise err
        return
    out = pretrain(p, args.method, args.seed, threads=args.threads, progress=not args.no_progress)
    if distributed.rank() == 0:
        print(out)
    distributed.finish()


def cmd_embed(args):
    from . import paths
    from .evaluate.features import embed

    p = _params(args)
    if args.method != paths.RAW_PIXELS:
        registry.method(args.method)
    if args.dataset and args.dataset not in (p["dataset"], *p["eval"]["transfer"]["datasets"]):
        raise UserError(f"--dataset {args.dataset} is neither 'dataset' nor one of eval.transfer.datasets in {args.params}")
    print(embed(p, args.method, args.seed, dataset=args.dataset, threads=args.threads))


def cmd_eval(args):
    from . import paths
    from .evaluate.run import evaluate

    p = _params(args)
    if args.method not in (paths.RAW_PIXELS, paths.SCRATCH):
        registry.method(args.method)
    print(evaluate(p, args.protocol, args.method, args.seed, threads=args.threads, target=args.target, fraction=args.fraction))


def cmd_tune(args):
    from .tune import load_search, run_search

    p = _params(args)
    registry.method(args.method)
    print(run_search(p, load_search(args.search), args.method, threads=args.threads, source=args.search))


def cmd_report(args):
    from .report import build_report

    print(build_report(_params(args), reference=Path(args.reference) if args.reference else None))


def cmd_dvc_yaml(args):
    from .dvcgen import render
    from .io import write_text

    write_text(Path(args.output), render())
    print(args.output)


def cmd_exp_args(args):
    """The preset as `dvc exp run` arguments: `clusterssl exp-args PRESET | xargs dvc exp run`."""
    import shlex

    from .config import dvc_overrides, load_params
    from .dvcgen import preset_overlay

    load_params(args.params, *args.preset, *args.presets)  # the merged config must be valid before DVC runs it
    for override in dvc_overrides(preset_overlay([*args.preset, *args.presets])):
        print("-S", shlex.quote(override))


def cmd_dvc_adopt(args):
    from .config import snakemake_config
    from .dvcgen import adopt

    print(adopt(args.params, args.preset, snakemake_config(args.config)))


def cmd_docs(args):
    from .io import write_text
    from .paramdoc import render

    text = render(_params(args), source=args.params)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_text(args.output, text)
        print(args.output)


def cmd_readme(args):
    from .readme import run

    for path in run(args.name, args.readme, args.results, report=args.report, command=args.command, table=args.table):
        print(path)


def method_name(text: str) -> str:
    """A method's name (checked against the registry once the params, which may add plugins, are
    loaded): it names folders, so only a plain lowercase name gets through."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a method name (lowercase letters, digits and _)")
    return text


def dataset_name(text: str) -> str:
    """A dataset's name (checked against the registry once the params, whose `plugins` may add
    datasets, are loaded): it names folders under data/ and results/, so never a path."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} is not a dataset name (lowercase letters, digits and _)")
    return text


def seed(text: str) -> int:
    """A seed as params allow it: it names folders, so nothing else gets through, and numpy and
    torch take 0 <= seed < 2**32 (a larger one failed in pretraining, after `data split` took it)."""
    if not re.fullmatch(r"[0-9]+", text) or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: an integer from 0 to {2**32 - 1}")
    return int(text)


class Parser(argparse.ArgumentParser):
    """Command-line mistakes are reported like every other error: one line, exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def _add_dvc_verbs(sub) -> None:
    """The verbs that hand the workflow to DVC: its dvc.yaml, presets as experiments, a Snakemake run adopted."""
    s = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stages' params keys and the output paths (run after adding a stage)")
    s.add_argument("-o", "--output", default="dvc.yaml")
    s.set_defaults(fn=cmd_dvc_yaml)

    s = sub.add_parser("exp-args", help="a preset as `dvc exp run -S` arguments: clusterssl exp-args PRESET | xargs dvc exp run")
    s.add_argument("presets", nargs="+", metavar="PRESET", help="preset files (config/presets/*.yaml), merged onto --params in turn")
    s.set_defaults(fn=cmd_exp_args)

    s = sub.add_parser("dvc-adopt", help="after a Snakemake run: write its presets (--preset, as given to --configfile) and --config values into "
                       "params.yaml and record its outputs in dvc.lock, so that `dvc repro` re-runs nothing")
    s.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="the values the run was given with snakemake --config, written the same way")
    s.set_defaults(fn=cmd_dvc_adopt)


def build_parser() -> argparse.ArgumentParser:
    from .paths import protocols

    ap = Parser(prog="clusterssl", description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--preset", action="append", default=[], metavar="FILE",
                    help="a preset merged onto the params file (config/presets/*.yaml; repeat to stack several)")
    sub = ap.add_subparsers(dest="verb", required=True)

    d = sub.add_parser("data", help="fetch or prepare a dataset").add_subparsers(dest="action", required=True)
    for name, fn in (("fetch", cmd_fetch), ("prepare", cmd_prepare)):
        s = d.add_parser(name)
        s.add_argument("dataset", nargs="?", type=dataset_name, help="dataset name (default: params 'dataset')")
        s.set_defaults(fn=fn)
    s = d.add_parser("split", help="a class-balanced labelled subset of the train split (semi-supervised evaluation)")
    s.add_argument("dataset", nargs="?", type=dataset_name, help="dataset name (default: params 'dataset')")
    s.add_argument("--fraction", type=float, required=True, help="one of eval.semisup.fractions")
    s.add_argument("--seed", type=seed, default=0)
    s.set_defaults(fn=cmd_split)

    def run_args(s, threads=True):
        s.add_argument("--method", required=True, type=method_name, help="a registered method, raw_pixels or scratch")
        s.add_argument("--seed", type=seed, default=0)
        if threads:
            s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")

    s = sub.add_parser("pretrain", help="pretrain one method with one seed")
    run_args(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("embed", help="extract frozen features of a pretrained run (or raw_pixels)")
    run_args(s)
    s.add_argument("--dataset", default=None, type=dataset_name, help="embed this dataset's images (default: params 'dataset'; else one of eval.transfer.datasets)")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("eval", help="evaluate frozen features with one protocol")
    s.add_argument("protocol", choices=protocols())
    run_args(s)
    s.add_argument("--target", default=None, type=dataset_name, help="transfer: the target dataset (one of eval.transfer.datasets)")
    s.add_argument("--fraction", type=float, default=None, help="semisup: the labelled fraction (one of eval.semisup.fractions)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("tune", help="score a method's candidate recipes on the held-out proxy (equal budget per method)")
    s.add_argument("--method", required=True, type=method_name)
    s.add_argument("--search", required=True, help="proxy and candidates: one file per round, e.g. studies/recipe_search/round3.yaml")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    s.set_defaults(fn=cmd_tune)

    s = sub.add_parser("report", help="tables and figures from saved metrics")
    s.add_argument("--reference", default=None, help="published numbers CSV (default: reference/reported_numbers.csv if present)")
    s.set_defaults(fn=cmd_report)

    _add_dvc_verbs(sub)

    s = sub.add_parser("readme", help="the README's results table NAME, generated from a report (docs/results/NAME.csv, .yaml)")
    s.add_argument("name", help="the table's name, e.g. default: README markers <!-- results: NAME --> ... <!-- /results: NAME -->")
    s.add_argument("--report", default=None, help="a report folder (e.g. results/report) to copy into docs/results first; "
                   "without it the block is re-rendered from docs/results")
    s.add_argument("--command", default=None, help="with --report: the command that produced the run, shown beside the table")
    s.add_argument("--table", default="intervals", choices=["intervals", "walltime"], help="with --report: which table (default: intervals)")
    s.add_argument("--readme", default="README.md", help="the README with the markers (default: README.md)")
    s.add_argument("--results", default="docs/results", help="where NAME.csv and NAME.yaml are kept (default: docs/results)")
    s.set_defaults(fn=cmd_readme)

    s = sub.add_parser("docs", help="generated documentation").add_subparsers(dest="action", required=True).add_parser(
        "parameters", help="every params key with its meaning, default, allowed values and the stages that read it")
    s.add_argument("-o", "--output", default="docs/parameters.md", help="where to write it (default: docs/parameters.md; '-': standard output)")
    s.set_defaults(fn=cmd_docs)
    return ap


#: exit status of a fault of the machine rather than of the input (a full disk, a read-only folder)
ENVIRONMENT_FAILURE = 1


def environment_error(exc: OSError) -> str:
    """One line for an OSError: which file, what the system said and what to do about it."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where}no space left on the device (the disk or quota is full); free space and run the same "
                "command again (no partial output was kept)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{where}cannot be written ({exc.strerror}); make the folder writable, or point paths.data / "
                "paths.results in the params file to one you can write")
    return f"{where}{exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("CLUSTERSSL_DEBUG") == "1"  # the traceback, for reporting a bug
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        args.fn(args)
    except UserError as exc:
        if debug:
            raise
        print(f"clusterssl: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except OSError as exc:
        if debug:
            raise
        print(f"clusterssl: error: {environment_error(exc)}", file=sys.stderr)
        return ENVIRONMENT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
