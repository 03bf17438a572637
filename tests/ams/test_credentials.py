"""The local stack's secrets: made once, private, and what every component's settings connect with."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ams import credentials
from ams.settings import Settings


def test_each_principal_gets_its_own_private_password_once(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    credentials.ensure(folder)
    first = {principal: credentials.password(folder, principal) for principal in credentials.PRINCIPALS}
    credentials.ensure(folder)
    assert first == {principal: credentials.password(folder, principal) for principal in credentials.PRINCIPALS}
    assert len(set(first.values())) == len(credentials.PRINCIPALS)
    assert all(password and len(password) >= 32 for password in first.values())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()} == {0o600}


def test_no_password_before_the_secrets_are_made(tmp_path: Path) -> None:
    assert credentials.password(tmp_path, credentials.GATEWAY) is None


def test_settings_connect_as_their_principal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP", "REDIS_URL", "POSTGRES_DSN", "KAFKA_PASSWORD"):
        monkeypatch.delenv(f"AMS_{name}", raising=False)
    monkeypatch.setenv("AMS_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("AMS_PRINCIPAL", credentials.GATEWAY)
    settings = Settings()
    password = credentials.password(tmp_path, credentials.GATEWAY)
    assert settings.kafka.client_options()["sasl_plain_username"] == credentials.GATEWAY
    assert settings.kafka.client_options()["sasl_plain_password"] == password
    assert settings.kafka.client_options()["security_protocol"] == "SASL_PLAINTEXT"
    assert settings.redis_url.startswith(f"redis://gateway:{password}@")
    assert settings.postgres_dsn.startswith(f"postgresql://ams_gateway:{password}@")
    assert settings.postgres_dsn.endswith("sslmode=require")


def test_explicit_services_take_no_local_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMS_SECRETS_DIR", str(tmp_path / "unused"))
    monkeypatch.setenv("AMS_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.delenv("AMS_KAFKA_PASSWORD", raising=False)
    settings = Settings()
    assert settings.kafka.client_options() == {"bootstrap_servers": "kafka:9092", "security_protocol": "PLAINTEXT"}
    assert not (tmp_path / "unused").exists()


def test_an_unknown_principal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMS_PRINCIPAL", "root")
    with pytest.raises(SystemExit, match="AMS_PRINCIPAL"):
        Settings()
