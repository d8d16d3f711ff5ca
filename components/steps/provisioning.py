"""Every shell script run on a host, written once for every driver (docs/provisioning.md).

Each stage is a script fed to ``sh -s`` (as root, through ``sudo -n`` when the SSH user is not root) on the
command's stdin, so certificates and keys never appear on a command line or in a log. Every script is idempotent:
re-running it after an interrupted ``up`` converges.
"""

from __future__ import annotations

import hashlib
import re
import shlex

from components import model
from components.model import EngineOptions

DROPIN_DIR = "/etc/systemd/system/docker.service.d"
DROPIN = f"{DROPIN_DIR}/10-machine.conf"
CERT_DIR = "/etc/docker"
# Where the tls step puts the stack's CA and the machine's server certificate, and where dockerd reads them.
CA_CERT, SERVER_CERT, SERVER_KEY = (f"{CERT_DIR}/{name}" for name in ("ca.pem", "server.pem", "server-key.pem"))
# The oldest engine provisioned without a warning: Docker 23.0 made BuildKit the default builder (API 1.42).
DOCKER_FLOOR = (23, 0)
SUPPORTED_OS = ("debian", "ubuntu")
# Lines a script prints with this prefix reach the `up` output as warnings (components/remote.py).
WARNING = "warning: "

# The command run over SSH; the script itself arrives on stdin. docker-machine needs root or passwordless sudo.
AS_ROOT = (
    'if [ "$(id -u)" -eq 0 ]; then sh -s; elif sudo -n true 2>/dev/null; then sudo -n sh -s; '
    'else echo "user $(id -un) is not root and has no passwordless sudo" >&2; exit 1; fi'
)


def as_root_inline(script: str) -> str:
    """A command running ``script`` as root without stdin (delete commands get no stdin of their own)."""
    quoted = shlex.quote(script)
    return f'if [ "$(id -u)" -eq 0 ]; then sh -c {quoted}; else sudo -n sh -c {quoted}; fi'


WAIT_FOR_BOOT = """set -e
# cloud-init may still be writing users, keys and apt sources: wait for it where present (its Python takes seconds to
# start under emulation, so not once it has finished).
if command -v cloud-init >/dev/null 2>&1 && [ ! -e /var/lib/cloud/instance/boot-finished ]; then
  cloud-init status --wait >/dev/null 2>&1 || true
fi
. /etc/os-release
case "$ID" in
  {supported}) ;;
  *) echo "operating system '${{PRETTY_NAME:-$ID}}' is not supported (supported: {supported_list})" >&2; exit 3 ;;
esac
echo "$ID $VERSION_ID"
""".format(supported="|".join(SUPPORTED_OS), supported_list=", ".join(SUPPORTED_OS))

_APT = "apt-get -o DPkg::Lock::Timeout=600 -qq"

# The distribution's Docker: docker.io everywhere, plus the client, buildx and compose v2 where the release packages
# them apart (Debian 13: docker-cli, docker-buildx, docker-compose 2.x; Ubuntu: docker-buildx, docker-compose-v2).
# Debian drops Recommends (docker-cli is one on 13), so apparmor, which its kernel enables, is named too.
_PACKAGES = f"""{_APT} update
case "$ID" in
  debian) packages="docker.io apparmor"; recommends="--no-install-recommends" ;;
  *) packages="docker.io"; recommends="" ;;
esac
for optional in docker-cli docker-buildx docker-compose-v2; do
  if apt-cache show "$optional" >/dev/null 2>&1; then packages="$packages $optional"; fi
done
compose="$(apt-cache policy docker-compose 2>/dev/null | awk '/Candidate:/ {{print $2}}')" || true
case "$compose" in [2-9].*) packages="$packages docker-compose" ;; esac  # 1.x is the retired Python one
{_APT} install -y $recommends $packages
"""

# How the script mode fetches engine.install_url; ``install_url`` reads the URL back from a script.
_DOWNLOAD = 'curl -fsSL {url} -o "$installer"'
_DOWNLOAD_RE = re.compile(re.escape(_DOWNLOAD).replace(re.escape("{url}"), r"(\S+)"))

