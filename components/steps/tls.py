"""docker-machine's TLS material, generated with ``cryptography`` and kept in Pulumi state.

Rules of docker-machine's libmachine (docs/tls.md): RSA 2048 keys in PKCS#1 PEM; subjects carry an
Organization only; NotBefore = now truncated to the minute minus 5 minutes, NotAfter = NotBefore + 1080
days; random 128-bit serials. One CA and one client certificate per stack, one server certificate per
machine whose SANs are the address the client dials, ``localhost`` and any extra ``tls_san``.

Unlike docker-machine, certificates are renewed before they expire: a server or client certificate with
less than RENEW_BEFORE left is reissued by the next ``up`` (a CA too, which every client then fetches again).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import sys
from dataclasses import dataclass
from typing import Any

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components import outputs
from components.dynamic import DynamicResource, inputs_of

VALIDITY = datetime.timedelta(days=1080)
CLOCK_SKEW = datetime.timedelta(minutes=5)
RENEW_BEFORE = datetime.timedelta(days=30)


def now() -> datetime.datetime:
    """The time certificates are judged by (tests move it)."""
    return datetime.datetime.now(datetime.timezone.utc)


def expires(cert_pem: str) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def left(not_after: str | datetime.datetime | None) -> datetime.timedelta | None:
    """What is left until ``not_after`` (a datetime or its ISO text) when the certificate is due for renewal (less
    than RENEW_BEFORE), else None."""
    if not not_after:
        return None
    end = datetime.datetime.fromisoformat(not_after) if isinstance(not_after, str) else not_after
    remaining = end - now()
    return remaining if remaining < RENEW_BEFORE else None


def expiring(cert_pem: str | None) -> datetime.timedelta | None:
    """What is left of a certificate that is due for renewal, else None (also for no certificate at all)."""
    try:
        return left(expires(cert_pem)) if cert_pem else None
    except ValueError:
        return None


def days(left: datetime.timedelta) -> str:
    return "expired" if left.total_seconds() <= 0 else f"expires in {max(left.days, 0)} days"


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to reach a machine's daemon: the stack's CA and client certificate and key."""

    ca_cert: pulumi.Input[str]
    client_cert: pulumi.Input[str]
    client_key: pulumi.Input[str]

    def inputs(self) -> dict[str, pulumi.Input[str]]:
        """As resource inputs, the key kept a secret."""
        return {"ca_cert": self.ca_cert, "client_cert": self.client_cert,
                "client_key": pulumi.Output.secret(self.client_key)}  # fmt: skip


@dataclass(frozen=True)
class KeyPair:
    cert_pem: str
    key_pem: str


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def _builder(org: str, issuer: x509.Name | None, public_key: Any) -> x509.CertificateBuilder:
    not_before = now().replace(second=0, microsecond=0) - CLOCK_SKEW
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(public_key)
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + VALIDITY)
    )


_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
           "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip


def _usage(*granted: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{usage: usage in granted for usage in _USAGES})


