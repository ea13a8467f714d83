"""The report's tables: the reproduction scorecard keeps every published row and compares only
like with like; LaTeX cells are escaped; every report file has a caption for the HTML report."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from clusterssl import paths
from clusterssl.report import tables
from conftest import ROOT

FULL = {"name": "resnet18", "layers": [2, 2, 2, 2], "channels": [64, 128, 256, 512], "stem": "cifar"}
SMALL = {"name": "resnet18", "layers": [1, 1, 1, 1], "channels": [16, 32, 64, 256], "stem": "small"}


def _summary(**rows):
    out = []
    for method, values in rows.items():
        out.append({"method": method, "seeds": 3, **{f"{k}_mean": v for k, v in values.items()}})
    return pd.DataFrame(out)


def _ref(*rows):
    cols = ["method", "dataset", "backbone", "protocol", "metric", "value", "source", "status"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def test_scorecard_compares_only_rows_that_match_in_everything():
    ref = _ref(
        ("SimCLR", "fashion_mnist", "resnet18", "linear", "top1", 90.0, "a paper (10 ep)", "verified"),
        ("SimCLR", "fashion_mnist", "resnet18", "linear", "top1", 91.0, "a README (1000 ep)", "verified"),
        ("SimCLR", "cifar10", "resnet34", "linear-online", "top1", 92.0, "x", "verified"),
        ("CC", "fashion_mnist", "resnet18", "clustering", "nmi", 0.6, "y", "secondary"),
        ("BYOL", "fashion_mnist", "resnet18", "linear", "top1", 88.0, "z", "verified"),
        ("DEC", "fashion_mnist", "mlp-ae", "clustering", "acc", 0.5, "w", "verified"),
        ("CARL", "*", "*", "*", "*", None, "its paper", "missing"),
        ("kmeans-raw-pixels", "fashion_mnist", "none", "clustering", "acc", 0.47, "v", "verified"),
    )
    summary = _summary(simclr={"linear_top1": 88.5, "kmeans_acc": 0.6}, cc={"linear_top1": 85.0, "head_acc": 0.6, "head_nmi": 0.62, "kmeans_nmi": 0.5},
                       raw_pixels={"linear_top1": 84.0, "kmeans_acc": 0.53})
    card = tables.scorecard(ref, summary, "fashion_mnist", FULL, epochs=10)
    assert len(card) == len(ref) and list(card["method"]) == list(ref["method"])  # no row dropped, order kept
    by = card.to_dict("records")
    assert by[0]["verdict"] == "compared" and by[0]["measured"] == 88.5 and by[0]["difference"] == pytest.approx(-1.5) and by[0]["n"] == 3
    assert by[1]["verdict"] == "not comparable" and "1000 epochs vs 10" in by[1]["reason"]
    assert all(p in by[2]["reason"] for p in ("CIFAR-10 vs Fashion-MNIST", "backbone resnet34 vs resnet18", "online linear head"))
    assert by[3]["verdict"] == "compared" and by[3]["measured"] == 0.62  # CC's published clustering is its head's
    assert by[4]["verdict"] == "not comparable" and by[4]["reason"] == "byol is not in this run's methods"
    assert "DEC is not implemented here" in by[5]["reason"]
    assert by[6]["verdict"] == "published value not available" and pd.isna(by[6]["measured"]) and pd.isna(by[6]["published"])
    assert by[7]["verdict"] == "compared" and by[7]["measured"] == 0.53  # raw pixels: k-means, no backbone
    # a quarter-width network is not the published resnet18
    small = tables.scorecard(ref, summary, "fashion_mnist", SMALL, epochs=10)
    assert small.loc[0, "verdict"] == "not comparable" and "channels [16, 32, 64, 256]" in small.loc[0, "reason"]


def test_scorecard_marks_every_published_row():
    ref = pd.read_csv(ROOT / "reference/reported_numbers.csv")
    summary = _summary(raw_pixels={"linear_top1": 84.0, "kmeans_acc": 0.53, "kmeans_nmi": 0.6}, carl={"linear_top1": 87.0}, simclr={"linear_top1": 88.0})
    card = tables.scorecard(ref, summary, "fashion_mnist", SMALL, epochs=10)
    assert len(card) == len(ref)
    assert set(card["verdict"]) <= {"compared", "not comparable", "published value not available"}
    assert card.loc[card["verdict"] != "compared", "reason"].str.len().gt(0).all()
    carl = card[card["method"] == "CARL"]
    assert (carl["verdict"] == "published value not available").all() and carl["measured"].isna().all()
    assert card.loc[card["verdict"] == "compared", "difference"].notna().all()


def test_latex_cells_are_escaped_and_tables_written_three_ways(tmp_path):
    assert tables.latex_escape("a_b & 50 % ± {x}") == r"a\_b \& 50 \% $\pm$ \{x\}"
    df = pd.DataFrame({"method": ["simclr"], "linear top-1 %": ["88.00 ± 0.10"]})
    md = tables.write_all(df, tmp_path / "t", caption="a caption")
    assert md == (tmp_path / "t.md").read_text() and "| simclr | 88.00 ± 0.10 |" in md
    tex = (tmp_path / "t.tex").read_text()
    assert r"linear top-1 \%" in tex and r"88.00 $\pm$ 0.10 \\" in tex and r"\caption{a caption}" in tex
    assert pd.read_csv(tmp_path / "t.csv").equals(df)


def test_every_report_table_and_figure_has_a_caption():
    """A table's caption is workflow/report/<name>.rst; a figure's is its declaration
    (tests/test_figures_registry.py), and no stale .rst is left for it."""
    files = paths.report_files({"paths": {"results": "r"}})
    for f in files:
        if f.suffix == ".csv":
            assert (ROOT / "workflow/report" / f"{f.stem}.rst").read_text().strip(), f
        elif f.suffix == ".png":
            assert paths.report_figures()[f.stem]["caption"].strip(), f
    tables_ = {f.stem for f in files if f.suffix == ".csv"}
    assert {f.stem for f in (ROOT / "workflow/report").glob("*.rst")} == tables_  # label_efficiency: its CSV's caption


def test_machine_line_names_the_cpu_kernels_results_depend_on():
    from clusterssl.report import machine

    line = machine()
    from clusterssl.runtime import cpu_has_bf16_units
    units = "with" if cpu_has_bf16_units() else "without"
    assert f"PyTorch CPU kernels {torch.backends.cpu.get_cpu_capability()}, {units} bf16 units;" in line and "logical CPUs" in line, line


def test_methods_table_reads_recipe_and_provenance_from_each_runs_config(tmp_path):
    """The report takes each method's recipe and provenance from the config.json pretraining
    wrote (it imports no method); a config.json without them names itself and the fix."""
    from clusterssl.io import UserError, write_json
    from clusterssl.report import run_configs

    params = {"paths": {"results": str(tmp_path)}, "dataset": "digits", "seeds": [3], "methods": ["carl", "simclr"]}
    carl = {"recipe": {"pretrain.lr": 0.6}, "provenance": "paper: prototypes"}
    write_json(paths.run_files(params, "carl", 3)[2], carl)
    write_json(paths.run_files(params, "simclr", 3)[2], {"recipe": {}})
    with pytest.raises(UserError, match=r"simclr/seed3/config.json: has no provenance .* run `clusterssl pretrain --method simclr --seed 3` again"):
        run_configs(params)
    write_json(paths.run_files(params, "simclr", 3)[2], {"recipe": {}, "provenance": "paper: NT-Xent"})
    assert run_configs(params) == {"carl": carl, "simclr": {"recipe": {}, "provenance": "paper: NT-Xent"}}


def _linear_metrics(**changes) -> dict:
    """CARL's seed-0 linear.json as `clusterssl eval` writes it, with `changes` (None: key left out)."""
    record = {"method": "carl", "seed": 0, "dataset": "digits", "pretrained_on": "digits", "evaluation": "linear",
              "checkpoint_sha256": "a" * 64, "features_sha256": "b" * 64, "metrics": {"top1": 0.5}}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def test_the_report_takes_metrics_only_from_a_file_that_says_it_holds_its_folders(tmp_path):
    """A metrics file whose method, seed, dataset or evaluation differ from its folder and name
    (copied from another run) is refused, and so is one written before metrics said so."""
    from clusterssl.io import UserError, write_json
    from clusterssl.report import collect

    params = {"paths": {"results": str(tmp_path)}, "dataset": "digits", "seeds": [0], "methods": ["carl"],
              "eval": {"semisup": {"fractions": []}, "transfer": {"datasets": []}, "knn": {"k": [20]}}}
    (paths.run_dir(params, "carl", 0)).mkdir(parents=True)
    paths.run_files(params, "carl", 0)[1].write_text("epoch,seconds\n1,60\n")
    linear = paths.metrics_file(params, "carl", 0, "linear")
    fix = r"re-run `clusterssl eval linear --method carl --seed 0`"
    write_json(linear, _linear_metrics())
    assert collect(params, ["carl"], {"linear"})["linear_top1"].tolist() == [50.0]
    for changes, held in [({"method": "simclr"}, "linear metrics of simclr seed 0 pretrained on digits"),
                          ({"seed": 1}, "linear metrics of carl seed 1"),
                          ({"pretrained_on": "fashion_mnist"}, "linear metrics of carl seed 0 pretrained on fashion_mnist"),
                          ({"evaluation": "knn"}, "knn metrics of carl seed 0")]:
        write_json(linear, _linear_metrics(**changes))
        with pytest.raises(UserError, match=rf"carl/seed0/linear.json: holds {held}.*, not linear metrics of carl seed 0 pretrained on digits; {fix}"):
            collect(params, ["carl"], {"linear"})
    write_json(linear, _linear_metrics(evaluation=None, checkpoint_sha256=None))
    with pytest.raises(UserError, match=rf"linear.json: records no evaluation, checkpoint_sha256 \(written by an older clusterssl\); {fix}"):
        collect(params, ["carl"], {"linear"})


def test_the_report_names_the_command_that_writes_each_metrics_file_again():
    from clusterssl.report import eval_command

    assert eval_command("knn", "carl", 2) == "clusterssl eval knn --method carl --seed 2"
    assert eval_command("semisup_0.01", "scratch", 0) == "clusterssl eval semisup --fraction 0.01 --method scratch --seed 0"
    assert eval_command("transfer_fashion_mnist", "byol", 1) == "clusterssl eval transfer --target fashion_mnist --method byol --seed 1"
