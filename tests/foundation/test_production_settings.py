"""Production start-up: `check --deploy` passes with the documented values, and missing secrets stop it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

pytestmark = pytest.mark.processes  # runs manage.py in subprocesses

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "0",
        "SECRET_KEY": "x" * 10 + Fernet.generate_key().decode(),
        "CREDENTIALS_KEY": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "models.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://models.example.com",
        "SECURE_SSL_REDIRECT": "1",
        "SECURE_COOKIES": "1",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
        "SECURE_HSTS_PRELOAD": "1",
        "BEHIND_TLS_PROXY": "1",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_passes_with_production_values(tmp_path: Path) -> None:
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_a_missing_secret_key_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    result = manage(env, "check")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_a_missing_credentials_key_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    del env["CREDENTIALS_KEY"]
    result = manage(env, "check")
    assert result.returncode != 0
    assert "CREDENTIALS_KEY is not set" in result.stderr


def test_a_malformed_credentials_key_is_refused(tmp_path: Path) -> None:
    result = manage(production_env(tmp_path, CREDENTIALS_KEY="not-a-key"), "check")
    assert result.returncode != 0
    assert "CREDENTIALS_KEY must be comma-separated Fernet keys" in result.stderr


def test_development_secrets_are_generated_once_and_reused(tmp_path: Path) -> None:
    env = production_env(tmp_path, DEV_SECRETS="1")
    del env["SECRET_KEY"], env["CREDENTIALS_KEY"]
    assert manage(env, "check").returncode == 0
    secret = (tmp_path / "var" / "secret_key").read_text()
    key = (tmp_path / "var" / "credentials_key").read_text()
    assert oct((tmp_path / "var" / "secret_key").stat().st_mode & 0o777) == "0o600"
    assert manage(env, "check").returncode == 0
    assert (tmp_path / "var" / "secret_key").read_text() == secret
    assert (tmp_path / "var" / "credentials_key").read_text() == key
