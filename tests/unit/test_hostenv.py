"""What a machine takes from the host (engine.proxy, engine.registry_certs): the host's proxies as the guest reaches
them, masked wherever they are shown, and registry CAs installed where dockerd reads them."""

from __future__ import annotations

import subprocess

import pulumi
import pytest

from components import config
from components.config import ConfigError
from components.model import EngineOptions
from components.steps import hostenv, tls
from tests.unit.conftest import run_program


def test_auto_takes_the_hosts_proxies_in_either_case_and_rewrites_the_loopback():
    environ = {"https_proxy": "http://user:s3cret@127.0.0.1:3128", "HTTP_PROXY": "http://proxy.corp.test:8080",
               "no_proxy": "localhost,.corp.test"}  # fmt: skip
    found, warnings = hostenv.proxies(EngineOptions(), "10.0.2.2", environ)
    assert found == {"HTTP_PROXY": "http://proxy.corp.test:8080", "HTTPS_PROXY": "http://user:s3cret@10.0.2.2:3128",
                     "NO_PROXY": "localhost,.corp.test"} and warnings == []  # fmt: skip
    assert "https_proxy=http://user:s3cret@10.0.2.2:3128" in hostenv.environment(found)  # both spellings
    assert 'Acquire::https::Proxy "http://user:s3cret@10.0.2.2:3128";' in hostenv.apt_script(found)


def test_a_loopback_proxy_the_machine_cannot_reach_is_dropped_with_a_masked_warning():
    found, warnings = hostenv.proxies(EngineOptions(), None, {"HTTPS_PROXY": "http://u:pw@localhost:3128"})
    assert found == {}
    assert warnings == ["HTTPS_PROXY http://***@localhost:3128 is on this host's loopback, which the machine cannot "
                        "reach: not passed on"]  # fmt: skip


def test_none_and_explicit_settings():
    environ = {"HTTPS_PROXY": "http://127.0.0.1:3128"}
    assert hostenv.proxies(EngineOptions(proxy="none"), "10.0.2.2", environ) == ({}, [])
    explicit = EngineOptions(proxy={"https": "http://proxy.corp.test:3128", "no_proxy": "registry.corp.test"})
    found, _ = hostenv.proxies(explicit, "10.0.2.2", environ)
    assert found == {"HTTPS_PROXY": "http://proxy.corp.test:3128", "NO_PROXY": "registry.corp.test"}
    assert hostenv.apt_script({}) == f"rm -f {hostenv.APT_PROXY}\n"


@pytest.mark.parametrize("url", ["http://u:p@h:1", "https://user:p%40ss@proxy:3128/"])
def test_masked_hides_every_credential(url):
    assert "p" not in hostenv.masked(url).split("@")[0].removeprefix("http").removeprefix("s://")
    assert hostenv.masked_setting(f"HTTP_PROXY={url}").startswith("HTTP_PROXY=http")


def test_bad_settings_are_one_line_each(tmp_path):
    machine = {"name": "m", "engine": {"proxy": {"http": "proxy:3128"}, "registry_certs": {"a/b": str(tmp_path)}}}
    with pytest.raises(ConfigError) as info:
        config.parse([machine])
    lines = str(info.value).splitlines()[1:]
    assert [line.strip().split(": ")[:2] for line in lines] == [
        ["machines[m].engine.proxy", "http"],
        ["machines[m].engine.registry_certs", "registry 'a/b' must be HOST or HOST:PORT"],
    ]


def ca(tmp_path, name: str) -> str:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", f"/CN={name}", "-days", "1",
                    "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.crt")], check=True,
                   capture_output=True)  # fmt: skip
    return str(tmp_path / f"{name}.crt")


def test_registry_cas_from_certs_d_and_the_config(tmp_path):
    docker_config = tmp_path / "docker"
    (docker_config / "certs.d" / "127.0.0.1:5000").mkdir(parents=True)
    (docker_config / "certs.d" / "127.0.0.1:5000" / "ca.crt").write_text(open(ca(tmp_path, "local")).read())
    engine = EngineOptions(registry_certs={"registry.corp.test": ca(tmp_path, "corp")})
    found, warnings = hostenv.registry_certs(engine, "10.0.2.2", str(docker_config))
    # The loopback registry also under the address the guest reaches it at.
    assert sorted(found) == ["10.0.2.2:5000", "127.0.0.1:5000", "registry.corp.test"] and warnings == []
    script = hostenv.certs_script(found)
    assert "mkdir -p /etc/docker/certs.d/10.0.2.2:5000" in script and script.count("BEGIN CERTIFICATE") == 3
    assert "restart" not in script  # dockerd reads certs.d at each pull


def test_the_machine_gets_the_proxy_in_its_daemon_and_the_cas_in_certs_d(tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://user:s3cret@127.0.0.1:3128")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker" / "certs.d" / "127.0.0.1:5000").mkdir(parents=True)
    (tmp_path / "docker" / "certs.d" / "127.0.0.1:5000" / "ca.crt").write_text(open(ca(tmp_path, "local")).read())
    program = run_program([{"name": "p", "options": {"mounts": []}}])
    daemon = program.named("p-daemon-config")
    assert "HTTPS_PROXY=http://user:s3cret@10.0.2.2:3128" in str(daemon.inputs["stdin"])
    assert daemon.inputs["triggers"] == ["HTTPS_PROXY=http://***@10.0.2.2:3128"]
    assert "stdin" in daemon.additional_secret_outputs  # the credentials are a secret in the state
    certs = program.named("p-registry-certs")
    assert certs.inputs["triggers"] == ["10.0.2.2:5000", "127.0.0.1:5000"]
    assert "certs.d/.docker-machine-pulumi" in certs.inputs["delete"]


def test_a_machine_that_cannot_reach_this_host_gets_no_loopback_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    warned = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warned.append(message))
    options = {"address": "192.0.2.10", "ssh_key": tls.new_ssh_key()[0], "ssh_host_key": tls.new_ssh_key()[1]}
    program = run_program([{"name": "g", "driver": "generic", "options": options}])
    assert "HTTPS_PROXY" not in str(program.named("g-daemon-config").inputs["stdin"])
    assert warned == ["machine g: HTTPS_PROXY http://127.0.0.1:3128 is on this host's loopback, which the machine "
                      "cannot reach: not passed on"]  # fmt: skip
