"""Stack configuration: every error names the field path and what is allowed; valid configs normalise."""

from __future__ import annotations

import re

import pulumi
import pytest

from components import config, drivers, model
from components.config import ConfigError
from components.drivers import qemu
from tests.unit.conftest import Program, run_program


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(raw)
    return str(info.value)


def machine(**fields):
    return [{"name": "default", **fields}]


# --- machines and drivers -------------------------------------------------------------------------


def test_unknown_driver_lists_the_allowed_drivers():
    message = error_of(machine(driver="vmwarefusion"))
    assert "machines[default].driver" in message
    assert "'vmwarefusion'" in message
    allowed = message.split("allowed:", 1)[1]
    assert set(re.findall(r"[a-z0-9_]+", allowed)) == set(drivers.available())
    assert "qemu" in drivers.available()


@pytest.mark.parametrize("name", ["-bad", "under_score", "has space", ".dot-first", "a/b", "émoji"])
def test_machine_name_follows_docker_machines_rule(name):
    assert not re.match(model.MACHINE_NAME_PATTERN, name)  # the spec's rule rejects it
    message = error_of([{"name": name}])
    assert f"machines[{name}].name" in message
    assert repr(name) in message
    # what is allowed: the character set and the first-character rule
    assert "0-9a-zA-Z" in message and ". -" in message
    assert "start with a letter or digit" in message


@pytest.mark.parametrize("name", ["default", "a", "0", "dev.example", "web-1", "A.b-C.9"])
def test_valid_machine_names_are_accepted(name):
    assert config.parse([{"name": name}]).machines[0].name == name


def test_missing_name_is_reported_by_index():
    message = error_of([{"driver": "qemu"}])
    assert "machines[0].name" in message
    assert "required" in message.lower()


def test_duplicate_machine_names():
    message = error_of([{"name": "a"}, {"name": "b"}, {"name": "a"}])
    assert "machines:" in message
    assert "'a'" in message and "twice" in message


def test_at_least_one_machine_and_a_list():
    assert "machines: " in error_of([])
    assert "at least 1" in error_of([])
    assert "valid list" in error_of({"name": "default"})


def test_all_errors_are_reported_at_once():
    message = error_of(machine(options={"cpus": 0, "memory": 1}))
    assert "machines[default].options.cpus" in message
    assert "machines[default].options.memory" in message


# --- qemu options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory", [-1, 0, 255])
def test_qemu_memory_too_small(memory):
    message = error_of(machine(options={"memory": memory}))
    assert "machines[default].options.memory" in message
    assert "greater than or equal to 256" in message


def test_qemu_zero_cpus():
    message = error_of(machine(options={"cpus": 0}))
    assert "machines[default].options.cpus" in message
    assert "greater than or equal to 1" in message


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("not-a-cidr", "not a valid IPv4 CIDR"),
        ("192.168.1.1/24", "host bits set"),
        ("192.168.1.0/30", "/29 or shorter"),
        ("10.0.0.0/32", "/29 or shorter"),
    ],
)
def test_bad_bridge_cidr(cidr, why):
    message = error_of(machine(options={"network": "bridge", "bridge_cidr": cidr}))
    assert "machines[default].options.bridge_cidr" in message
    assert repr(cidr) in message
    assert why in message


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.124.0", "192.168.124.255", "192.168.124.1"])
def test_address_outside_the_cidr_or_reserved(address):
    message = error_of(machine(options={"network": "bridge", "bridge_cidr": "192.168.124.0/24", "address": address}))
    assert "machines[default].options" in message
    assert address in message
    # what is allowed: a host of the CIDR other than the bridge's own address
    assert "192.168.124.0/24" in message and "192.168.124.1" in message


def test_address_error_names_the_address_field():
    message = error_of(machine(options={"network": "bridge", "address": "10.0.0.5"}))
    assert "machines[default].options.address" in message


def test_address_inside_the_cidr_is_accepted():
    options = config.parse(machine(options={"network": "bridge", "address": "192.168.124.20"})).machines[0].options
    assert isinstance(options, qemu.Options)
    assert options.address == "192.168.124.20"


