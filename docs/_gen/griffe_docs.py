"""A griffe extension that reads the code's docstrings the way its authors wrote them.

- ``#:`` comments just above a module constant (Sphinx's attribute-comment convention, used
  throughout the code) become that constant's docstring.
- Sphinx roles in docstrings (``:class:`Solution```) become links. The code's numpydoc docstrings use Sphinx roles, which Markdown does not know. A role whose
target is a documented public name becomes an autorefs link (``[`Solution`][solvers.Solution]``),
anything else (private modules, methods named relative to their class) plain code, so the
strict build never meets a reference it cannot resolve.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|mod|obj|exc|const):`~?([^`]+)`")


def documented_names() -> set:
    """Identifiers that have an anchor in the API reference (see ``gen_pages.py``)."""
    import odenet
    import solvers

    names = {f"solvers.{n}" for n in solvers.__all__} | {f"odenet.{n}" for n in odenet.__all__}
    names |= {f"odenet.analysis.{n}" for n in odenet.analysis.__all__}
    names |= {method_anchor(cls) for cls in solvers.METHODS.values()}
    return names


def method_anchor(cls) -> str:
    """The API-reference identifier of a registered method class."""
    import solvers

    if cls.__name__ in solvers.__all__:
        return f"solvers.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        if member.is_module or member.is_class:
            yield from _walk(member)
        else:
            yield member


class DocsExtension(griffe.Extension):
    """``#:`` comments as constant docstrings, then Sphinx roles rewritten, once per package."""

    def __init__(self) -> None:
        super().__init__()
        self._names = None

    def _rewrite(self, text: str, package: str) -> str:
        if self._names is None:
            self._names = documented_names()

        def sub(m):
            target = m.group(1).strip()
            short = target.split(".")[-1]
            for cand in (target, f"{package}.{target}", f"odenet.analysis.{target}"):
                if cand in self._names:
                    return f"[`{short}`][{cand}]"
            return f"`{target}`"

        return _ROLE.sub(sub, text)

    @staticmethod
    def _comment_docstring(obj) -> None:
        if obj.docstring is not None or not obj.is_attribute or obj.lineno is None:
            return
        try:
            lines = obj.lines_collection[obj.filepath]  # the whole file
        except (KeyError, TypeError):
            return
        comment = []
        i = obj.lineno - 2  # the line above the assignment (lineno is 1-based)
        while 0 <= i < len(lines) and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        if comment:
            obj.docstring = griffe.Docstring(" ".join(comment), lineno=obj.lineno, parent=obj)

    def on_package(self, *, pkg, **kwargs) -> None:
        for obj in list(_walk(pkg)):
            self._comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(obj.docstring.value, pkg.name)