# The client comes from the same package (or release) as the daemon: its version stands for both.
_FLOOR_CHECK = f"""version="$(docker --version 2>/dev/null \
  | sed -n 's/^Docker version \\([0-9]*\\)\\.\\([0-9]*\\).*/\\1 \\2/p')" || true
set -- $version
major={DOCKER_FLOOR[0]}; minor={DOCKER_FLOOR[1]}
if [ -n "${{1:-}}" ] && {{ [ "$1" -lt $major ] || {{ [ "$1" -eq $major ] && [ "$2" -lt $minor ]; }}; }}; then
  echo "{WARNING}Docker $1.$2 from ${{PRETTY_NAME:-$ID}} is older than $major.$minor, the floor this project \
provisions without caveats (BuildKit by default, API 1.42); use a newer release or engine.install: script"
fi
"""


def install_script(engine: EngineOptions) -> str:
    """Install Docker per ``engine.install``; in every mode do nothing when Docker is already there."""
    head = """set -e
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
  echo "Docker is already installed: $(docker --version)"
"""
    tail = "fi\n" + _FLOOR_CHECK
    if engine.install == "none":
        return head + 'else\n  echo "Docker is not installed and engine.install is none" >&2; exit 1\n' + tail
    if engine.install == "packages":
        return head + "else\n" + _PACKAGES + tail
    url = shlex.quote(engine.install_url)
    # Download first: `curl | sh` would run an empty script and "succeed" when the download fails.
    return head + f"""else
if ! command -v curl >/dev/null 2>&1; then
  {_APT} update && {_APT} install -y curl ca-certificates
fi
installer="$(mktemp)"; trap 'rm -f "$installer"' EXIT
if ! {_DOWNLOAD.format(url=url)} 2>"$installer.err"; then
  echo "downloading the install script {url} failed: $(cat "$installer.err")" >&2; rm -f "$installer.err"; exit 1
fi
rm -f "$installer.err"
if ! sh "$installer"; then echo "the install script from {url} failed" >&2; exit 1; fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "the install script from {url} did not install Docker (no dockerd)" >&2; exit 1
fi
""" + tail


def install_url(script: str) -> str | None:
    """The URL an install script downloads and runs (the inverse of ``install_script``); None when it downloads
    nothing (engine.install packages or none)."""
    found = _DOWNLOAD_RE.search(script)
    return shlex.split(found[1])[0] if found else None


def tls_script(ca_cert: str, server_cert: str, server_key: str) -> str:
    """Copy the CA and the machine's server certificate into /etc/docker (docker-machine's layout)."""
    files = [(CA_CERT, "0644", ca_cert), (SERVER_CERT, "0644", server_cert), (SERVER_KEY, "0600", server_key)]
    parts = [f"set -e\nmkdir -p {CERT_DIR}\numask 077"]
    for path, mode, content in files:
        tmp = f"{CERT_DIR}/.{path.rpartition('/')[2]}.tmp"
        parts.append(f"cat > {tmp} <<'__PEM__'\n{content.strip()}\n__PEM__\nchmod {mode} {tmp} && mv -f {tmp} {path}")
    return "\n".join(parts) + "\n"


def systemd_word(value: str, *, expand_variables: bool = True) -> str:
    """``value`` as one double-quoted word of a unit file, read back verbatim by systemd.

    Backslashes and quotes are C-escaped, ``%`` is a specifier (``%%``) and, on ExecStart= lines, ``$`` starts a
    variable (``$$``); Environment= does not expand variables.
    """
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if expand_variables:
        text = text.replace("$", "$$")
    return f'"{text}"'


# The listeners of Debian's, Ubuntu's and Docker's own units: socket activation (docker.socket) and the system
# containerd. daemon_script adapts them to the host's packaged unit (docs/provisioning.md).
FD_SOCKET = "-H fd://"
UNIX_SOCKET = "-H unix:///var/run/docker.sock"
CONTAINERD = "/run/containerd/containerd.sock"
# The here-document delimiter daemon_script writes the drop-in with.
_DROPIN_END = "__DROPIN__"


def option_flags(engine: EngineOptions, driver: str) -> list[str]:
    """The dockerd flags of the engine options that are plain flags (EngineField.dockerd), in their order: a list
    gives the flag once per value, a switch (True) the flag alone; docker-machine's ``provider=<driver>`` label is
    always added."""
    flags = []
    for name, field in type(engine).fields().items():
        if not field.dockerd:
            continue
        value = getattr(engine, name)
        if name == "labels":
            value = [*value, f"provider={driver}"]
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                flags.append(f"--{field.dockerd}")
            elif item is not None and item is not False:
                flags.append(f"--{field.dockerd} {systemd_word(str(item))}")
    return flags


