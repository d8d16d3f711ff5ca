"""One bare VM from the QEMU driver's dynamic resource, exported the way the generic driver reads it."""

import os
import sys

import pulumi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

from components import ownership  # noqa: E402
from components.drivers._local.paths import state_root  # noqa: E402
from components.drivers.qemu.options import Options  # noqa: E402
from components.drivers.qemu.vm import Vm, instance_dir_of, vm_props  # noqa: E402
from components.steps.tls import SshKey  # noqa: E402

# The image the generic driver's test provisions: bare Debian (no Docker), DMP_BARE_IMAGE overriding it.
options = Options(image=os.environ.get("DMP_BARE_IMAGE", "debian-13"))
key, host_key = SshKey("bare-key"), SshKey("bare-host-key")
state_dir = os.path.join(state_root(), f"bare-vm-{pulumi.get_stack()}")
owner = ownership.current(pulumi.get_project(), pulumi.get_stack())
# The guest's engine port is forwarded too, so the generic stack's daemon is reachable.
props = vm_props("bare", options, state_dir, ROOT, authorized_key=key.public_key,
                 host_key=(pulumi.Output.secret(host_key.private_key), host_key.public_key),
                 owner=owner.as_dict(), engine_port=2376)  # fmt: skip
vm = Vm("bare-vm", props)
pulumi.export("address", vm.ip)
pulumi.export("sshPort", vm.ssh_port.apply(int))
pulumi.export("sshUser", options.ssh_user)
pulumi.export("sshPrivateKey", key.private_key)
pulumi.export("sshHostKey", host_key.public_key)
pulumi.export("enginePort", vm.engine_host_port.apply(int))
pulumi.export("instanceDir", instance_dir_of(state_dir, "bare"))