def new_ca(org: str) -> KeyPair:
    key = _rsa_key()
    cert = (
        _builder(org, None, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _usage("digital_signature", "key_encipherment", "key_agreement", "key_cert_sign"), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    return cert, key  # type: ignore[return-value]


def new_client_cert(ca: KeyPair, org: str) -> KeyPair:
    ca_cert, ca_key = _load_ca(ca)
    key = _rsa_key()
    cert = (
        _builder(org, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def server_sans(address: str, extra: list[str]) -> list[str]:
    """docker-machine's SAN list: extra SANs + the machine address + localhost, without duplicates."""
    ordered = [*extra, address, "localhost"]
    return list(dict.fromkeys(s for s in ordered if s))


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def new_server_cert(ca: KeyPair, org: str, sans: list[str]) -> KeyPair:
    ca_cert, ca_key = _load_ca(ca)
    key = _rsa_key()
    cert = (
        _builder(org, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage("digital_signature", "key_encipherment", "key_agreement"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def serial_of(cert_pem: str) -> str:
    return format(x509.load_pem_x509_certificate(cert_pem.encode()).serial_number, "x")


def new_ssh_key() -> tuple[str, str]:
    """An ed25519 key pair: (OpenSSH private key PEM, authorized_keys line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


# --- dynamic resources ------------------------------------------------------------------------------
# Providers hold no state; inputs that only describe the owner (e.g. the Organization name) never cause
# regeneration: a plain `up` must keep certificates until their inputs really change.


class _AuthorityProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        org = props["owner"]
        ca = new_ca(org)
        client = new_client_cert(ca, f"{org}.<bootstrap>")
        outs = {
            **props,
            "ca_cert": ca.cert_pem,
            "ca_key": ca.key_pem,
            "client_cert": client.cert_pem,
            "client_key": client.key_pem,
            "ca_serial": serial_of(ca.cert_pem),
        }
        return CreateResult(f"ca-{outs['ca_serial']}", outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        rotate = olds.get("rotation") != news.get("rotation")
        ca_due = expiring(olds.get("ca_cert"))
        if ca_due is not None:
            print(f"warning: the stack's CA {days(ca_due)}: up issues a new one, and every client needs the new client "
                  "certificate afterwards (scripts/machine env NAME)", file=sys.stderr)  # fmt: skip
        replace = rotate or ca_due is not None
        client_due = expiring(olds.get("client_cert")) is not None
        return DiffResult(changes=replace or client_due, replaces=["rotation"] if replace else [])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """The client certificate is due: a new one from the same CA (the machines keep theirs)."""
        ca = KeyPair(olds["ca_cert"], olds["ca_key"])
        client = new_client_cert(ca, f"{news['owner']}.<bootstrap>")
        return UpdateResult({**olds, **news, "client_cert": client.cert_pem, "client_key": client.key_pem})


class CertificateAuthority(
    DynamicResource, module=outputs.CERTIFICATE_AUTHORITY.module, name=outputs.CERTIFICATE_AUTHORITY.name
):
    """The stack's CA and client certificate (docker-machine's certs/ca.pem + certs/cert.pem)."""

    SECRET_OUTPUTS = ("ca_key", "client_key")
    OUTPUTS = ("ca_cert", "ca_key", "client_cert", "client_key", "ca_serial")

    def __init__(self, name: str, owner: str, rotation: str = "", opts: pulumi.ResourceOptions | None = None):
        super().__init__(_AuthorityProvider(), name, inputs_of(locals()), opts)

    @property
    def client(self) -> ClientTls:
        return ClientTls(self.ca_cert, self.client_cert, self.client_key)


class _ServerCertProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        ca = KeyPair(props["ca_cert"], props["ca_key"])
        server = new_server_cert(ca, props["owner"], list(props["sans"]))
        outs = {**props, "cert": server.cert_pem, "key": server.key_pem, "serial": serial_of(server.cert_pem),
                "expires": expires(server.cert_pem).isoformat()}  # fmt: skip
        return CreateResult(f"server-{outs['serial']}", outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Unknown values (preview before the machine exists) compare unequal, so they show as replace.
        replaces = [k for k in ("sans", "ca_cert", "rotation") if olds.get(k) != news.get(k)]
        if not replaces and expiring(olds.get("cert")) is not None:
            replaces = ["cert"]  # due for renewal
        return DiffResult(changes=bool(replaces), replaces=replaces)


class ServerCertificate(
    DynamicResource, module=outputs.SERVER_CERTIFICATE.module, name=outputs.SERVER_CERTIFICATE.name
):
    """A machine's server certificate (docker-machine's server.pem), reissued when its SANs change or it is due."""

    SECRET_OUTPUTS = ("key",)
    OUTPUTS = ("cert", "key", "serial", "expires")

    def __init__(
        self,
        name: str,
        authority: CertificateAuthority,
        owner: str,
        sans: pulumi.Input[list[str]],
        rotation: pulumi.Input[str] = "",
        opts: pulumi.ResourceOptions | None = None,
    ):
        inputs = {"ca_cert": authority.ca_cert, "ca_key": authority.ca_key, "owner": owner, "sans": sans,
                  "rotation": rotation}  # fmt: skip
        super().__init__(_ServerCertProvider(), name, inputs, opts)


class _SshKeyProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        private, public = new_ssh_key()
        return CreateResult(f"sshkey-{secrets.token_hex(4)}", {**props, "private_key": private, "public_key": public})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=False)


class SshKey(DynamicResource, module=outputs.SSH_KEY.module, name=outputs.SSH_KEY.name):
    """An ed25519 SSH key pair: a machine's login key (docker-machine's machines/<name>/id_rsa), or its host key."""

    SECRET_OUTPUTS = ("private_key",)
    OUTPUTS = ("private_key", "public_key")

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(_SshKeyProvider(), name, {}, opts)
