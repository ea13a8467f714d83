"""`clusterssl readme`: the README's result tables are rendered from docs/results/ (copied from a
report by a command), never typed; and every results block in README.md equals its rendering."""
from __future__ import annotations

from pathlib import Path

import pytest

from clusterssl import readme
from clusterssl.cli import main
from clusterssl.io import UserError

ROOT = Path(__file__).resolve().parents[1]
MACHINE = "Test CPU, 2 logical CPUs, PyTorch CPU kernels AVX2; GPU: none; Linux 6.0, Python 3.11.7"

# three seeds for carl and simclr, one for scratch; raw_pixels has no semi-supervised row and
# simclr no k-means NMI (the "–" cells); head_acc and knn200 are not headline metrics
INTERVALS = """method,metric,n,mean,std,low,high
raw_pixels,linear_top1,3,80.0,0.0,80.0,80.0
raw_pixels,kmeans_acc,3,0.5,0.0,0.5,0.5
raw_pixels,kmeans_nmi,3,0.49,0.0,0.49,0.49
scratch,semisup_0.01_top1,1,10.125,,,
carl,linear_top1,3,85.123,1.5,81.397,88.849
carl,knn200_top1,3,70.0,1.0,67.5,72.5
carl,knn20_top1,3,84.0,0.25,83.379,84.621
carl,kmeans_acc,3,0.61234,0.01,0.5875,0.6372
carl,kmeans_nmi,3,0.55,0.02,0.5003,0.5997
carl,head_acc,3,0.3,0.1,0.05,0.55
carl,semisup_0.01_top1,3,20.0,2.0,15.032,24.968
carl,transfer_digits_linear_top1,3,60.0,3.0,52.548,67.452
simclr,linear_top1,3,84.0,1.0,81.516,86.484
simclr,knn20_top1,3,85.5,0.5,84.258,86.742
simclr,kmeans_acc,3,0.6,0.02,0.5503,0.6497
simclr,semisup_0.01_top1,3,25.0,1.0,22.516,27.484
simclr,transfer_digits_linear_top1,3,61.0,2.0,56.032,65.968
"""

EXPECTED = f"""Measured on {MACHINE} with `snakemake --cores all`; mean ± std over 1–3 seeds, [95 % interval].

| method | linear top-1 % | k-NN k=20 % | k-means ACC | k-means NMI | semi-sup 1 % labels top-1 % | transfer digits linear % |
|---|---|---|---|---|---|---|
| raw_pixels | 80.00 ± 0.00 [80.00, 80.00] | – | 0.500 ± 0.000 [0.500, 0.500] | 0.490 ± 0.000 [0.490, 0.490] | – | – |
| scratch | – | – | – | – | 10.12 | – |
| carl | **85.12** ± 1.50 [81.40, 88.85] | 84.00 ± 0.25 [83.38, 84.62] | **0.612** ± 0.010 [0.588, 0.637] | **0.550** ± 0.020 [0.500, 0.600] | 20.00 ± 2.00 [15.03, 24.97] | 60.00 ± 3.00 [52.55, 67.45] |
| simclr | 84.00 ± 1.00 [81.52, 86.48] | **85.50** ± 0.50 [84.26, 86.74] | 0.600 ± 0.020 [0.550, 0.650] | – | **25.00** ± 1.00 [22.52, 27.48] | **61.00** ± 2.00 [56.03, 65.97] |
"""


def write_results(d: Path, name: str = "demo", csv: str = INTERVALS, command: str = "snakemake --cores all") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.csv").write_text(csv)
    (d / f"{name}.yaml").write_text(f"machine: '{MACHINE}'\ncommand: {command}\n")
    return d


def make_report(d: Path, csv: str = INTERVALS) -> Path:
    (d / "tables").mkdir(parents=True)
    (d / "tables" / "intervals.csv").write_text(csv)
    (d / "index.md").write_text(f"# clusterssl report\n\n## Run record\n\n- Machine: {MACHINE}\n- Packages: clusterssl 0.1.0\n")
    return d


