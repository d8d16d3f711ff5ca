"""The local VM resource both local drivers build on: its diff (a new VM, a power cycle, the desired power state),
who owns its instance directory, and the ``Host`` it gives the shared steps."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

import pulumi
from pulumi.dynamic import DiffResult, ResourceProvider

from components import ownership
from components.drivers.base import DriverContext, Host
from components.dynamic import DynamicResource
from components.errors import StepError

INSTANCE_DIR = "instance directory"


def boot_token() -> str:
    """A new value for a VM's ``boot`` output each time it is started (the Docker API check keys on it)."""
    return f"{time.time_ns():x}"


def owner_of(props: dict[str, Any]) -> ownership.Owner | None:
    return ownership.Owner.from_dict(props.get("owner"))


class LocalVmProvider(ResourceProvider):
    """A VM resource: some inputs need a new VM, some a power cycle, and ``power`` is the desired state. Its instance
    directory is marked as the stack's own, and nothing in a directory of another stack is touched."""

    REPLACE_ON: tuple[str, ...] = ()
    RESTART_ON: tuple[str, ...] = ()

    def power_matches(self, olds: dict[str, Any], power: str) -> bool:
        """Whether the VM as last seen (``olds``) is in the desired power state."""
        raise NotImplementedError

    def disk(self, props: dict[str, Any]) -> str:
        """The file whose loss means the VM is lost."""
        raise NotImplementedError

    def lost(self, olds: dict[str, Any]) -> bool:
        return not os.path.exists(self.disk(olds))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in self.REPLACE_ON if olds.get(k) != news.get(k)]
        restart = [k for k in self.RESTART_ON if olds.get(k) != news.get(k)]
        if not replaces and self.lost(olds):
            # Its directory went away with the disk (deleted by hand, or by an older version of this project).
            print(f"machine {olds['name']}: its disk {self.disk(olds)} is gone: the VM is lost and `up` makes a new "
                  "one", file=sys.stderr)  # fmt: skip
            replaces.append("instance_dir")
        power = not self.power_matches(olds, news.get("power", "running"))
        moved = olds.get("owner") != news.get("owner")
        return DiffResult(changes=bool(replaces or restart or power or moved), replaces=replaces,
                          delete_before_replace=True)  # fmt: skip

    def claim_new(self, props: dict[str, Any], clean_leftovers: Any) -> None:
        """Before a VM is created: its instance directory must be free, or ours (an interrupted create: its leftovers
        are cleaned up by ``clean_leftovers``); a directory of another stack, or one we did not make, is refused."""
        directory, owner = props["instance_dir"], owner_of(props)
        found = ownership.state(directory, owner)
        if found == "ours":
            clean_leftovers(props)
        elif found == "absent":
            pass
        elif found == "unknown" and not os.listdir(directory):
            os.rmdir(directory)
        else:
            raise StepError(props["name"], "vm", ownership.refusal(directory, owner, f"the VM's {INSTANCE_DIR}"))
        os.makedirs(directory, mode=0o700)
        ownership.write(directory, owner)

    def keep_ours(self, olds: dict[str, Any], news: dict[str, Any] | None = None) -> bool:
        """Before an existing VM is changed or deleted: whether its directory is still ours (a directory without a
        marker, from before markers, is ours by the state). When ``news`` names a new owner (the stack moved to
        another backend), the directory is handed over."""
        directory, owner = olds["instance_dir"], owner_of(olds)
        marked = ownership.read(directory)
        if marked is not None and owner is not None and marked != owner:
            return False
        new_owner = owner_of(news) if news else owner
        if os.path.isdir(directory) and new_owner is not None and marked != new_owner:
            ownership.write(directory, new_owner)
        return True

    def refuse_change(self, props: dict[str, Any]) -> StepError:
        directory = props["instance_dir"]
        return StepError(props["name"], "vm", ownership.refusal(directory, owner_of(props), f"the VM's {INSTANCE_DIR}"))

    def leave_alone(self, props: dict[str, Any]) -> None:
        """A delete of a VM whose directory another stack owns now: the resource goes, the directory stays."""
        print(f"machine {props['name']}: {self.refuse_change(props).cause}", file=sys.stderr)

    @staticmethod
    def remove_instance_dir(directory: str) -> None:
        shutil.rmtree(directory, ignore_errors=True)


class LocalVm(DynamicResource):
    """What every local VM resource reports: where SSH reaches it, the address clients dial, and its power."""

    OUTPUTS = ("ip", "ssh_host", "ssh_port", "state", "boot")


def vm_host(vm: LocalVm, ctx: DriverContext, ssh_user: str, engine_port: pulumi.Input[int], **extra: Any) -> Host:
    """A local VM: SSH where the VM resource says with the host key we gave it, the stack's key, the VM's address for
    the Docker client."""
    return Host(ssh_host=vm.ssh_host, ssh_port=vm.ssh_port, ssh_user=ssh_user, ssh_private_key=ctx.ssh_key.private_key,
                host_key=ctx.host_key.public_key, address=vm.ip, engine_port=engine_port, ready=vm, boot=vm.boot,
                **extra)  # fmt: skip
