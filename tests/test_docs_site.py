"""The documentation site builds, its examples run and its code blocks agree with the API.

- ``mkdocs build --strict`` (broken links, unresolved references, docstrings griffe cannot
  parse are errors), with the gallery's examples not executed: they run one by one below.
  Skips only when mkdocs is not installed (``pip install -e ".[docs]"``; CI installs it).
- Every ``examples/plot_*.py`` in its quick mode (``ODENET_EXAMPLES_QUICK=1``) ends with a
  figure; the long ones are ``slow``.
- Blocks marked ``<!-- runnable -->`` in ``docs/*.md`` run, in page order (see
  ``docs/extending.md``).
- ``slow``: the whole site with the gallery executed, as ``mkdocs build`` does by default.
"""

from __future__ import annotations

import glob
import os
import re
import runpy
import subprocess
import sys
import textwrap

import pytest

import odenet
import solvers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "plot_*.py")))
# every example's quick mode runs in the default suite (the three longest take 10-15 s each,
# imports included); list one here only if its quick mode outgrows that
SLOW_EXAMPLES: set = set()


def _has_mkdocs() -> bool:
    try:
        import mkdocs  # noqa: F401
        import mkdocs_gallery  # noqa: F401
        import mkdocstrings_handlers.python  # noqa: F401
    except ImportError:
        return False
    return True


def _build(site_dir: str, run_gallery: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ODENET_GALLERY_RUN="true" if run_gallery else "false", ODENET_EXAMPLES_QUICK="1",
               OMP_NUM_THREADS="1", MPLBACKEND="agg", DISABLE_MKDOCS_2_WARNING="true", NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", site_dir],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


needs_mkdocs = pytest.mark.skipif(not _has_mkdocs(), reason='mkdocs not installed: pip install -e ".[docs]"')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("site"))
    res = _build(out, run_gallery=False)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}"
    return out


def _read(site_dir, *parts):
    with open(os.path.join(site_dir, *parts), encoding="utf-8") as fh:
        return fh.read()


@needs_mkdocs
def test_api_reference_has_every_public_name(site):
    html = "".join(_read(os.path.dirname(p), os.path.basename(p))
                   for p in glob.glob(os.path.join(site, "reference", "**", "index.html"), recursive=True))
    names = [f"solvers.{n}" for n in solvers.__all__] + [f"odenet.{n}" for n in odenet.__all__ if n != "analysis"]
    names += [f"odenet.analysis.{n}" for n in odenet.analysis.__all__]
    missing = [n for n in names if f'id="{n}"' not in html]
    assert not missing, f"no API entry for {missing}"
    assert "Raises" in html and "Parameters" in html and "Examples" in html  # numpydoc sections rendered


@needs_mkdocs
def test_method_table_lists_every_registered_method(site):
    html = _read(site, "methods", "index.html")
    for name, cls in solvers.METHODS.items():
        assert f"<code>{name}</code>" in html, f"{name} missing from the table of methods"
    # measured, not typed: explicit Euler's real stability interval is [-2, 0]
    row = re.search(r"<code>euler</code>.*?</tr>", html, flags=re.S).group(0)
    assert "2.000" in row


@needs_mkdocs
def test_benchmarks_and_math_are_served_by_the_site(site):
    for f in os.listdir(os.path.join(ROOT, "benchmarks", "results")):
        stem, ext = os.path.splitext(f)
        built = os.path.join(site, "benchmarks", "results", *((stem, "index.html") if ext == ".md" else (f,)))
        assert os.path.exists(built), f
        if ext == ".png":  # each plot is shown on its result page
            assert f'src="../{f}"' in _read(site, "benchmarks", "results", stem, "index.html"), f
    assert os.path.getsize(os.path.join(site, "javascripts", "mathjax", "tex-svg.js")) > 100_000
    html = _read(site, "index.html")
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert scripts and not [s for s in scripts if s.startswith(("http:", "https:", "//"))], scripts
    assert 'class="arithmatex"' in html


@pytest.mark.parametrize("path", [pytest.param(p, id=os.path.basename(p), marks=[pytest.mark.slow]
                                               if os.path.basename(p) in SLOW_EXAMPLES else [])
                                  for p in EXAMPLES])
def test_example_runs_in_quick_mode(path, monkeypatch, tmp_path):
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.setenv("ODENET_EXAMPLES_QUICK", "1")
    monkeypatch.chdir(tmp_path)
    plt.close("all")
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    try:
        runpy.run_path(path, run_name="__main__")
        assert plt.get_fignums(), f"{os.path.basename(path)} drew no figure"
    finally:
        plt.close("all")
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def _runnable_blocks(text: str) -> list[str]:
    return [textwrap.dedent(m) for m in re.findall(r"<!-- runnable -->\s*\n```python\n(.*?)\n```", text, flags=re.S)]


def test_runnable_doc_blocks_run():
    pages = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path, encoding="utf-8") as fh:
            blocks = _runnable_blocks(fh.read())
        if blocks:
            pages[os.path.basename(path)] = "\n\n".join(blocks)
    assert {"getting-started.md", "extending.md", "index.md"} <= set(pages), sorted(pages)
    # one fresh process, one namespace per page (a page may register a method)
    script = "\n".join(f"print({name!r}); exec(compile({code!r}, {name!r}, 'exec'), {{}})"
                       for name, code in pages.items())
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"a runnable docs block failed:\n{res.stdout}\n{res.stderr[-4000:]}"


@needs_mkdocs
@pytest.mark.slow
def test_site_with_gallery_executed(tmp_path):
    res = _build(str(tmp_path), run_gallery=True)
    assert res.returncode == 0, f"mkdocs build --strict with the gallery failed:\n{res.stderr[-8000:]}"
    for path in EXAMPLES:
        name = os.path.splitext(os.path.basename(path))[0]
        html = _read(str(tmp_path), "generated", "gallery", name, "index.html")
        assert re.search(r'<img[^>]+src="[^"]*images/mkd_glr_' + name, html), f"{name}: no figure on its page"
