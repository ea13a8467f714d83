"""`clusterssl readme`: the README's result tables, generated from a report, never typed.

`snapshot` copies one of a report's tables (tables/intervals.csv: the results; or
tables/walltime.csv: each rule's wall time) to docs/results/<name>.csv with the machine, the
command that produced it and which table it is (docs/results/<name>.yaml); `render` turns those
two files into a Markdown block; `update_readme` puts that block between the README's markers

    <!-- results: <name> -->
    <!-- /results: <name> -->

tests/test_readme.py checks that every such block in README.md equals what `render` makes of the
committed docs/results/ files, so a table in the README cannot drift from its numbers."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pandas as pd
import yaml

from .io import UserError, write_text

#: the metrics a README table shows, in the report's column order: linear probe, k-NN k = 20,
#: k-means ACC and NMI, then every semi-supervised fraction and transfer linear probe present
HEADLINE = ("linear_top1", "knn20_top1", "kmeans_acc", "kmeans_nmi")
_SEMISUP = re.compile(r"semisup_(.+)_top1")
_TRANSFER = re.compile(r"transfer_(.+)_linear_top1")
INTERVAL_COLUMNS = ("method", "metric", "n", "mean", "std", "low", "high")
WALLTIME_COLUMNS = ("stage", "jobs", "total s", "longest s")  # clusterssl.report.wall_times
TABLES = {"intervals": INTERVAL_COLUMNS, "walltime": WALLTIME_COLUMNS}  # a report's tables/<key>.csv
MACHINE_PREFIX = "- Machine: "
PACKAGES_PREFIX = "- Packages: "
NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
DEFAULT_RESULTS = Path("docs/results")


def check_name(name: str) -> str:
    """A results name (it names docs/results/<name>.csv and the README's markers): no paths."""
    if not NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a results name (lowercase letters, digits, '-' and '_', e.g. default or fmnist-all)")
    return name


def markers(name: str) -> tuple[str, str]:
    return f"<!-- results: {name} -->", f"<!-- /results: {name} -->"


# --- snapshot: report -> docs/results ---------------------------------------------------------
def _read_table(path: Path, fix: str, table: str = "intervals") -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: not found; {fix}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {fix}") from None
    missing = [c for c in TABLES[table] if c not in df.columns]
    if missing:
        raise UserError(f"{path}: has no column {', '.join(missing)} (written by an older clusterssl?); {fix}")
    if df.empty:
        raise UserError(f"{path}: has no rows; {fix}")
    return df


def _provenance_line(index: Path, prefix: str) -> str | None:
    return next((line[len(prefix):].strip() for line in index.read_text().splitlines() if line.startswith(prefix)), None)


def read_report(report_dir: str | Path, table: str = "intervals") -> tuple[str, dict]:
    """The report's tables/<table>.csv text and its provenance (machine, packages), checked;
    nothing written."""
    report = Path(report_dir)
    fix = "point --report at a report folder that `clusterssl report` (or `snakemake`) wrote, e.g. results/report"
    if not report.is_dir():
        raise UserError(f"{report}: no such report folder; {fix}")
    chosen = report / "tables" / f"{table}.csv"
    _read_table(chosen, fix, table)
    index = report / "index.md"
    if not index.is_file():
        raise UserError(f"{index}: not found; {fix}")
    machine = _provenance_line(index, MACHINE_PREFIX)
    if not machine:
        raise UserError(f"{index}: has no line starting with {MACHINE_PREFIX.strip()!r}; run `clusterssl report` again to rewrite it")
    meta = {"machine": machine}
    packages = _provenance_line(index, PACKAGES_PREFIX)
    if packages:
        meta["packages"] = packages
    if table != "intervals":
        meta["table"] = table
    return chosen.read_text(), meta


def snapshot(report_dir: str | Path, name: str, command: str, out_dir: str | Path = DEFAULT_RESULTS,
             table: str = "intervals") -> tuple[Path, Path]:
    """Copy `report_dir`/tables/<table>.csv to `out_dir`/<name>.csv and write `out_dir`/<name>.yaml
    (machine, packages, `command`, the table unless intervals); everything is checked before either
    file is written."""
    check_name(name)
    if not command.strip():
        raise UserError("--command is empty; give the command that produced the run, e.g. \"snakemake --cores all\"")
    text, meta = read_report(report_dir, table)
    out = Path(out_dir)
    csv, info = out / f"{name}.csv", out / f"{name}.yaml"
    header = (f"# written by `clusterssl readme {name} --report ...` with {name}.csv (the report's tables/{table}.csv);\n"
              "# README.md's table is rendered from both files: regenerate it, never edit by hand\n")
    write_text(csv, text)
    write_text(info, header + yaml.safe_dump({**meta, "command": command.strip()}, sort_keys=False, allow_unicode=True, width=1000))
    return csv, info


# --- render: docs/results -> Markdown ----------------------------------------------------------
def headline_columns(metrics) -> list[tuple[str, bool, str]]:
    """(metric, percent?, header) of the headline metrics among `metrics`, in the report's order
    and with the report's own headers (clusterssl.report.columns)."""
    from .report import columns

    metrics = list(dict.fromkeys(metrics))
    fractions = sorted({float(m.group(1)) for m in map(_SEMISUP.fullmatch, metrics) if m})
    targets = [m.group(1) for m in map(_TRANSFER.fullmatch, metrics) if m]
    params = {"eval": {"semisup": {"fractions": fractions}, "knn": {"k": [20]}, "transfer": {"datasets": targets}}}
    wanted = set(HEADLINE) | {m for m in metrics if _SEMISUP.fullmatch(m) or _TRANSFER.fullmatch(m)}
    return [(col, pct, header) for col, _, _, pct, header in columns(params) if col in wanted and col in metrics]


def _fmt(value: float, pct: bool) -> str:
    from .report import _fmt as report_fmt  # the report's rounding: % with 2 decimals, ACC/NMI with 3

    return report_fmt(value, pct)


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def cell(row: dict, pct: bool, bold: bool = False) -> str:
    """`mean ± std [low, high]`: the ± with a standard deviation, the interval where the report
    has one (never with one seed); the mean in bold if `bold`."""
    mean = _fmt(row["mean"], pct)
    text = f"**{mean}**" if bold else mean
    if _present(row.get("std")):
        text += f" ± {_fmt(row['std'], pct)}"
    if _present(row.get("low")) and _present(row.get("high")):
        text += f" [{_fmt(row['low'], pct)}, {_fmt(row['high'], pct)}]"
    return text


def _caption(meta: dict, ns: list[int]) -> str:
    measured = f"Measured on {meta['machine']} with `{meta['command']}`"
    if max(ns) < 2:
        return f"{measured}; one seed: the mean, no interval."
    seeds = str(ns[0]) if len(set(ns)) == 1 else f"{min(ns)}–{max(ns)}"
    return f"{measured}; mean ± std over {seeds} seeds, [95 % interval]."


def render_walltime(walltime: pd.DataFrame, meta: dict) -> str:
    """The Markdown block of a run's wall time per rule (Snakemake's benchmark files), longest
    total first, with each rule's share of the summed job time; rules under 2 % of it share one
    last row."""
    wt = walltime.astype({"stage": str}).sort_values("total s", ascending=False, kind="stable")
    whole = float(wt["total s"].sum()) or 1.0
    small = wt["total s"] < 0.02 * whole
    rows = wt[~small].to_dict("records")
    if small.sum() > 1:
        rest = wt[small]
        rows.append({"stage": f"other: {', '.join(rest['stage'])}", "jobs": rest["jobs"].sum(), "total s": rest["total s"].sum(),
                     "longest s": rest["longest s"].max()})
    else:
        rows += wt[small].to_dict("records")
    lines = ["| rule | jobs | total min | longest min | share of job time |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {int(r['jobs'])} | {r['total s'] / 60:.1f} | {r['longest s'] / 60:.1f} | {100 * r['total s'] / whole:.0f} % |"
              for r in rows]
    caption = (f"Measured on {meta['machine']} with `{meta['command']}`: each rule's jobs, their summed and longest wall "
               f"time (Snakemake's benchmark files; jobs run side by side, so the sum, {whole / 60:.1f} min, exceeds the run's wall time).")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def render_frames(intervals: pd.DataFrame, meta: dict, where="the intervals table") -> str:
    """The Markdown block of one table (intervals unless `meta` names another) and its metadata
    (machine, command)."""
    if meta.get("table") == "walltime":
        return render_walltime(intervals, meta)
    iv = intervals.astype({"metric": str, "method": str})
    cols = headline_columns(iv["metric"])
    if not cols:
        raise UserError(f"{where}: has none of the headline metrics ({', '.join(HEADLINE)}, semisup_*, transfer_*_linear_top1)")
    methods = list(dict.fromkeys(iv["method"]))
    found = {(r["method"], r["metric"]): r for r in iv.to_dict("records") if _present(r["mean"])}
    best = {}
    for col, pct, _ in cols:
        means = [_fmt(found[m, col]["mean"], pct) for m in methods if (m, col) in found]
        best[col] = max(means, key=float) if means else None
    lines = ["| method | " + " | ".join(h for _, _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in methods:
        cells = [cell(found[m, col], pct, _fmt(found[m, col]["mean"], pct) == best[col]) if (m, col) in found else "–"
                 for col, pct, _ in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ns = [int(n) for n in iv["n"] if _present(n)]
    return _caption(meta, ns or [1]) + "\n\n" + "\n".join(lines) + "\n"


def load(name: str, results_dir: str | Path = DEFAULT_RESULTS) -> tuple[pd.DataFrame, dict]:
    check_name(name)
    results = Path(results_dir)
    fix = f"run `clusterssl readme {name} --report <report folder> --command \"<the command that made it>\"` first"
    if not (results / f"{name}.csv").is_file():
        raise UserError(f"{results / f'{name}.csv'}: not found; {fix}")
    info = results / f"{name}.yaml"
    if not info.is_file():
        raise UserError(f"{info}: not found; {fix}")
    meta = yaml.safe_load(info.read_text())
    missing = [k for k in ("machine", "command") if not isinstance(meta, dict) or not meta.get(k)]
    if missing:
        raise UserError(f"{info}: has no {' or '.join(missing)}; {fix}")
    table = meta.get("table", "intervals")
    if table not in TABLES:
        raise UserError(f"{info}: table {table!r} is none of {', '.join(TABLES)}; {fix}")
    return _read_table(results / f"{name}.csv", fix, table), meta


def render(name: str, results_dir: str | Path = DEFAULT_RESULTS) -> str:
    """The README block of `results_dir`/<name>.csv and .yaml: a caption line and one table row per method."""
    return render_frames(*load(name, results_dir), where=Path(results_dir) / f"{name}.csv")


# --- the README's blocks -----------------------------------------------------------------------
def _lines(text: str, marker: str) -> list[re.Match]:
    """`marker` where it stands alone on a line (a marker quoted in prose is not one)."""
    return list(re.finditer(rf"^{re.escape(marker)}[ \t]*$", text, flags=re.M))


def _span(text: str, name: str, where) -> tuple[int, int]:
    """The start and end of the text between `name`'s markers in `text`."""
    start, end = markers(name)
    starts, ends = _lines(text, start), _lines(text, end)
    if not starts or not ends:
        raise UserError(f"{where}: has no markers for the {name!r} table; add the line {start} and below it the line {end} "
                        "where the table belongs")
    if len(starts) > 1 or len(ends) > 1:
        raise UserError(f"{where}: has the markers {start} / {end} more than once; keep one pair")
    i, j = starts[0].end(), ends[0].start()
    if j < i:
        raise UserError(f"{where}: {end} comes before {start}; put {start} first")
    return i, j


def blocks(text: str) -> dict[str, str]:
    """Every results block of a README: {name: the text between its marker lines}."""
    out = {}
    for m in re.finditer(r"^<!-- results: ([a-z0-9][a-z0-9_-]*) -->[ \t]*\n(.*?)^<!-- /results: \1 -->[ \t]*$", text, flags=re.S | re.M):
        out[m.group(1)] = m.group(2)
    return out


def start_lines(text: str) -> list[str]:
    """The names of every start marker line in `text` (with or without its closing line)."""
    return re.findall(r"^<!-- results: (\S+) -->[ \t]*$", text, flags=re.M)


def replace_block(text: str, name: str, block: str, where="README") -> str:
    i, j = _span(text, name, where)
    return text[:i] + "\n" + block + text[j:]


def update_readme(readme_path: str | Path, name: str, results_dir: str | Path = DEFAULT_RESULTS) -> Path:
    """Replace the text between `name`'s markers in `readme_path` with render(name); nothing else changes."""
    readme = Path(readme_path)
    if not readme.is_file():
        raise UserError(f"{readme}: not found; pass --readme the README that has the markers {' and '.join(markers(name))}")
    text = readme.read_text()
    _span(text, name, readme)  # the markers before rendering: a README without them is the likelier mistake
    new = replace_block(text, name, render(name, results_dir), readme)
    if new != text:
        write_text(readme, new)
    return readme


def check_readme(readme_path: str | Path, name: str) -> None:
    readme = Path(readme_path)
    if not readme.is_file():
        raise UserError(f"{readme}: not found; pass --readme the README that has the markers {' and '.join(markers(name))}")
    _span(readme.read_text(), name, readme)


def run(name: str, readme: str | Path, results_dir: str | Path, report: str | Path | None = None, command: str | None = None,
        table: str = "intervals") -> list[Path]:
    """The CLI verb: with a report, snapshot it and update the README; without one, re-render the
    README's block from `results_dir`. Every check runs before the first file is written."""
    check_name(name)
    check_readme(readme, name)
    written = []
    if report is not None:
        if command is None:
            raise UserError("--report needs --command: the command that produced the run, e.g. --command \"snakemake --cores all\"")
        text, meta = read_report(report, table)
        render_frames(pd.read_csv(io.StringIO(text)), {**meta, "command": command},  # renders before anything is written
                      where=Path(report) / "tables" / f"{table}.csv")
        written += snapshot(report, name, command, results_dir, table)
    elif command is not None or table != "intervals":
        raise UserError("--command and --table go with --report (they say which run and which of its tables)")
    written.append(update_readme(readme, name, results_dir))
    return written
