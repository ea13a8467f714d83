"""The studies' layout: each study has a README listed in the index, every script imports as a
module of the `studies` package, and the product never imports it."""
from __future__ import annotations

import importlib
import re

import pytest

from studies.tests.helpers import ROOT, STUDIES

STUDY_DIRS = sorted(d for d in STUDIES.iterdir() if d.is_dir() and d.name not in {"tests", "__pycache__"})
SCRIPTS = sorted(f for d in STUDY_DIRS for f in d.glob("*.py") if f.name != "__init__.py")


def test_every_study_has_a_readme_listed_in_the_index():
    index = (STUDIES / "README.md").read_text()
    assert STUDY_DIRS
    for d in STUDY_DIRS:
        assert (d / "README.md").is_file(), d
        assert f"]({d.name}/README.md)" in index, d.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda f: f"{f.parent.name}.{f.stem}")
def test_every_script_is_a_module_of_the_studies_package(script):
    assert (script.parent / "__init__.py").is_file()
    module = importlib.import_module(f"studies.{script.parent.name}.{script.stem}")
    assert module.__doc__ and "python -m studies." in module.__doc__  # the docstring says how to run it


def test_the_product_never_imports_the_studies():
    imports = re.compile(r"^\s*(from|import)\s+studies\b", re.MULTILINE)
    for f in (ROOT / "src").rglob("*.py"):
        assert not imports.search(f.read_text()), f


FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_studies_resolves_to_a_file_and_heading():
    docs = sorted(STUDIES.rglob("*.md"))
    assert len(docs) > len(STUDY_DIRS)
    for doc in docs:
        prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", doc.read_text()))
        for target in LINK.findall(prose):
            if re.match(r"^[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists() and file.is_relative_to(ROOT), (doc, target)
            if anchor:
                headings = re.findall(r"^#+ (.+)$", FENCE.sub("", file.read_text()), re.M)
                assert anchor in {_anchor(h) for h in headings}, (doc, target)
