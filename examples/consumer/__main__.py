"""A consumer of a docker-machine stack: one container on one of its machines, everything read from the stack's
outputs through a StackReference (never from files on disk)."""

import pulumi
from container import Container

config = pulumi.Config()
machines = pulumi.StackReference("machines", stack_name=config.require("machineStack"))
machine = config.get("machine") or "default"
url = machines.require_output("machines").apply(lambda m: m[machine]["url"])

web = Container(
    config.get("name") or "consumer-web",
    url=url,
    ca_cert=machines.require_output("caCert"),
    client_cert=machines.require_output("clientCert"),
    client_key=pulumi.Output.secret(machines.require_output("clientKey")),
    image=config.get("image") or "e2e/busybox",
    command=["sleep", "86400"],
)
pulumi.export("url", url)
pulumi.export("containerId", web.container_id)
