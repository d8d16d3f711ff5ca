"""AWS EC2 driver under Pulumi mocks (no AWS account or plugin): every resource, invoke and wire, per option.

The spec is docker-machine's ``amazonec2`` driver (docs/drivers.md#aws-ec2) with today's defaults: Canonical's
Ubuntu 24.04 AMI looked up instead of a 16.04 map, gp3 volumes, a current instance type.
"""

from __future__ import annotations

import ipaddress

import pulumi
import pytest

from components import config
from components.config import ConfigError
from tests.unit import drivers_common as common
from tests.unit.conftest import Program, run_program
from tests.unit.drivers_common import SECRET_SIG, STACK_PRIVATE, STACK_PUBLIC, connection, one, write_key

KEY_PAIR_T = "aws:ec2/keyPair:KeyPair"
SG_T = "aws:ec2/securityGroup:SecurityGroup"
INSTANCE_T = "aws:ec2/instance:Instance"
SSH_T = "pulumi-python:dynamic/tls:SshKey"
GET_AMI, GET_VPC = "aws:ec2/getAmi:getAmi", "aws:ec2/getVpc:getVpc"
GET_SUBNET, GET_SUBNETS = "aws:ec2/getSubnet:getSubnet", "aws:ec2/getSubnets:getSubnets"
GET_KEY_PAIR = "aws:ec2/getKeyPair:getKeyPair"
CANONICAL = "099720109477"  # Canonical's AWS account, owner of the official Ubuntu AMIs
AWS_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
pytestmark = common.SDK_DEPRECATIONS

DEFAULT_VPC, ZONE_SUBNET, LATEST_UBUNTU = "vpc-0d0d0d0d0d0d0d0d0", "subnet-0a0a0a0a0a0a0a0a0", "ami-0fedcba9876543210"
PUBLIC_IP, PRIVATE_IP = "203.0.113.10", "172.31.5.9"


def subnet_lookup(args):
    if "id" in args:  # by ID: the subnet's VPC
        return {"id": args["id"], "vpcId": "vpc-0b0b0b0b0b0b0b0b0"}
    return {"id": ZONE_SUBNET, "vpcId": args.get("vpcId"), "availabilityZone": args.get("availabilityZone")}


