"""TLS helpers: certificate checks, gRPC server credentials, Ray Serve http_options, and a
self-signed certificate generator for tests and local development.

    cert, key = self_signed_cert(Path("tls"), hostnames=["localhost", "127.0.0.1"])
    http_options.update(tls_http_options(settings.security))   # ssl_certfile / ssl_keyfile for Ray's proxy
    creds = grpc_server_credentials(settings.security)          # None when TLS is off
    local_url(settings)   # https://127.0.0.1:8000 for host=0.0.0.0: where a client on this machine connects
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from training.artifact.errors import ConfigError

WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def tls_paths(security) -> tuple[Path, Path] | None:
    """(cert, key) when TLS is configured; both or neither must be given and readable."""
    cert, key = security.tls_certfile, security.tls_keyfile
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both security.tls_certfile and security.tls_keyfile",
                          "set both paths, or neither for plain HTTP/gRPC")
    for path in (cert, key):
        if not Path(path).is_file():
            raise ConfigError(f"TLS file {path} does not exist", "mount the certificate and key (e.g. a Kubernetes TLS Secret)")
    return Path(cert), Path(key)


def tls_http_options(security) -> dict[str, str]:
    paths = tls_paths(security)
    return {} if paths is None else {"ssl_certfile": str(paths[0]), "ssl_keyfile": str(paths[1])}


def base_url(settings) -> str:
    """The app's URL as configured: https when TLS is configured."""
    return _url(settings, settings.host)


def local_url(settings) -> str:
    """`base_url` as a client on this machine reaches it: a wildcard bind (0.0.0.0, ::) through loopback."""
    host = WILDCARD_TO_LOOPBACK.get(settings.host, settings.host)
    return _url(settings, f"[{host}]" if ":" in host and not host.startswith("[") else host)


def _url(settings, host: str) -> str:
    return f"{'https' if tls_paths(settings.security) else 'http'}://{host}:{settings.port}"


def grpc_server_credentials(security):
    paths = tls_paths(security)
    if paths is None:
        return None
    import grpc

    return grpc.ssl_server_credentials([(paths[1].read_bytes(), paths[0].read_bytes())])


def self_signed_cert(directory: Path, hostnames: list[str] = ("localhost", "127.0.0.1"),
                     days: int = 30) -> tuple[Path, Path]:
    """Write `cert.pem` and `key.pem` (EC P-256, SANs = hostnames) into `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    sans = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
