"""Typed settings of every triage process (env prefix ``TRIAGE_``, optional TOML file).

Precedence is CLI > environment > TOML file > default.  :func:`load_settings` is called once
per process by the composition root and the result is passed down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from triage.errors import ConfigError

ENV_PREFIX = "TRIAGE_"
CONFIG_FILE_ENV = "TRIAGE_CONFIG_FILE"
DEFAULT_RULES_FILE = Path(__file__).parent / "rules" / "default.yaml"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads settings from the TOML file named by ``config_file`` or ``TRIAGE_CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        # Accept both a flat file and one with a [triage] table.
        section = data.get("triage", data)
        unknown = sorted(set(section) - set(settings_cls.model_fields))
        if unknown:
            raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}")
        self._data = dict(section)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _split_list(value: object) -> object:
    """Accept ``"CT1,PACS"`` and ``'["CT1", "PACS"]'`` for list settings from the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Destination(BaseModel):
    """Where the AI result of each study goes (one outbox row per report version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="shown in logs and metrics")
    kind: Literal["dicom-sr", "hl7", "ups"] = Field(
        description="dicom-sr: SR (TID 1500) + KOS by C-STORE; hl7: ORU^R01 over MLLP; "
        "ups: our UPS workitems (Watch/Event subscribers are notified)"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    ae_title: str = Field(default="", description="dicom-sr: the PACS's AE title")
    receiving_application: str = Field(default="RIS", description="hl7: MSH-5")
    receiving_facility: str = Field(default="", description="hl7: MSH-6")
    timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=20, ge=1)
    backoff_s: float = Field(
        default=5.0, gt=0, description="first retry delay; doubles each time, at most 15 min"
    )

    @model_validator(mode="after")
    def _needs_address(self) -> Destination:
        if self.kind != "ups" and not self.port:
            raise ValueError(f"destination {self.name}: {self.kind} needs host and port")
        if self.kind == "dicom-sr" and not self.ae_title:
            raise ValueError(f"destination {self.name}: dicom-sr needs ae_title")
        return self


class Settings(BaseSettings):
    """Every tunable of the service.  Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    config_file: Path | None = Field(default=None, description="TOML file with these settings")

    # --- DICOM listener -------------------------------------------------------------------
    ae_title: str = Field(default="TRIAGE", description="our AE title")
    dicom_host: str = Field(
        default="127.0.0.1",
        description="address the DICOM listener binds; set 0.0.0.0 to receive from the network",
    )
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="calling AE titles allowed to associate; empty = accept any (logged)",
    )
    require_called_ae_title: bool = Field(
        default=False, description="reject associations whose called AE title is not ours"
    )
    max_pdu_size: int = Field(
        default=1_048_576, ge=0, description="maximum PDU length we receive (0 = unlimited)"
    )
    max_associations: int = Field(default=32, ge=1)
    network_timeout_s: float = Field(
        default=60.0, gt=0, description="silence on an open association before it is aborted"
    )
    acse_timeout_s: float = Field(
        default=30.0, gt=0, description="connection opened → A-ASSOCIATE-RQ received"
    )

    # --- storage --------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("var"), description="spool, index and redis data")
    spool_dir: Path | None = Field(default=None, description="default: <data_dir>/spool")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite (WAL) in <data_dir>"
    )
    spool_min_free_mb: int = Field(
        default=1024, ge=0, description="answer 0xA700 (out of resources) below this free space"
    )

    # --- assembly and routing -------------------------------------------------------------
    rules_file: Path = Field(
        default=DEFAULT_RULES_FILE, description="routing rules (YAML/JSON/TOML)"
    )
    stable_age_s: float = Field(
        default=10.0, gt=0, description="quiet time that completes a series"
    )
    release_grace_s: float = Field(
        default=2.0, ge=0, description="wait after the association is released"
    )
    max_series_wait_s: float = Field(
        default=900.0, gt=0, description="a series still trickling in is analysed after this"
    )
    sweep_interval_s: float = Field(default=0.5, gt=0)

    # --- queue and jobs -------------------------------------------------------------------
    broker_url: str = Field(default="redis://127.0.0.1:6379/0")
    redis_autostart: bool = Field(
        default=True,
        description="`triage up` starts a private redis-server when none answers at broker_url",
    )
    job_max_attempts: int = Field(default=3, ge=1)
    job_lease_s: float = Field(
        default=60.0, gt=0, description="a running job whose worker stops renewing is retaken"
    )
    job_republish_after_s: float = Field(
        default=300.0, gt=0, description="republish a job that no worker has started after this"
    )
    job_retry_backoff_s: float = Field(default=10.0, ge=0)
    task_soft_time_limit_s: float = Field(default=540.0, gt=0)
    task_time_limit_s: float = Field(default=600.0, gt=0)
    broker_visibility_timeout_s: float = Field(default=3600.0, gt=0)
    worker_concurrency: int = Field(default=1, ge=1)
    worker_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where detectors run; auto = the GPU when one is visible"
    )
    analysis_delay_s: float = Field(
        default=0.0, ge=0, description="diagnostics and tests only: sleep at the start of analysis"
    )

    # --- web ------------------------------------------------------------------------------
    web_host: str = Field(default="127.0.0.1")
    web_port: int = Field(default=8080, ge=0, le=65535)
    web_auth: Literal["auto", "required"] = Field(
        default="auto", description="auto: login required unless web_host is loopback"
    )
    users_file: Path | None = Field(
        default=None,
        description="users and password hashes (`triage users add`); default <data_dir>/users.toml",
    )
    session_hours: float = Field(default=12.0, gt=0, le=24 * 14)
    finding_severity: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"hemorrhage": 3, "stroke": 3, "cspine_fracture": 2},
        description="worklist rank of each detector's flag (higher first, at least 1: every "
        "flag makes the study HIGH); JSON in the env",
    )

    # --- flags back to the site ------------------------------------------------------------
    destinations: list[Destination] = Field(
        default_factory=list,
        description="SR/KOS to PACS, HL7 ORU, UPS; [[destinations]] tables in the TOML file",
    )
    ups_port: int = Field(default=11113, ge=0, le=65535, description="UPS SCP port")
    ups_subscribers: dict[str, str] = Field(
        default_factory=dict,
        description="UPS event receivers: AE title -> host:port (N-EVENT-REPORT)",
    )

    # Monitoring (drift, out-of-distribution, live performance)
    drift_reference_size: int = Field(
        default=500, ge=50,
        description="analyses per detector that form the drift reference (the first ones "
        "after installation or after the reference is reset)",
    )
    drift_window_size: int = Field(
        default=200, ge=20, description="most recent analyses compared with the reference",
    )
    drift_false_alarm_rate: float = Field(
        default=0.001, gt=0, lt=0.5,
        description="per-evaluation false-alarm probability each drift threshold is "
        "calibrated to by bootstrap on the reference (Bonferroni across tests)",
    )
    drift_bootstrap_samples: int = Field(default=1000, ge=100)
    drift_cache_s: float = Field(
        default=60.0, ge=0, description="drift statistics are recomputed at most this often",
    )
    ppv_alert_margin: float = Field(
        default=0.10, gt=0, lt=1,
        description="alert when a stratum's live PPV lower 95% bound is this far below the "
        "model card's validation PPV",
    )
    ppv_alert_reference: Literal["card", "site_prevalence"] = Field(
        default="card",
        description="what the PPV alert compares with: the model card's validation PPV, or "
        "the card's sensitivity/specificity at the prevalence this site's flag rate implies",
    )
    ppv_min_feedback: int = Field(
        default=10, ge=1, description="feedback verdicts a stratum needs before it can alert",
    )
    log_level: LogLevel = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs: Mapping[str, Any] = getattr(init_settings, "init_kwargs", {})
        path = init_kwargs.get("config_file") or os.environ.get(CONFIG_FILE_ENV) or None
        toml = _TomlFileSource(settings_cls, Path(path) if path else None)
        return (init_settings, env_settings, toml)

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _parse_ae_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return _ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_ae_list(cls, value: list[str]) -> list[str]:
        return [_ae_title(v) for v in value]

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str | None) -> str | None:
        # We ship psycopg 3; SQLAlchemy's bare "postgresql://" means psycopg2.
        if value and value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        spool = (self.spool_dir or data_dir / "spool").expanduser().resolve()
        object.__setattr__(self, "spool_dir", spool)
        if self.database_url is None:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'index.sqlite3'}")
        object.__setattr__(self, "rules_file", self.rules_file.expanduser().resolve())
        users = (self.users_file or data_dir / "users.toml").expanduser().resolve()
        object.__setattr__(self, "users_file", users)
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        if self.broker_visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "broker_visibility_timeout_s must exceed task_time_limit_s, otherwise the broker "
                "redelivers tasks that are still running"
            )
        return self

    @property
    def spool(self) -> Path:
        """The spool directory (always set after validation)."""
        if self.spool_dir is None:  # pragma: no cover - filled by _derive
            raise ConfigError("spool_dir is unset")
        return self.spool_dir

    @property
    def db_url(self) -> str:
        """The index database URL (always set after validation)."""
        if self.database_url is None:  # pragma: no cover - filled by _derive
            raise ConfigError("database_url is unset")
        return self.database_url

    def to_env(self) -> dict[str, str]:
        """These settings as ``TRIAGE_*`` variables, so child processes rebuild them exactly."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if name == "config_file" or value is None:
                continue
            key = ENV_PREFIX + name.upper()
            env[key] = json.dumps(value) if isinstance(value, list | dict) else str(value)
        return env


def _ae_title(value: str) -> str:
    text = value.strip()
    if not text or len(text) > 16 or "\\" in text or not text.isascii() or not text.isprintable():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable ASCII, no backslash)")
    return text


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once: CLI ``overrides`` > environment > TOML file > defaults.

    Raises
    ------
    ConfigError
        With the offending key names, when a value is missing or invalid.
    """
    cli = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**cli)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper() or '(settings)'}: "
            f"{err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