def test_unknown_qemu_option():
    message = error_of(machine(options={"cpu": 2}))
    assert "machines[default].options.cpu" in message
    assert "unknown setting" in message


def test_unknown_qemu_option_lists_the_allowed_options():
    message = error_of(machine(options={"cpu": 2}))
    assert "cpus" in message and "memory" in message


def test_bad_qemu_enum_lists_allowed_values():
    message = error_of(machine(options={"accel": "hvf"}))
    assert "machines[default].options.accel" in message
    assert "'hvf' is not allowed" in message
    for allowed in ("'auto'", "'kvm'", "'tcg'"):
        assert allowed in message


# --- engine options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("port", "bound"), [(0, "greater than or equal to 1"), (65536, "less than or equal to 65535")])
def test_engine_port_out_of_range(port, bound):
    message = error_of(machine(engine={"port": port}))
    assert "machines[default].engine.port" in message
    assert bound in message


def test_unknown_engine_setting():
    message = error_of(machine(engine={"storage_drvier": "overlay2"}))
    assert "machines[default].engine.storage_drvier" in message
    assert "unknown setting" in message


def test_unknown_engine_setting_lists_the_allowed_settings():
    message = error_of(machine(engine={"storage_drvier": "overlay2"}))
    assert "storage_driver" in message.replace("storage_drvier", "")


@pytest.mark.parametrize("registry", ["10.0.0.1/8", "10.0.0.0/33", "not a host"])
def test_bad_insecure_registry(registry):
    message = error_of(machine(engine={"insecure_registries": [registry]}))
    assert "machines[default].engine.insecure_registries" in message
    assert repr(registry) in message
    assert "CIDR" in message


def test_insecure_registry_host_port_and_cidr_are_accepted():
    engine = (
        config.parse(machine(engine={"insecure_registries": ["10.0.0.0/8", "registry.local:5000"]})).machines[0].engine
    )
    assert engine.insecure_registries == ["10.0.0.0/8", "registry.local:5000"]


@pytest.mark.parametrize("mirror", ["mirror.local", "ftp://mirror.local", "https://"])
def test_registry_mirror_must_be_a_url(mirror):
    message = error_of(machine(engine={"registry_mirrors": [mirror]}))
    assert "machines[default].engine.registry_mirrors" in message
    assert repr(mirror) in message
    assert "http(s) URL" in message


@pytest.mark.parametrize("env", [{"1BAD": "x"}, ["BAD-NAME=x"], ["A B=1"]])
def test_engine_env_with_invalid_name(env):
    message = error_of(machine(engine={"env": env}))
    assert "machines[default].engine.env" in message
    assert "not a valid environment variable name" in message


@pytest.mark.parametrize("label", ["novalue", "=v"])
def test_label_must_be_key_value(label):
    message = error_of(machine(engine={"labels": [label]}))
    assert "machines[default].engine.labels" in message
    assert "key=value" in message


def test_bad_install_mode_lists_allowed_modes():
    message = error_of(machine(engine={"install": "apt"}))
    assert "machines[default].engine.install" in message
    assert "'apt' is not allowed" in message
    for mode in ("'script'", "'packages'", "'none'"):
        assert mode in message


def test_install_url_must_be_http():
    message = error_of(machine(engine={"install_url": "file:///tmp/x.sh"}))
    assert "machines[default].engine.install_url" in message
    assert "http(s) URL" in message


def test_engine_opt_must_look_like_a_flag():
    message = error_of(machine(engine={"opts": ["=debug"]}))
    assert "machines[default].engine.opts" in message
    assert "flag=value" in message


def test_engine_opts_given_as_a_string_is_not_split_into_characters():
    try:
        engine = config.parse(machine(engine={"opts": "debug"})).machines[0].engine
    except ConfigError as err:  # rejecting it with the path is fine too
        assert "machines[default].engine.opts" in str(err)
    else:
        assert engine.opts == ["debug"]


