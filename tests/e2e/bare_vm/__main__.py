"""One bare VM from the QEMU driver's dynamic resource, exported the way the generic driver reads it."""

import os
import sys

import pulumi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

from components.drivers.qemu import Options, Vm, state_root  # noqa: E402
from components.tls import SshKey  # noqa: E402

options = Options(image="debian-12")
key = SshKey("bare-key")
vm = Vm(
    "bare-vm",
    {
        "name": "bare",
        "instance_dir": os.path.join(state_root(), f"bare-vm-{pulumi.get_stack()}", "qemu", "bare"),
        "project_dir": ROOT,
        "image": options.image,
        "kernel": None,
        "initrd": None,
        "cmdline": options.cmdline,
        "cpus": options.cpus,
        "memory": options.memory,
        "disk": options.disk,
        "ssh_user": options.ssh_user,
        "authorized_key": key.public_key,
        "accel_requested": options.accel,
        "network": "user",
        "bridge": options.bridge,
        "bridge_cidr": options.bridge_cidr,
        "address": None,
        # The guest's engine port is forwarded too, so the generic stack's daemon is reachable.
        "engine_port": 2376,
        "power": "running",
    },
)
pulumi.export("address", vm.ip)
pulumi.export("sshPort", vm.ssh_port.apply(int))
pulumi.export("sshUser", options.ssh_user)
pulumi.export("sshPrivateKey", key.private_key)
pulumi.export("enginePort", vm.engine_host_port.apply(int))
pulumi.export("instanceDir", os.path.join(state_root(), f"bare-vm-{pulumi.get_stack()}", "qemu", "bare"))
