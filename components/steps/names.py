"""The names of the remote steps every machine goes through (``RemoteCommand.step``): the preview, the policy pack and
the error lines read them."""

WAIT_FOR_SSH = "wait-for-ssh"
INSTALL_DOCKER = "install-docker"
TLS = "tls"
DAEMON_CONFIG = "daemon-config"
# Host folders a local VM shares, mounted in the guest.
MOUNTS = "mounts"
# Private registries' CAs, in /etc/docker/certs.d.
REGISTRY_CERTS = "registry-certs"
# A swarm's steps (components/swarm.py): on its first manager, then per member.
SWARM_INIT, SWARM_TOKENS = "swarm-init", "swarm-tokens"
SWARM_REMOVE, SWARM_JOIN, SWARM_READY = "swarm-remove", "swarm-join", "swarm-ready"
# Steps that run again whenever the server certificate is reissued.
CERTIFICATE_STEPS = (TLS, DAEMON_CONFIG)
