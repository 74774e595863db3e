"""The cluster CA and the certificates it issues, as files in one directory.

Layout of a PKI directory (the local stack's is .pinet/pki):

    ca.crt ca.key                the cluster CA (ca.key never leaves it)
    <stem>.crt <stem>.key        one pair per identity (identity.file_stem)

Keys are ECDSA P-256: every TLS stack in use (grpc's BoringSSL, etcd's Go,
Node's OpenSSL) speaks it, and its handshakes cost a fraction of RSA's.
Every file is replaced by rename, key first, so a service that reloads its
files sees either the old pair or the new one; a reader that catches the
new key beside the old certificate (pair_matches) waits for the next look.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pinet.pki.identity import Identity, IdentityError

CA_STEM = "ca"
CA_DAYS = 3650
CERT_DAYS = 365
#: ensure() renews a certificate this close to its expiry.
RENEW_WITHIN = datetime.timedelta(days=30)
_CLOCK_SKEW = datetime.timedelta(minutes=5)


class PkiError(Exception):
    pass


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def write_pair(directory: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / f"{stem}.key", key_pem, 0o600)
    _write_atomically(directory / f"{stem}.crt", cert_pem, 0o644)


def pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the key is the certificate's own (false while a rotation is
    half written, or for files that are not PEM at all)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a service's ECDSA key signs handshakes and
    agrees keys."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=not ca, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertificateInfo:
    identity: Identity | None
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    @property
    def expired(self) -> bool:
        return self.not_after <= _utcnow()


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    cert = x509.load_pem_x509_certificate(cert_pem)
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(common[0].value) if common else cert.subject.rfc4514_string()
    identity: Identity | None
    try:
        identity = Identity.parse(subject)
    except IdentityError:
        identity = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return CertificateInfo(
        identity, subject, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number, dns, ips
    )


class Authority:
    """A CA that can issue certificates (it holds its private key)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def generate(cls, name: str = "pinet cluster CA", days: int = CA_DAYS) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> Authority:
        cert_path, key_path = directory / f"{CA_STEM}.crt", directory / f"{CA_STEM}.key"
        if not key_path.exists():
            raise PkiError(f"no CA key at {key_path}: only the directory holding the CA can issue certificates")
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path} is not an ECDSA key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        write_pair(directory, CA_STEM, self.cert_pem, _key_pem(self.key))

    def issue(
        self,
        identity: Identity,
        days: int = CERT_DAYS,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        not_before: datetime.datetime | None = None,
    ) -> Issued:
        """A certificate for identity, good as a TLS server and client.
        Besides the identity's own names it is valid for localhost and
        127.0.0.1 (the local stack) and the given extra names."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _utcnow() - _CLOCK_SKEW
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        for dns in dict.fromkeys([identity.dns_name, "localhost", *dns_names]):
            names.append(x509.DNSName(dns))
        for ip in dict.fromkeys(["127.0.0.1", *ip_addresses]):
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issued_this(self, cert_pem: bytes) -> bool:
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issue_into(self, directory: Path, identity: Identity, **kwargs: object) -> Issued:
        issued = self.issue(identity, **kwargs)  # type: ignore[arg-type]
        write_pair(directory, identity.file_stem, issued.cert_pem, issued.key_pem)
        return issued


def open_or_create(directory: Path) -> tuple[Authority, bool]:
    """The directory's CA, made first if there is none. Returns (ca, created)."""
    if (directory / f"{CA_STEM}.crt").exists():
        return Authority.load(directory), False
    directory.mkdir(parents=True, exist_ok=True)
    # Readable: the CA certificate is for every client; each key file is 0600.
    os.chmod(directory, 0o755)
    ca = Authority.generate()
    ca.save(directory)
    return ca, True


def ensure(
    directory: Path,
    identities: Iterable[Identity],
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    rotate: bool = False,
) -> list[Identity]:
    """Make sure every identity has a current certificate from the
    directory's CA (created when missing): issue the missing ones, the ones
    the CA did not sign, the unreadable ones, those within RENEW_WITHIN of
    expiry, and every one if rotate. Returns the identities issued."""
    ca, _ = open_or_create(directory)
    extra_dns, extra_ips = tuple(dns_names), tuple(ip_addresses)
    issued = []
    for identity in identities:
        if rotate or _needs_certificate(ca, directory, identity):
            ca.issue_into(directory, identity, dns_names=extra_dns, ip_addresses=extra_ips)
            issued.append(identity)
    return issued


def _needs_certificate(ca: Authority, directory: Path, identity: Identity) -> bool:
    cert_path, key_path = directory / f"{identity.file_stem}.crt", directory / f"{identity.file_stem}.key"
    if not cert_path.exists() or not key_path.exists():
        return True
    cert_pem = cert_path.read_bytes()
    if not pair_matches(cert_pem, key_path.read_bytes()) or not ca.issued_this(cert_pem):
        return True
    return certificate_info(cert_pem).not_after - _utcnow() < RENEW_WITHIN