CALLS = {
    GET_VPC: {"id": DEFAULT_VPC},
    GET_SUBNET: subnet_lookup,
    GET_AMI: {"id": LATEST_UBUNTU},
}
OVERRIDES = {
    **common.STACK_KEY_OVERRIDE,
    KEY_PAIR_T: {"keyName": "web-key-1a2b3c4"},
    INSTANCE_T: {"publicIp": PUBLIC_IP, "privateIp": PRIVATE_IP},
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    for var in AWS_REGION_VARS:
        monkeypatch.delenv(var, raising=False)


def run(options=None, engine=None, calls=None, **machine) -> Program:
    spec = common.machine_spec("aws", options, engine, **machine)
    return run_program([spec], calls={**CALLS, **(calls or {})}, overrides=OVERRIDES)


def instance(program: Program):
    return one(program, INSTANCE_T)


def group(program: Program):
    return one(program, SG_T)


def error_of(options) -> str:
    return common.config_error("aws", options)


def ingress(rules, port):
    return [r for r in rules if r["fromPort"] == port]


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Program:
    with common.own_state(tmp_path_factory, unset=AWS_REGION_VARS):
        return run()


# --- defaults ---------------------------------------------------------------------------------------------------


def test_defaults_create_a_key_pair_a_security_group_and_an_instance(default):
    cloud = common.cloud_resources(default, "aws")  # each one a child of the machine's component
    assert cloud == [(INSTANCE_T, "web-instance"), (KEY_PAIR_T, "web-key"), (SG_T, "web-sg")]


def test_default_ami_is_canonicals_newest_ubuntu_lts_for_the_region(default):
    (call,) = default.called(GET_AMI)
    assert call.args["owners"] == [CANONICAL]
    assert call.args["mostRecent"] is True
    assert call.args["region"] == "us-east-1"
    filters = {f["name"]: f["values"] for f in call.args["filters"]}
    (name,) = filters["name"]
    # Ubuntu 24.04 LTS (noble), not docker-machine's unsupported 16.04; amd64 for a t3 type
    assert name.startswith("ubuntu/images/") and "ubuntu-noble-24.04-amd64-server-" in name
    assert filters["architecture"] == ["x86_64"]
    assert filters["virtualization-type"] == ["hvm"]
    assert filters["root-device-type"] == ["ebs"]
    assert instance(default).inputs["ami"] == LATEST_UBUNTU


def test_a_newer_ubuntu_ami_does_not_replace_the_instance(default):
    assert "ami" in instance(default).ignore_changes


def test_default_vpc_and_the_zones_default_subnet(default):
    (vpc,) = default.called(GET_VPC)
    assert vpc.args == {"default": True, "region": "us-east-1"}
    (subnet,) = default.called(GET_SUBNET)
    assert subnet.args["vpcId"] == DEFAULT_VPC
    assert subnet.args["availabilityZone"] == "us-east-1a"  # docker-machine: region + zone "a"
    assert subnet.args["defaultForAz"] is True
    assert instance(default).inputs["subnetId"] == ZONE_SUBNET
    assert group(default).inputs["vpcId"] == DEFAULT_VPC


def test_default_instance_settings(default):
    inputs = instance(default).inputs
    assert inputs["instanceType"] == "t3.small"
    assert inputs["region"] == "us-east-1"
    assert inputs["associatePublicIpAddress"] is True
    root = inputs["rootBlockDevice"]
    assert root["volumeSize"] == 16 and root["volumeType"] == "gp3" and root["deleteOnTermination"] is True
    assert inputs["metadataOptions"]["httpTokens"] == "required"
    assert inputs.get("monitoring") is False
    for absent in ("iamInstanceProfile", "instanceMarketOptions", "userDataBase64", "ebsOptimized"):
        assert absent not in inputs
    # The SSH host key we made, the one every dial pins, and nothing else.
    user_data = inputs["userData"]
    assert len(common.user_data_parts(user_data)) == 1 and common.host_key_installed(user_data) == STACK_PUBLIC


def test_security_group_opens_ssh_and_the_engine_port_to_anywhere_by_default(default):
    sg = group(default).inputs
    assert sg["description"] == "Docker Machine"
    assert sorted(r["fromPort"] for r in sg["ingress"]) == [22, 2376]
    for rule in sg["ingress"]:
        assert rule["protocol"] == "tcp" and rule["toPort"] == rule["fromPort"]
        assert rule["cidrBlocks"] == ["0.0.0.0/0"]
        assert "ipv6CidrBlocks" not in rule
    # a created group has no egress until told: packages and images need it
    (egress,) = sg["egress"]
    assert egress["protocol"] == "-1" and egress["cidrBlocks"] == ["0.0.0.0/0"]
    assert instance(default).inputs["vpcSecurityGroupIds"] == ["web-sg-id"]


def test_key_pair_is_the_stacks_generated_key(default):
    key_pair = default.named("web-key")
    assert key_pair.inputs["publicKey"] == STACK_PUBLIC
    assert key_pair.property_dependencies["publicKey"] == [default.named("web-ssh-key").urn]
    assert instance(default).inputs["keyName"] == "web-key-1a2b3c4"


def test_tags_always_carry_the_machine_name(default):
    for r in default.resources:
        if r.typ.startswith("aws:"):
            assert r.inputs["tags"] == {"Name": "web"}, r.name
    assert instance(default).inputs["rootBlockDevice"]["tags"] == {"Name": "web"}


def test_instance_waits_for_its_key_pair_and_security_group_and_provisioning_for_the_instance(default):
    deps = instance(default).property_dependencies
    assert deps["keyName"] == [default.named("web-key").urn]
    assert deps["vpcSecurityGroupIds"] == [default.named("web-sg").urn]
    assert instance(default).urn in default.named("web-wait-for-ssh").dependencies


def test_ssh_as_ubuntu_on_the_public_address_with_the_stacks_key(default):
    assert connection(default) == {
        "host": PUBLIC_IP,
        "port": 22,
        "user": "ubuntu",
        "private_key": STACK_PRIVATE,
        "host_key": STACK_PUBLIC,
        "dial_error_limit": 120,
        "per_dial_timeout": 10,
    }


def test_public_address_is_what_the_client_dials_and_what_the_certificate_names(default):
    assert default.named("web-server-cert").inputs["sans"] == [PUBLIC_IP, "localhost"]
    machine = default.outputs["machines"]["web"]
    assert machine["ip"] == PUBLIC_IP and machine["url"] == f"tcp://{PUBLIC_IP}:2376"
    assert machine["driver"] == "aws"
    assert machine["privateIp"] == PRIVATE_IP  # where the stack's other machines reach it, in the VPC
    check = default.named("web-docker-check").inputs
    assert check["host"] == PUBLIC_IP and check["port"] == 2376


# --- options: two scenarios, each one program run shared by its tests ----------------------------------------

USER_DATA = "#cloud-config\npackages: [htop]\n"


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Program:
    """Most plain options changed at once."""
    user_data = tmp_path_factory.mktemp("data") / "cloud-config.yaml"
    user_data.write_text(USER_DATA)
    options = {
        "region": "eu-west-1",
        "zone": "c",
        "instance_type": "m6i.large",
        "root_size": 64,
        "volume_type": "gp2",
        "iam_instance_profile": "docker-hosts",
        "monitoring": True,
        "ebs_optimized": True,
        "spot": True,
        "spot_price": "0.05",
        "user_data_file": str(user_data),
        "tags": {"team": "infra", "env": "dev"},
        "use_private_address": True,
        "ssh_port": 2222,
        "open_ports": ["8080", "53/udp", 9000],
        "allowed_cidrs": {"ssh": ["198.51.100.7", "2001:db8::/32"], "engine": ["203.0.113.0/24"]},
        "security_group_ids": ["sg-0123456789abcdef0"],
    }
    with common.own_state(tmp_path_factory):
        return run(options, engine={"port": 2377}, tls_san=["docker.example.test"])


@pytest.fixture(scope="module")
def graviton(tmp_path_factory) -> Program:
    """An arm64 type, spot without a price, binary user data, no public IP, only existing security groups."""
    import gzip

    user_data = tmp_path_factory.mktemp("data") / "user-data.gz"
    user_data.write_bytes(gzip.compress(b"#cloud-config\n"))
    options = {
        "instance_type": "t4g.small",
        "spot": True,
        "user_data_file": str(user_data),
        "private_address_only": True,
        "security_group_ids": ["sg-0123456789abcdef0"],
        "create_security_group": False,
    }
    with common.own_state(tmp_path_factory):
        return run(options)


def test_region_and_zone_reach_every_lookup_and_resource(custom):
    for call in custom.calls:
        assert call.args["region"] == "eu-west-1", call.token
    assert custom.called(GET_SUBNET)[0].args["availabilityZone"] == "eu-west-1c"
    for r in custom.resources:
        if r.typ.startswith("aws:"):
            assert r.inputs["region"] == "eu-west-1", r.name


def test_region_defaults_to_the_aws_sdk_environment(monkeypatch):
    from components.drivers import aws

    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    assert instance(run()).inputs["region"] == "ap-southeast-2"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")
    assert aws.default_region() == "sa-east-1"


def test_region_defaults_to_the_providers_aws_region_config():
    from components.drivers import aws

    pulumi.runtime.set_all_config({"aws:region": "ca-central-1"})
    try:
        assert aws.default_region() == "ca-central-1"
    finally:
        pulumi.runtime.set_all_config({})
    assert aws.default_region() == "us-east-1"  # docker-machine's default


def test_given_vpc_uses_the_first_subnet_of_the_zone_in_it():
    vpc = "vpc-0c0c0c0c0c0c0c0c0"
    program = run(
        {"vpc_id": vpc, "zone": "b"},
        calls={GET_SUBNETS: {"ids": ["subnet-0e0e0e0e0e0e0e0e0", "subnet-01010101010101010"]}},
    )
    assert not program.called(GET_VPC)
    (call,) = program.called(GET_SUBNETS)
    filters = {f["name"]: f["values"] for f in call.args["filters"]}
    assert filters == {"vpc-id": [vpc], "availability-zone": ["us-east-1b"]}
    assert instance(program).inputs["subnetId"] == "subnet-01010101010101010"
    assert group(program).inputs["vpcId"] == vpc


def test_given_vpc_without_a_subnet_in_the_zone_fails_naming_both():
    with pytest.raises(pulumi.RunError, match=r"vpc-0c0c0c0c0c0c0c0c0 has no subnet in us-east-1a"):
        run({"vpc_id": "vpc-0c0c0c0c0c0c0c0c0"}, calls={GET_SUBNETS: {"ids": []}})


def test_given_subnet_fixes_the_vpc_and_must_belong_to_the_given_one():
    program = run({"subnet_id": "subnet-0123456789abcdef0"})
    assert not program.called(GET_VPC)
    (call,) = program.called(GET_SUBNET)
    assert call.args["id"] == "subnet-0123456789abcdef0"
    assert instance(program).inputs["subnetId"] == "subnet-0123456789abcdef0"
    assert group(program).inputs["vpcId"] == "vpc-0b0b0b0b0b0b0b0b0"
    # docker-machine: the subnet "must belong to VPC"
    with pytest.raises(pulumi.RunError, match="belongs to vpc-0b0b0b0b0b0b0b0b0, not to vpc_id vpc-0c0c0c0c0c0c0c0c0"):
        run({"subnet_id": "subnet-0123456789abcdef0", "vpc_id": "vpc-0c0c0c0c0c0c0c0c0"})


def test_given_ami_is_used_as_is_and_may_change():
    program = run({"ami": "ami-0123456789abcdef0"})
    assert not program.called(GET_AMI)
    assert instance(program).inputs["ami"] == "ami-0123456789abcdef0"
    assert "ami" not in instance(program).ignore_changes


def test_graviton_types_look_up_the_arm64_ubuntu_image(graviton):
    (call,) = graviton.called(GET_AMI)
    filters = {f["name"]: f["values"] for f in call.args["filters"]}
    assert "ubuntu-noble-24.04-arm64-server-" in filters["name"][0]
    assert filters["architecture"] == ["arm64"]
    assert call.args["owners"] == [CANONICAL]
    assert instance(graviton).inputs["instanceType"] == "t4g.small"


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("t4g.small", "arm64"),
        ("m7g.large", "arm64"),
        ("c7gn.xlarge", "arm64"),
        ("a1.medium", "arm64"),
        ("im4gn.large", "arm64"),
        ("r8g.large", "arm64"),
        ("t3.micro", "x86_64"),
        ("m7i-flex.large", "x86_64"),
        ("g5.xlarge", "x86_64"),
        ("g4dn.xlarge", "x86_64"),
        ("c5n.large", "x86_64"),
    ],
)
def test_architecture_follows_the_instance_family(instance_type, arch):
    from components.drivers import aws

    assert aws.architecture_of(instance_type) == arch


