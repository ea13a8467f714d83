"""`clusterssl <verb>`: argument parsing only; one verb per workflow stage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .io import UserError


def _params(args):
    from .config import load_params

    return load_params(args.params)


def cmd_fetch(args):
    from . import data, paths

    p = _params(args)
    print(data.fetch(args.dataset or p["dataset"], paths.raw_dir(p, args.dataset or p["dataset"])))


def cmd_prepare(args):
    from . import data, paths

    p = _params(args)
    name = args.dataset or p["dataset"]
    print(data.prepare(name, paths.raw_dir(p, name), paths.prepared_dir(p, name)))


def cmd_pretrain(args):
    from .methods.base import get_method
    from .train import pretrain

    p = _params(args)
    get_method(args.method)
    if args.method not in p["method_params"]:
        raise UserError(f"{args.params}: no 'method_params.{args.method}' section")
    print(pretrain(p, args.method, args.seed, threads=args.threads, progress=not args.no_progress))


def cmd_embed(args):
    from . import paths
    from .evaluate.features import embed

    p = _params(args)
    if args.method != paths.RAW_PIXELS:
        from .methods.base import get_method

        get_method(args.method)
    print(embed(p, args.method, args.seed, threads=args.threads))


def cmd_eval(args):
    from .evaluate.run import evaluate

    p = _params(args)
    print(evaluate(p, args.protocol, args.method, args.seed, threads=args.threads))


def cmd_report(args):
    from .report import build_report

    print(build_report(_params(args), reference=Path(args.reference) if args.reference else None))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clusterssl", description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = ap.add_subparsers(dest="verb", required=True)

    d = sub.add_parser("data", help="fetch or prepare a dataset").add_subparsers(dest="action", required=True)
    for name, fn in (("fetch", cmd_fetch), ("prepare", cmd_prepare)):
        s = d.add_parser(name)
        s.add_argument("dataset", nargs="?", help="dataset name (default: params 'dataset')")
        s.set_defaults(fn=fn)

    def run_args(s, threads=True):
        s.add_argument("--method", required=True)
        s.add_argument("--seed", type=int, default=0)
        if threads:
            s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")

    s = sub.add_parser("pretrain", help="pretrain one method with one seed")
    run_args(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("embed", help="extract frozen features of a pretrained run (or raw_pixels)")
    run_args(s)
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("eval", help="evaluate frozen features with one protocol")
    s.add_argument("protocol", choices=["linear", "knn", "cluster"])
    run_args(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("report", help="tables and figures from saved metrics")
    s.add_argument("--reference", default=None, help="published numbers CSV (default: reference/reported_numbers.csv if present)")
    s.set_defaults(fn=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as exc:
        print(f"clusterssl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
