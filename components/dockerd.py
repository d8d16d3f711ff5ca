"""What dockerd accepts on its command line: the check behind ``engine.opts`` (docs/engine.md), and the reading of a
whole command line behind the policy pack's ``daemon-tls`` rule (docs/policy.md).

The flag names are those of ``dockerd --help`` of Debian 12's Docker 20.10 and Debian 13's Docker 26 together, so an
option is refused at preview rather than by a daemon that will not start after the VM exists.
"""

from __future__ import annotations

import re

# Flags that take no value (``--flag`` or ``--flag=true|false``).
BOOLEAN = frozenset({
    "cri-containerd", "debug", "experimental", "icc", "init", "ip-forward", "ip-masq", "ip6tables", "iptables",
    "ipv6", "live-restore", "no-new-privileges", "raw-logs", "rootless", "selinux-enabled", "userland-proxy",
})  # fmt: skip
WITH_VALUE = frozenset({
    "add-runtime", "allow-nondistributable-artifacts", "api-cors-header", "authorization-plugin", "bip", "bridge",
    "cdi-spec-dir", "cgroup-parent", "containerd-namespace", "containerd-plugins-namespace", "cpu-rt-period",
    "cpu-rt-runtime", "data-root", "default-address-pool", "default-cgroupns-mode", "default-gateway",
    "default-gateway-v6", "default-ipc-mode", "default-network-opt", "default-runtime", "default-shm-size",
    "default-ulimit", "dns", "dns-opt", "dns-search", "exec-opt", "exec-root", "fixed-cidr", "fixed-cidr-v6", "group",
    "host-gateway-ip", "http-proxy", "https-proxy", "init-path", "insecure-registry", "ip", "label", "log-driver",
    "log-format", "log-level", "log-opt", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "metrics-addr", "mtu", "network-control-plane-mtu", "no-proxy", "node-generic-resource",
    "oom-score-adjust", "registry-mirror", "seccomp-profile", "shutdown-timeout", "storage-driver", "storage-opt",
    "swarm-default-advertise-addr", "userland-proxy-path", "userns-remap",
})  # fmt: skip
# Flags provisioning sets itself, whatever the engine options: why each is not for engine.opts. (A flag an engine
# option sets is refused by EngineOptions itself, naming the option.)
MANAGED = {
    "host": "the engine listens on fd:// and tcp://0.0.0.0:<engine.port>; set engine.port",
    "tls": "mutual TLS is always on",
    "tlsverify": "mutual TLS is always on",
    "tlscacert": "the stack's CA is always used",
    "tlscert": "the machine's server certificate is always used",
    "tlskey": "the machine's server key is always used",
    "containerd": "provisioning points dockerd at the distribution's containerd socket",
    "config-file": "provisioning configures dockerd through its command line",
    "pidfile": "systemd tracks the daemon",
    "validate": "it makes dockerd exit instead of serving",
    "help": "it makes dockerd exit instead of serving",
    "version": "it makes dockerd exit instead of serving",
}
# The switches among MANAGED; every other MANAGED flag takes a value.
_MANAGED_SWITCHES = frozenset({"tls", "tlsverify", "validate", "help", "version"})
# dockerd's one-letter flags.
SHORT = {"H": "host", "D": "debug", "l": "log-level", "s": "storage-driver", "G": "group", "p": "pidfile",
         "b": "bridge", "h": "help", "v": "version"}  # fmt: skip
# What its flag parser takes as a switch's value (Go's strconv.ParseBool).
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
# A value stays one word on dockerd's command line: no white space, quotes, shell or systemd specials.
_VALUE_RE = re.compile(r"^[A-Za-z0-9@+=:,./_~\[\]*-]+$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def check_opt(opt: str) -> str:
    """``flag``, ``flag=value`` or ``--flag=value`` → ``flag[=value]``; ValueError saying what dockerd accepts."""
    name, eq, value = opt.removeprefix("--").partition("=")
    if not _NAME_RE.match(name):
        raise ValueError(f"{opt!r} must look like flag=value or flag (e.g. log-level=debug)")
    if name in MANAGED:
        raise ValueError(f"{name!r} cannot be set through engine.opts: {MANAGED[name]}")
    if name in BOOLEAN:
        if eq and value not in ("true", "false"):
            raise ValueError(f"{name!r} is a switch: give it alone or as {name}=true / {name}=false")
    elif name in WITH_VALUE:
        if not value:
            raise ValueError(f"{name!r} needs a value: {name}=VALUE")
        if not _VALUE_RE.match(value):
            raise ValueError(
                f"the value of {name!r} may only hold letters, digits and @+=:,./_~[]*- (no spaces, quotes or ;$%)"
            )
        if name == "log-level" and value not in LOG_LEVELS:
            raise ValueError(f"log-level must be one of {', '.join(LOG_LEVELS)}")
    else:
        raise ValueError(f"{name!r} is not a dockerd flag (see `dockerd --help`)")
    return f"{name}={value}" if eq else name


def _switch(name: str) -> bool:
    return name in BOOLEAN or name in _MANAGED_SWITCHES


def parse_args(args: list[str]) -> list[tuple[str, str]]:
    """dockerd's arguments as ``(flag, value)`` pairs in order, flags by their long names, read the way dockerd's flag
    parser reads them: a flag that takes a value consumes the next word whatever it looks like, and a switch is
    ``"true"`` or ``"false"``. ValueError for anything dockerd would refuse or that cannot be read for sure."""
    pairs = []
    words = iter(args)
    for word in words:
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
        elif word.startswith("-") and word[1:2] in SHORT:  # -H VALUE, -HVALUE, -H=VALUE
            name, rest = SHORT[word[1]], word[2:]
            if rest and not rest.startswith("=") and _switch(name):
                raise ValueError(f"{word!r}: combined one-letter flags are not read; write them apart")
            eq, value = ("=", rest.removeprefix("=")) if rest else ("", "")
        else:
            raise ValueError(f"{word!r} is not a dockerd flag (dockerd takes no other arguments)")
        if _switch(name):
            if eq and value not in _TRUE | _FALSE:
                raise ValueError(f"--{name} is a switch: {value!r} is neither true nor false")
            pairs.append((name, "false" if eq and value in _FALSE else "true"))
        elif name in WITH_VALUE or name in MANAGED:
            if not eq:
                value = next(words, None)
                if value is None:
                    raise ValueError(f"--{name} needs a value")
            pairs.append((name, value))
        else:
            raise ValueError(f"--{name} is not a dockerd flag")
    return pairs
