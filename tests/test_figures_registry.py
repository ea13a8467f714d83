"""A report figure is declared once, on its drawing function (`@figure` in
clusterssl/report/figures.py): the report draws it and shows its title and reading, the workflow's
outputs (clusterssl.paths, so Snakemake and dvc.yaml) and the HTML report's caption come from the
same declaration, read from the source without importing matplotlib."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clusterssl import dvcgen, paths
from clusterssl.io import UserError
from clusterssl.report import figures, figures_markdown, write_figures
from conftest import ROOT


def _facts(figs: dict) -> dict:
    return {name: {"title": f.title, "reading": f.reading, "caption": f.caption} for name, f in figs.items()}


def _dvc_plots(text: str) -> list[str]:
    # a plot is its path, or {path: {options}}
    return [p if isinstance(p, str) else next(iter(p)) for p in yaml.safe_load(text)["stages"]["report"]["plots"]]


def test_declared_figures_are_the_reports_figure_files_and_its_dvc_plots():
    names = list(figures.FIGURES)
    built_in = ["training_curves", "online_knn", "prototype_usage", "label_efficiency", "embeddings", "confusion"]
    assert [n for n in names if n in built_in] == built_in  # in the report's order; a figure added later joins them
    # what the workflow reads from the source is what the module declares when imported, in the same order
    assert paths.report_figures() == _facts(figures.FIGURES) and list(paths.report_figures()) == names
    files = paths.report_files({"paths": {"results": "r"}})
    assert [f.stem for f in files if f.suffix == ".png"] == names
    assert all(f.parent.name == "figures" for f in files if f.suffix == ".png")
    assert [p.rsplit("/", 1)[1] for p in _dvc_plots(dvcgen.render())] == [f"{n}.png" for n in names]
    assert _dvc_plots(dvcgen.render()) == _dvc_plots((ROOT / "dvc.yaml").read_text())


def test_every_declared_figure_has_a_title_a_reading_and_a_caption():
    for name, fig in figures.FIGURES.items():
        assert fig.title.strip() and fig.reading.strip() and fig.caption.strip(), name
        assert fig.file == f"{name}.png"
        assert f"**{fig.title}** — {fig.reading}\n\n![{fig.title}](figures/{name}.png)\n" in figures_markdown()


def test_the_workflow_reads_the_declarations_without_importing_matplotlib():
    code = ("import sys; from clusterssl import paths; paths.report_files({'paths': {'results': 'r'}}); "
            "print(sorted(m for m in ('matplotlib', 'clusterssl.report', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- a new figure: its decorated function, nothing else ------------------------------------------------
EXTRA = '''

@figure("extra_panel", title="Extra", reading="a figure added by one decorated function.",
        caption="Extra: drawn from the report's inputs with no other edit.")
def extra_figure(inputs: ReportInputs, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(inputs.histories["carl"][0]["epoch"], inputs.histories["carl"][0]["loss"])
    _save(fig, path)
'''


def _fake_results(tmp_path) -> tuple[dict, pd.DataFrame]:
    """The saved results the figures read, for one method and one seed (a few test images)."""
    from clusterssl.io import file_sha256, write_json

    params = {"paths": {"results": str(tmp_path / "results"), "data": str(tmp_path / "data")}, "dataset": "digits",
              "seeds": [0], "methods": ["carl"], "report": {"embedding": "pca", "embedding_samples": 30},
              "eval": {"max_train": None}}
    write_json(paths.prepared_dir(params, "digits") / "meta.json",
               {"classes": [str(c) for c in range(10)], "num_train": 40, "num_test": 40})
    checkpoint, history = paths.run_files(params, "carl", 0)[:2]
    history.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    pd.DataFrame({"epoch": [1, 2], "loss": [3.0, 2.5], "consistency": [1.0, 0.8], "lr": [0.1, 0.01], "seconds": [1.0, 1.0],
                  "online_knn20_top1": [40.0, 50.0], "prototypes": [20, 20], "prototypes_used": [12, 15],
                  "prototype_entropy": [0.5, 0.6]}).to_csv(history, index=False)
    rng = np.random.default_rng(0)
    for m in paths.evaluated_methods(params):
        f = paths.features_file(params, m, 0)
        f.parent.mkdir(parents=True)
        x, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 10
        made_by = "raw_pixels" if m == paths.RAW_PIXELS else file_sha256(checkpoint)
        provenance = {"method": m, "seed": 0, "dataset": "digits", "pretrained_on": "digits", "checkpoint_sha256": made_by,
                      "params_fingerprint": "-", "num_classes": 10}
        np.savez(f, train_features=x, train_labels=y, test_features=x, test_labels=y, provenance=np.array(json.dumps(provenance)))
        write_json(paths.metrics_file(params, m, 0, "cluster"), {"metrics": {"kmeans": {"confusion": np.eye(10, dtype=int).tolist()}}})
    efficiency = pd.DataFrame([{"method": m, "labels_percent": pct, "protocol": protocol, "n": 1, "mean": mean, "std": None,
                                "low": None, "high": None}
                               for m in ("raw_pixels", "carl") for pct, protocol, mean in
                               ((10.0, "fine-tune", 60.0), (100.0, "frozen linear probe", 80.0))])
    return params, efficiency


@pytest.fixture
def registered_figures():
    """figures.FIGURES as it was before the test (a test's figure is forgotten after it)."""
    before = dict(figures.FIGURES)
    yield figures.FIGURES
    figures.FIGURES.clear()
    figures.FIGURES.update(before)


def test_a_figure_added_by_a_decorated_function_is_drawn_listed_and_an_output(tmp_path, monkeypatch, registered_figures):
    # the module as imported: write_figures draws it and index.md shows it
    namespace = dict(vars(figures))
    exec(compile(EXTRA, "<extra>", "exec"), namespace)  # noqa: S102 - the test's own source
    params, efficiency = _fake_results(tmp_path)
    write_figures(params, efficiency, tmp_path / "report")
    drawn = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert drawn == sorted([*(f"{n}.png" for n in paths.report_figures()), "extra_panel.png"])
    assert all((tmp_path / "report" / "figures" / f).read_bytes().startswith(b"\x89PNG") for f in drawn)
    assert figures_markdown().endswith("**Extra** — a figure added by one decorated function.\n\n![Extra](figures/extra_panel.png)\n")

    # the module's source with the function appended: the workflow's outputs and dvc.yaml's plots follow
    source = tmp_path / "figures.py"
    source.write_text(paths.FIGURES_SOURCE.read_text() + EXTRA)
    monkeypatch.setattr(paths, "FIGURES_SOURCE", source)
    monkeypatch.setattr(paths, "_report_figures", {})
    assert paths.report_figures()["extra_panel"] == {"title": "Extra", "reading": "a figure added by one decorated function.",
                                                   "caption": "Extra: drawn from the report's inputs with no other edit."}
    assert paths.report_figures() == _facts(figures.FIGURES)
    assert paths.report_dir(params) / "figures" / "extra_panel.png" in paths.report_files(params)
    assert _dvc_plots(dvcgen.render())[-1] == "${paths.results}/report/figures/extra_panel.png"


def test_a_figure_declared_twice_in_one_process_is_refused(registered_figures):
    with pytest.raises(ValueError, match="figure 'online_knn' is declared twice"):
        figures.figure("online_knn", title="t", reading="r", caption="c")(lambda inputs, path: None)


# --- the source reader refuses what it cannot read, with one clear error -------------------------------
@pytest.mark.parametrize("declaration, message", [
    ('@figure("x", title=TITLE, reading="r", caption="c")',
     r"figures\.py: the arguments of @figure on f must be a literal \(it is read without importing the module\)"),
    ('@figure("x", title="t" + "u", reading="r", caption="c")', r"the arguments of @figure on f must be a literal"),
    ('@figure("x", title="t", reading="r")', r"@figure on f \(line 4\): declare title=, reading=, caption= each a non-empty string"),
    ('@figure("x", title="t", reading="r", caption=" ")', r"declare title=, reading=, caption= each a non-empty string"),
    ('@figure("x", title="t", reading="r", caption="c", order=2)', r"and nothing else \(it has: title, reading, caption, order\)"),
    ('@figure("Bad Name", title="t", reading="r", caption="c")', r"the figure's name, lowercase letters, digits and _"),
    ('@figure(title="t", reading="r", caption="c")', r"its one positional argument is the figure's name"),
])
def test_the_source_reader_refuses_a_declaration_it_cannot_read(tmp_path, declaration, message):
    source = tmp_path / "figures.py"
    source.write_text(f"TITLE = 't'\n\n{declaration}\ndef f(inputs, path):\n    pass\n")
    with pytest.raises(UserError, match=message) as err:
        paths.read_figures(source)
    assert str(source) in str(err.value) and "\n" not in str(err.value)


def test_the_source_reader_refuses_a_name_declared_twice(tmp_path):
    source = tmp_path / "figures.py"
    one = '@figure("x", title="t", reading="r", caption="c")\ndef {}(inputs, path):\n    pass\n\n'
    source.write_text(one.format("f") + one.format("g"))
    with pytest.raises(UserError, match=r"@figure on g \(line 6\): figure 'x' is declared twice; rename one"):
        paths.read_figures(source)


def _common_smk_function(name: str):
    """A plain Python function of workflow/rules/common.smk (its text up to the next top-level line)."""
    text = (ROOT / "workflow/rules/common.smk").read_text()
    start = text.index(f"def {name}(")
    end = next(i for i in range(text.index("\n", start) + 1, len(text)) if text[i - 1] == "\n" and text[i] not in " \n")
    namespace = {"paths": paths, "Path": Path}
    exec(compile(text[start:end], "common.smk", "exec"), namespace)  # noqa: S102 - the workflow's own source
    return namespace[name]


def test_the_html_reports_figure_captions_are_the_declared_ones(tmp_path, monkeypatch):
    """common.smk's figure_caption writes a figure's declared caption to
    .snakemake/clusterssl/captions/<name>.rst under the working directory, only when its text changed,
    and report_outputs hands that file to report(..., caption=...)."""
    monkeypatch.chdir(tmp_path)
    figure_caption = _common_smk_function("figure_caption")
    path = figure_caption("online_knn")
    assert path == tmp_path / ".snakemake/clusterssl/captions/online_knn.rst" and path.is_absolute()
    assert path.read_text() == figures.FIGURES["online_knn"].caption + "\n"
    os.utime(path, (1, 1))
    figure_caption("online_knn")
    assert path.stat().st_mtime == 1  # unchanged text: not written again
    path.write_text("an older caption\n")
    assert figure_caption("online_knn").read_text() == figures.FIGURES["online_knn"].caption + "\n"
    assert "figure_caption(p.stem) if p.suffix == \".png\"" in (ROOT / "workflow/rules/common.smk").read_text()
