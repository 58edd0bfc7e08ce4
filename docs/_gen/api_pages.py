"""The API reference's pages: which public name goes on which page, as ``:::`` directives.

Every name of ``solvers.__all__``, ``odenet.__all__`` and ``odenet.analysis.__all__`` gets
one mkdocstrings directive; the page is chosen by the module that defines it (a topic table
below), and a module no topic claims sends its names to the package's "Other" page.
Registered method classes that are not exported by name (``Euler``, ``Dopri5``, ...) are
documented on the methods page, so the registry table can link each row.
``tests/test_docs.py`` checks that every public name lands on a page.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Tuple

import odenet
import solvers

# (package, page file, title, intro, defining-module prefixes)
TOPICS = [
    ("solvers", "solving", "Solving", "The two doors onto the engine: `odeint` (torchdiffeq-compatible) and "
     "`solve` (a `Solution` with status and statistics), the continuous adjoint and gradient modes.",
     ("solvers._api", "solvers._adjoint")),
    ("solvers", "methods", "Methods", "The registry, the tableau type, the contract of a step and every "
     "method class. The [table of methods](../../methods.md) is measured from the same registry.",
     ("solvers._registry", "solvers._tableau", "solvers._base", "solvers._explicit", "solvers._methods",
      "solvers._dopri8", "solvers._implicit", "solvers._sdirk", "solvers._collocation", "solvers._radau",
      "solvers._ownloop", "solvers._scipy", "solvers._adams")),
    ("solvers", "control", "Step-size control", "Controllers propose the next step from the last one's "
     "error ratio.", ("solvers._controller",)),
    ("solvers", "results", "Results and errors", "What a solve returns, and the exceptions a numerical "
     "failure raises.", ("solvers._solution",)),
    ("solvers", "root-finders", "Root finders", "The nonlinear solvers of implicit steps.",
     ("solvers._rootbase", "solvers._root", "solvers._krylov")),
    ("odenet", "fields", "Fields and blocks", "Vector fields (`nn.Module` with `forward(t, x)`) and the "
     "`ODEBlock` that integrates one with a swappable solver.", ("odenet.fields", "odenet._block")),
    ("odenet", "models", "Models", "Image classifiers and time-series models.", ("odenet.models",)),
    ("odenet", "data", "Data", "Bundled and synthetic data sets, padding, masks and interpolation.",
     ("odenet.data",)),
    ("odenet", "training", "Training", "One training loop, configurations, checkpoints.",
     ("odenet.training", "odenet._io")),
    ("odenet", "robustness", "Robustness", "Attacks and noise, with the solver's cost under attack.",
     ("odenet.robustness",)),
    ("odenet", "jobs", "Jobs", "The `odenet compare` / `stability` / `robustness` / `timeseries` jobs as "
     "Python functions.", ("odenet.jobs",)),
    ("odenet", "analysis", "Analysis", "`odenet.analysis`: stability functions and regions, Jacobian gains, "
     "Lyapunov exponents.", ("odenet.analysis",)),
]


def defining_module(package, name: str) -> str:
    """The module that defines ``package.name`` (for constants: the first submodule whose
    ``__all__`` lists it, deepest first)."""
    obj = getattr(package, name)
    if inspect.ismodule(obj):
        return obj.__name__
    mod = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
    if isinstance(mod, str) and mod.startswith(package.__name__):
        return mod
    import sys
    holders = [m for k, m in sorted(sys.modules.items()) if k.startswith(package.__name__ + ".") and m is not None
               and name in getattr(m, "__all__", ()) and getattr(m, name, None) is obj]
    holders.sort(key=lambda m: -m.__name__.count("."))
    return holders[0].__name__ if holders else package.__name__


def _topic(pkg_name: str, module: str):
    for pkg, page, title, intro, prefixes in TOPICS:
        if pkg == pkg_name and any(module == p or module.startswith(p + ".") or module.startswith(p + "_")
                                   or module.startswith(p) for p in prefixes):
            return page
    return "other"


def assignments() -> Dict[Tuple[str, str], List[str]]:
    """``(package, page) -> [identifier, ...]`` in ``__all__`` order."""
    out: Dict[Tuple[str, str], List[str]] = {}
    for package in (solvers, odenet):
        for name in package.__all__:
            if package is odenet and name == "analysis":
                continue  # documented member by member on its own page
            page = _topic(package.__name__, defining_module(package, name))
            out.setdefault((package.__name__, page), []).append(f"{package.__name__}.{name}")
    for name in odenet.analysis.__all__:
        out.setdefault(("odenet", "analysis"), []).append(f"odenet.analysis.{name}")
    exported = set(solvers.__all__)
    for cls in solvers.METHODS.values():
        if cls.__name__ not in exported:
            out.setdefault(("solvers", "methods"), []).append(f"{cls.__module__}.{cls.__name__}")
    return out


def api_pages() -> List[Tuple[str, str, str]]:
    """``[(path under reference/, title, markdown)]``, the index first."""
    pages = []
    index = ["# API reference", "",
             "Every public name of `solvers` and `odenet`, generated from their docstrings at build "
             "time (numpydoc style). Import everything from the package itself "
             "(`solvers.odeint`, `odenet.ODEBlock`); the modules shown in signatures are private.", ""]
    groups = assignments()
    order = [(pkg, page, title, intro) for pkg, page, title, intro, _ in TOPICS]
    order += [(pkg, "other", "Other", "Public names not yet filed under a topic.") for pkg in ("solvers", "odenet")]
    for pkg, page, title, intro in order:
        idents = groups.get((pkg, page))
        if not idents:
            continue
        lines = [f"# `{pkg}`: {title}", "", intro, ""]
        for ident in idents:
            lines += [f"::: {ident}", ""]
        pages.append((f"{pkg}/{page}.md", f"{pkg}: {title}", "\n".join(lines)))
        short = ", ".join(f"`{i.rsplit('.', 1)[1]}`" for i in idents)
        index.append(f"- [{pkg}: {title}]({pkg}/{page}.md): {short}")
    return [("index.md", "Overview", "\n".join(index) + "\n")] + pages
