"""The shell that provisions a host, written once for every driver (docker-machine.md §3).

Each stage is a script fed to ``sh -s`` (as root, through ``sudo -n`` when the SSH user is not root)
on the command's stdin, so certificates and keys never appear on a command line or in a log.
Every script is idempotent: re-running it after an interrupted ``up`` converges.
"""

from __future__ import annotations

import hashlib
import shlex

from components.config import EngineOptions

DROPIN_DIR = "/etc/systemd/system/docker.service.d"
DROPIN = f"{DROPIN_DIR}/10-machine.conf"
CERT_DIR = "/etc/docker"

# The command run over SSH; the script itself arrives on stdin. docker-machine needs root or passwordless sudo.
AS_ROOT = (
    'if [ "$(id -u)" -eq 0 ]; then sh -s; elif sudo -n true 2>/dev/null; then sudo -n sh -s; '
    'else echo "user $(id -un) is not root and has no passwordless sudo" >&2; exit 1; fi'
)



def as_root_inline(script: str) -> str:
    """A command running ``script`` as root without stdin (delete commands get no stdin of their own)."""
    quoted = shlex.quote(script)
    return f'if [ "$(id -u)" -eq 0 ]; then sh -c {quoted}; else sudo -n sh -c {quoted}; fi'


SUPPORTED_OS = ("debian", "ubuntu")

WAIT_FOR_BOOT = """set -e
# cloud-init may still be writing users, keys and apt sources: wait for it where present.
if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi
. /etc/os-release
case "$ID" in
  {supported}) ;;
  *) echo "operating system '${{PRETTY_NAME:-$ID}}' is not supported (supported: {supported_list})" >&2; exit 3 ;;
esac
echo "$ID $VERSION_ID"
""".format(supported="|".join(SUPPORTED_OS), supported_list=", ".join(SUPPORTED_OS))

_APT = "apt-get -o DPkg::Lock::Timeout=600 -qq"


def install_script(engine: EngineOptions) -> str:
    """Install Docker per ``engine.install``; in every mode do nothing when Docker is already there."""
    head = """set -e
if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
  echo "Docker is already installed: $(docker --version)"; exit 0
fi
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
"""
    if engine.install == "none":
        return head + 'echo "Docker is not installed and engine.install is none" >&2; exit 1\n'
    if engine.install == "packages":
        return head + f"""{_APT} update
case "$ID" in
  debian) {_APT} install -y --no-install-recommends docker.io apparmor ;;
  *) {_APT} install -y docker.io ;;
esac
"""
    url = shlex.quote(engine.install_url)
    # Download first: `curl | sh` would run an empty script and "succeed" when the download fails.
    return head + f"""if ! command -v curl >/dev/null 2>&1; then
  {_APT} update && {_APT} install -y curl ca-certificates
fi
installer="$(mktemp)"; trap 'rm -f "$installer"' EXIT
curl -fsSL {url} -o "$installer"
sh "$installer"
command -v dockerd >/dev/null 2>&1 || {{ echo "the install script from {url} did not install Docker" >&2; exit 1; }}
"""


def tls_script(ca_cert: str, server_cert: str, server_key: str) -> str:
    """Copy the CA and the machine's server certificate into /etc/docker (docker-machine's layout)."""
    files = [("ca.pem", "0644", ca_cert), ("server.pem", "0644", server_cert), ("server-key.pem", "0600", server_key)]
    parts = [f"set -e\nmkdir -p {CERT_DIR}\numask 077"]
    for name, mode, content in files:
        tmp = f"{CERT_DIR}/.{name}.tmp"
        parts.append(
            f"cat > {tmp} <<'__PEM__'\n{content.strip()}\n__PEM__\n"
            f"chmod {mode} {tmp} && mv -f {tmp} {CERT_DIR}/{name}"
        )
    return "\n".join(parts) + "\n"


def daemon_flags(engine: EngineOptions, driver: str) -> list[str]:
    """dockerd flags in docker-machine's order (§3.1), listening on TCP and the systemd socket."""
    flags = [
        f"-H tcp://0.0.0.0:{engine.port}",
        # Debian's and Docker's units are socket-activated (docker.socket): keep that socket via fd://.
        "-H fd://",
        "--containerd=/run/containerd/containerd.sock",
        f"--storage-driver {engine.storage_driver}",
        "--tlsverify",
        f"--tlscacert {CERT_DIR}/ca.pem",
        f"--tlscert {CERT_DIR}/server.pem",
        f"--tlskey {CERT_DIR}/server-key.pem",
    ]
    flags += [f"--label {shlex.quote(label)}" for label in engine.labels]
    flags.append(f"--label provider={driver}")
    flags += [f"--insecure-registry {shlex.quote(r)}" for r in engine.insecure_registries]
    flags += [f"--registry-mirror {shlex.quote(m)}" for m in engine.registry_mirrors]
    flags += [f"--{shlex.quote(opt)}" for opt in engine.opts]
    return flags


def dropin(engine: EngineOptions, driver: str) -> str:
    """The systemd drop-in: clear the packaged ExecStart, then one line (systemd ignores continuations)."""
    lines = ["[Service]", "ExecStart=", "ExecStart=/usr/bin/env dockerd " + " ".join(daemon_flags(engine, driver))]
    if engine.env:
        lines.append("Environment=" + " ".join(f'"{item}"' for item in engine.env))
    return "\n".join(lines) + "\n"


def daemon_script(engine: EngineOptions, driver: str, server_cert_serial: str) -> str:
    """Write the drop-in and (re)start Docker; the cert serial ties a reissued cert to a restart."""
    return f"""set -e
# server certificate serial {server_cert_serial}: a new certificate re-runs this step
mkdir -p {DROPIN_DIR}
cat > {DROPIN}.tmp <<'__DROPIN__'
{dropin(engine, driver)}__DROPIN__
mv -f {DROPIN}.tmp {DROPIN}
systemctl daemon-reload
systemctl enable docker.service >/dev/null 2>&1 || true
systemctl restart docker.service
for _ in $(seq 1 90); do
  if ss -Htln "sport = :{engine.port}" | grep -q .; then exit 0; fi
  sleep 1
done
echo "Docker is not listening on port {engine.port}:" >&2
journalctl -u docker.service -n 30 --no-pager >&2 || true
exit 1
"""


UNDO_DAEMON = f"""set -e
# Remove what provisioning added; Docker stays installed and goes back to the distro's start-up.
rm -f {DROPIN} {CERT_DIR}/ca.pem {CERT_DIR}/server.pem {CERT_DIR}/server-key.pem
rmdir {DROPIN_DIR} 2>/dev/null || true
systemctl daemon-reload
systemctl restart docker.service || true
echo "Docker is still installed; its TCP listener and our certificates were removed."
"""


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