@pytest.mark.parametrize(
    "engine",
    [
        {"labels": ["a=b\nExecStartPre=/bin/false"]},
        {"env": ["A=1\nExecStartPre=/bin/false"]},
        {"opts": ["debug=1\n"]},
        {"insecure_registries": ["registry.local\n"]},
        {"registry_mirrors": ["https://mirror.local\n"]},
        {"install_url": "https://get.docker.com\n"},
    ],
)
def test_values_with_newlines_are_rejected(engine):
    message = error_of(machine(engine=engine))
    assert f"machines[default].engine.{next(iter(engine))}" in message


def test_tls_san_must_be_ip_or_dns_name():
    message = error_of(machine(tls_san=["not a name"]))
    assert "machines[default].tls_san" in message
    assert "neither an IP address nor a DNS name" in message


# --- valid configs -------------------------------------------------------------------------------------


def test_defaults():
    (m,) = config.parse([{"name": "default"}]).machines
    assert m.driver == "qemu"
    assert m.engine.install == "script"
    assert m.engine.install_url == "https://get.docker.com"
    assert m.engine.port == 2376
    assert m.engine.storage_driver == "overlay2"
    assert m.engine.labels == [] and m.engine.env == [] and m.engine.opts == []
    assert m.tls_san == []
    # driver options are validated and defaulted by the driver's Options model
    assert isinstance(m.options, qemu.Options)
    assert (m.options.cpus, m.options.memory, m.options.disk) == (2, 2048, 20000)
    assert m.options.network == "user" and m.options.accel == "auto"


def test_mappings_are_normalised_to_key_value_lists():
    (m,) = config.parse(
        machine(engine={"labels": {"env": "dev", "team": "core"}, "env": {"HTTP_PROXY": "http://p:3128", "A": "1"}})
    ).machines
    assert m.engine.labels == ["env=dev", "team=core"]
    assert m.engine.env == ["HTTP_PROXY=http://p:3128", "A=1"]


def test_lists_are_kept_in_order():
    (m,) = config.parse(machine(engine={"labels": ["b=2", "a=1"], "env": ["X=1", "Y=a=b"]})).machines
    assert m.engine.labels == ["b=2", "a=1"]
    assert m.engine.env == ["X=1", "Y=a=b"]


def test_engine_opts_mapping_and_leading_dashes():
    (m,) = config.parse(machine(engine={"opts": {"log-level": "debug", "experimental": True}})).machines
    assert m.engine.opts == ["log-level=debug", "experimental"]
    (m,) = config.parse(machine(engine={"opts": ["--log-level=debug"]})).machines
    assert m.engine.opts == ["log-level=debug"]


def test_parsed_config_is_frozen():
    (m,) = config.parse([{"name": "default"}]).machines
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        m.engine.port = 1


# --- the program with a bad config ---------------------------------------------------------------------


def test_program_with_bad_config_registers_nothing_and_names_the_field():
    recorded = Program()
    with pytest.raises(pulumi.RunError) as info:
        run_program([{"name": "default", "engine": {"port": 70000}}], program=recorded)
    assert "machines[default].engine.port" in str(info.value)
    assert "less than or equal to 65535" in str(info.value)
    assert recorded.resources == []


def test_program_with_bad_qemu_option_registers_nothing():
    recorded = Program()
    with pytest.raises(pulumi.RunError) as info:
        run_program([{"name": "ok"}, {"name": "bad", "options": {"memory": 1}}], program=recorded)
    assert "machines[bad].options.memory" in str(info.value)
    assert recorded.resources == []


def test_state_and_rotation_defaults():
    parsed = config.parse(machine())
    assert parsed.machines[0].state == "running"
    assert parsed.machines[0].tls_rotation == "" and parsed.ca_rotation == ""


def test_state_must_be_running_or_stopped():
    message = error_of(machine(state="paused"))
    assert "machines[default].state" in message
    assert "'running'" in message and "'stopped'" in message


def test_stopped_is_allowed_for_drivers_that_can_power_off():
    assert config.parse(machine(driver="qemu", state="stopped")).machines[0].state == "stopped"