def engine_option_words() -> dict[str, str]:
    """The dockerd flag of each engine option → the option in a reviewer's words (scripts/machine preview)."""
    fields = model.EngineOptions.fields().values()
    return {field.dockerd: field.words for field in fields if field.dockerd and field.words}


def daemon_flags(engine: EngineOptions, driver: str) -> list[str]:
    """dockerd flags: listening on TCP (mutual TLS with the stack's CA) and the local socket, then the engine options,
    then engine.opts."""
    flags = [
        f"-H tcp://0.0.0.0:{engine.port}",
        FD_SOCKET,
        f"--containerd={CONTAINERD}",
        "--tlsverify",
        f"--tlscacert {CA_CERT}",
        f"--tlscert {SERVER_CERT}",
        f"--tlskey {SERVER_KEY}",
    ]
    flags += option_flags(engine, driver)
    flags += [f"--{opt}" for opt in engine.opts]  # checked against dockerd's flags (components/dockerd.py)
    return flags


def proxied_ports_rule(published_from: str) -> str:
    """Connections from ``published_from`` to published ports skip Docker's DNAT and reach docker-proxy, which dials the
    container with the guest kernel's retries (docs/ports.md#under-load); kept first in PREROUTING at each start."""
    match = f"-s {published_from}/32 -p tcp -j RETURN"
    return (f"while iptables -w -t nat -D PREROUTING {match} 2>/dev/null; do :; done; "
            f"iptables -w -t nat -I PREROUTING 1 {match}")  # fmt: skip


def dropin(engine: EngineOptions, driver: str, published_from: str | None = None) -> str:
    """The systemd drop-in: clear the packaged ExecStart, then one line (systemd ignores continuations)."""
    flags = daemon_flags(engine, driver)
    lines = ["[Service]", "ExecStart=", "ExecStart=/usr/bin/env dockerd " + " ".join(flags)]
    if engine.env:
        lines.append("Environment=" + " ".join(systemd_word(item, expand_variables=False) for item in engine.env))
    # Without docker-proxy, DNAT is the only way in (the engine model spells a switch's value true or false).
    if published_from and "--userland-proxy=false" not in flags:
        lines.append(f"ExecStartPost=-/bin/sh -c {systemd_word(proxied_ports_rule(published_from))}")
    return "\n".join(lines) + "\n"


def dockerd_args(text: str) -> list[str]:
    """dockerd's arguments as systemd hands them over, read back from a drop-in or from the daemon script that writes
    one (the inverse of ``dropin``); ValueError unless the unit ends up with exactly one dockerd command line."""
    body = text.split(f"<<'{_DROPIN_END}'\n", 1)[-1].split(f"\n{_DROPIN_END}\n", 1)[0]
    commands: list[str] = []
    for line in body.split("\n"):  # systemd ends lines at \n only (str.splitlines also splits at U+2028…)
        if line.startswith("ExecStart="):
            command = line.removeprefix("ExecStart=")
            commands = [*commands, command] if command else []  # an empty ExecStart= clears the packaged one
    if len(commands) != 1:
        raise ValueError(f"expected one ExecStart= command line for dockerd, found {len(commands)}")
    # systemd_word's escapes: shlex undoes the quoting and backslashes, then the specifier and variable doubling.
    words = [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(commands[0])]
    programs = [word.rpartition("/")[2] for word in words]
    if "dockerd" not in programs:
        raise ValueError(f"the ExecStart= command line does not run dockerd: {commands[0][:80]!r}")
    return words[programs.index("dockerd") + 1 :]


