"""Provisioning scripts: the daemon flags and drop-in (docs/provisioning.md), and the shell itself.

Scripts are syntax-checked with ``sh -n`` and, where it matters, executed for real in a sandbox: a
temporary PATH holding only the tools a script may use (stubs log their arguments) and the absolute
paths (/etc/docker, /etc/os-release, the drop-in dir) rewritten to a temporary directory.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from components import dockerd
from components.model import EngineOptions
from components.steps import provisioning

SH = shutil.which("sh") or "/bin/sh"


def engine(**kwargs) -> EngineOptions:
    return EngineOptions.model_validate(kwargs)


def exec_start_argv(dropin: str) -> list[str]:
    """The argv of the (last, non-empty) ExecStart= line, unquoted like systemd does."""
    lines = [line for line in dropin.splitlines() if line.startswith("ExecStart=") and line != "ExecStart="]
    assert len(lines) == 1, dropin
    return shlex.split(lines[0].removeprefix("ExecStart="))


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


class Sandbox:
    """A PATH with selected real tools and logging stubs; paths in scripts rewritten under ``root``."""

    BASE_TOOLS = ("cat", "mkdir", "mv", "chmod", "rm", "rmdir", "grep", "seq", "mktemp", "true", "sed", "awk", "head")

    def __init__(self, tmp_path):
        self.root = tmp_path / "root"
        self.bin = tmp_path / "bin"
        self.log = tmp_path / "calls.log"
        self.root.mkdir()
        self.bin.mkdir()
        self.log.write_text("")
        os.symlink(SH, self.bin / "sh")
        for tool in self.BASE_TOOLS:
            os.symlink(shutil.which(tool), self.bin / tool)

    def stub(self, name: str, body: str = "") -> None:
        path = self.bin / name
        path.write_text(f'#!{SH}\necho "{name} $*" >> "$LOG"\n{body}\n')
        path.chmod(0o755)

    def os_release(self, os_id: str, version: str = "12") -> None:
        (self.root / "etc").mkdir(exist_ok=True)
        (self.root / "etc" / "os-release").write_text(
            f'ID={os_id}\nVERSION_ID="{version}"\nPRETTY_NAME="{os_id} {version}"\n'
        )

    def rewrite(self, script: str) -> str:
        for path in (provisioning.DROPIN_DIR, provisioning.CERT_DIR, "/etc/os-release"):
            script = script.replace(path, str(self.root) + path)
        return script

    def run(self, script: str, rewrite: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SH, "-s"],
            input=self.rewrite(script) if rewrite else script,
            capture_output=True,
            text=True,
            timeout=20,
            env={"PATH": str(self.bin), "LOG": str(self.log), "HOME": str(self.root)},
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def sandbox(tmp_path):
    return Sandbox(tmp_path)


# --- daemon flags and drop-in -----------------------------------------------------------------------------


FULL = dict(
    port=3376,
    storage_driver="zfs",
    labels=["env=dev", "team=a b"],
    insecure_registries=["10.0.0.0/8", "registry.local:5000"],
    registry_mirrors=["https://mirror.local"],
    opts=["log-level=debug", "experimental"],
    env=["HTTP_PROXY=http://proxy:3128", "NO_PROXY=a b"],
)


def test_flags_listeners_then_tls_then_the_engine_options_in_their_order():
    argv = exec_start_argv(provisioning.dropin(engine(**FULL), "qemu"))
    assert argv[:2] == ["/usr/bin/env", "dockerd"]
    flags = argv[2:]
    # the TCP listener comes first
    assert flags[:2] == ["-H", "tcp://0.0.0.0:3376"]
    # a local socket is kept for `docker` on the host (docker-machine: unix://; socket activation: fd://)
    assert {h for h in pairs(flags, "-H")} & {"fd://", "unix:///var/run/docker.sock"}
    # TLS with the three certificates under /etc/docker
    t = flags.index("--tlsverify")
    assert flags[t + 1 : t + 7] == [
        "--tlscacert", "/etc/docker/ca.pem",
        "--tlscert", "/etc/docker/server.pem",
        "--tlskey", "/etc/docker/server-key.pem",
    ]  # fmt: skip
    # then the engine options in the model's order (storage driver, labels with the provider last, insecure
    # registries, mirrors), then engine opts as --flag=value
    assert flags[t + 7 :] == [
        "--storage-driver", "zfs",
        "--label", "env=dev",
        "--label", "team=a b",
        "--label", "provider=qemu",
        "--insecure-registry", "10.0.0.0/8",
        "--insecure-registry", "registry.local:5000",
        "--registry-mirror", "https://mirror.local",
        "--log-level=debug",
        "--experimental",
    ]  # fmt: skip


def test_minimal_flags_and_provider_label_uses_the_driver_name():
    argv = exec_start_argv(provisioning.dropin(engine(), "somedriver"))
    assert argv[2:4] == ["-H", "tcp://0.0.0.0:2376"]
    assert pairs(argv, "--storage-driver") == ["overlay2"]
    assert pairs(argv, "--label") == ["provider=somedriver"]
    assert argv[-2:] == ["--label", "provider=somedriver"]
    assert "--insecure-registry" not in argv and "--registry-mirror" not in argv


def test_daemon_flags_matches_the_drop_in():
    e = engine(**FULL)
    argv = exec_start_argv(provisioning.dropin(e, "qemu"))
    assert argv[2:] == shlex.split(" ".join(provisioning.daemon_flags(e, "qemu")))


def test_drop_in_clears_exec_start_then_sets_it_on_one_line():
    text = provisioning.dropin(engine(**FULL), "qemu")
    lines = text.splitlines()
    assert lines[0] == "[Service]"
    assert lines[1] == "ExecStart="
    assert lines[2].startswith("ExecStart=")
    assert sum(1 for line in lines if line.startswith("ExecStart=")) == 2
    # no continuation lines: everything else is the Environment= line
    assert not any(line.endswith("\\") for line in lines)
    assert [line.split("=", 1)[0] for line in lines[3:]] == ["Environment"]
    assert text.endswith("\n")


def test_environment_line_double_quotes_each_entry():
    text = provisioning.dropin(engine(env=["HTTP_PROXY=http://proxy:3128", "NO_PROXY=a b"]), "qemu")
    (env_line,) = [line for line in text.splitlines() if line.startswith("Environment=")]
    assert env_line == 'Environment="HTTP_PROXY=http://proxy:3128" "NO_PROXY=a b"'
    assert shlex.split(env_line.removeprefix("Environment=")) == ["HTTP_PROXY=http://proxy:3128", "NO_PROXY=a b"]


def test_no_environment_line_without_env():
    text = provisioning.dropin(engine(labels=["a=b"]), "qemu")
    assert "Environment" not in text
    assert len(text.splitlines()) == 3


def test_custom_port_in_listener_and_readiness_check():
    e = engine(port=3376)
    script = provisioning.daemon_script(e, "qemu", "abc")
    assert "-H tcp://0.0.0.0:3376" in script
    assert 'ss -Htln "sport = :3376"' in script
    assert "port 3376" in script
    assert "2376" not in script


def test_daemon_script_carries_the_serial_and_the_drop_in():
    e = engine(**FULL)
    a = provisioning.daemon_script(e, "qemu", "deadbeef")
    b = provisioning.daemon_script(e, "qemu", "cafe01")
    assert "deadbeef" in a and "cafe01" in b
    assert a != b  # a new certificate changes the script, so pulumi-command re-runs it
    assert provisioning.digest(a) != provisioning.digest(b)
    body = a.split("<<'__DROPIN__'\n", 1)[1].split("__DROPIN__\n", 1)[0]
    assert body == provisioning.dropin(e, "qemu")


# --- reading dockerd's command line back (the policy pack checks what is sent) ------------------------------


def test_dockerd_args_reads_back_the_flags_the_script_sends():
    args = provisioning.dockerd_args(provisioning.daemon_script(engine(**FULL), "qemu", "abc"))
    assert args == [
        "-H", "tcp://0.0.0.0:3376", "-H", "fd://", "--containerd=/run/containerd/containerd.sock",
        "--tlsverify", "--tlscacert", "/etc/docker/ca.pem",
        "--tlscert", "/etc/docker/server.pem", "--tlskey", "/etc/docker/server-key.pem",
        "--storage-driver", "zfs", "--label", "env=dev", "--label", "team=a b", "--label", "provider=qemu",
        "--insecure-registry", "10.0.0.0/8", "--insecure-registry", "registry.local:5000",
        "--registry-mirror", "https://mirror.local", "--log-level=debug", "--experimental",
    ]  # fmt: skip
    assert provisioning.dockerd_args(provisioning.dropin(engine(**FULL), "qemu")) == args


# What the model lets through into a label or an environment value: anything but control characters.
unit_file_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)


@given(key=unit_file_text, value=unit_file_text)
@example(key="", value='"%%$$\\\u2028 -H tcp://0.0.0.0:2375')
def test_dockerd_args_returns_labels_verbatim_whatever_they_hold(key, value):
    label = f"k{key}={value}"  # quotes, %, $, backslashes, "-H tcp://…", U+2028 all stay inside the one value
    e = engine(labels=[label], insecure_registries=["10.0.0.0/8"], env=[f"A={value}"])
    args = provisioning.dockerd_args(provisioning.daemon_script(e, "qemu", "abc"))
    assert args[args.index("--label") + 1] == label
    assert [name for name, _ in dockerd.parse_args(args)].count("host") == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[Service]\nExecStart=\n", "found 0"),
        ("[Service]\nExecStart=\nExecStart=/usr/bin/env dockerd\nExecStart=/usr/bin/env dockerd\n", "found 2"),
        ("[Service]\nExecStart=\nExecStart=/bin/sleep 1\n", "does not run dockerd"),
        ('[Service]\nExecStart=\nExecStart=/usr/bin/env dockerd --label "a\n', "No closing quotation"),
    ],
)
def test_dockerd_args_refuses_a_unit_without_exactly_one_dockerd_line(text, problem):
    with pytest.raises(ValueError, match=problem):
        provisioning.dockerd_args(text)


def test_dockerd_args_after_a_reset_counts_only_the_new_lines():
    text = "ExecStart=/usr/bin/dockerd -H tcp://0.0.0.0:2375\nExecStart=\nExecStart=/usr/bin/env dockerd --debug\n"
    assert provisioning.dockerd_args(text) == ["--debug"]


@pytest.mark.parametrize(
    ("args", "pairs"),
    [
        (["-H", "tcp://a:1", "-Htcp://b:2", "-H=tcp://c:3", "--host", "d", "--host=e"],
         [("host", "tcp://a:1"), ("host", "tcp://b:2"), ("host", "tcp://c:3"), ("host", "d"), ("host", "e")]),
        (["--tlsverify", "--tlsverify=false", "--tls=1", "-D", "--debug=F"],
         [("tlsverify", "true"), ("tlsverify", "false"), ("tls", "true"), ("debug", "true"), ("debug", "false")]),
        # a flag that takes a value takes the next word, even one that looks like a flag
        (["--label", "-H", "--tlscacert", "/x/ca.pem"], [("label", "-H"), ("tlscacert", "/x/ca.pem")]),
        (["--log-level=debug", "-l", "info", "--storage-driver", "zfs"],
         [("log-level", "debug"), ("log-level", "info"), ("storage-driver", "zfs")]),
    ],
)  # fmt: skip
def test_parse_args_reads_flags_like_dockerd(args, pairs):
    assert dockerd.parse_args(args) == pairs


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["tcp://0.0.0.0:2375"], "not a dockerd flag"),
        (["--no-such-flag"], "not a dockerd flag"),
        (["-X"], "not a dockerd flag"),
        (["--tlsverify=maybe"], "neither true nor false"),
        (["-Dv"], "combined one-letter flags"),
        (["--tlscacert"], "needs a value"),
    ],
)
def test_parse_args_refuses_what_dockerd_would_not_read_the_same_way(args, problem):
    with pytest.raises(ValueError, match=problem):
        dockerd.parse_args(args)


def test_digest_is_stable_and_separates_parts():
    assert provisioning.digest("a", "b") == provisioning.digest("a", "b")
    assert provisioning.digest("ab", "") != provisioning.digest("a", "b")
    assert len(provisioning.digest("x")) == 16


# --- shell syntax ---------------------------------------------------------------------------------------------


PEM = "-----BEGIN CERTIFICATE-----\nMIIB$(id)`id`'\"\n-----END CERTIFICATE-----\n"


def all_scripts() -> dict[str, str]:
    scripts = {
        "wait_for_boot": provisioning.WAIT_FOR_BOOT,
        "tls": provisioning.tls_script(PEM, PEM, PEM),
        "daemon_default": provisioning.daemon_script(engine(), "qemu", "1"),
        "daemon_full": provisioning.daemon_script(engine(**FULL), "qemu", "1"),
        "undo_daemon": provisioning.UNDO_DAEMON,
        "as_root": provisioning.AS_ROOT,
        "as_root_inline": provisioning.as_root_inline(provisioning.UNDO_DAEMON),
    }
    for mode in ("script", "packages", "none"):
        scripts[f"install_{mode}"] = provisioning.install_script(engine(install=mode))
    return scripts


@pytest.mark.parametrize(("name", "script"), sorted(all_scripts().items()))
def test_scripts_are_valid_sh(name, script):
    result = subprocess.run([SH, "-n"], input=script, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"{name}: {result.stderr}"


def test_stage_scripts_start_with_set_e():
    # every stage starts with set -e so a failing step fails the Pulumi command
    for name, script in all_scripts().items():
        if name.startswith("as_root"):
            continue
        assert script.startswith("set -e\n"), name


# --- install ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["script", "packages", "none"])
def test_every_install_mode_skips_when_docker_is_present(sandbox, mode):
    sandbox.os_release("debian")
    sandbox.stub("docker", 'echo "Docker version 24.0.0"')
    sandbox.stub("dockerd")
    sandbox.stub("apt-get")
    sandbox.stub("curl")
    result = sandbox.run(provisioning.install_script(engine(install=mode)))
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
    assert [c for c in sandbox.calls() if not c.startswith("docker ")] == []


def test_install_mode_none_fails_when_docker_is_missing(sandbox):
    sandbox.os_release("debian")
    sandbox.stub("apt-get")
    sandbox.stub("curl")
    result = sandbox.run(provisioning.install_script(engine(install="none")))
    assert result.returncode != 0
    assert "not installed" in result.stderr and "none" in result.stderr
    assert sandbox.calls() == []


@pytest.mark.parametrize(("os_id", "apparmor"), [("debian", True), ("ubuntu", False)])
def test_install_mode_packages(sandbox, os_id, apparmor):
    sandbox.os_release(os_id)
    sandbox.stub("apt-get")
    result = sandbox.run(provisioning.install_script(engine(install="packages")))
    assert result.returncode == 0, result.stderr
    calls = sandbox.calls()
    update = [i for i, c in enumerate(calls) if c.startswith("apt-get") and c.split()[-1] == "update"]
    install = [i for i, c in enumerate(calls) if " install " in f" {c} "]
    assert update and install and update[0] < install[0]
    (install_call,) = [calls[i].split() for i in install]
    assert "-y" in install_call and "docker.io" in install_call
    assert ("apparmor" in install_call) is apparmor


def test_install_script_text_for_debian_installs_docker_io_and_apparmor():
    script = provisioning.install_script(engine(install="packages"))
    debian = [line for line in script.splitlines() if line.strip().startswith("debian)")]
    assert len(debian) == 1 and "docker.io" in debian[0] and "apparmor" in debian[0]


def _fake_download(sandbox) -> str:
    """curl body: write to -o an installer that records it ran and "installs" dockerd and docker."""
    installer = sandbox.root / "installer.sh"
    installer.write_text(
        'echo installer-ran >> "$LOG"\n'
        f"for t in dockerd docker; do printf '#!/bin/sh\\n' > {sandbox.bin}/$t; chmod +x {sandbox.bin}/$t; done\n"
    )
    cp = shutil.which("cp")
    return f'out=; prev=; for a in "$@"; do [ "$prev" = -o ] && out="$a"; prev="$a"; done; {cp} {installer} "$out"'


def test_install_mode_script_runs_the_configured_url_with_sh(sandbox):
    sandbox.os_release("debian")
    sandbox.stub("curl", _fake_download(sandbox))
    url = "https://example.test/install.sh?x=1&y=2"
    result = sandbox.run(provisioning.install_script(engine(install="script", install_url=url)))
    assert result.returncode == 0, result.stderr
    calls = sandbox.calls()
    (curl,) = [c for c in calls if c.startswith("curl ")]
    assert url in curl.split()  # passed as one argument, quoted against the shell
    assert "installer-ran" in calls


def test_install_mode_script_installs_curl_when_missing(sandbox):
    sandbox.os_release("debian")
    sandbox.stub("curl-installed", _fake_download(sandbox))  # what "apt-get install curl" makes available
    ln = shutil.which("ln")
    sandbox.stub(
        "apt-get", f'case "$*" in *" install "*curl*) {ln} -s "${{0%/*}}/curl-installed" "${{0%/*}}/curl" ;; esac'
    )
    result = sandbox.run(provisioning.install_script(engine(install="script")))
    assert result.returncode == 0, result.stderr
    calls = sandbox.calls()
    (install,) = [i for i, c in enumerate(calls) if " install " in c]
    assert {"curl", "ca-certificates"} <= set(calls[install].split())
    (download,) = [i for i, c in enumerate(calls) if c.startswith("curl-installed ")]
    assert install < download


def test_default_install_url_is_get_docker_com():
    script = provisioning.install_script(engine())
    assert "https://get.docker.com" in script
    assert "https://get.docker.com" not in provisioning.install_script(engine(install_url="https://mirror.test/i.sh"))


@pytest.mark.parametrize("url", ["https://get.docker.com", "http://example.test/i.sh?a=1&b='2'"])
def test_install_url_reads_back_what_curl_is_given(sandbox, url):
    sandbox.os_release("debian")
    sandbox.stub("curl", _fake_download(sandbox))
    script = provisioning.install_script(engine(install="script", install_url=url))
    assert sandbox.run(script).returncode == 0
    (curl,) = [c for c in sandbox.calls() if c.startswith("curl ")]
    assert provisioning.install_url(script) == url
    assert f" {url} " in curl


@pytest.mark.parametrize("mode", ["packages", "none"])
def test_install_url_is_none_when_nothing_is_downloaded(mode):
    assert provisioning.install_url(provisioning.install_script(engine(install=mode))) is None


def test_install_mode_script_fails_when_the_download_fails(sandbox):
    sandbox.os_release("debian")
    sandbox.stub("curl", "echo 'curl: (22) The requested URL returned error: 404' >&2; exit 22")
    result = sandbox.run(provisioning.install_script(engine(install="script")))
    assert result.returncode != 0


# --- wait for boot ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("os_id", provisioning.SUPPORTED_OS)
def test_wait_for_boot_accepts_supported_os(sandbox, os_id):
    sandbox.os_release(os_id, "22.04")
    result = sandbox.run(provisioning.WAIT_FOR_BOOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{os_id} 22.04"


def test_wait_for_boot_rejects_other_os_with_exit_3(sandbox):
    sandbox.os_release("fedora", "40")
    result = sandbox.run(provisioning.WAIT_FOR_BOOT)
    assert result.returncode == 3
    assert "fedora 40" in result.stderr
    for supported in provisioning.SUPPORTED_OS:
        assert supported in result.stderr


def test_wait_for_boot_waits_for_cloud_init(sandbox):
    sandbox.os_release("debian")
    sandbox.stub("cloud-init")
    assert sandbox.run(provisioning.WAIT_FOR_BOOT).returncode == 0
    assert sandbox.calls() == ["cloud-init status --wait"]


# --- tls files ---------------------------------------------------------------------------------------------------


def test_tls_script_writes_the_three_files_with_modes(sandbox):
    ca, cert, key = (
        PEM.replace("MIIB", "CA"),
        PEM.replace("MIIB", "CERT"),
        "-----BEGIN RSA PRIVATE KEY-----\nK$HOME\n-----END RSA PRIVATE KEY-----",
    )
    script = provisioning.tls_script(ca, cert, key)
    for _ in range(2):  # idempotent: a re-run converges to the same files
        result = sandbox.run(script)
        assert result.returncode == 0, result.stderr
        d = sandbox.root / "etc" / "docker"
        assert sorted(os.listdir(d)) == ["ca.pem", "server-key.pem", "server.pem"]  # no .tmp left behind
        assert (d / "ca.pem").read_text() == ca.strip() + "\n"  # written verbatim, no shell expansion
        assert (d / "server.pem").read_text() == cert.strip() + "\n"
        assert (d / "server-key.pem").read_text() == key.strip() + "\n"
        assert stat.S_IMODE((d / "server-key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((d / "ca.pem").stat().st_mode) == 0o644
        assert stat.S_IMODE((d / "server.pem").stat().st_mode) == 0o644


def test_tls_script_puts_secrets_only_in_heredocs():
    key = "-----BEGIN RSA PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END RSA PRIVATE KEY-----\n"
    script = provisioning.tls_script(PEM, PEM, key)
    (line,) = [line for line in script.splitlines() if "SECRETKEYMATERIAL" in line]
    assert line == "SECRETKEYMATERIAL"  # a heredoc body line, never part of a command


# --- daemon config, run for real ------------------------------------------------------------------------------


def daemon_sandbox(sandbox, listening: bool):
    sandbox.stub("systemctl")
    sandbox.stub("journalctl", "echo 'journal line'")
    sandbox.stub("sleep")
    sandbox.stub("ss", 'echo "LISTEN 0 4096 *:3376 *:*"' if listening else "")


def test_daemon_script_writes_drop_in_and_restarts(sandbox):
    daemon_sandbox(sandbox, listening=True)
    e = engine(**FULL)
    result = sandbox.run(provisioning.daemon_script(e, "qemu", "abc"))
    assert result.returncode == 0, result.stderr
    dropin = sandbox.root / provisioning.DROPIN.lstrip("/")
    assert dropin.read_text() == sandbox.rewrite(provisioning.dropin(e, "qemu"))
    assert os.listdir(dropin.parent) == ["10-machine.conf"]
    calls = sandbox.calls()
    systemctl = [c for c in calls if c.startswith("systemctl")]
    assert systemctl.index("systemctl daemon-reload") < systemctl.index("systemctl restart docker.service")
    # The packaged unit's start limit must not refuse our own restart (generic hosts see several in a minute).
    restart = systemctl.index("systemctl restart docker.service")
    assert systemctl[restart - 1] == "systemctl reset-failed docker.service"
    assert "ss -Htln sport = :3376" in calls


def test_published_ports_from_a_nat_gateway_go_through_docker_proxy(sandbox):
    # After each start, one RETURN rule first in nat PREROUTING for the gateway: old copies go, wherever they are.
    lines = provisioning.dropin(engine(), "qemu", "10.0.2.2").splitlines()
    line = next(x for x in lines if x.startswith("ExecStartPost"))
    assert line.startswith("ExecStartPost=-/bin/sh -c ")  # "-": Docker still starts where iptables is missing
    script = shlex.split(line.split("-c ", 1)[1])[0]
    sandbox.stub("iptables", '[ "$4" = -D ] && [ ! -e "$LOG.gone" ] && : > "$LOG.gone" && exit 0; [ "$4" != -D ]')
    assert sandbox.run(script, rewrite=False).returncode == 0
    rule = "PREROUTING -s 10.0.2.2/32 -p tcp -j RETURN"
    assert sandbox.calls() == [f"iptables -w -t nat -D {rule}", f"iptables -w -t nat -D {rule}",
                               f"iptables -w -t nat -I {rule.replace(' ', ' 1 ', 1)}"]  # fmt: skip
    # Straight in elsewhere, and where docker-proxy is switched off.
    assert "ExecStartPost" not in provisioning.dropin(engine(), "generic")
    assert "ExecStartPost" not in provisioning.dropin(engine(opts=["userland-proxy=false"]), "qemu", "10.0.2.2")


def test_daemon_script_fails_when_docker_does_not_listen(sandbox):
    daemon_sandbox(sandbox, listening=False)
    result = sandbox.run(provisioning.daemon_script(engine(port=3376), "qemu", "abc"))
    assert result.returncode == 1
    assert "not listening on port 3376" in result.stderr
    assert "journal line" in result.stderr


def test_undo_daemon_removes_drop_in_and_certs(sandbox):
    sandbox.stub("systemctl")
    daemon_sandbox(sandbox, listening=True)
    assert sandbox.run(provisioning.tls_script(PEM, PEM, PEM)).returncode == 0
    assert sandbox.run(provisioning.daemon_script(engine(), "qemu", "1")).returncode == 0
    result = sandbox.run(provisioning.UNDO_DAEMON)
    assert result.returncode == 0, result.stderr
    assert os.listdir(sandbox.root / "etc" / "docker") == []
    assert not (sandbox.root / provisioning.DROPIN_DIR.lstrip("/")).exists()
    assert sandbox.calls()[-2:] == ["systemctl reset-failed docker.service", "systemctl restart docker.service"]


# --- running as root ----------------------------------------------------------------------------------------------


def test_as_root_runs_stdin_directly_as_root(sandbox):
    sandbox.stub("id", "echo 0")
    sandbox.stub("sudo")
    result = subprocess.run(
        [SH, "-c", provisioning.AS_ROOT], input="echo from-stdin\n", capture_output=True, text=True,
        env={"PATH": str(sandbox.bin), "LOG": str(sandbox.log)}, timeout=10,
    )  # fmt: skip
    assert result.stdout == "from-stdin\n"
    assert [c for c in sandbox.calls() if c.startswith("sudo")] == []


def test_as_root_uses_non_interactive_sudo_otherwise(sandbox):
    sandbox.stub("id", "echo 1000")
    sandbox.stub("sudo", 'shift; exec "$@"')  # drop -n, run the rest
    result = subprocess.run(
        [SH, "-c", provisioning.AS_ROOT], input="echo from-stdin\n", capture_output=True, text=True,
        env={"PATH": str(sandbox.bin), "LOG": str(sandbox.log)}, timeout=10,
    )  # fmt: skip
    assert result.stdout == "from-stdin\n"
    assert [c for c in sandbox.calls() if c.startswith("sudo")] == ["sudo -n true", "sudo -n sh -s"]


def test_as_root_names_a_user_without_passwordless_sudo(sandbox):
    sandbox.stub("id", 'case "$1" in -u) echo 1000 ;; -un) echo alice ;; esac')
    sandbox.stub("sudo", "echo 'sudo: a password is required' >&2; exit 1")
    result = subprocess.run(
        [SH, "-c", provisioning.AS_ROOT], input="echo never\n", capture_output=True, text=True,
        env={"PATH": str(sandbox.bin), "LOG": str(sandbox.log)}, timeout=10,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "user alice is not root and has no passwordless sudo"


def test_as_root_inline_keeps_the_script_intact(sandbox):
    sandbox.stub("id", "echo 1000")
    sandbox.stub("sudo", 'shift; exec "$@"')
    script = "x='it'\"'\"'s'; echo \"$x\" `echo back` $(echo sub)"
    result = subprocess.run(
        [SH, "-c", provisioning.as_root_inline(script)], capture_output=True, text=True,
        env={"PATH": str(sandbox.bin), "LOG": str(sandbox.log)}, timeout=10,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "it's back sub\n"
