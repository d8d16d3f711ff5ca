"""The driver registry: one module (or package) per driver in this package, each exposing ``DRIVER`` (see
``base.Driver``), and what the readers of a stack derive from what the drivers declare.

Driver modules import their cloud SDK only when they register resources, so loading every driver to learn its
declarations is cheap and a local stack never imports a cloud SDK. Names starting with ``_`` (shared code) and
``base`` are not drivers.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache
from typing import Any

from components.drivers.base import Driver, IngressRule, VmResource

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


def every() -> list[Driver]:
    return [load(name) for name in available()]


def vm_resource(type_token: str) -> VmResource | None:
    """The declaration of the resource of this type that is a machine itself, if a driver makes such machines."""
    return next((d.vm for d in every() if d.vm is not None and d.vm.type == type_token), None)


def vm_types() -> frozenset[str]:
    return frozenset(d.vm.type for d in every() if d.vm is not None)


def firewall_types() -> frozenset[str]:
    return frozenset(d.firewall.type for d in every() if d.firewall is not None)


def ingress_rules(type_token: str, inputs: Mapping[str, Any]) -> list[IngressRule]:
    """The inbound rules of a firewall resource of one of the drivers, from its inputs (camelCase, as the engine and
    the policy pack see them); [] for any other resource."""
    for driver in every():
        if driver.firewall is not None and driver.firewall.type == type_token:
            return driver.firewall.rules(inputs)
    return []
