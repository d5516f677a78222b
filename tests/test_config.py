"""Settings: precedence CLI > env > file > default, validation with the key name."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.config import DEFAULT_RULES_FILE, load_settings
from triage.errors import ConfigError


def test_defaults_are_safe_for_a_fresh_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.ae_title == "TRIAGE"
    assert s.dicom_port == 11112
    assert s.dicom_host == "127.0.0.1"  # off the network until the admin opens it
    assert s.web_host == "127.0.0.1"
    assert s.stable_age_s == 10
    assert s.allowed_calling_aes == []
    assert s.data_dir == tmp_path / "var"
    assert s.spool == tmp_path / "var" / "spool"
    assert s.db_url == f"sqlite:///{tmp_path / 'var' / 'index.sqlite3'}"
    assert s.rules_file == DEFAULT_RULES_FILE


def test_cli_beats_env_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "triage.toml"
    config.write_text('ae_title = "FROMFILE"\ndicom_port = 2000\nstable_age_s = 3.5\n'
                      'web_port = 9000\n')
    monkeypatch.setenv("TRIAGE_CONFIG_FILE", str(config))
    monkeypatch.setenv("TRIAGE_DICOM_PORT", "3000")
    monkeypatch.setenv("TRIAGE_WEB_PORT", "9100")
    s = load_settings(web_port=9200)
    assert s.ae_title == "FROMFILE"  # file over default
    assert s.stable_age_s == 3.5
    assert s.dicom_port == 3000  # env over file
    assert s.web_port == 9200  # CLI over env


def test_config_file_given_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "triage.toml"
    config.write_text('[triage]\nallowed_calling_aes = ["CT1", "PACS"]\n')
    s = load_settings(config_file=str(config))
    assert s.allowed_calling_aes == ["CT1", "PACS"]


def test_calling_ae_list_from_env_as_csv_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_ALLOWED_CALLING_AES", "CT1, PACS")
    assert load_settings().allowed_calling_aes == ["CT1", "PACS"]
    monkeypatch.setenv("TRIAGE_ALLOWED_CALLING_AES", '["MR1"]')
    assert load_settings().allowed_calling_aes == ["MR1"]


def test_invalid_value_names_the_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_DICOM_PORT", "seventy")
    with pytest.raises(ConfigError, match="TRIAGE_DICOM_PORT"):
        load_settings()


def test_finding_severity_is_json_and_at_least_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_FINDING_SEVERITY", '{"hemorrhage": 5, "stroke": 1}')
    assert load_settings().finding_severity == {"hemorrhage": 5, "stroke": 1}
    # 0 would leave a flagged study FLAGGED yet not HIGH: refused rather than half-honoured
    monkeypatch.setenv("TRIAGE_FINDING_SEVERITY", '{"hemorrhage": 0}')
    with pytest.raises(ConfigError, match="TRIAGE_FINDING_SEVERITY"):
        load_settings()


def test_ae_title_longer_than_16_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match="TRIAGE_AE_TITLE"):
        load_settings(ae_title="A" * 17)


def test_unknown_key_in_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "triage.toml"
    config.write_text("dicom_prot = 104\n")
    with pytest.raises(ConfigError, match="dicom_prot"):
        load_settings(config_file=str(config))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=str(tmp_path / "nope.toml"))


def test_visibility_timeout_must_exceed_the_hard_time_limit() -> None:
    with pytest.raises(ConfigError, match="visibility"):
        load_settings(task_time_limit_s=4000, task_soft_time_limit_s=3000)


def test_postgres_url_uses_the_shipped_psycopg3_driver() -> None:
    s = load_settings(database_url="postgresql://u@db/triage")
    assert s.db_url == "postgresql+psycopg://u@db/triage"


def test_to_env_round_trips_every_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(data_dir=tmp_path, allowed_calling_aes=["CT1"], dicom_port=1234,
                      stable_age_s=1.5)
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert load_settings() == s
