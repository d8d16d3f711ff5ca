"""Every value that systemd, dockerd or the guest would refuse is refused before any resource exists: one line
naming the field and what is allowed (issue 8)."""

from __future__ import annotations

import json
import shlex

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components import config
from components.drivers import base
from components.model import ConfigError, EngineOptions
from components.steps import provisioning, tls

KEY = tls.new_ssh_key()[0]


def load_error(machines) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(json.dumps(machines) if not isinstance(machines, str) else machines)
    return str(info.value)


def problems(message: str) -> list[str]:
    lines = message.splitlines()
    return lines[1:] if lines[0] == "invalid stack configuration:" else lines


def one_problem(machines) -> str:
    (line,) = problems(load_error(machines))
    return line.strip()


def qemu(**engine) -> list[dict]:
    return [{"name": "default", "engine": engine}]


@pytest.mark.parametrize(
    ("opt", "why"),
    [
        ("log-level=debug; rm -rf /", "may only hold letters"),
        ("log-level=loud", "log-level must be one of debug, info, warn, error, fatal"),
        ("no-such-flag=1", "is not a dockerd flag"),
        ("host=tcp://0.0.0.0:2375", "cannot be set through engine.opts"),
        ("tlsverify=false", "mutual TLS is always on"),
        ("debug=yes", "is a switch"),
        ("data-root=", "needs a value"),
        ("mtu=1500 --debug", "may only hold letters"),
    ],
)
def test_engine_opts_must_be_what_dockerd_accepts(opt, why):
    line = one_problem(qemu(opts=[opt]))
    assert line.startswith("machines[default].engine.opts: ") and why in line


@pytest.mark.parametrize("opt", ["log-level=debug", "--debug", "experimental", "default-ulimit=nofile=1024:2048",
                                 "data-root=/srv/docker", "live-restore=true"])  # fmt: skip
def test_engine_opts_dockerd_accepts_pass(opt):
    assert config.load(json.dumps(qemu(opts=[opt]))).machines[0].engine.opts == [opt.removeprefix("--")]


@pytest.mark.parametrize(
    ("machines", "field"),
    [
        (qemu(port=True), "machines[default].engine.port: Input should be a valid integer, got True"),
        ([{"name": "default", "options": {"cpus": True}}], "machines[default].options.cpus: Input should be a valid"),
        ([{"name": "default", "options": {"memory": "4096"}}], "machines[default].options.memory: Input should be"),
        ([{"name": "default", "docker_context": "yes"}], "machines[default].docker_context: Input should be a valid"),
    ],
)
def test_types_are_strict(machines, field):
    assert one_problem(machines).startswith(field)


@pytest.mark.parametrize("san", ["999.1.1.1", "1.2.3", "10.0.0.256", "host.123"])
def test_numeric_names_in_tls_san_are_bad_addresses(san):
    line = one_problem([{"name": "default", "tls_san": [san]}])
    assert line.startswith("machines[default].tls_san: ") and "is not a valid IP address" in line


def test_machines_of_the_wrong_shape_get_an_example():
    for raw in ("default", '"default"', '{"name": "default"}', "5", "null"):
        line = one_problem(raw)
        assert line.startswith("machines: a list of machines is wanted") and "machines[0].name" in line
    with pytest.raises(ConfigError) as info:
        config.load(None)
    assert "no machine is declared" in str(info.value) and "machines[0].name" in str(info.value)
    assert "each machine is a mapping" in one_problem(["default"])


# --- systemd quoting: what the unit file says is what dockerd gets ------------------------------------------------


def systemd_unquote(word: str, expand_variables: bool) -> str:
    """What systemd makes of one double-quoted word: C escapes, %% → %, and $$ → $ on ExecStart= lines."""
    assert word.startswith('"') and word.endswith('"')
    text = word[1:-1]
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            out.append(text[i + 1])
            i += 2
            continue
        if c == "%":
            assert text[i + 1] == "%", f"unescaped specifier in {word}"
            i += 1
        if c == "$" and expand_variables:
            assert text[i + 1] == "$", f"unescaped variable in {word}"
            i += 1
        out.append(c)
        i += 1
    return "".join(out)


@pytest.mark.parametrize("value", ['a=%z', "a=%h", 'HTTP_PROXY=a"b', "x=$HOME", "back=\\n", "mix=50%off \"q\" $x ;"])
def test_systemd_words_survive_specifiers_quotes_and_variables(value):
    assert systemd_unquote(provisioning.systemd_word(value), True) == value
    assert systemd_unquote(provisioning.systemd_word(value, expand_variables=False), False) == value


