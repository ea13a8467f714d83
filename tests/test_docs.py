"""The documents the repository holds: docs/parameters.md is what `clusterssl docs parameters`
renders from the schema and params.yaml, and every repository path that README.md and
docs/*.md cite (in backticks or as a relative Markdown link) exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A backticked name without a '/' is a repository file only with one of these endings; other
# endings (history.csv, config.json, checkpoint.pt, slurm.conf, *.tar.gz) name outputs or files
# outside the repository, and so do the report's own file names (index.md, intervals.md).
SOURCE_SUFFIXES = (".md", ".py", ".yaml", ".yml", ".toml", ".smk")


def _report_file_names() -> frozenset[str]:
    import yaml

    from clusterssl.paths import report_files

    return frozenset(p.name for p in report_files(yaml.safe_load((ROOT / "params.yaml").read_text())))


REPORT_FILE_NAMES = _report_file_names()
# A backticked name with a '/' is a repository path only when it starts with one of the
# repository's top-level folders (tables/main.md, val/ and train/ are relative to an output
# folder or a dataset's layout). The list is fixed, not read from the disk, so that a path under
# a top-level folder that is missing (or not there yet) is reported, not skipped.
TOP_LEVEL = ("src", "docs", "tests", "workflow", "config", "benchmarks", "reference", "profiles", "studies", "examples", ".ci")
OUTPUTS = ("results/", "data/")  # written by the workflow, not held by the repository
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
PATH_CHARS = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def _is_repository_path(text: str) -> bool:
    """Whether a backticked span names a repository path (not a command, module, key or output)."""
    if not PATH_CHARS.match(text):
        return False  # spaces (commands), globs, braces, $VARS, URLs (':'), dotted keys with '='
    if text.startswith(("/", "-", *OUTPUTS)) or (text.startswith(".") and not text.startswith(".ci/")):
        return False  # absolute paths, options, outputs, ../x
    if ".." in text.split("/"):
        return False
    if "/" in text:
        return text.split("/")[0] in TOP_LEVEL
    return text.endswith(SOURCE_SUFFIXES) and text not in REPORT_FILE_NAMES


def _strip_node_id(text: str) -> str:
    """tests/test_x.py::test_y -> tests/test_x.py; src/x.py:42 -> src/x.py."""
    text = text.split("::")[0]
    return re.sub(r":\d+(-\d+)?$", "", text)


def cited_paths(markdown: str) -> list[str]:
    """Repository paths a Markdown text cites in inline code (outside fenced blocks)."""
    prose = FENCE.sub("", markdown)
    found = []
    for m in CODE_SPAN.finditer(prose):
        text = _strip_node_id(m.group(2).strip())
        if _is_repository_path(text):
            found.append(text)
    return found


def cited_tests(markdown: str) -> list[tuple[str, str]]:
    """(file, test function) of each pytest node id in inline code: `tests/test_x.py::test_y[p]`."""
    found = []
    for m in CODE_SPAN.finditer(FENCE.sub("", markdown)):
        path, sep, rest = m.group(2).strip().partition("::")
        if sep and _is_repository_path(path):
            found.append((path, re.split(r"[\[:]", rest)[0]))
    return found


def link_targets(markdown: str) -> list[str]:
    """Relative link targets (file part, no #anchor) of a Markdown text, outside code."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = []
    for target in [m.group(1) for m in LINK.finditer(prose)] + [m.group(1) for m in REFERENCE_LINK.finditer(prose)]:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue  # URLs, mailto:, anchors within the page, absolute paths
        target = target.split("#")[0]
        if target:
            targets.append(target)
    return targets


def test_the_extractors_find_paths_and_nothing_else():
    text = """A path `src/clusterssl/methods/carl.py`, a folder `workflow/rules/`, a node id
`tests/test_train.py::test_crafted_checkpoint_runs_no_code`, a root file `params.yaml`, `.ci/run`.
Not paths: `snakemake --cores all --configfile config/presets/tiny.yaml`, `results/report/index.md`,
`data/raw/`, `tests/test_{train,methods}.py`, `workflow/report/*.rst`, `https://example.org/a.py`,
`$CLUSTERSSL_DATA_MIRROR`, `/usr/share/datasets/x.md`, `../x`, `a/../../x`, `clusterssl.train.use_device`,
`tables/main.md`, `intervals.md`, `val/`, `history.csv`, `slurm.conf`, `stl10_binary.tar.gz`, `tar/zip`, `--method`,
`method_params.carl.partition_size`, `train+test`, ``x`y``.
```bash
cat `docs/inside-a-fence.md`
```
Links: [design](design.md), [a section](methods.md#carl "title"), [web](https://example.org/x.md),
[here](#anchor), ![figure](../benchmarks/plot.png), `[not a link](nope.md)`.

[ref]: ../README.md
"""
    assert cited_paths(text) == ["src/clusterssl/methods/carl.py", "workflow/rules/", "tests/test_train.py", "params.yaml", ".ci/run"]
    assert cited_tests(text) == [("tests/test_train.py", "test_crafted_checkpoint_runs_no_code")]
    assert link_targets(text) == ["design.md", "methods.md", "../benchmarks/plot.png", "../README.md"]


def _repository_file_names() -> set[str]:
    names = {p.name for p in ROOT.iterdir() if p.is_file()}
    for top in TOP_LEVEL:
        names |= {p.name for p in (ROOT / top).rglob("*") if p.is_file()} if (ROOT / top).is_dir() else set()
    return names


def _exists(path: str, names: set[str]) -> bool:
    """A path with a '/' is relative to the repository root; a bare name (`params.yaml`, or
    `round1.yaml` where the text is about config/search/) is a file somewhere in the repository."""
    return (ROOT / path).exists() if "/" in path else path in names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_repository_path_exists(document):
    text = document.read_text()
    names = _repository_file_names()
    missing = [p for p in cited_paths(text) if not _exists(p, names)]
    missing += [f"{path}::{test}" for path, test in cited_tests(text)
                if (ROOT / path).is_file() and not re.search(rf"^\s*def {re.escape(test)}\(", (ROOT / path).read_text(), re.M)]
    for target in link_targets(text):
        resolved = (document.parent / target).resolve()
        inside = resolved.is_relative_to(ROOT)
        relative = resolved.relative_to(ROOT).as_posix() if inside else target
        if inside and relative.startswith(OUTPUTS):
            continue
        if not resolved.exists():
            missing.append(f"link {target}")
    assert not missing, f"{document.relative_to(ROOT)} cites what the repository does not hold: {', '.join(sorted(set(missing)))}"


def test_parameters_md_is_current():
    from clusterssl.config import load_params
    from clusterssl.paramdoc import render

    committed = (ROOT / "docs/parameters.md").read_text()
    assert committed == render(load_params(ROOT / "params.yaml")), (
        "docs/parameters.md is out of date: run `clusterssl docs parameters` (it writes docs/parameters.md)")


def test_parameters_render_walks_refs_ranges_and_the_stages_that_read_each_key():
    from clusterssl.paramdoc import render, stages_reading

    schema = {
        "$defs": {"prob": {"type": "number", "minimum": 0, "maximum": 1, "description": "a probability"},
                  "recipe": {"type": "object", "properties": {"lr": {"type": "number", "exclusiveMinimum": 0}}}},
        "type": "object",
        "required": ["dataset", "augment", "method_params", "eval"],
        "properties": {
            "dataset": {"enum": ["digits", "cifar10"], "description": "which | data"},
            "augment": {"type": "object", "required": ["flip"], "properties": {"flip": {"$ref": "#/$defs/prob"}}},
            "method_params": {"type": "object", "required": ["carl"], "properties": {"carl": {
                "type": "object", "required": ["partition_size"],
                "properties": {"partition_size": {"type": ["integer", "null"], "minimum": 2},
                               "pretrain": {"$ref": "#/$defs/recipe", "description": "its recipe"}}}}},
            "eval": {"type": "object", "required": ["knn"], "properties": {"knn": {"type": "object", "required": ["k"], "properties": {
                "k": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 1}}}}}},
        },
    }
    params = {"dataset": "digits", "augment": {"flip": 0.5}, "method_params": {"carl": {"partition_size": None, "pretrain": {"lr": 0.6}}},
              "eval": {"knn": {"k": [200, 20]}}}
    text = render(params, schema, source="mine.yaml")
    assert "`mine.yaml`" in text
    assert "| `dataset` | which \\| data | `digits` | one of `digits`, `cifar10` | " in text
    assert "| `augment.flip` | a probability | `0.5` | number in [0, 1] | pretrain |" in text
    assert "## `method_params.carl`" in text and "## `eval.knn`" in text and "## `eval`\n" not in text
    assert "| `method_params.carl.partition_size` |  | `null` | `null` or integer ≥ 2 | pretrain |" in text
    assert "| `method_params.carl.pretrain` | its recipe | `{lr: 0.6}` | mapping with any of the keys lr | pretrain |" in text
    assert "| `eval.knn.k` |  | `[200, 20]` | list (at least 1, no repeats) of: integer ≥ 1 | knn, transfer |" in text
    assert stages_reading("method_params.swav.temperature") == ["pretrain"]
    assert stages_reading("paths.data")[:3] == ["fetch", "prepare", "split"]
    assert stages_reading("eval") == [] and stages_reading("report.embedding") == ["report"]


