"""Generate the site's derived pages at build time (run by mkdocs-gen-files).

- ``reference/``: the API reference, one page per topic, one ``:::`` directive per public
  name of ``solvers`` and ``odenet`` (their ``__all__``) and per registered method class;
  a name whose module no topic claims lands on the package's "Other" page, so nothing
  public is ever left out.
- ``methods.md``: the registry table, measured from ``solvers.METHODS``.
- ``benchmarks/``: ``benchmarks/README.md`` and ``benchmarks/results/*`` copied as they are.
- ``javascripts/mathjax/``: MathJax, copied from the ``django-static-mathjax`` wheel, so the
  site renders math without a CDN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_pages import api_pages  # noqa: E402
from registry_table import markdown, rows  # noqa: E402

nav_lines = ["* [Overview](index.md)"]
for path, title, text in api_pages():
    with mkdocs_gen_files.open(f"reference/{path}", "w") as fh:
        fh.write(text)
    mkdocs_gen_files.set_edit_path(f"reference/{path}", "../docs/_gen/api_pages.py")
    if path != "index.md":
        indent = "    " if "/" in path else ""
        nav_lines.append(f"{indent}* [{title}]({path})")
with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as fh:
    fh.write("\n".join(nav_lines) + "\n")

with mkdocs_gen_files.open("methods.md", "w") as fh:
    fh.write((ROOT / "docs" / "_gen" / "methods_intro.md").read_text(encoding="utf-8"))
    fh.write("\n" + markdown(rows()))

bench = ROOT / "benchmarks"
with mkdocs_gen_files.open("benchmarks/index.md", "w") as fh:
    fh.write((bench / "README.md").read_text(encoding="utf-8"))
bench_nav = ["* [Overview](index.md)"]
for f in sorted((bench / "results").iterdir()):
    data = f.read_bytes()
    png = f.with_suffix(".png")
    if f.suffix == ".md" and png.exists() and png.name.encode() not in data:
        data += f"\n\n![{png.stem}]({png.name})\n".encode()  # the result's plot, on its page
    with mkdocs_gen_files.open(f"benchmarks/results/{f.name}", "wb") as fh:
        fh.write(data)
    if f.suffix == ".md":
        title = f.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").split(":")[0]
        bench_nav.append(f"* [{title}](results/{f.name})")
with mkdocs_gen_files.open("benchmarks/SUMMARY.md", "w") as fh:
    fh.write("\n".join(bench_nav) + "\n")

import mathjax  # noqa: E402  (django-static-mathjax: MathJax 3 as package data)

es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
for f in [es5 / "tex-svg.js", *sorted((es5 / "input" / "tex" / "extensions").glob("*.js"))]:
    with mkdocs_gen_files.open(f"javascripts/mathjax/{f.relative_to(es5).as_posix()}", "wb") as fh:
        fh.write(f.read_bytes())