def test_labels_and_env_with_specials_are_escaped_in_the_drop_in():
    engine = EngineOptions(labels=["note=50%off \"q\" $x"], env=['HTTP_PROXY=a"b', "HOME_LIKE=%h"])
    text = provisioning.dropin(engine, "qemu")
    assert '--label "note=50%%off \\"q\\" $$x"' in text
    assert 'Environment="HTTP_PROXY=a\\"b" "HOME_LIKE=%%h"' in text
    # Still one word each for a POSIX shell reading the same quoting (how the other unit tests parse it).
    assert "--label" in shlex.split(text.splitlines()[2])


# --- the user's own SSH key (generic and cloud drivers share the check) -------------------------------------------


def generic(**options) -> list[dict]:
    return [{"name": "host1", "driver": "generic", "options": {"address": "203.0.113.5", **options}}]


def test_a_binary_key_file_is_one_line(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(bytes(range(256)) * 8)
    line = one_problem(generic(ssh_key_path=str(path)))
    assert line.startswith("machines[host1].options.ssh_key_path: ") and "not an OpenSSH or PEM private key" in line


def test_a_public_key_file_is_refused(tmp_path):
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = tmp_path / "id_ed25519.pub"
    path.write_bytes(public + b" me@host\n")
    line = one_problem(generic(ssh_key_path=str(path)))
    assert "is a public key: give the private key" in line


def test_a_passphrase_protected_key_is_refused(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"pw")
    )
    path = tmp_path / "id_locked"
    path.write_bytes(key)
    assert "protected by a passphrase" in one_problem(generic(ssh_key_path=str(path)))
    assert "protected by a passphrase" in one_problem(generic(ssh_key=key.decode()))


def test_a_device_is_not_read_as_a_key():
    assert "is not a file" in one_problem(generic(ssh_key_path="/dev/zero"))


def test_a_good_key_passes():
    assert config.load(json.dumps(generic(ssh_key=KEY))).machines[0].driver == "generic"


# --- cloud provider plugins ----------------------------------------------------------------------------------------


def test_a_missing_cloud_plugin_is_one_line_with_version_and_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    name, version = base.plugin_of("pulumi_aws")
    line = one_problem([{"name": "web", "driver": "aws"}])
    assert line == (
        f"machines[web].driver: the Pulumi plugin pulumi-resource-{name} v{version} (the version requirements.txt "
        f"pins) is not installed; install it with: scripts/pulumi plugin install resource {name} {version}"
    )


def test_the_plugin_version_is_the_one_requirements_pins():
    with open(f"{config.__file__.rsplit('/components/', 1)[0]}/requirements.txt") as f:
        pins = dict(line.strip().split("==") for line in f if "==" in line and not line.startswith("#"))
    assert base.plugin_of("pulumi_aws") == ("aws", pins["pulumi-aws"])
    assert base.plugin_of("pulumi_digitalocean") == ("digitalocean", pins["pulumi-digitalocean"])
    assert base.plugin_of("pulumi_azure_native") == ("azure-native", pins["pulumi-azure-native"])


# --- qemu forwards (issue 11) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwards", "why"),
    [
        (["8443"], "must look like HOST:GUEST"),
        (["70000:80"], "out of range"),
        (["8443:443", "8443:444"], "forwarded twice"),
        (["2222:22"], "SSH port is already forwarded"),
        (["12376:2376"], "the engine port 2376 is already forwarded"),
        (["5353:53/sctp"], "must look like HOST:GUEST"),
    ],
)
def test_bad_forwards_are_refused_at_preview(forwards, why):
    line = one_problem([{"name": "default", "options": {"forwards": forwards}}])
    assert line.startswith("machines[default].options.forwards") and why in line


def test_forwards_in_bridge_mode_and_across_machines():
    assert "bridge mode" in one_problem([{"name": "a", "options": {"network": "bridge", "forwards": ["8080:80"]}}])
    two = [{"name": "a", "options": {"forwards": ["8080:80"]}}, {"name": "b", "options": {"forwards": ["8080:81"]}}]
    line = one_problem(two)
    assert line.startswith("machines[b].options.forwards") and "also forwarded by a" in line


def test_good_forwards_pass():
    machine = config.load(json.dumps([{"name": "a", "options": {"forwards": ["8443:443", "5353:53/udp"]}}]))
    # Parsed once, into typed rules that read back as written.
    forwards = machine.machines[0].options.forwards
    assert forwards == [(8443, 443, "tcp"), (5353, 53, "udp")]
    assert [str(f) for f in forwards] == ["8443:443", "5353:53/udp"]
