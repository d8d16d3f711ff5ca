"""components/dockercontext.py: a docker context per machine, with a fake `docker` on PATH."""

from __future__ import annotations

import os
import stat

import pytest

from components import ownership
from components.steps import dockercontext
from components.steps.tls import ClientTls

OWNER = ownership.Owner("docker-machine", "local", "file:///backend")

FAKE_DOCKER = r"""#!/bin/sh
# A docker CLI that knows contexts only: state in its config directory ($DOCKER_CONFIG), calls logged.
dir="$DOCKER_CONFIG"
echo "$*" >> "$dir/log"
[ "$1" = context ] || exit 64
action="$2"; shift 2
case "$action" in
  inspect)
    [ -f "$dir/ctx-$1" ] || { echo "context \"$1\" does not exist" >&2; exit 1; }
    description="$(sed -n 's/^description=//p' "$dir/ctx-$1")"
    printf '[{"Name": "%s", "Metadata": {"Description": "%s"}}]\n' "$1" "$description" ;;
  create)
    name="$1"; [ -f "$dir/ctx-$name" ] && { echo "context \"$name\" already exists" >&2; exit 1; }
    [ "$name" = default ] && { echo "\"default\" is a reserved context name" >&2; exit 1; }
    printf 'description=%s\ndocker=%s\n' "$3" "$5" > "$dir/ctx-$name"; echo "$name" ;;
  update)
    name="$1"; [ -f "$dir/ctx-$name" ] || { echo "context \"$name\" does not exist" >&2; exit 1; }
    printf 'description=%s\ndocker=%s\n' "$3" "$5" > "$dir/ctx-$name"; echo "$name" ;;
  rm)
    [ "$1" = --force ] && shift
    [ -f "$dir/ctx-$1" ] || { echo "context \"$1\" does not exist" >&2; exit 1; }
    rm -f "$dir/ctx-$1"; echo "$1" ;;
  *) exit 64 ;;
esac
"""