def test_architecture_can_be_forced():
    (call,) = run({"instance_type": "x9z.large", "architecture": "arm64"}).called(GET_AMI)
    assert {f["name"]: f["values"] for f in call.args["filters"]}["architecture"] == ["arm64"]


def test_root_volume_iam_profile_monitoring_and_ebs_optimized(custom):
    inputs = instance(custom).inputs
    assert inputs["instanceType"] == "m6i.large"
    assert inputs["rootBlockDevice"]["volumeSize"] == 64 and inputs["rootBlockDevice"]["volumeType"] == "gp2"
    assert inputs["iamInstanceProfile"] == "docker-hosts"
    assert inputs["monitoring"] is True
    assert inputs["ebsOptimized"] is True


def test_spot_instance_with_a_max_price(custom):
    market = instance(custom).inputs["instanceMarketOptions"]
    assert market["marketType"] == "spot"
    assert market["spotOptions"]["maxPrice"] == "0.05"
    assert market["spotOptions"]["spotInstanceType"] == "one-time"


def test_spot_instance_without_a_price_is_capped_at_on_demand(graviton):
    market = instance(graviton).inputs["instanceMarketOptions"]
    assert market["marketType"] == "spot" and "maxPrice" not in market["spotOptions"]


def test_user_data_file_is_sent_after_the_host_key(custom):
    """The user's own user-data goes to cloud-init as a second part, as it is; the first installs our host key."""
    user_data = instance(custom).inputs["userData"]
    assert common.user_data_parts(user_data)[1] == USER_DATA
    assert common.host_key_installed(user_data) == STACK_PUBLIC


