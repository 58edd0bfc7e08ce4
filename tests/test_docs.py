"""The API reference cannot fall behind the code: every public name has a docstring and a page.

The reference pages are generated at build time by ``docs/_gen/api_pages.py`` (one
mkdocstrings directive per name); these checks read the code the way that build does
(griffe, with the project's docstring extension), without building the site.
"""

import os
import sys

import pytest

import odenet
import solvers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs", "_gen"))

griffe = pytest.importorskip("griffe", reason="griffe comes with the docs extra: pip install -e '.[docs]'")

import api_pages  # noqa: E402
import griffe_docs  # noqa: E402


def _public(module):
    names = list(module.__all__)
    if module is odenet:
        names += [f"analysis.{n}" for n in odenet.analysis.__all__]
    return names


@pytest.fixture(scope="module")
def loaded():
    ext = griffe.load_extensions(griffe_docs.DocsExtension())
    return {name: griffe.load(name, search_paths=[ROOT], docstring_parser="numpy", extensions=ext)
            for name in ("solvers", "odenet")}


@pytest.mark.parametrize("module", [solvers, odenet], ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module, loaded):
    pkg = loaded[module.__name__]
    missing = [n for n in _public(module) if pkg[n].docstring is None or not pkg[n].docstring.value.strip()]
    assert not missing, (f"{module.__name__}.{missing} have no docstring: the API reference would show "
                         "nothing (a constant takes a string literal after it or a `#:` comment above it)")


def test_every_public_name_is_on_an_api_page():
    placed = {ident for idents in api_pages.assignments().values() for ident in idents}
    for module in (solvers, odenet):
        missing = [n for n in _public(module) if f"{module.__name__}.{n}" not in placed and n != "analysis"]
        assert not missing, f"{module.__name__}.{missing} are on no API page"
    unregistered = [c.__name__ for c in solvers.METHODS.values() if griffe_docs.method_anchor(c) not in placed]
    assert not unregistered, f"method classes {unregistered} are not documented"


def test_sphinx_roles_become_links_or_code(loaded):
    text = loaded["odenet"]["ODEBlock"].docstring.value + loaded["solvers"]["solve"].docstring.value
    assert ":class:`" not in text and ":func:`" not in text


def test_readme_says_how_to_build_the_site():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert 'pip install -e ".[docs]"' in text and "mkdocs serve" in text and "mkdocs build" in text