def files(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


README = """# project

Intro.

<!-- results: demo -->
old, hand-typed table
<!-- /results: demo -->

After.
"""


# --- (a) render -----------------------------------------------------------------------------------
def test_render_exact_cells(tmp_path):
    assert readme.render("demo", write_results(tmp_path)) == EXPECTED


def test_render_one_seed_has_no_interval(tmp_path):
    one = "method,metric,n,mean,std,low,high\nraw_pixels,linear_top1,1,95.333331823349,,,\ncarl,linear_top1,1,54.2222,,,\ncarl,kmeans_nmi,1,0.20861603685977229,,,\n"
    text = readme.render("demo", write_results(tmp_path, csv=one))
    assert text.splitlines()[0].endswith("with `snakemake --cores all`; one seed: the mean, no interval.")
    assert text.splitlines()[2:] == ["| method | linear top-1 % | k-means NMI |", "|---|---|---|",
                                     "| raw_pixels | **95.33** | – |", "| carl | 54.22 | **0.209** |"]


def test_render_names_the_fix_when_files_are_missing(tmp_path):
    with pytest.raises(UserError, match=r"demo\.csv: not found; run `clusterssl readme demo --report"):
        readme.render("demo", tmp_path)
    (tmp_path / "demo.csv").write_text(INTERVALS)
    with pytest.raises(UserError, match=r"demo\.yaml: not found"):
        readme.render("demo", tmp_path)
    with pytest.raises(UserError, match="not a results name"):
        readme.render("../x", tmp_path)


# --- (b) update_readme ----------------------------------------------------------------------------
def test_update_readme_replaces_only_the_block_and_is_idempotent(tmp_path):
    results = write_results(tmp_path / "results")
    path = tmp_path / "README.md"
    path.write_text(README)
    readme.update_readme(path, "demo", results)
    first = path.read_text()
    assert first == README.replace("old, hand-typed table\n", EXPECTED)
    assert readme.blocks(first) == {"demo": EXPECTED}
    readme.update_readme(path, "demo", results)
    assert path.read_text() == first


def test_markers_quoted_in_prose_are_not_blocks(tmp_path):
    results = write_results(tmp_path / "results")
    prose = "Regenerate a table with `clusterssl readme NAME`; it lives between `<!-- results: demo -->` and `<!-- /results: demo -->`.\n"
    path = tmp_path / "README.md"
    path.write_text(prose + README)
    assert readme.start_lines(prose) == [] and readme.blocks(prose) == {}
    readme.update_readme(path, "demo", results)
    assert path.read_text() == prose + README.replace("old, hand-typed table\n", EXPECTED)
    assert readme.blocks(path.read_text()) == {"demo": EXPECTED}
    # a hand edit inside the block is what test_readme_result_blocks_are_generated catches
    edited = path.read_text().replace("**85.12**", "**86.00**")
    assert readme.blocks(edited)["demo"] != readme.render("demo", results)


@pytest.mark.parametrize("text", ["# no markers\n", "<!-- results: demo -->\nonly the start\n",
                                  "<!-- /results: demo -->\n<!-- results: demo -->\n",
                                  README + README])
def test_update_readme_without_one_pair_of_markers_is_a_user_error(tmp_path, text):
    results = write_results(tmp_path / "results")
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(UserError, match="README.md: ") as exc:
        readme.update_readme(path, "demo", results)
    assert "\n" not in str(exc.value)
    if "no markers" in text or "only the start" in text:
        assert "add the line <!-- results: demo --> and below it the line <!-- /results: demo -->" in str(exc.value)
    assert path.read_text() == text


# --- (c) the CLI verb -----------------------------------------------------------------------------
def test_cli_snapshots_a_report_and_rerenders(tmp_path, capsys):
    report = make_report(tmp_path / "results" / "report")
    (tmp_path / "README.md").write_text(README)
    docs = tmp_path / "docs" / "results"
    argv = ["readme", "demo", "--report", str(report), "--command", "snakemake --cores all",
            "--readme", str(tmp_path / "README.md"), "--results", str(docs)]
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(docs / "demo.csv"), str(docs / "demo.yaml"), str(tmp_path / "README.md")]
    assert (docs / "demo.csv").read_text() == INTERVALS
    info = (docs / "demo.yaml").read_text()
    assert f"machine: '{MACHINE}'" in info and "command: snakemake --cores all" in info and "packages: clusterssl 0.1.0" in info
    assert (tmp_path / "README.md").read_text() == README.replace("old, hand-typed table\n", EXPECTED)
    # without --report: re-rendered from docs/results alone (after a format change, say)
    (tmp_path / "README.md").write_text(README)
    assert main(["readme", "demo", "--readme", str(tmp_path / "README.md"), "--results", str(docs)]) == 0
    assert readme.blocks((tmp_path / "README.md").read_text()) == {"demo": EXPECTED}


