"""The `tls` settings and the start-up check of their files (backend/tls.py), with real
certificates made by the test: each mistake is refused with the setting and the file named."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml

from support.certificates import Certificates, make_pki
from zarf_vllm.backend.config import ConfigError, TLSSettings, load_settings
from zarf_vllm.backend.tls import load_tls, uvicorn_options


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BACKEND_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings_with(tmp_path: Path, tls: dict) -> TLSSettings:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "/m"}, "tls": tls}))
    return load_settings(path).tls


def test_off_by_default(tmp_path: Path) -> None:
    tls = settings_with(tmp_path, {})
    assert not tls.enabled and load_tls(tls) is None and uvicorn_options(None) == {}


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"cert_file": "/c"}, "cert_file and key_file go together"),
        ({"key_file": "/k"}, "cert_file and key_file go together"),
        (
            {"cert_file": "/c", "key_file": "/k", "require_client_cert": True},
            "needs client_ca_file",
        ),
        ({"cert_file": "/c", "key_file": "/k", "client_ca_file": "/ca"}, "only used with require"),
        ({"client_ca_file": "/ca", "require_client_cert": True}, "needs cert_file and key_file"),
        ({"health_port": 50052}, "health_port is only for TLS"),
        ({"cert_file": "/c", "key_file": "/k", "health_port": 70000}, "tls.health_port"),
        ({"cert": "/c"}, "tls.cert: unknown setting"),
    ],
)
def test_inconsistent_settings_are_refused(tmp_path: Path, tls: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        settings_with(tmp_path, tls)
    assert "tls" in str(caught.value)


def test_the_environment_sets_tls(tmp_path: Path, monkeypatch, pki: Certificates) -> None:
    monkeypatch.setenv("BACKEND_TLS__CERT_FILE", str(pki.server.cert))
    monkeypatch.setenv("BACKEND_TLS__KEY_FILE", str(pki.server.key))
    files = load_tls(settings_with(tmp_path, {}))
    assert files is not None and not files.require_client_cert
    assert files.cert_chain == pki.server.cert.read_bytes()
    assert uvicorn_options(files) == {
        "ssl_certfile": str(pki.server.cert),
        "ssl_keyfile": str(pki.server.key),
    }


def test_mutual_tls_reads_the_client_ca(tmp_path: Path, pki: Certificates) -> None:
    tls = settings_with(
        tmp_path,
        {
            "cert_file": str(pki.server.cert),
            "key_file": str(pki.server.key),
            "client_ca_file": str(pki.ca),
            "require_client_cert": True,
        },
    )
    files = load_tls(tls)
    assert files is not None and files.require_client_cert
    assert files.client_ca == pki.ca.read_bytes()
    options = uvicorn_options(files)
    assert options["ssl_ca_certs"] == str(pki.ca) and options["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def _files(pki: Certificates, **paths: Path) -> TLSSettings:
    chosen = {"cert_file": pki.server.cert, "key_file": pki.server.key, **paths}
    if "client_ca_file" in chosen:
        chosen["require_client_cert"] = True  # type: ignore[assignment]
    return TLSSettings(**chosen)


def test_missing_files_are_named(tmp_path: Path, pki: Certificates) -> None:
    missing = tmp_path / "absent.crt"
    for setting in ("cert_file", "key_file", "client_ca_file"):
        with pytest.raises(ConfigError) as caught:
            load_tls(_files(pki, **{setting: missing}))
        assert str(caught.value).startswith(f"tls.{setting} {missing} does not exist")


def test_files_that_are_not_pem_are_named(tmp_path: Path, pki: Certificates) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"tls.cert_file {garbage} holds no PEM certificate"):
        load_tls(_files(pki, cert_file=garbage))
    # A key where the certificate should be is no certificate either.
    with pytest.raises(ConfigError, match=r"tls.cert_file .* holds no PEM certificate"):
        load_tls(_files(pki, cert_file=pki.server.key))
    with pytest.raises(ConfigError, match=f"tls.client_ca_file {garbage} holds no PEM"):
        load_tls(_files(pki, client_ca_file=garbage))
    with pytest.raises(ConfigError, match=f"tls.key_file {garbage} is not an unencrypted PEM"):
        load_tls(_files(pki, key_file=garbage))


def test_a_key_of_another_certificate_is_refused(pki: Certificates) -> None:
    with pytest.raises(
        ConfigError, match=r"tls.key_file .*client.key is not .* of the certificate"
    ):
        load_tls(_files(pki, key_file=pki.client.key))


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path, pki: Certificates) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_tls(_files(pki, key_file=encrypted))
