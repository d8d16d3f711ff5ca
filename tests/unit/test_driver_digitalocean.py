"""DigitalOcean driver under Pulumi mocks (no token or plugin): every resource and wire, per option.

The spec is docker-machine's ``digitalocean`` driver (docs/drivers.md#digitalocean): a droplet named after the
machine, SSH as root, the stack's key uploaded under the machine's name or an existing key by fingerprint.
Beyond docker-machine (which created no firewall), a cloud firewall lets in only SSH and the engine port.
"""

from __future__ import annotations

import pytest

from tests.unit import drivers_common as common
from tests.unit.conftest import Program, run_program
from tests.unit.drivers_common import SECRET_SIG, STACK_PRIVATE, STACK_PUBLIC, connection, one, write_key

KEY_T = "digitalocean:index/sshKey:SshKey"
DROPLET_T = "digitalocean:index/droplet:Droplet"
FIREWALL_T = "digitalocean:index/firewall:Firewall"
pytestmark = common.SDK_DEPRECATIONS

PUBLIC_IP, PRIVATE_IP, DROPLET_ID = "203.0.113.30", "10.116.0.2", "412345678"
UPLOADED_FINGERPRINT = "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"

OVERRIDES = {
    **common.STACK_KEY_OVERRIDE,
    KEY_T: {"fingerprint": UPLOADED_FINGERPRINT},
    DROPLET_T: {"ipv4Address": PUBLIC_IP, "ipv4AddressPrivate": PRIVATE_IP},
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))


def run(options=None, engine=None, **machine) -> Program:
    spec = common.machine_spec("digitalocean", options, engine, **machine)
    return run_program([spec], overrides=OVERRIDES, ids={DROPLET_T: DROPLET_ID})


def inbound(program: Program) -> list[tuple[str, str, list[str]]]:
    rules = one(program, FIREWALL_T).inputs["inboundRules"]
    return [(r["protocol"], r["portRange"], r["sourceAddresses"]) for r in rules]


def error_of(options) -> str:
    return common.config_error("digitalocean", options)


def md5_colons(public_key: str) -> str:
    """DigitalOcean's fingerprint: MD5 of the key blob, as aa:bb:… (as `ssh-keygen -E md5 -lf` prints)."""
    import base64
    import hashlib

    digest = hashlib.md5(base64.b64decode(public_key.split()[1])).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


default = common.default_program(lambda: run())


# --- defaults ---------------------------------------------------------------------------------------------------


def test_defaults_upload_a_key_create_a_droplet_and_a_firewall(default):
    cloud = common.cloud_resources(default, "digitalocean")  # each one a child of the machine's component
    assert cloud == [(DROPLET_T, "web-droplet"), (FIREWALL_T, "web-firewall"), (KEY_T, "web-key")]


def test_the_stacks_key_is_uploaded_under_the_machines_name(default):
    key = one(default, KEY_T)
    assert key.inputs == {"name": "web", "publicKey": STACK_PUBLIC}
    assert key.property_dependencies["publicKey"] == [default.named("web-ssh-key").urn]


def test_droplet_defaults(default):
    droplet = one(default, DROPLET_T)
    inputs = droplet.inputs
    assert inputs["name"] == "web"  # droplet name = machine name
    assert inputs["region"] == "nyc3"
    assert inputs["size"] == "s-1vcpu-1gb"
    assert inputs["image"] == "ubuntu-24-04-x64"  # a supported LTS, not docker-machine's 16.04
    assert inputs["sshKeys"] == [UPLOADED_FINGERPRINT]
    assert droplet.property_dependencies["sshKeys"] == [one(default, KEY_T).urn]
    assert inputs["ipv6"] is False and inputs["backups"] is False and inputs["monitoring"] is False
    user_data = inputs["userData"]
    assert len(common.user_data_parts(user_data)) == 1 and common.host_key_installed(user_data) == STACK_PUBLIC
    for absent in ("vpcUuid", "tags", "publicNetworking"):
        assert absent not in inputs


def test_firewall_lets_in_only_ssh_and_the_engine_port(default):
    assert inbound(default) == [("tcp", "22", ["0.0.0.0/0"]), ("tcp", "2376", ["0.0.0.0/0"])]
    firewall = one(default, FIREWALL_T)
    assert firewall.inputs["dropletIds"] == [int(DROPLET_ID)]
    assert firewall.property_dependencies["dropletIds"] == [one(default, DROPLET_T).urn]
    # a DigitalOcean firewall drops what it does not allow: outbound must be open for packages and images
    outbound = {r["protocol"]: r for r in firewall.inputs["outboundRules"]}
    assert set(outbound) == {"tcp", "udp", "icmp"}
    assert outbound["tcp"]["portRange"] == "1-65535" and "0.0.0.0/0" in outbound["tcp"]["destinationAddresses"]


def test_provisioning_starts_once_the_firewall_is_in_place(default):
    assert one(default, FIREWALL_T).urn in default.named("web-wait-for-ssh").dependencies


def test_ssh_as_root_on_the_public_address(default):
    conn = connection(default)
    assert (conn["host"], conn["port"], conn["user"], conn["private_key"]) == (PUBLIC_IP, 22, "root", STACK_PRIVATE)
    assert default.named("web-server-cert").inputs["sans"] == [PUBLIC_IP, "localhost"]
    machine = default.outputs["machines"]["web"]
    assert machine["url"] == f"tcp://{PUBLIC_IP}:2376" and machine["driver"] == "digitalocean"
    assert machine["privateIp"] == PRIVATE_IP  # where the stack's other machines reach it, in the VPC


