"""``mailrepl certs init``: a private CA and the certificates of a mutual-TLS gateway link.

::

    mailrepl certs init --dir DIR [--source ID ...] [--recovery-host NAME ...] [--source-host NAME ...]

writes into DIR (keys 0600, never overwritten)::

    ca.pem, ca.key                      the CA (keep ca.key offline once the certificates are made)
    recovery.pem, recovery.key          the recovery gateway's server certificate (SANs: the
                                        --recovery-host names, localhost, 127.0.0.1, ::1)
    source-server.pem, source-server.key  the source gateway's admin API certificate
    source-<ID>.pem, source-<ID>.key    one client certificate per source id (subject CN = ID)

and prints the config lines to paste. Server certificates may also authenticate as clients
(``mailrepl cutover --config recovery.toml`` presents the recovery gateway's own certificate to
its mutual-TLS admin API). Rotation: a new certificate signed by the same CA is dropped in place
of the old files and the gateway loads it on the next connection; see README "Security".
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path

from mailrepl.shared.errors import ConfigError

__all__ = ["add_certs_parser", "init_certificates"]

CA_DAYS = 3650
LEAF_DAYS = 825


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def _save(directory: Path, stem: str, cert, key) -> None:
    from cryptography.hazmat.primitives import serialization

    _write(directory / f"{stem}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), 0o600)
    _write(directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailrepl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(cn: str, ca_cert, ca_key, *, hosts: list[str] | None, client: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if hosts:
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _ca():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("mailrepl CA")).issuer_name(_name("mailrepl CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _load_ca(directory: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    return cert, key


def init_certificates(directory: Path, *, sources: list[str], recovery_hosts: list[str],
                      source_hosts: list[str]) -> list[str]:
    """Make the CA (or reuse ``ca.pem``/``ca.key`` in ``directory``) and the missing certificates;
    the names of the files written. An existing certificate is never overwritten."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[str] = []
    if (directory / "ca.pem").exists() and (directory / "ca.key").exists():
        ca_cert, ca_key = _load_ca(directory)
    else:
        ca_cert, ca_key = _ca()
        _save(directory, "ca", ca_cert, ca_key)
        written.append("ca")
    local = ["localhost", "127.0.0.1", "::1"]
    plan = [("recovery", "mailrepl recovery gateway", recovery_hosts + local, False),
            ("source-server", "mailrepl source gateway", source_hosts + local, False)]
    plan += [(f"source-{sid}", sid, None, True) for sid in sources]
    for stem, cn, hosts, client in plan:
        if (directory / f"{stem}.pem").exists():
            continue
        cert, key = _issue(cn, ca_cert, ca_key, hosts=hosts, client=client)
        _save(directory, stem, cert, key)
        written.append(stem)
    return written


def _config_lines(directory: Path, sources: list[str]) -> str:
    d = directory.resolve()
    lines = ["# recovery.toml", "[gateway]", f'tls_cert = "{d}/recovery.pem"', f'tls_key = "{d}/recovery.key"',
             f'tls_client_ca = "{d}/ca.pem"']
    for sid in sources:
        lines += ["", "[[sources]]", f'id = "{sid}"', f'certificate_cn = "{sid}"', 'servers = ["primary"]']
    for sid in sources:
        lines += ["", f"# source.toml of source {sid}", "[gateway]", f'id = "{sid}"',
                  f'tls_cert = "{d}/source-server.pem"', f'tls_key = "{d}/source-server.key"', "", "[peer]",
                  'url = "https://RECOVERY-HOST:8471"', f'ca_file = "{d}/ca.pem"',
                  f'client_cert = "{d}/source-{sid}.pem"', f'client_key = "{d}/source-{sid}.key"']
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    for sid in args.source:
        if not sid or "/" in sid or sid.startswith("."):
            raise ConfigError(f"--source: expected a source gateway id, got {sid!r}")
    try:
        written = init_certificates(args.dir, sources=args.source, recovery_hosts=args.recovery_host,
                                    source_hosts=args.source_host)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--dir: cannot make certificates in {args.dir}: {exc}") from None
    print(f"wrote {', '.join(written) if written else 'nothing (every certificate exists)'} in {args.dir}")
    print(_config_lines(args.dir, args.source))
    return 0


def add_certs_parser(sub) -> None:
    p = sub.add_parser("certs", help="make the CA and certificates of a mutual-TLS gateway link")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("init", help="a CA, the gateways' server certificates and one client certificate per source")
    a.add_argument("--dir", type=Path, required=True, help="where the files go (created 0700)")
    a.add_argument("--source", action="append", default=[], metavar="ID", help="a source gateway id (repeatable)")
    a.add_argument("--recovery-host", action="append", default=[], metavar="NAME",
                   help="a DNS name or IP address of the recovery gateway (repeatable)")
    a.add_argument("--source-host", action="append", default=[], metavar="NAME",
                   help="a DNS name or IP address of the source gateway's admin API (repeatable)")
    a.set_defaults(handler=_run)
