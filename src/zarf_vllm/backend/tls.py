"""TLS for the gRPC and OpenAI ports, from the settings' `tls` section (docs/tls.md).

The files are read and checked once, at start-up, with Python's own `ssl` module (the one
uvicorn serves HTTP with), so a missing file, a file that is not PEM or a key that does not
belong to the certificate stops the process with a line naming that file, instead of an
opaque failure deep inside gRPC's C core at the first handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from zarf_vllm.backend.config import ConfigError, TLSSettings


@dataclass(frozen=True)
class TLSFiles:
    """The checked files and their contents: what both ports serve with."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    @property
    def require_client_cert(self) -> bool:
        # config.py admits a client CA only together with require_client_cert.
        return self.client_ca_file is not None


def load_tls(settings: TLSSettings) -> TLSFiles | None:
    """The TLS files named by the settings, checked; None when TLS is off.

    Raises ConfigError naming the setting and the file that is wrong.
    """
    if settings.cert_file is None or settings.key_file is None:
        return None
    cert = _read("tls.cert_file", settings.cert_file)
    key = _read("tls.key_file", settings.key_file)
    ca = (
        None
        if settings.client_ca_file is None
        else _read("tls.client_ca_file", settings.client_ca_file)
    )
    _check_certificates("tls.cert_file", settings.cert_file)
    if settings.client_ca_file is not None:
        _check_certificates("tls.client_ca_file", settings.client_ca_file)
    _check_key_pair(settings.cert_file, settings.key_file)
    return TLSFiles(settings.cert_file, settings.key_file, settings.client_ca_file, cert, key, ca)


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{setting} {path} does not exist: mount the certificate Secret there, "
            "or unset tls.cert_file and tls.key_file to serve without TLS"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{setting} {path} cannot be read: {exc.strerror}") from exc


def _check_certificates(setting: str, path: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{setting} {path} holds no PEM certificate ({exc.reason or exc}): give the "
            "PEM file (tls.crt or ca.crt of a kubernetes.io/tls Secret)"
        ) from exc


def _check_key_pair(cert_file: Path, key_file: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; the empty password
        # turns that into the error below instead.
        context.load_cert_chain(str(cert_file), str(key_file), password=lambda: "")
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.key_file {key_file} is not an unencrypted PEM private key of the certificate "
            f"in tls.cert_file {cert_file} ({exc.reason or exc})"
        ) from exc


def grpc_credentials(files: TLSFiles) -> grpc.ServerCredentials:
    """TLS only; with a client CA, a client without a certificate it signed is refused."""
    return grpc.ssl_server_credentials(
        [(files.private_key, files.cert_chain)],
        root_certificates=files.client_ca,
        require_client_auth=files.require_client_cert,
    )


def uvicorn_options(files: TLSFiles | None) -> dict[str, Any]:
    """uvicorn.Config's TLS arguments: the same files and the same client rule as gRPC."""
    if files is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(files.cert_file),
        "ssl_keyfile": str(files.key_file),
    }
    if files.client_ca_file is not None:
        options["ssl_ca_certs"] = str(files.client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