def test_gzipped_user_data_is_sent_as_its_text(graviton):
    inputs = instance(graviton).inputs
    assert common.user_data_parts(inputs["userData"])[1] == "#cloud-config\n"
    assert "userDataBase64" not in inputs


def test_user_tags_are_merged_with_name(custom):
    for r in custom.resources:
        if r.typ.startswith("aws:"):
            assert r.inputs["tags"] == {"team": "infra", "env": "dev", "Name": "web"}, r.name


def test_docker_machine_tag_string_form():
    options = config.parse([{"name": "web", "driver": "aws", "options": {"tags": "team,infra,env,dev"}}])
    assert options.machines[0].options.tags == {"team": "infra", "env": "dev"}


# --- addresses ---------------------------------------------------------------------------------------------------


def test_private_address_only_has_no_public_ip_and_dials_the_private_address(graviton):
    assert instance(graviton).inputs["associatePublicIpAddress"] is False
    assert connection(graviton)["host"] == PRIVATE_IP
    assert graviton.named("web-server-cert").inputs["sans"] == [PRIVATE_IP, "localhost"]
    assert graviton.outputs["machines"]["web"]["ip"] == PRIVATE_IP


def test_use_private_address_keeps_the_public_ip_but_dials_the_private_one(custom):
    assert instance(custom).inputs["associatePublicIpAddress"] is True
    assert connection(custom)["host"] == PRIVATE_IP
    assert custom.named("web-docker-check").inputs["host"] == PRIVATE_IP


