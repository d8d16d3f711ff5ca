"""Azure driver under Pulumi mocks (no subscription or plugin): every resource, lookup and wire, per option.

The spec is docker-machine's ARM ``azure`` driver (docs/drivers.md#azure): resources ``<name>-nic``,
``<name>-ip``, ``<name>-firewall``; NSG rules SSHAllowAny 100, DockerAllowAny 300, user ports 1000+i; key-only
login as ``docker-user``; the FQDN as the address with a DNS label. Today's defaults replace the retired ones
(Ubuntu 24.04 instead of 16.04, a current VM size, Standard static public IPs now that Basic ones are retired).
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from tests.unit import drivers_common as common
from tests.unit.conftest import Program, run_program
from tests.unit.drivers_common import STACK_PRIVATE, STACK_PUBLIC, connection, one, plain, write_key

RG_T = "azure-native:resources:ResourceGroup"
VNET_T = "azure-native:network:VirtualNetwork"
NSG_T = "azure-native:network:NetworkSecurityGroup"
PIP_T = "azure-native:network:PublicIPAddress"
NIC_T = "azure-native:network:NetworkInterface"
VM_T = "azure-native:compute:VirtualMachine"
GET_SUBNET = "azure-native:network:getSubnet"
pytestmark = common.SDK_DEPRECATIONS

CREATED_RG = "web-rg0a1b2c3d"
PUBLIC_IP, PRIVATE_IP = "203.0.113.20", "192.168.0.4"
FQDN = "mydocker.westus.cloudapp.azure.com"
EXISTING_SUBNET = (
    "/subscriptions/0000/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/shared/subnets/docker"
)

OVERRIDES = {
    **common.STACK_KEY_OVERRIDE,
    RG_T: {"name": CREATED_RG},
    PIP_T: {"ipAddress": PUBLIC_IP},
    NIC_T: {"ipConfigurations": [{"name": "ipconfig", "privateIPAddress": PRIVATE_IP}]},
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))


def run(options=None, engine=None, overrides=None, **machine) -> Program:
    return run_program(
        [common.machine_spec("azure", options, engine, **machine)],
        calls={GET_SUBNET: lambda args: {"id": EXISTING_SUBNET, "name": args["subnetName"]}},
        overrides={**OVERRIDES, **(overrides or {})},
    )


def rules_of(program: Program) -> dict[str, dict]:
    return {r["name"]: r for r in one(program, NSG_T).inputs["securityRules"]}


def error_of(options) -> str:
    return common.config_error("azure", options)


default = common.default_program(lambda: run())


# --- defaults ---------------------------------------------------------------------------------------------------


def test_defaults_create_docker_machines_set_of_resources(default):
    cloud = common.cloud_resources(default, "azure-native")  # each one a child of the machine's component
    assert cloud == sorted(
        [
            (RG_T, "web-rg"),
            (VNET_T, "web-vnet"),
            (NSG_T, "web-firewall"),
            (PIP_T, "web-ip"),
            (NIC_T, "web-nic"),
            (VM_T, "web-vm"),
        ]
    )


def test_everything_lands_in_the_created_group_and_location(default):
    assert one(default, RG_T).inputs["location"] == "westus"  # docker-machine's default location
    for r in default.resources:
        if r.typ.startswith("azure-native:") and r.typ != RG_T:
            assert r.inputs["resourceGroupName"] == CREATED_RG, r.name
            assert r.inputs["location"] == "westus", r.name
            assert r.property_dependencies["resourceGroupName"] == [one(default, RG_T).urn]


def test_vnet_and_subnet_are_docker_machines(default):
    vnet = one(default, VNET_T).inputs
    assert vnet["addressSpace"]["addressPrefixes"] == ["192.168.0.0/16"]
    assert vnet["subnets"] == [{"name": "docker-machine", "addressPrefix": "192.168.0.0/16"}]
    ip_configuration = one(default, NIC_T).inputs["ipConfigurations"][0]
    assert ip_configuration["subnet"]["id"] == "web-vnet-id/subnets/docker-machine"
    assert ip_configuration["privateIPAllocationMethod"] == "Dynamic"


def test_nsg_has_docker_machines_rules_and_priorities(default):
    rules = rules_of(default)
    assert set(rules) == {"SSHAllowAny", "DockerAllowAny"}
    ssh, docker = rules["SSHAllowAny"], rules["DockerAllowAny"]
    assert (ssh["priority"], ssh["destinationPortRange"], ssh["protocol"]) == (100, "22", "Tcp")
    assert (docker["priority"], docker["destinationPortRange"], docker["protocol"]) == (300, "2376", "Tcp")
    for rule in rules.values():
        assert rule["direction"] == "Inbound" and rule["access"] == "Allow"
        assert rule["sourceAddressPrefix"] == "0.0.0.0/0"
    nic = one(default, NIC_T)
    assert nic.inputs["networkSecurityGroup"] == {"id": "web-firewall-id"}
    assert one(default, NSG_T).urn in nic.property_dependencies["networkSecurityGroup"]


def test_public_ip_is_standard_and_static(default):
    pip = one(default, PIP_T).inputs
    assert pip["sku"]["name"] == "Standard"
    assert pip["publicIPAllocationMethod"] == "Static"
    assert "dnsSettings" not in pip
    ip_configuration = one(default, NIC_T).inputs["ipConfigurations"][0]
    assert ip_configuration["publicIPAddress"] == {"id": "web-ip-id"}


def test_vm_is_ubuntu_lts_with_key_only_login_for_docker_user(default):
    vm = one(default, VM_T).inputs
    assert vm["hardwareProfile"]["vmSize"] == "Standard_B2s"
    image = vm["storageProfile"]["imageReference"]
    assert image == {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
    os_disk = vm["storageProfile"]["osDisk"]
    assert os_disk["createOption"] == "FromImage" and os_disk["managedDisk"]["storageAccountType"] == "StandardSSD_LRS"
    assert os_disk["deleteOption"] == "Delete"
    # A secret as a whole: its custom data holds the SSH host key we made, the only one sshd gets.
    profile = plain(vm["osProfile"])
    assert profile["adminUsername"] == "docker-user" and profile["computerName"] == "web"
    assert "adminPassword" not in profile
    custom_data = base64.b64decode(profile["customData"]).decode()
    assert len(common.user_data_parts(custom_data)) == 1 and common.host_key_installed(custom_data) == STACK_PUBLIC
    linux = profile["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [
        {"path": "/home/docker-user/.ssh/authorized_keys", "keyData": STACK_PUBLIC}
    ]
    assert vm["networkProfile"]["networkInterfaces"] == [{"id": "web-nic-id", "primary": True}]


def test_vm_waits_for_its_nic_and_key_and_provisioning_waits_for_the_vm(default):
    vm = one(default, VM_T)
    assert vm.property_dependencies["networkProfile"] == [one(default, NIC_T).urn]
    assert default.named("web-ssh-key").urn in vm.property_dependencies["osProfile"]
    nic = one(default, NIC_T)
    assert set(nic.property_dependencies["ipConfigurations"]) == {one(default, PIP_T).urn, one(default, VNET_T).urn}
    assert vm.urn in default.named("web-wait-for-ssh").dependencies


def test_ssh_as_docker_user_to_the_public_ip(default):
    conn = connection(default)
    assert (conn["host"], conn["port"], conn["user"], conn["private_key"]) == (
        PUBLIC_IP, 22, "docker-user", STACK_PRIVATE,
    )
    assert default.named("web-server-cert").inputs["sans"] == [PUBLIC_IP, "localhost"]
    machine = default.outputs["machines"]["web"]
    assert machine["url"] == f"tcp://{PUBLIC_IP}:2376" and machine["driver"] == "azure"
    assert machine["privateIp"] == PRIVATE_IP  # where the stack's other machines reach it, in the virtual network


# --- options (each scenario is one program run, shared by its tests: azure-native resources are slow to mock) ---


def scenario(tmp_path_factory, options, overrides=None) -> Program:
    with common.own_state(tmp_path_factory):
        return run(options, overrides=overrides)


CUSTOM_DATA = b"#cloud-config\npackages: [htop]\n"


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Program:
    """Every plain option changed at once."""
    data = tmp_path_factory.mktemp("data")
    custom_data = data / "cloud-config.yaml"
    custom_data.write_bytes(CUSTOM_DATA)
    write_key(data / "id_ed25519")
    options = {
        "ssh_key_path": str(data / "id_ed25519"),
        "location": "West Europe",
        "size": "Standard_D2s_v5",
        "image": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.202401010",
        "os_disk_type": "Premium_LRS",
        "os_disk_size": 64,
        "tags": {"team": "infra"},
        "ssh_user": "ops",
        "subnet": "docker",
        "subnet_prefix": "10.20.0.0/24",
        "private_ip_address": "10.20.0.10",
        "open_ports": ["8080", "53/udp", "9000/*"],
        "allowed_cidrs": {"ssh": ["198.51.100.7"], "engine": ["203.0.113.0/24", "2001:db8::/32"]},
        "custom_data_file": str(custom_data),
        "use_private_ip": True,
    }
    with common.own_state(tmp_path_factory):
        return run(options, engine={"port": 2377})


def test_location_size_image_disk_and_tags(custom):
    vm = one(custom, VM_T).inputs
    assert vm["hardwareProfile"]["vmSize"] == "Standard_D2s_v5"
    assert vm["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-jammy",
        "sku": "22_04-lts-gen2",
        "version": "22.04.202401010",
    }
    assert vm["storageProfile"]["osDisk"]["managedDisk"]["storageAccountType"] == "Premium_LRS"
    assert vm["storageProfile"]["osDisk"]["diskSizeGB"] == 64
    for r in custom.resources:
        if r.typ.startswith("azure-native:"):
            assert r.inputs["tags"] == {"team": "infra"}, r.name
            assert r.inputs["location"] == "westeurope", r.name  # "West Europe" normalised


def test_own_private_key_replaces_the_stacks(custom):
    public_key = plain(one(custom, VM_T).inputs["osProfile"])["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"]
    assert public_key.startswith("ssh-ed25519 ") and public_key != STACK_PUBLIC
    private_key = connection(custom)["private_key"]
    assert private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    loaded = serialization.load_ssh_private_key(private_key.encode(), password=None)
    derived = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert derived.decode() == public_key


def test_admin_user_can_be_renamed(custom):
    profile = plain(one(custom, VM_T).inputs["osProfile"])
    assert profile["adminUsername"] == "ops"
    assert profile["linuxConfiguration"]["ssh"]["publicKeys"][0]["path"] == "/home/ops/.ssh/authorized_keys"
    assert connection(custom)["user"] == "ops"


def test_subnet_name_prefix_and_static_private_ip(custom):
    vnet = one(custom, VNET_T).inputs
    assert vnet["addressSpace"]["addressPrefixes"] == ["10.20.0.0/24"]
    assert vnet["subnets"] == [{"name": "docker", "addressPrefix": "10.20.0.0/24"}]
    ip_configuration = one(custom, NIC_T).inputs["ipConfigurations"][0]
    assert ip_configuration["subnet"]["id"] == "web-vnet-id/subnets/docker"
    assert ip_configuration["privateIPAllocationMethod"] == "Static"
    assert ip_configuration["privateIPAddress"] == "10.20.0.10"


def test_open_ports_get_docker_machines_names_and_priorities(custom):
    rules = rules_of(custom)
    assert (rules["Port8080-tcpAllowAny"]["priority"], rules["Port8080-tcpAllowAny"]["protocol"]) == (1000, "Tcp")
    assert (rules["Port53-udpAllowAny"]["priority"], rules["Port53-udpAllowAny"]["protocol"]) == (1001, "Udp")
    assert (rules["Port9000-anyAllowAny"]["priority"], rules["Port9000-anyAllowAny"]["protocol"]) == (1002, "*")
    assert rules["Port53-udpAllowAny"]["destinationPortRange"] == "53"
    assert rules["Port53-udpAllowAny"]["sourceAddressPrefix"] == "0.0.0.0/0"  # open ports keep the default


def test_engine_port_follows_the_config(custom):
    assert rules_of(custom)["DockerAllowAny"]["destinationPortRange"] == "2377"
    assert custom.outputs["machines"]["web"]["port"] == 2377


def test_allowed_cidrs_narrow_ssh_and_engine_separately(custom):
    rules = rules_of(custom)
    assert rules["SSHAllowAny"]["sourceAddressPrefix"] == "198.51.100.7/32"
    assert "sourceAddressPrefixes" not in rules["SSHAllowAny"]
    assert "sourceAddressPrefix" not in rules["DockerAllowAny"]
    assert rules["DockerAllowAny"]["sourceAddressPrefixes"] == ["203.0.113.0/24", "2001:db8::/32"]


def test_custom_data_is_base64_after_the_host_key(custom):
    custom_data = base64.b64decode(plain(one(custom, VM_T).inputs["osProfile"])["customData"]).decode()
    assert common.user_data_parts(custom_data)[1] == CUSTOM_DATA.decode()
    assert common.host_key_installed(custom_data)


@pytest.fixture(scope="module")
def existing_network(tmp_path_factory) -> Program:
    """An existing group and network (by bare name), and no public IP."""
    return scenario(tmp_path_factory, {"resource_group": "docker-machine", "vnet": "shared", "no_public_ip": True})


@pytest.fixture(scope="module")
def dns_label(tmp_path_factory) -> Program:
    """A DNS label, in a created group but on a network of another group."""
    return scenario(
        tmp_path_factory,
        {"dns_label": "mydocker", "vnet": "net:shared", "subnet": "docker"},
        overrides={PIP_T: {"ipAddress": PUBLIC_IP, "dnsSettings": {"domainNameLabel": "mydocker", "fqdn": FQDN}}},
    )


def test_existing_resource_group_and_vnet_are_used_not_created(existing_network):
    program = existing_network
    assert not program.of_type(RG_T) and not program.of_type(VNET_T)
    for r in program.resources:
        if r.typ.startswith("azure-native:"):
            assert r.inputs["resourceGroupName"] == "docker-machine", r.name
    (call,) = program.called(GET_SUBNET)
    # a bare vnet name is in the machine's group; the subnet keeps docker-machine's name
    assert call.args == {
        "resourceGroupName": "docker-machine", "virtualNetworkName": "shared", "subnetName": "docker-machine",
    }
    assert one(program, NIC_T).inputs["ipConfigurations"][0]["subnet"]["id"] == EXISTING_SUBNET


def test_existing_vnet_in_another_group(dns_label):
    assert dns_label.of_type(RG_T) and not dns_label.of_type(VNET_T)
    (call,) = dns_label.called(GET_SUBNET)
    assert call.args == {"resourceGroupName": "net", "virtualNetworkName": "shared", "subnetName": "docker"}
    assert one(dns_label, NIC_T).inputs["ipConfigurations"][0]["subnet"]["id"] == EXISTING_SUBNET


def test_dns_label_makes_the_fqdn_the_address_and_a_san(dns_label):
    assert one(dns_label, PIP_T).inputs["dnsSettings"] == {"domainNameLabel": "mydocker"}
    assert dns_label.named("web-server-cert").inputs["sans"] == [FQDN, "localhost"]
    assert connection(dns_label)["host"] == FQDN
    assert dns_label.outputs["machines"]["web"]["url"] == f"tcp://{FQDN}:2376"
    assert dns_label.named("web-docker-check").inputs["host"] == FQDN


def test_no_public_ip_dials_the_private_address(existing_network):
    assert not existing_network.of_type(PIP_T)
    assert "publicIPAddress" not in one(existing_network, NIC_T).inputs["ipConfigurations"][0]
    assert connection(existing_network)["host"] == PRIVATE_IP
    assert existing_network.named("web-server-cert").inputs["sans"] == [PRIVATE_IP, "localhost"]


def test_use_private_ip_keeps_the_public_ip_but_dials_the_private_one(custom):
    assert one(custom, PIP_T)
    assert one(custom, NIC_T).inputs["ipConfigurations"][0]["publicIPAddress"] == {"id": "web-ip-id"}
    assert connection(custom)["host"] == PRIVATE_IP
    assert custom.outputs["machines"]["web"]["ip"] == PRIVATE_IP
    assert custom.named("web-server-cert").inputs["sans"] == [PRIVATE_IP, "localhost"]


# --- config errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["root", "admin", "administrator", "Root"])
def test_root_and_reserved_admin_users_are_refused(user):
    message = error_of({"ssh_user": user})
    assert "machines[web].options.ssh_user" in message


@pytest.mark.parametrize("location", ["west-us", "West_US", "", "1westus"])
def test_unknown_location_format(location):
    assert "machines[web].options.location" in error_of({"location": location})


@pytest.mark.parametrize("image", ["canonical:UbuntuServer:16.04.0-LTS", "ubuntu", "a:b:c:d:e", "a::c:d"])
def test_image_must_be_publisher_offer_sku_version(image):
    assert "publisher:offer:sku:version" in error_of({"image": image})


def test_dynamic_public_ip_is_refused_with_the_reason():
    message = error_of({"static_public_ip": False})
    assert "Basic SKU" in message and "retired" in message


def test_dns_label_needs_a_public_ip():
    assert "cannot be combined with no_public_ip" in error_of({"dns_label": "mydocker", "no_public_ip": True})


@pytest.mark.parametrize("label", ["My-Docker", "1docker", "ab", "docker-", "a" * 64])
def test_bad_dns_label(label):
    assert "machines[web].options.dns_label" in error_of({"dns_label": label})


def test_vnet_by_name_needs_a_resource_group():
    assert "<resource-group>:<name>" in error_of({"vnet": "shared"})


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.0.1", "192.168.0.3", "192.168.255.255", "192.168.0.0"])
def test_private_ip_outside_the_subnet_or_reserved(address):
    assert "must be a usable address of subnet_prefix" in error_of({"private_ip_address": address})



@pytest.mark.parametrize(
    ("field", "value"),
    [("size", "A2"), ("size", "Basic_A1"), ("os_disk_type", "UltraSSD_LRS"), ("subnet_prefix", "192.168.0.0/30")],
)
def test_bad_values(field, value):
    assert f"machines[web].options.{field}" in error_of({field: value})


@pytest.mark.parametrize("setting", ["subscription_id", "client_id", "client_secret", "environment"])
def test_credentials_are_not_driver_options(setting):
    assert f"machines[web].options.{setting}: unknown setting" in error_of({setting: "x"})


def test_missing_existing_subnet_fails_before_the_vm():
    recorded = common.failed_run(
        common.machine_spec("azure", {"vnet": "net:shared"}),
        "subnet not found",
        Exception,
        calls={GET_SUBNET: ({}, [("subnetName", "subnet not found")])},
    )
    assert not recorded.of_type(VM_T)
