"""docs/reference.md lists every public name, so the page cannot fall behind the code."""

import os
import re

import pytest

import odenet
import solvers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference():
    with open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8") as fh:
        return fh.read()


@pytest.mark.parametrize("module", [solvers, odenet], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_reference(module):
    text = _reference()
    section = text.split(f"## `{module.__name__}`", 1)[1].split("\n## ", 1)[0]
    # each name opens one list line: "- `name(...)`" or "- `name`"
    listed = set(re.findall(r"^- `([A-Za-z_][A-Za-z0-9_]*)", section, flags=re.M))
    missing = sorted(set(module.__all__) - listed)
    assert not missing, f"docs/reference.md lacks {module.__name__}.{missing}: add one line each"
    stale = sorted(listed - set(module.__all__))
    assert not stale, f"docs/reference.md lists {module.__name__}.{stale}, which are not in __all__"


def test_readme_links_the_reference():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        assert "(docs/reference.md)" in fh.read()