def test_tls_san_is_added_to_the_address(custom):
    assert custom.named("web-server-cert").inputs["sans"] == ["docker.example.test", PRIVATE_IP, "localhost"]


# --- ingress -------------------------------------------------------------------------------------------------------


def test_engine_port_and_ssh_port_follow_the_config(custom):
    rules = group(custom).inputs["ingress"]
    assert ingress(rules, 2222) and ingress(rules, 2377)
    assert not ingress(rules, 22) and not ingress(rules, 2376)
    assert connection(custom)["port"] == 2222
    assert custom.outputs["machines"]["web"]["port"] == 2377


def test_open_ports_are_added_with_their_protocol(custom):
    rules = group(custom).inputs["ingress"]
    assert sorted((r["fromPort"], r["protocol"]) for r in rules) == [
        (53, "udp"), (2222, "tcp"), (2377, "tcp"), (8080, "tcp"), (9000, "tcp"),
    ]
    (dns,) = ingress(rules, 53)
    assert dns["cidrBlocks"] == ["0.0.0.0/0"]  # open ports keep docker-machine's default


def test_allowed_cidrs_narrow_ssh_and_engine_separately_ipv4_and_ipv6(custom):
    rules = group(custom).inputs["ingress"]
    (ssh,) = ingress(rules, 2222)
    assert ssh["cidrBlocks"] == ["198.51.100.7/32"] and ssh["ipv6CidrBlocks"] == ["2001:db8::/32"]
    (engine,) = ingress(rules, 2377)
    assert engine["cidrBlocks"] == ["203.0.113.0/24"] and "ipv6CidrBlocks" not in engine


