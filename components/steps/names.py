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
# Steps that run again whenever the server certificate is reissued.
CERTIFICATE_STEPS = (TLS, DAEMON_CONFIG)
