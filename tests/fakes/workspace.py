"""A fake of ``scripts/machinecli/workspace.Workspace``: stacks, outputs, config and state in memory.

Operations that would run the engine (``up``, ``destroy``) are recorded in ``streams`` as the ``pulumi`` command line
the Automation API runs for them, so tests can check targets, replacements and refreshes.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from components import config
from components.drivers.qemu.vm import VM as QEMU_VM
from scripts.machinecli import workspace
from scripts.machinecli.errors import MachineError
from scripts.machinecli.lifecycle import typed_config_value as _typed
from scripts.machinecli.workspace import Lock, StackInfo, lock_message

KEY = workspace.MACHINES_KEY
COMPONENT = "dockermachine:index:DockerMachine"


@dataclass
class FakeStack:
    name: str
    outputs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    current: bool = False
    locks: list[Lock] = field(default_factory=list)


def machine_resources(stack: str, name: str, driver: str = "qemu", undo: bool = False) -> list[dict[str, Any]]:
    """What ``up`` leaves in the state for one machine: the component and its children."""
    from components import outputs

    prefix = f"urn:pulumi:{stack}::{workspace.PROJECT}::"
    component = f"{prefix}{COMPONENT}::{name}"
    children = [(outputs.SSH_KEY.token, f"{name}-ssh-key")]
    if driver == "qemu":
        children.append((QEMU_VM.token, f"{name}-vm"))
    children += [(outputs.REMOTE_COMMAND.token, f"{name}-{s}") for s in ("wait-for-ssh", "install-docker", "tls")]
    children += [
        (outputs.REMOTE_COMMAND.token, f"{name}-daemon-config"),
        (outputs.SERVER_CERTIFICATE.token, f"{name}-server-cert"),
        (outputs.API_CHECK.token, f"{name}-docker-check"),
    ]
    resources = [{"urn": component, "type": COMPONENT, "parent": f"{prefix}pulumi:pulumi:Stack::x"}]
    for typ, child in children:
        inputs = {"delete": "undo" if undo and child.endswith("daemon-config") else None}
        resources.append({"urn": f"{prefix}{COMPONENT}${typ}::{child}", "type": typ, "parent": component,
                          "inputs": inputs})  # fmt: skip
    return resources


_PATH_RE = re.compile(r"\[(\d+)\]|\.([^.\[]+)")


def _split_path(path: str) -> tuple[str, list[Any]]:
    m = re.match(r"^([^\[.]+:[^\[.]+)", path)
    assert m, path
    key, rest = m.group(1), path[m.end() :]
    return key, [int(index) if index else name for index, name in _PATH_RE.findall(rest)]


class FakeWorkspace:
    def __init__(self, *stacks: FakeStack):
        self.by_name = {s.name: s for s in stacks}
        self.streams: list[list[str]] = []
        self.fail_stream: str | None = None  # an operation (up, destroy) that fails
        self.on_stream = None  # callable(args, fake) run on each successful operation
        self.unlocked: list[str] = []
        # What `preview` sees per stack: pulumi's --json document (steps, changeSummary); {} by default.
        self.previews: dict[str, dict[str, Any]] = {}
        self.selected: str | None = None

    def install(self, monkeypatch) -> FakeWorkspace:
        monkeypatch.setattr(workspace, "get", lambda: self)
        return self

    def _stack(self, name: str) -> FakeStack:
        if name not in self.by_name:
            raise MachineError(f"no stack named '{name}' found")
        return self.by_name[name]

    # --- reading ---------------------------------------------------------------------------------------------

    def stacks(self) -> list[StackInfo]:
        return [StackInfo(s.name, s.current, len(s.resources)) for s in self.by_name.values()]

    def outputs(self, stack: str) -> dict[str, Any]:
        return copy.deepcopy(self._stack(stack).outputs)

    def machines_config(self, stack: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._stack(stack).config.get(KEY, []))

    def machines(self, stack: str) -> dict[str, Any]:
        return config.machines_of(self.machines_config(stack))

    def resources(self, stack: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._stack(stack).resources)

    def has_stack(self, stack: str) -> bool:
        return stack in self.by_name

    def preview(self, stack: str, *, refresh: bool, policy_packs: list[str], policy_configs: list[str]):
        self.check_lock(stack)
        self.streams.append(["preview", "--stack", stack, *(["--refresh"] if refresh else [])])
        return workspace.Preview(document=copy.deepcopy(self.previews.get(stack, {})))

    # --- config --------------------------------------------------------------------------------------------------

    def set_config(self, stack: str, path: str, value: str) -> None:
        self._set_path(self._stack(stack), f"{workspace.PROJECT}:{path}", _typed(value))

    def set_all_config(self, stack: str, values: dict[str, str]) -> None:
        for path, value in values.items():
            self.set_config(stack, path, value)

    def remove_config(self, stack: str, path: str) -> None:
        config = self._stack(stack).config
        key, parts = _split_path(f"{workspace.PROJECT}:{path}")
        if not parts:
            config.pop(key, None)
            return
        container = config[key]
        for part in parts[:-1]:
            container = container[part]
        del container[parts[-1]]

    def _set_path(self, stack: FakeStack, path: str, value: Any) -> None:
        key, parts = _split_path(path)
        if not parts:
            stack.config[key] = value
            return
        container = stack.config.setdefault(key, [] if isinstance(parts[0], int) else {})
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            if following is None:
                if isinstance(part, int) and part == len(container):
                    container.append(value)
                else:
                    container[part] = value
                return
            empty: Any = [] if isinstance(following, int) else {}
            if isinstance(part, int):
                if part == len(container):
                    container.append(empty)
            else:
                container.setdefault(part, empty)
            container = container[part]

    # --- operations ------------------------------------------------------------------------------------------------

    def _record(self, verb: str, stack: str, extra: list[str]) -> None:
        self.check_lock(stack)
        args = [verb, "--yes", "--skip-preview", "--stack", stack, *extra]
        self.streams.append(args)
        if self.fail_stream == verb:
            raise MachineError(f"pulumi {verb} failed:\n  error: boom")
        if self.on_stream:
            self.on_stream(args, self)

    def up(self, stack: str, targets: list[str] | None, *, replace: list[str] | None = None, refresh: bool = False,
           title: str = "pulumi up") -> None:  # fmt: skip
        extra = ["--suppress-outputs"]
        for urn in targets or []:
            extra += ["--target", urn]
        if targets:
            extra.append("--target-dependents")
        for urn in replace or []:
            extra += ["--replace", urn]
        if refresh:
            extra.append("--refresh")
        self._record("up", stack, extra)

    def destroy(self, stack: str, title: str = "pulumi destroy") -> None:
        self._record("destroy", stack, [])

    def forget(self, stack: str, urn: str) -> None:
        s = self._stack(stack)
        s.resources = [r for r in s.resources if r["urn"] != urn and r.get("parent") != urn]

    def ensure_stack(self, stack: str) -> None:
        self.by_name.setdefault(stack, FakeStack(stack))

    def select(self, stack: str) -> None:
        self.selected = stack

    # --- locks ------------------------------------------------------------------------------------------------------

    def locks(self, stack: str) -> list[Lock]:
        return list(self._stack(stack).locks)

    def check_lock(self, stack: str) -> None:
        for lock in self.locks(stack):
            raise MachineError(lock_message(stack, lock))

    def unlock(self, stack: str) -> None:
        self._stack(stack).locks.clear()
        self.unlocked.append(stack)