def test_existing_security_groups_are_attached_with_ours(custom):
    assert instance(custom).inputs["vpcSecurityGroupIds"] == ["web-sg-id", "sg-0123456789abcdef0"]


def test_existing_security_groups_only(graviton):
    assert not graviton.of_type(SG_T)
    assert instance(graviton).inputs["vpcSecurityGroupIds"] == ["sg-0123456789abcdef0"]


# --- SSH keys ------------------------------------------------------------------------------------------------------


def test_existing_key_pair_with_its_private_key_file(tmp_path):
    private, public = write_key(tmp_path / "id_ed25519")
    program = run(
        {"key_pair_name": "ops", "ssh_key_path": str(tmp_path / "id_ed25519")},
        calls={GET_KEY_PAIR: {"keyName": "ops", "publicKey": public + " ops"}},
    )
    assert not program.of_type(KEY_PAIR_T)
    (call,) = program.called(GET_KEY_PAIR)
    assert call.args["keyName"] == "ops" and call.args["includePublicKey"] is True
    assert instance(program).inputs["keyName"] == "ops"
    assert connection(program)["private_key"] == private
    # the key stays a secret on its way to the SSH steps
    assert SECRET_SIG in program.named("web-wait-for-ssh").inputs["connection"]


def test_existing_key_pair_with_its_private_key_as_a_config_secret(tmp_path):
    private, public = write_key(tmp_path / "id_ed25519")
    program = run(
        {"key_pair_name": "ops", "ssh_key": private},
        calls={GET_KEY_PAIR: {"keyName": "ops", "publicKey": public}},
    )
    assert not program.of_type(KEY_PAIR_T)
    assert instance(program).inputs["keyName"] == "ops"
    assert connection(program)["private_key"] == private
    assert SECRET_SIG in program.named("web-wait-for-ssh").inputs["connection"]


def test_existing_key_pair_must_hold_the_given_private_keys_public_half(tmp_path):
    key = tmp_path / "id_ed25519"
    write_key(key)
    _, other = write_key(tmp_path / "other")
    recorded = common.failed_run(
        common.machine_spec("aws", {"key_pair_name": "ops", "ssh_key_path": str(key)}),
        "key pair 'ops' holds another public key",
        calls={**CALLS, GET_KEY_PAIR: {"keyName": "ops", "publicKey": other}},
    )
    assert not recorded.of_type(INSTANCE_T)


def test_a_private_key_file_alone_is_imported_as_a_new_key_pair(tmp_path):
    private, public = write_key(tmp_path / "id_rsa", kind="rsa")
    program = run({"ssh_key_path": str(tmp_path / "id_rsa")})
    assert program.named("web-key").inputs["publicKey"] == public
    assert connection(program)["private_key"] == private


# --- credentials -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["access_key", "secret_key", "session_token", "endpoint"])
def test_credentials_and_endpoints_are_not_driver_options(setting):
    message = error_of({setting: "x"})
    assert f"machines[web].options.{setting}: unknown setting" in message


# --- config errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["us-east", "US-EAST-1", "useast1", "us_east_1", "eu-west-1a"])
def test_unknown_region_format(region):
    message = error_of({"region": region})
    assert "machines[web].options.region" in message and "not an AWS region name" in message


@pytest.mark.parametrize("zone", ["1", "ab", "A", "us-east-1a"])
def test_zone_is_a_letter(zone):
    assert "machines[web].options.zone" in error_of({"zone": zone})