# --- options ----------------------------------------------------------------------------------------------------


def test_region_size_image_ipv6_vpc_backups_monitoring_tags(tmp_path):
    user_data = tmp_path / "user-data"
    user_data.write_text("#!/bin/sh\necho hello\n")
    inputs = one(
        run(
            {
                "region": "fra1",
                "size": "s-2vcpu-4gb",
                "image": "debian-12-x64",
                "ipv6": True,
                "vpc_uuid": "c140286f-e6ce-4131-8b7b-df4590ce8d6a",
                "backups": True,
                "monitoring": True,
                "tags": "docker,env:dev",
                "user_data_file": str(user_data),
            }
        ),
        DROPLET_T,
    ).inputs
    assert (inputs["region"], inputs["size"], inputs["image"]) == ("fra1", "s-2vcpu-4gb", "debian-12-x64")
    assert inputs["ipv6"] is True and inputs["backups"] is True and inputs["monitoring"] is True
    assert inputs["vpcUuid"] == "c140286f-e6ce-4131-8b7b-df4590ce8d6a"
    assert inputs["tags"] == ["docker", "env:dev"]  # docker-machine's comma list
    # As it is, like docker-machine, after the part that installs the SSH host key.
    assert common.user_data_parts(inputs["userData"])[1] == "#!/bin/sh\necho hello\n"


def test_existing_key_by_fingerprint_with_its_private_key(tmp_path):
    private, public = write_key(tmp_path / "id_ed25519")
    fingerprint = md5_colons(public)
    program = run({"ssh_key_fingerprint": fingerprint, "ssh_key_path": str(tmp_path / "id_ed25519")})
    assert not program.of_type(KEY_T)
    assert one(program, DROPLET_T).inputs["sshKeys"] == [fingerprint]
    assert connection(program)["private_key"] == private
    assert SECRET_SIG in program.named("web-wait-for-ssh").inputs["connection"]


def test_existing_key_by_fingerprint_with_its_private_key_as_a_config_secret(tmp_path):
    private, public = write_key(tmp_path / "id_ed25519")
    program = run({"ssh_key_fingerprint": md5_colons(public), "ssh_key": private})
    assert not program.of_type(KEY_T)
    assert connection(program)["private_key"] == private


def test_a_private_key_file_alone_is_uploaded(tmp_path):
    private, public = write_key(tmp_path / "id_ed25519")
    program = run({"ssh_key_path": str(tmp_path / "id_ed25519")})
    assert one(program, KEY_T).inputs["publicKey"] == public
    assert connection(program)["private_key"] == private


def test_use_private_address_dials_the_vpc_address():
    program = run({"use_private_address": True})
    assert "publicNetworking" not in one(program, DROPLET_T).inputs
    assert connection(program)["host"] == PRIVATE_IP
    assert program.named("web-server-cert").inputs["sans"] == [PRIVATE_IP, "localhost"]


def test_private_address_only_disables_public_networking():
    program = run({"private_address_only": True})
    assert one(program, DROPLET_T).inputs["publicNetworking"] is False
    assert connection(program)["host"] == PRIVATE_IP
    assert program.outputs["machines"]["web"]["ip"] == PRIVATE_IP


def test_ports_and_cidrs():
    program = run(
        {
            "ssh_port": 2222,
            "open_ports": ["8080", "53/udp"],
            "allowed_cidrs": {"ssh": ["198.51.100.7"], "engine": ["203.0.113.0/24", "2001:db8::/32"]},
        },
        engine={"port": 2377},
    )
    assert inbound(program) == [
        ("tcp", "2222", ["198.51.100.7/32"]),
        ("tcp", "2377", ["203.0.113.0/24", "2001:db8::/32"]),
        ("tcp", "8080", ["0.0.0.0/0"]),
        ("udp", "53", ["0.0.0.0/0"]),
    ]
    assert connection(program)["port"] == 2222
    assert program.outputs["machines"]["web"]["port"] == 2377


# --- config errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["NYC3", "new-york-3", "nyc", "us-east-1"])
def test_unknown_region_format(region):
    assert "machines[web].options.region" in error_of({"region": region})



@pytest.mark.parametrize("fingerprint", ["SHA256:abc", "3b:16:bf", "zz:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"])
def test_fingerprint_must_be_md5(fingerprint):
    assert "not an MD5 key fingerprint" in error_of({"ssh_key_fingerprint": fingerprint})


def test_fingerprint_needs_the_private_key():
    assert "needs its private key" in error_of({"ssh_key_fingerprint": UPLOADED_FINGERPRINT})


def test_fingerprint_must_match_the_private_key(tmp_path):
    _, public = write_key(tmp_path / "id_ed25519")
    options = {"ssh_key_fingerprint": UPLOADED_FINGERPRINT, "ssh_key_path": str(tmp_path / "id_ed25519")}
    message = error_of(options)
    assert "is not the configured private key's" in message and md5_colons(public) in message


@pytest.mark.parametrize(("field", "value"), [("tags", ["has space"]), ("vpc_uuid", "default"), ("size", "Large")])
def test_bad_values(field, value):
    assert f"machines[web].options.{field}" in error_of({field: value})


def test_binary_user_data_is_refused(tmp_path):
    (tmp_path / "blob").write_bytes(b"\x1f\x8b\x08\x00\xff")
    assert "not UTF-8 text" in error_of({"user_data_file": str(tmp_path / "blob")})


@pytest.mark.parametrize("setting", ["access_token", "token", "private_networking"])
def test_token_is_not_a_driver_option(setting):
    assert f"machines[web].options.{setting}: unknown setting" in error_of({setting: "x"})
