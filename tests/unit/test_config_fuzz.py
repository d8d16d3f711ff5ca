"""Generated malformed machine lists through the program's own entry point (``config.load``, as __main__.py calls
it): each is accepted or refused with ConfigError lines that each name a field — never anything else."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components import config

# machines, machines[web], machines[0].engine.labels[2], machines[0]['odd key'] … then ": " and the problem.
FIELD_LINE = re.compile(
    r"""^(ca_rotation|machines(\[[^\]]*\]|\.[A-Za-z_][A-Za-z0-9_]*|\['(?:[^'\\]|\\.)*'\]|\["(?:[^"\\]|\\.)*"\])*): \S"""
)

awkward_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=8),  # control characters
    st.text(alphabet="%\"'$;\\ \n\t=:./-", max_size=12),  # systemd and shell specials
    st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x2FFF), max_size=12),  # non-ASCII
    st.builds(lambda n: "x" * n, st.integers(20_000, 70_000)),  # huge
    st.sampled_from(["default", "web-1", "999.1.1.1", "log-level=debug", "a=b", "8080:80", "/dev/zero", "~/.ssh/x"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False), awkward_text
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(awkward_text, inner, max_size=4), max_leaves=5
)


def maybe(values):
    return st.one_of(values, anything)


engine = st.fixed_dictionaries(
    {},
    optional={
        "install": maybe(st.sampled_from(["script", "packages", "none", "apt"])),
        "install_url": maybe(st.sampled_from(["https://get.docker.com", "file:///x", "http://a b"])),
        "port": maybe(st.integers(-5, 70_000)),
        "labels": maybe(st.lists(awkward_text, max_size=3) | st.dictionaries(awkward_text, awkward_text, max_size=2)),
        "env": maybe(st.lists(awkward_text, max_size=3)),
        "opts": maybe(st.lists(awkward_text, max_size=3)),
        "insecure_registries": maybe(st.lists(awkward_text, max_size=2)),
        "registry_mirrors": maybe(st.lists(awkward_text, max_size=2)),
        "storage_driver": maybe(awkward_text),
    },
)
options = st.fixed_dictionaries(
    {},
    optional={
        "cpus": maybe(st.integers(-2, 100)),
        "memory": maybe(st.integers(0, 10**7)),
        "image": maybe(st.sampled_from(["debian-13-docker", "debian-9", "/img", "https://x/y.qcow2"])),
        "network": maybe(st.sampled_from(["user", "bridge", "tap"])),
        "address": maybe(awkward_text),
        "forwards": maybe(st.lists(awkward_text, max_size=3)),
        "ssh_key": maybe(awkward_text),
        "ssh_key_path": maybe(awkward_text),
        "region": maybe(awkward_text),
        "hostonly_cidr": maybe(awkward_text),
        "bogus": anything,
    },
)
machine = st.fixed_dictionaries(
    {},
    optional={
        "name": maybe(awkward_text),
        "driver": maybe(st.sampled_from(["qemu", "generic", "aws", "azure", "digitalocean", "virtualbox", "nope"])),
        "options": maybe(options),
        "engine": maybe(engine),
        "tls_san": maybe(st.lists(awkward_text, max_size=3)),
        "state": maybe(st.sampled_from(["running", "stopped", "paused"])),
        "docker_context": anything,
        "unknown_key": anything,
    },
)
machine_lists = st.one_of(st.lists(machine, max_size=3), anything)


@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(machine_lists, st.one_of(st.none(), awkward_text))
def test_generated_configs_are_accepted_or_refused_field_by_field(raw, ca_rotation):
    text = raw if isinstance(raw, str) and not raw.startswith(("[", "{")) else json.dumps(raw)
    try:
        config.load(text, ca_rotation)
    except config.ConfigError as err:
        lines = str(err).splitlines()
        body = lines[1:] if lines[0] == "invalid stack configuration:" else lines
        assert body, str(err)
        for line in body:
            assert FIELD_LINE.match(line.strip()), line