@pytest.mark.parametrize("breakage", ["no folder", "no intervals", "no machine line", "no markers", "no command"])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, breakage):
    report = tmp_path / "report"
    if breakage != "no folder":
        make_report(report)
    if breakage == "no intervals":
        (report / "tables" / "intervals.csv").unlink()
    if breakage == "no machine line":
        (report / "index.md").write_text("# clusterssl report\n")
    (tmp_path / "README.md").write_text("# no markers\n" if breakage == "no markers" else README)
    before = files(tmp_path)
    argv = ["readme", "demo", "--report", str(report), "--readme", str(tmp_path / "README.md"), "--results", str(tmp_path / "docs")]
    if breakage != "no command":
        argv += ["--command", "snakemake --cores all"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clusterssl: error: ") and err.count("\n") == 1 and "Traceback" not in err
    expected = {"no folder": "no such report folder", "no intervals": "intervals.csv: not found", "no markers": "add the line",
                "no machine line": "index.md: has no line starting with '- Machine:'", "no command": "--report needs --command"}
    assert expected[breakage] in err
    assert files(tmp_path) == before
    assert not (tmp_path / "docs").exists()


# --- (d) the repository's README ------------------------------------------------------------------
def test_readme_result_blocks_are_generated():
    """Every results block in README.md is what `clusterssl readme NAME` renders from the committed
    docs/results/NAME.csv and .yaml (regenerate with that command; never edit a block by hand)."""
    text = (ROOT / "README.md").read_text()
    found = readme.blocks(text)
    assert sorted(readme.start_lines(text)) == sorted(found), "a results block without its closing <!-- /results: NAME --> line"
    for name, block in found.items():
        assert block == readme.render(name, ROOT / "docs" / "results"), \
            f"README.md's {name!r} table differs from docs/results/{name}.*: run `clusterssl readme {name}`"


# --- (e) the wall-time table ----------------------------------------------------------------------
WALLTIME = """stage,jobs,total s,longest s
fetch,2,3.0,2.0
pretrain,2,960.0,540.0
split,2,12.0,6.0
eval/semisup_0.1,3,300.0,120.0
"""


def test_cli_renders_a_reports_wall_time_per_rule(tmp_path, capsys):
    report = make_report(tmp_path / "report")
    (report / "tables" / "walltime.csv").write_text(WALLTIME)
    (tmp_path / "README.md").write_text(README)
    docs = tmp_path / "docs"
    argv = ["readme", "demo", "--report", str(report), "--table", "walltime", "--command", "time snakemake --cores all",
            "--readme", str(tmp_path / "README.md"), "--results", str(docs)]
    assert main(argv) == 0
    assert "table: walltime" in (docs / "demo.yaml").read_text() and (docs / "demo.csv").read_text() == WALLTIME
    block = readme.blocks((tmp_path / "README.md").read_text())["demo"]
    assert block == (f"Measured on {MACHINE} with `time snakemake --cores all`: each rule's jobs, their summed and longest wall time "
                     "(Snakemake's benchmark files; jobs run side by side, so the sum, 21.2 min, exceeds the run's wall time).\n\n"
                     "| rule | jobs | total min | longest min | share of job time |\n|---|---|---|---|---|\n"
                     "| pretrain | 2 | 16.0 | 9.0 | 75 % |\n| eval/semisup_0.1 | 3 | 5.0 | 2.0 | 24 % |\n"
                     "| other: split, fetch | 4 | 0.2 | 0.1 | 1 % |\n")
    assert readme.render("demo", docs) == block  # what tests/test_readme keeps the README's blocks equal to


def test_a_report_without_a_wall_time_table_is_one_line(tmp_path, capsys):
    report = make_report(tmp_path / "report")
    (tmp_path / "README.md").write_text(README)
    argv = ["readme", "demo", "--report", str(report), "--table", "walltime", "--command", "snakemake --cores all",
            "--readme", str(tmp_path / "README.md"), "--results", str(tmp_path / "docs")]
    assert main(argv) == 2
    assert "walltime.csv: not found" in capsys.readouterr().err and not (tmp_path / "docs").exists()
