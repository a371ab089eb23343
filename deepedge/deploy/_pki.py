"""The cluster's CA, the broker's server certificate and, for mutual TLS, one client
certificate per user (ECDSA P-256, with the ``cryptography`` package).

An existing CA is always reused (replacing it would cut off every board that trusts it: to
start over, remove ``ca/`` yourself). An existing certificate is kept when it still fits (same
names, issued by this CA, not expired); ``force`` issues new ones, and one that no longer fits
is refused without it."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deepedge.deploy._files import Layout, Written, write_file
from deepedge.deploy._spec import DeployError, DeploySpec

__all__ = ["write_certs"]

_ORG = "deepedge"


def write_certs(spec: DeploySpec, out: Path, *, force: bool = False) -> list[Written]:
    """Create (or reuse) the CA, the server certificate for ``spec.broker_hosts`` and, with
    ``spec.client_certs``, a client certificate per user; copy ``ca.crt`` to the broker's and
    every client's folder."""
    hosts = spec.broker_hosts
    spec.require_hosts("certificates")
    layout = Layout(out)
    done: list[Written] = []
    ca = _CA.load_or_create(spec, layout, done)
    write_file(layout.broker / "ca.crt", _cert_pem(ca.cert), 0o644)
    done.append(Written(layout.broker / "ca.crt", "CA certificate, for the broker", "written"))
    _leaf(
        ca,
        layout.broker / "server.crt",
        layout.broker / "server.key",
        cn=hosts[0],
        sans=hosts,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=spec.cert_days,
        force=force,
        what="broker's server",
        done=done,
    )
    for user in spec.users:
        folder = layout.client(user)
        write_file(folder / "ca.crt", _cert_pem(ca.cert), 0o644)
        done.append(Written(folder / "ca.crt", f"CA certificate, for the {spec.label(user)}", "written"))
        if spec.client_certs:
            _leaf(
                ca,
                folder / "client.crt",
                folder / "client.key",
                cn=user,
                sans=(),
                usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                days=spec.cert_days,
                force=force,
                what=f"{spec.label(user)}'s client",
                done=done,
            )
    return done


class _CA:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None, path: Path) -> None:
        self.cert = cert
        self._key = key
        self._path = path

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            raise DeployError(
                f"the CA key {self._path} is not there (kept offline?): put it back to issue certificates"
            )
        return self._key

    @classmethod
    def load_or_create(cls, spec: DeploySpec, layout: Layout, done: list[Written]) -> _CA:
        crt, key_path = layout.ca_cert, layout.ca_key
        if crt.exists():
            cert = _load_cert(crt)
            key = _load_key(key_path) if key_path.exists() else None
            if key is not None and key.public_key().public_numbers() != _ec_public(cert).public_numbers():
                raise DeployError(f"the CA key {key_path} does not belong to {crt}")
            done.append(Written(crt, "CA certificate (reused; remove ca/ to start a new CA)", "kept"))
            return cls(cert, key, key_path)
        if key_path.exists():
            raise DeployError(f"{key_path} exists without {crt}: restore the CA certificate or remove the key")
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"deepedge {spec.cluster} CA")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=spec.ca_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_file(key_path, _key_pem(key), 0o600)
        write_file(crt, _cert_pem(cert), 0o644)
        done.append(Written(key_path, "CA private key: keep it off the broker and the boards", "created"))
        done.append(Written(crt, "CA certificate", "created"))
        return cls(cert, key, key_path)


def _leaf(
    ca: _CA,
    crt: Path,
    key_path: Path,
    *,
    cn: str,
    sans: tuple[str, ...],
    usage: x509.ObjectIdentifier,
    days: int,
    force: bool,
    what: str,
    done: list[Written],
) -> None:
    action: str = "created"
    if crt.exists() != key_path.exists() and not force:
        there, missing = (crt, key_path) if crt.exists() else (key_path, crt)
        raise DeployError(f"{there} exists without {missing}: remove it, or pass --force to issue a new pair")
    if crt.exists() and key_path.exists() and not force:
        misfit = _misfit(_load_cert(crt), ca.cert, cn, sans)
        if misfit is None:
            done.append(Written(crt, f"{what} certificate", "kept"))
            return
        raise DeployError(f"{crt} {misfit}: pass --force to issue a new one")
    if crt.exists() or key_path.exists():
        action = "replaced"
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca.cert)),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in sans]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    write_file(key_path, _key_pem(key), 0o600)
    write_file(crt, _cert_pem(cert), 0o644)
    done.append(Written(key_path, f"{what} private key", "created" if action == "created" else "replaced"))
    done.append(Written(crt, f"{what} certificate", "created" if action == "created" else "replaced"))


def _misfit(cert: x509.Certificate, ca: x509.Certificate, cn: str, sans: tuple[str, ...]) -> str | None:
    """Why an existing certificate does not fit any more, or None."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "was not issued by this CA"
    if cert.not_valid_after_utc <= _now():
        return "has expired"
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [cn]:
        return f"is for {names}, not {cn!r}"
    if sans:
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return "has no subject alternative names"
        have = set(ext.get_values_for_type(x509.DNSName)) | {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
        want = {str(_san(h).value) for h in sans}
        if have != want:
            return f"names {sorted(have)}, not {sorted(want)}"
    return None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeployError("the CA certificate does not hold an EC key (not made by deepedge deploy)")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read certificate {path}: {exc}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DeployError(f"cannot read private key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{path} is not an EC private key (not made by deepedge deploy)")
    return key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