def test_the_docs_verb_writes_the_page_atomically(tmp_path, capsys):
    from clusterssl import cli
    from clusterssl.config import load_params
    from clusterssl.paramdoc import render

    params, out = str(ROOT / "params.yaml"), tmp_path / "docs" / "parameters.md"
    assert cli.main(["--params", params, "docs", "parameters", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text() == render(load_params(params), source=params)
    assert [p.name for p in out.parent.iterdir()] == ["parameters.md"]  # no temporary file left
    assert cli.main(["--params", params, "docs", "parameters", "-o", "-"]) == 0
    assert capsys.readouterr().out == out.read_text()


def test_readme_is_a_users_guide_not_a_lab_notebook():
    """At most 200 lines, and no dates, issue numbers or search rounds: how a number was reached
    belongs to studies/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b|\bissue \d+|\bround \d\b", text, flags=re.IGNORECASE)


def test_the_readme_counts_the_faults_that_docs_reliability_md_lists():
    rows = [line for line in (ROOT / "docs/reliability.md").read_text().splitlines() if line.startswith("| ")]
    faults = len(rows) - 2  # the header and its rule
    counted = re.search(r"(\d+) faults tried", (ROOT / "README.md").read_text())
    assert counted and int(counted.group(1)) == faults, f"README.md should say {faults} faults tried"