def test_ssh_port_out_of_range():
    assert "machines[web].options.ssh_port" in error_of({"ssh_port": 70000})


def test_spot_price_without_spot():
    assert "spot_price needs spot: true" in error_of({"spot_price": "0.05"})


@pytest.mark.parametrize("price", ["-1", "0", "cheap", True])
def test_spot_price_must_be_a_positive_price(price):
    assert "machines[web].options.spot_price" in error_of({"spot": True, "spot_price": price})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ami", "ubuntu-24.04"),
        ("vpc_id", "default"),
        ("subnet_id", "sn-123"),
        ("security_group_ids", ["docker-machine"]),
        ("instance_type", "large"),
        ("volume_type", "sc1"),
        ("root_size", 4),
    ],
)
def test_malformed_ids_and_values(field, value):
    assert f"machines[web].options.{field}" in error_of({field: value})


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "300.0.0.0/8", "anywhere"])
def test_bad_cidr(cidr):
    message = error_of({"allowed_cidrs": {"engine": [cidr]}})
    assert "machines[web].options.allowed_cidrs.engine" in message and "not a valid CIDR" in message


def test_ssh_cidrs_cannot_be_empty():
    assert "machines[web].options.allowed_cidrs.ssh" in error_of({"allowed_cidrs": {"ssh": []}})


def test_key_pair_name_needs_its_private_key():
    message = error_of({"key_pair_name": "ops"})
    assert "key_pair_name needs its private key: ssh_key (a secret) or ssh_key_path" in message


def test_private_key_file_must_exist_parse_and_have_no_passphrase(tmp_path):
    assert "cannot read" in error_of({"ssh_key_path": str(tmp_path / "missing")})
    (tmp_path / "junk").write_text("not a key")
    assert "not an OpenSSH or PEM private key" in error_of({"ssh_key_path": str(tmp_path / "junk")})
    locked, _ = write_key(tmp_path / "locked", passphrase=b"secret")
    assert "protected by a passphrase" in error_of({"ssh_key_path": str(tmp_path / "locked")})
    message = error_of({"ssh_key": locked})
    assert "machines[web].options.ssh_key" in message and "protected by a passphrase" in message
    assert "machines[web].options.ssh_key: ssh_key is not an OpenSSH" in error_of({"ssh_key": "-----BEGIN junk"})


def test_one_private_key_source_only(tmp_path):
    private, _ = write_key(tmp_path / "id_ed25519")
    message = error_of({"ssh_key": private, "ssh_key_path": str(tmp_path / "id_ed25519")})
    assert "not both" in message


def test_user_data_file_must_exist_and_fit(tmp_path):
    assert "does not exist" in error_of({"user_data_file": str(tmp_path / "missing")})
    (tmp_path / "big").write_bytes(b"x" * 16385)
    assert "the limit is 16384" in error_of({"user_data_file": str(tmp_path / "big")})


def test_name_tag_is_reserved_for_the_machine_name():
    assert "'Name' is always the machine name" in error_of({"tags": {"Name": "other"}})


def test_no_security_group_at_all_is_refused():
    assert "create_security_group: false needs security_group_ids" in error_of({"create_security_group": False})


def test_all_defaults_parse():
    options = config.parse([{"name": "web", "driver": "aws"}]).machines[0].options
    assert options.region is None and options.zone == "a" and options.instance_type == "t3.small"
    assert options.allowed_cidrs.ssh == ["0.0.0.0/0"] and options.allowed_cidrs.engine == ["0.0.0.0/0"]
    assert ipaddress.ip_network(options.allowed_cidrs.engine[0]).num_addresses == 2**32


def test_cloud_machines_cannot_be_stopped_through_state():
    with pytest.raises(ConfigError, match="the aws driver cannot stop a machine"):
        config.parse([{"name": "web", "driver": "aws", "state": "stopped"}])