def daemon_script(engine: EngineOptions, driver: str, server_cert_serial: str,
                  published_from: str | None = None) -> str:  # fmt: skip
    """Write the drop-in and (re)start Docker; the cert serial ties a reissued cert to a restart."""
    return f"""set -e
# server certificate serial {server_cert_serial}: a new certificate re-runs this step
mkdir -p {DROPIN_DIR}
cat > {DROPIN}.tmp <<'{_DROPIN_END}'
{dropin(engine, driver, published_from)}{_DROPIN_END}
# The packaged unit decides: no docker.socket means no fd:// socket; its own --containerd= path wins.
if ! systemctl cat docker.socket >/dev/null 2>&1; then sed -i 's|{FD_SOCKET}|{UNIX_SOCKET}|' {DROPIN}.tmp; fi
packaged="$(systemctl cat docker.service 2>/dev/null | grep -v '^ExecStart=/usr/bin/env dockerd' \\
  | sed -n 's/.*--containerd=\\([^ ]*\\).*/\\1/p' | head -n 1)" || true
if [ -n "$packaged" ]; then sed -i "s|--containerd={CONTAINERD}|--containerd=$packaged|" {DROPIN}.tmp; fi
mv -f {DROPIN}.tmp {DROPIN}
systemctl daemon-reload
# enable runs the SysV compatibility scripts (seconds under emulation): only when needed.
systemctl is-enabled -q docker.service 2>/dev/null || systemctl enable docker.service >/dev/null 2>&1 || true
# Our restarts are deliberate: the packaged unit's start limit (3 a minute) is for crash loops.
systemctl reset-failed docker.service 2>/dev/null || true
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
rm -f {DROPIN} {CA_CERT} {SERVER_CERT} {SERVER_KEY}
rmdir {DROPIN_DIR} 2>/dev/null || true
systemctl daemon-reload
systemctl reset-failed docker.service 2>/dev/null || true
systemctl restart docker.service || true
echo "Docker is still installed; its TCP listener and our certificates were removed."
"""

# scripts/machine upgrade: upgrade whatever Docker packages are installed, then restart the daemon.
UPGRADE = r"""set -e
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -o DPkg::Lock::Timeout=600 -qq"
packages=""
for p in docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin docker.io docker-cli \
         docker-buildx docker-compose docker-compose-v2 containerd runc; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then packages="$packages $p"; fi
done
if [ -z "$packages" ]; then echo "Docker was not installed from apt packages: nothing to upgrade" >&2; exit 1; fi
$apt update
$apt install -y --only-upgrade $packages
echo "Restarting docker..."
systemctl restart docker.service
"""

# scripts/machine restart for hosts we did not create: a reboot that returns before the connection drops.
REBOOT = "(sleep 1; systemctl reboot || shutdown -r now) >/dev/null 2>&1 &\n"


# The guest's fstab block of shared host folders, between these lines; the paths mounted are also listed in MOUNTED so
# that a share dropped from the config is unmounted.
MOUNTS_BEGIN = "# docker-machine-pulumi mounts: begin"
MOUNTS_END = "# docker-machine-pulumi mounts: end"
MOUNTED = "/etc/docker-machine-pulumi.mounts"


def mounts_script(fstab_lines: list[str] | None) -> str:
    """Write the fstab block (mounted again at every boot, before Docker starts), unmount shares no longer in it, mount
    the others now. Idempotent: a second run changes nothing. None: a VM made before shares existed."""
    fstab_lines = fstab_lines or []
    paths = [line.split()[1] for line in fstab_lines]
    block = "\n".join([MOUNTS_BEGIN, *fstab_lines, MOUNTS_END])
    return f"""set -e
awk -v b={shlex.quote(MOUNTS_BEGIN)} -v e={shlex.quote(MOUNTS_END)} \
  '$0 == b {{ skip = 1 }} !skip {{ print }} $0 == e {{ skip = 0 }}' /etc/fstab > /etc/fstab.new
printf '%s\\n' {shlex.quote(block)} >> /etc/fstab.new
mv /etc/fstab.new /etc/fstab
wanted=" {' '.join(paths)} "
if [ -f {MOUNTED} ]; then
  while read -r path; do
    case "$wanted" in *" $path "*) ;; *) ! mountpoint -q "$path" || umount "$path" ;; esac
  done < {MOUNTED}
fi
printf '%s\\n' {' '.join(shlex.quote(p) for p in paths) or "''"} | grep -v '^$' > {MOUNTED} || true
systemctl daemon-reload
# A share plugged in after a resume (virtio-fs) may still be probing: a few seconds' grace.
for path in {' '.join(shlex.quote(p) for p in paths)}; do
  mkdir -p "$path"
  tries=0
  until mountpoint -q "$path" || mount "$path" 2>/dev/null; do
    tries=$((tries + 1)); [ "$tries" -lt 30 ] || {{ mount "$path"; break; }}; sleep 1
  done
done
"""


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# --- swarm mode (components/swarm.py) -------------------------------------------------------------------------------

