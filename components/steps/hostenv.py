"""What a machine takes from the host it is made from (docs/engine.md#proxies-and-registry-cas): the proxies its Docker
daemon and package manager use (``engine.proxy``), and the CAs of private registries (``engine.registry_certs`` and
the user's ``~/.docker/certs.d``). A proxy or registry on the host's loopback is rewritten to the address the guest
reaches the host at (the driver's ``host_address``), and dropped with a warning where the machine cannot reach it."""

from __future__ import annotations

import glob
import ipaddress
import os
import shlex
import urllib.parse
from collections.abc import Mapping

from components.model import REGISTRY_RE, EngineOptions, ProxySettings

VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
APT_PROXY = "/etc/apt/apt.conf.d/90docker-machine-proxy"
CERTS_DIR = "/etc/docker/certs.d"
# The registry directories we wrote, so that one dropped from the config is removed (and no other).
CERTS_OURS = f"{CERTS_DIR}/.docker-machine-pulumi"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _rewritten(url: str, host_address: str | None) -> str | None:
    """``url`` as the guest must dial it; None when it names the host's loopback and the guest cannot reach the host."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or not _loopback(parts.hostname):
        return url
    if host_address is None:
        return None
    credentials = parts.netloc.rpartition("@")[0]
    netloc = (credentials + "@" if credentials else "") + host_address + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def masked(url: str) -> str:
    """A proxy URL fit to show: its password (and user) hidden."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit((parts.scheme, "***@" + parts.netloc.rpartition("@")[2], parts.path, "", ""))


def masked_setting(item: str) -> str:
    """``NAME=URL`` with the URL masked."""
    name, _, value = item.partition("=")
    return f"{name}={masked(value)}"


def proxies(engine: EngineOptions, host_address: str | None,
            environ: Mapping[str, str] = os.environ) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """The proxy variables the machine gets (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), and warnings to show."""
    setting = engine.proxy
    if setting == "none":
        return {}, []
    if isinstance(setting, ProxySettings):
        wanted = {"HTTP_PROXY": setting.http, "HTTPS_PROXY": setting.https, "NO_PROXY": setting.no_proxy}
    else:  # auto: the host's, in either case
        wanted = {name: environ.get(name) or environ.get(name.lower()) for name in VARIABLES}
    found, warnings = {}, []
    for name, value in wanted.items():
        if not value:
            continue
        if name == "NO_PROXY":
            found[name] = value
            continue
        guest = _rewritten(value, host_address)
        if guest is None:
            warnings.append(f"{name} {masked(value)} is on this host's loopback, which the machine cannot reach: "
                            "not passed on")  # fmt: skip
        else:
            found[name] = guest
    return found, warnings


def environment(found: Mapping[str, str]) -> list[str]:
    """Both spellings, for programs that read either (Docker reads the upper case, curl and apt the lower)."""
    return [f"{case(name)}={value}" for name, value in found.items() for case in (str.upper, str.lower)]


def apt_script(found: Mapping[str, str]) -> str:
    """The guest's apt proxies (removed when there are none)."""
    schemes = (("http", "HTTP_PROXY"), ("https", "HTTPS_PROXY"))
    lines = [f'Acquire::{scheme}::Proxy "{found[name]}";' for scheme, name in schemes if name in found]
    if not lines:
        return f"rm -f {APT_PROXY}\n"
    body = "\n".join(lines)
    return f"umask 077\ncat > {APT_PROXY} <<'__APT__'\n{body}\n__APT__\nchmod 0600 {APT_PROXY}\n"


def registry_certs(engine: EngineOptions, host_address: str | None, docker_config: str | None = None,
                   ) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """``{registry: CA PEM}``: the user's ``certs.d/*/ca.crt`` (DOCKER_CONFIG or ~/.docker), then
    ``engine.registry_certs``; a registry named by the host's loopback also under the host's address as the guest
    sees it. Warnings for files that cannot be read."""
    base = docker_config or os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    files = {os.path.basename(os.path.dirname(path)): path for path in sorted(glob.glob(f"{base}/certs.d/*/ca.crt"))}
    files = {name: path for name, path in files.items() if REGISTRY_RE.match(name) and ".." not in name}
    files.update(engine.registry_certs)
    found, warnings = {}, []
    for registry, path in files.items():
        try:
            with open(os.path.expanduser(path)) as f:
                pem = f.read()
        except OSError as err:
            warnings.append(f"registry CA for {registry}: {path} cannot be read ({err.strerror})")
            continue
        found[registry] = pem
        host, _, port = registry.rpartition(":") if registry.count(":") == 1 else (registry, "", "")
        if _loopback(host) and host_address:
            found[f"{host_address}:{port}" if port else host_address] = pem
    return found, warnings


def certs_script(found: Mapping[str, str]) -> str:
    """Install each CA as /etc/docker/certs.d/<registry>/ca.crt, where dockerd reads it at each pull and push (no
    restart); the directories we made for registries no longer configured go."""
    lines = ["set -e", f"mkdir -p {CERTS_DIR}", f"touch {CERTS_OURS}",
             f'while read -r registry; do rm -rf "{CERTS_DIR}/$registry"; done < {CERTS_OURS}']  # fmt: skip
    for registry, pem in sorted(found.items()):
        directory = shlex.quote(f"{CERTS_DIR}/{registry}")
        lines += [f"mkdir -p {directory}", f"cat > {directory}/ca.crt <<'__PEM__'\n{pem.strip()}\n__PEM__"]
    listed = "\n".join(sorted(found))
    lines.append(f"printf '%s' {shlex.quote(listed + chr(10) if listed else '')} > {CERTS_OURS}")
    return "\n".join(lines) + "\n"
