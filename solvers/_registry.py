"""The method registry: name -> method class. Tests and benchmarks iterate over it."""

from __future__ import annotations

from typing import Dict, Type

from ._base import AbstractSolver
from ._dopri8 import Dopri8
from ._methods_adaptive import AdaptiveHeun, Bosh3, Dopri5, Fehlberg2, Tsit5
from ._methods_fixed import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic

__all__ = ["METHODS", "register_method", "get_method"]

METHODS: Dict[str, Type[AbstractSolver]] = {}
"""Every method by name: ``method=`` name -> method class (filled by :func:`register_method`)."""


def register_method(cls: Type[AbstractSolver]) -> Type[AbstractSolver]:
    """Add a method class to :data:`METHODS` under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, AbstractSolver)):
        raise TypeError(f"register_method needs an AbstractSolver subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Type[AbstractSolver]:
    """The method class registered under ``name``.

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If no method has that name; the message lists the valid ones.

    Examples
    --------
    >>> get_method("dopri5").order
    5
    """
    if not isinstance(name, str):
        raise TypeError(f"`method` must be a method name (str) or an AbstractSolver instance, got {type(name).__name__}")
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


for _cls in (Euler, Midpoint, Heun2, Heun3, RK4, RK4Classic, Bosh3, Dopri5, Tsit5, Dopri8, AdaptiveHeun, Fehlberg2):
    register_method(_cls)