SWARM_PORT = 2377
# On the first manager: each member's node ID, written when it joined, read when it is removed (delete commands
# get no input of their own).
SWARM_STATE_DIR = "/var/lib/docker-machine/swarm"
# A swarm command that cannot reach a quorum must not hang a destroy.
SWARM_TIMEOUT = 60
_SWARM_STATE = "docker info --format '{{.Swarm.LocalNodeState}}'"


def swarm_init_script(advertise: str) -> str:
    """Initialise the swarm on the first manager, unless it already manages one (a second `up`)."""
    addr = shlex.quote(advertise)
    return f"""set -e
state="$({_SWARM_STATE})"
if [ "$state" = active ]; then
  if [ "$(docker info --format '{{{{.Swarm.ControlAvailable}}}}')" = true ]; then exit 0; fi
  echo "this machine is a worker of another swarm: run 'docker swarm leave' on it first" >&2
  exit 1
fi
docker swarm init --advertise-addr {addr} --listen-addr {addr}:{SWARM_PORT} >/dev/null
"""


# The first manager's tokens and address, one per line (the command's stdout is a secret output).
SWARM_TOKENS = """set -e
docker swarm join-token -q worker
docker swarm join-token -q manager
docker info --format '{{.Swarm.NodeAddr}}'
"""

SWARM_LEAVE = f"timeout {SWARM_TIMEOUT} docker swarm leave --force >/dev/null 2>&1 || true"


def swarm_join_script(role: str, token: str, manager: str, advertise: str) -> str:
    """Join as ``role`` unless already a member (left alone); print the node's ID."""
    return f"""set -e
state="$({_SWARM_STATE})"
if [ "$state" != active ]; then
  # An earlier join that never completed leaves the node pending.
  [ "$state" = inactive ] || docker swarm leave --force >/dev/null 2>&1 || true
  timeout 300 docker swarm join --token "$(cat <<'__TOKEN__'
{token}
__TOKEN__
)" --advertise-addr {shlex.quote(advertise)} {shlex.quote(manager)}:{SWARM_PORT} >/dev/null
fi
docker info --format '{{{{.Swarm.NodeID}}}}'
# joined as {role}
"""


def swarm_ready_script(machine: str, role: str, node_id: str) -> str:
    """On the first manager: wait until the new node is Ready, and keep its ID for its removal."""
    node = shlex.quote(node_id)
    return f"""set -e
mkdir -p {SWARM_STATE_DIR}
printf '%s\\n' {node} > {SWARM_STATE_DIR}/{shlex.quote(machine)}.id
for _ in $(seq 1 120); do
  if [ "$(docker node inspect --format '{{{{.Status.State}}}}' {node} 2>/dev/null)" = ready ]; then exit 0; fi
  sleep 1
done
echo "node {machine} ({role}) did not become Ready in the swarm" >&2
exit 1
"""


def swarm_drain_script(machine: str) -> str:
    """On the first manager, when a member goes: drain it (its tasks move), and demote it if it is a manager."""
    file = f"{SWARM_STATE_DIR}/{shlex.quote(machine)}.id"
    return f"""id="$(cat {file} 2>/dev/null)" || exit 0
t="timeout {SWARM_TIMEOUT}"
$t docker node update --availability drain "$id" >/dev/null 2>&1 || exit 0
for _ in $(seq 1 {SWARM_TIMEOUT}); do
  [ -z "$($t docker node ps "$id" --filter desired-state=running -q 2>/dev/null)" ] && break
  sleep 1
done
if [ "$($t docker node inspect --format '{{{{.Spec.Role}}}}' "$id" 2>/dev/null)" = manager ]; then
  $t docker node demote "$id" >/dev/null 2>&1 || true
fi
echo "{machine} drained"
"""


def swarm_remove_script(machine: str) -> str:
    """On the first manager, after the member left: remove its node."""
    file = f"{SWARM_STATE_DIR}/{shlex.quote(machine)}.id"
    return f"""id="$(cat {file} 2>/dev/null)" || exit 0
t="timeout {SWARM_TIMEOUT}"
# A node that left shows as down after a few heartbeats; remove it then (--force only after the wait).
for _ in $(seq 1 30); do
  [ "$($t docker node inspect --format '{{{{.Status.State}}}}' "$id" 2>/dev/null)" != ready ] && break
  sleep 1
done
$t docker node rm --force "$id" >/dev/null 2>&1 || true
rm -f {file}
echo "{machine} removed from the swarm"
"""
