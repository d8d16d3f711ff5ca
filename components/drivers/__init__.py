"""The driver registry: one module per driver in this package, each exposing ``DRIVER`` (see ``base.Driver``).

Modules are imported only for the drivers a stack uses, so a local stack never imports a cloud SDK. Modules whose
name starts with ``_`` (shared code) and ``base`` are not drivers.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from components.drivers.base import Driver

_NOT_DRIVERS = frozenset({"base"})


@cache
def available() -> tuple[str, ...]:
    names = (m.name for m in pkgutil.iter_modules(__path__))
    return tuple(sorted(n for n in names if not n.startswith("_") and n not in _NOT_DRIVERS))


def load(name: str) -> Driver:
    if name not in available():
        raise ValueError(f"unknown driver {name!r}; allowed: {', '.join(available())}")
    driver = importlib.import_module(f"{__name__}.{name}").DRIVER
    assert isinstance(driver, Driver), f"{name}.DRIVER does not satisfy the driver contract"
    return driver
