"""Drivers make a host reachable over SSH and say how to reach it; nothing more.

A driver is one module in this package exposing:

* ``Options`` — a pydantic model of its stack-config ``options``;
* ``create_host(name, machine, ssh_key, state_dir, opts) -> Host``;
* optionally ``SUPPORTS_POWER = True`` (the desired ``state`` can stop the machine);
* optionally ``check_host(machines)``: host prerequisites, called once per driver in use by
  ``__main__.py`` before any resource exists; raises ``ConfigError`` with one message.

Modules are imported only for the drivers a stack uses, so a local stack never
imports a cloud SDK.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import pulumi


@dataclass(frozen=True)
class Host:
    """How the shared provisioning reaches a host made by a driver."""

    ssh_host: pulumi.Input[str]
    ssh_port: pulumi.Input[int]
    ssh_user: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]
    # The address the Docker client dials: it goes into the server certificate's SANs.
    address: pulumi.Input[str]
    # The port the Docker client dials (a forwarded port for QEMU user networking).
    engine_port: pulumi.Input[int]
    # What the provisioning steps must wait for (e.g. the VM resource); None for an existing host.
    ready: pulumi.Resource | None
    # Dial attempts while the host boots (pulumi-command retries every few seconds).
    dial_error_limit: int = 120
    # Whether destroy must undo our changes on the host (only for hosts we did not create).
    undo_on_delete: bool = False


@cache
def available() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def load(name: str) -> ModuleType:
    if name not in available():
        raise ValueError(f"unknown driver {name!r}; allowed: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")