def fake_docker(monkeypatch, tmp_path):
    """Put the fake docker first on PATH; return its call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    state = tmp_path / "docker-state"
    state.mkdir(exist_ok=True)
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(state))  # docker gets this variable (and no secret)
    log = state / "log"
    log.write_text("")
    return log


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


PROPS = {
    "machine_name": "dev",
    "url": "tcp://127.0.0.1:40001",
    "ca_cert": "CA",
    "client_cert": "CERT",
    "client_key": "KEY",
    "owner": OWNER.as_dict(),
}
OURS = f"docker-machine-pulumi: machine dev of stack local ({OWNER.short_id})"


def test_context_names_avoid_what_docker_refuses():
    assert dockercontext.context_name("dev") == "dev"
    assert dockercontext.context_name("default") == "default-machine"  # docker's own context
    assert dockercontext.context_name("x") == "x-machine"  # docker wants two characters
    assert dockercontext.context_name("web.1") == "web.1"


def test_endpoint_is_one_csv_record():
    assert dockercontext.endpoint("tcp://h:1", "/c") == "host=tcp://h:1,ca=/c/ca.pem,cert=/c/cert.pem,key=/c/key.pem"
    assert dockercontext.endpoint("tcp://h:1", "/a,b").startswith('host=tcp://h:1,"ca=/a,b/ca.pem"')


def test_create_update_delete(monkeypatch, tmp_path, home):
    log = fake_docker(monkeypatch, tmp_path)
    provider = dockercontext._ContextProvider()
    created = provider.create(dict(PROPS))
    assert created.id == "dev" and created.outs["managed"] is True
    assert created.outs["note"] == "docker context dev created: docker --context dev"
    cert_dir = home / ".docker" / "machine" / "machines" / "dev"
    assert (cert_dir / "key.pem").read_text() == "KEY"
    assert stat.S_IMODE((cert_dir / "key.pem").stat().st_mode) == 0o600
    state = (tmp_path / "docker-state" / "ctx-dev").read_text()
    assert f"description={OURS}" in state
    assert f"docker=host=tcp://127.0.0.1:40001,ca={cert_dir}/ca.pem,cert={cert_dir}/cert.pem" in state

    news = {**PROPS, "url": "tcp://127.0.0.1:40002", "client_key": "KEY2"}
    diff = provider.diff("dev", created.outs, news)
    assert diff.changes and not diff.replaces
    updated = provider.update("dev", created.outs, news)
    assert updated.outs["note"].startswith("docker context dev updated")
    assert "tcp://127.0.0.1:40002" in (tmp_path / "docker-state" / "ctx-dev").read_text()
    assert (cert_dir / "key.pem").read_text() == "KEY2"
    assert not provider.diff("dev", updated.outs, dict(news)).changes
    assert provider.diff("dev", updated.outs, {**news, "machine_name": "other"}).replaces == ["machine_name"]

    assert dockercontext.description_of("dev") == OURS
    provider.delete("dev", updated.outs)
    assert dockercontext.description_of("dev") is None
    assert not (tmp_path / "docker-state" / "ctx-dev").exists()
    assert not cert_dir.exists()
    provider.delete("dev", updated.outs)  # already gone: fine
    assert "context rm --force dev" in log.read_text()


def test_the_default_machine_gets_its_own_context(monkeypatch, tmp_path, home):
    fake_docker(monkeypatch, tmp_path)
    outs = dockercontext._ContextProvider().create({**PROPS, "machine_name": "default"}).outs
    assert outs["context_name"] == "default-machine"
    assert (tmp_path / "docker-state" / "ctx-default-machine").exists()


def test_without_docker_nothing_is_done_and_the_output_says_so(monkeypatch, tmp_path, home):
    monkeypatch.setattr(dockercontext, "docker_path", lambda: None)
    provider = dockercontext._ContextProvider()
    outs = provider.create(dict(PROPS)).outs
    assert outs["managed"] is False and "docker is not on PATH" in outs["note"]
    assert not (home / ".docker").exists()
    provider.delete("dev", outs)  # nothing to undo
    # docker installed later: the next up makes the context.
    monkeypatch.setattr(dockercontext, "docker_path", lambda: "/usr/bin/docker")
    assert provider.diff("dev", outs, dict(PROPS)).changes


def test_docker_errors_are_reported(monkeypatch, tmp_path, home):
    fake_docker(monkeypatch, tmp_path)
    (tmp_path / "bin" / "docker").write_text(
        "#!/bin/sh\n[ \"$2\" = inspect ] && exit 1\necho 'daemon says no' >&2\nexit 1\n"
    )
    with pytest.raises(dockercontext.DockerContextError, match="docker context create dev: daemon says no"):
        dockercontext._ContextProvider().create(dict(PROPS))
    (tmp_path / "bin" / "docker").write_text(
        "#!/bin/sh\n[ \"$2\" = inspect ] && exit 0\necho 'daemon says no' >&2\nexit 1\n"
    )
    with pytest.raises(dockercontext.DockerContextError, match="docker context rm dev: daemon says no"):
        dockercontext.remove("dev")


def test_the_resource_registers_with_the_key_as_a_secret():
    import pulumi
    from pulumi.runtime.sync_await import _sync_await

    seen = {}

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            seen[args.typ] = args.inputs
            return f"{args.name}-id", dict(args.inputs)

        def call(self, args):
            return {}

    pulumi.runtime.set_mocks(Mocks(), preview=False)
    resource = dockercontext.DockerContext("dev-docker-context", "dev", "tcp://h:1", ClientTls("CA", "CERT", "KEY"),
                                           OWNER.as_dict())  # fmt: skip
    _sync_await(resource.urn.future())
    inputs = seen["pulumi-python:dynamic/docker:Context"]
    assert (inputs["machine_name"], inputs["url"], inputs["ca_cert"]) == ("dev", "tcp://h:1", "CA")
    # The private key reaches the engine as a secret (so it is encrypted in the state).
    secret = inputs["client_key"]
    assert isinstance(secret, dict) and secret["value"] == "KEY" and len(secret) == 2


def test_a_context_the_user_made_is_left_as_it_was(monkeypatch, tmp_path, home, capsys):
    log = fake_docker(monkeypatch, tmp_path)
    (tmp_path / "docker-state" / "ctx-dev").write_text("description=mine\ndocker=host=tcp://elsewhere:1\n")
    provider = dockercontext._ContextProvider()
    outs = provider.create(dict(PROPS)).outs
    assert outs["managed"] is False and outs["refused"] is True
    assert "docker context dev exists and is one this project did not make: it is left as it was" in outs["note"]
    assert "left as it was" in capsys.readouterr().err  # `up` says so
    assert (tmp_path / "docker-state" / "ctx-dev").read_text() == "description=mine\ndocker=host=tcp://elsewhere:1\n"
    assert not provider.diff("dev", outs, dict(PROPS)).changes  # the next up does not try again
    provider.delete("dev", outs)
    assert dockercontext.description_of("dev") == "mine"
    assert "update" not in log.read_text() and "rm" not in log.read_text()


def test_another_stacks_context_of_the_same_machine_name_is_left_alone(monkeypatch, tmp_path, home):
    fake_docker(monkeypatch, tmp_path)
    other = ownership.Owner("docker-machine", "team", "postgres://db:5432/pulumi")
    dockercontext._ContextProvider().create({**PROPS, "owner": other.as_dict()})
    outs = dockercontext._ContextProvider().create(dict(PROPS)).outs
    assert outs["refused"] and "another stack's (docker-machine-pulumi: machine dev of stack team" in outs["note"]
    # Its certificates went beside the other stack's: both machines stay reachable with `env`.
    machines = home / ".docker" / "machine" / "machines"
    assert ownership.read(str(machines / "dev")) == other and ownership.read(str(machines / "dev.local")) == OWNER


def test_docker_machines_own_machine_directory_is_never_written(monkeypatch, tmp_path, home):
    fake_docker(monkeypatch, tmp_path)
    theirs = home / ".docker" / "machine" / "machines" / "dev"
    theirs.mkdir(parents=True)
    (theirs / "config.json").write_text("{}")
    (theirs / "ca.pem").write_text("docker-machine's CA")
    provider = dockercontext._ContextProvider()
    outs = provider.create(dict(PROPS)).outs
    assert outs["managed"] is True
    assert sorted(os.listdir(theirs)) == ["ca.pem", "config.json"]
    assert (theirs / "ca.pem").read_text() == "docker-machine's CA"
    assert (theirs.parent / "dev.local" / "key.pem").read_text() == "KEY"
    provider.delete("dev", outs)
    assert sorted(os.listdir(theirs)) == ["ca.pem", "config.json"] and not (theirs.parent / "dev.local").exists()
