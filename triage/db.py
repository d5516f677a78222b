"""Index database: table definitions, engine set-up (SQLite WAL or PostgreSQL) and transactions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from triage.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

metadata = sa.MetaData()

# One row per stored SOP instance; owned by triage.store.
instances = sa.Table(
    "instances",
    metadata,
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("series_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("study_instance_uid", sa.String(64), nullable=False),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
    sa.Column("instance_number", sa.Integer),
    sa.Column("path", sa.String(512), nullable=False),  # relative to the spool directory
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("calling_ae", sa.String(16)),
)

# One row per study; created by triage.store, read by triage.worklist.
studies = sa.Table(
    "studies",
    metadata,
    sa.Column("study_instance_uid", sa.String(64), primary_key=True),
    sa.Column("patient_name", sa.String(324)),
    sa.Column("patient_id", sa.String(64)),
    sa.Column("patient_birth_date", sa.String(8)),
    sa.Column("patient_sex", sa.String(16)),
    sa.Column("accession_number", sa.String(16)),
    sa.Column("study_date", sa.String(8)),
    sa.Column("study_time", sa.String(16)),
    sa.Column("study_description", sa.String(64)),
    sa.Column("request_priority", sa.String(16)),
    sa.Column("calling_ae", sa.String(16)),
    sa.Column("first_received_at", sa.Float, nullable=False),
)

# Assembly state of each series; written by triage.store (receipt) and triage.assembly (ready).
series = sa.Table(
    "series",
    metadata,
    sa.Column("series_instance_uid", sa.String(64), primary_key=True),
    sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("modality", sa.String(16)),
    sa.Column("series_number", sa.Integer),
    sa.Column("body_part_examined", sa.String(64)),
    sa.Column("study_description", sa.String(64)),
    sa.Column("series_description", sa.String(64)),
    sa.Column("image_type", sa.String(256)),  # values joined with "\"
    sa.Column("slice_thickness", sa.Float),
    sa.Column("contrast_agent", sa.String(64)),
    sa.Column("sop_class_uid", sa.String(64)),
    sa.Column("request_priority", sa.String(16)),
    sa.Column("expected_count", sa.Integer),
    sa.Column("instance_count", sa.Integer, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("first_received_at", sa.Float, nullable=False),  # of the current revision
    sa.Column("last_received_at", sa.Float, nullable=False),
    sa.Column("last_association_id", sa.String(64)),
    sa.Column("association_released_at", sa.Float),
    sa.Column("ready_at", sa.Float),
    sa.Column("ready_trigger", sa.String(16)),
    sa.Column("not_analysed_reason", sa.String(512)),
    sa.Index("ix_series_state_last", "state", "last_received_at"),
)

# Outbox and ledger of analysis jobs; owned by triage.jobs.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("job_key", sa.String(160), nullable=False, unique=True),  # series UID + revision
    sa.Column("series_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("study_instance_uid", sa.String(64), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("detectors", sa.JSON, nullable=False),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("queue", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("publish_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),
    sa.Column("published_at", sa.Float),
    sa.Column("started_at", sa.Float),
    sa.Column("lease_until", sa.Float),
    sa.Column("owner", sa.String(128)),
    sa.Column("finished_at", sa.Float),
    sa.Column("error", sa.String(1024)),
    sa.Column("result", sa.JSON),
    sa.Index("ix_jobs_state", "state", "not_before"),
)

# A study marked reported on the worklist page (owned by triage.worklist).  A UPS performer's
# COMPLETED (ups_workitems.state) counts the same; reported studies sort below open ones.
study_reads = sa.Table(
    "study_reads",
    metadata,
    sa.Column("study_instance_uid", sa.String(64), primary_key=True),
    sa.Column("reported_by", sa.String(64), nullable=False),
    sa.Column("reported_at", sa.Float, nullable=False),
)

# Versions of each study's AI result as sent to the site; owned by triage.reports.
# (study, version) is the compare-and-set key: a version is written once.
study_reports = sa.Table(
    "study_reports",
    metadata,
    sa.Column("study_instance_uid", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # FINAL / CORRECTED / RETRACTED
    sa.Column("priority", sa.String(8), nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),  # what changed between versions
    sa.Column("findings", sa.JSON, nullable=False),  # snapshot sent to the destinations
    sa.Column("reason", sa.String(512)),
    sa.Column("created_at", sa.Float, nullable=False),
)

# One row per (report version, destination): the outbox of the flags back to the site.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("delivery_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_instance_uid", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # PENDING / SENDING / SENT / DEAD
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("last_error", sa.String(1024)),
    sa.Column("sent_at", sa.Float),
    sa.Column("receipt", sa.JSON(none_as_null=True)),  # what was sent (e.g. the SR UIDs)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("study_instance_uid", "version", "destination"),
    sa.Index("ix_deliveries_due", "destination", "state", "next_attempt_at"),
)

# Radiologists' verdicts on AI findings; owned by triage.feedback.  Never deleted.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("feedback_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("ai_flagged", sa.Boolean, nullable=False),
    sa.Column("ai_probability", sa.Float, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),  # agree / disagree / unsure
    sa.Column("comment", sa.String(2000)),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# --- UPS (triage.outputs.ups) ---------------------------------------------------------------
# One DICOM UPS workitem per analysed study; owned by triage.outputs.ups_store.
ups_workitems = sa.Table(
    "ups_workitems",
    metadata,
    sa.Column("workitem_uid", sa.String(64), primary_key=True),  # the UPS SOP Instance UID
    sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),  # SCHEDULED, IN PROGRESS, CANCELED, ...
    sa.Column("priority", sa.String(8), nullable=False),  # HIGH, MEDIUM, LOW
    sa.Column("transaction_uid", sa.String(64)),  # the performer's lock; never sent out
    sa.Column("report_version", sa.Integer, nullable=False),  # newest StudyReport applied
    sa.Column("revision", sa.Integer, nullable=False),  # compare-and-set counter
    sa.Column("dataset", sa.JSON, nullable=False),  # pydicom Dataset.to_json_dict()
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_ups_workitems_state_priority", "state", "priority"),
)

# Who receives UPS N-EVENT-REPORTs: one row per AE and workitem, or per AE and the
# well-known global UID 1.2.840.10008.5.1.4.34.5 (a global subscription).
ups_subscriptions = sa.Table(
    "ups_subscriptions",
    metadata,
    sa.Column("ae_title", sa.String(16), primary_key=True),
    sa.Column("workitem_uid", sa.String(64), primary_key=True),
    sa.Column("deletion_lock", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_ups_subscriptions_workitem", "workitem_uid"),
)

# Outbox of UPS N-EVENT-REPORTs: written by triage.outputs.ups_store in the transaction of
# the change that causes them, delivered in ``id`` order per AE by triage.outputs.ups.
# A row is pending while ``delivered_at`` and ``gave_up_at`` are both NULL.  (Added without
# a schema version change: ``create_schema`` creates it in an existing database.)
ups_events = sa.Table(
    "ups_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ae_title", sa.String(16), nullable=False),  # the subscriber
    sa.Column("workitem_uid", sa.String(64), nullable=False),
    sa.Column("event_type", sa.Integer, nullable=False),  # UPS Event Type ID (1-5)
    sa.Column("info", sa.Text, nullable=False),  # Event Information: pydicom Dataset.to_json()
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),  # failed delivery attempts
    sa.Column("last_error", sa.String(256)),  # short, never patient data
    sa.Column("delivered_at", sa.Float),  # answered by the subscriber
    sa.Column("gave_up_at", sa.Float),  # dropped after event_max_attempts, or no address
    sa.Index("ix_ups_events_pending", "ae_title", "delivered_at", "id"),
)
# --- end of UPS -----------------------------------------------------------------------------

# One row per detector run on a series revision: the monitoring record (no PHI).
# Written by workers.pipeline when a job completes; read by triage.drift, triage.performance
# and triage.metrics.  ``outcome``: analysed / ood (AI not applicable) / not_eligible.
analyses = sa.Table(
    "analyses",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("detector", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("analysed_at", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("probability", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("flagged", sa.Boolean),
    sa.Column("ood_score", sa.Float),  # 1.0 = the calibrated threshold
    sa.Column("inputs", sa.JSON, nullable=False),  # models.inputs.describe_inputs()
    sa.Column("features", sa.JSON),  # the detector's feature vector
    sa.Column("timings", sa.JSON),  # seconds: load, inference, ...
    sa.Index("ix_analyses_detector_time", "detector", "analysed_at"),
)

# Report-derived (follow-up) labels per study and detector; owned by triage.performance.
# Never deleted: the newest row of a (study, detector) is the label in force.
labels = sa.Table(
    "labels",
    metadata,
    sa.Column("label_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("positive", sa.Boolean, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),  # e.g. "report", "csv:<file name>"
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# The detectors the workers have loaded, as their model cards describe them; upserted by
# workers.pipeline when a worker process loads a detector; read by metrics and performance.
# ``info``: version, threshold, weights_sha256, validation {auc, sensitivity, specificity,
# ppv, n, positives}, ood {threshold, ...}.
model_info = sa.Table(
    "model_info",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("info", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Event counters of processes that have no row per event (listener: associations, refusals),
# flushed periodically as deltas; owned by triage.counters, read by triage.metrics.
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("labels", sa.String(256), primary_key=True),  # canonical JSON of the label set
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


class Database:
    """An engine plus the two kinds of transaction the service uses.

    On SQLite, write transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers
    queue on the busy timeout instead of failing on a lock upgrade; the journal is WAL with
    ``synchronous=FULL``, so a committed row survives power loss.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = sa.create_engine(
                url, connect_args={"timeout": busy_timeout_s, "isolation_level": None}
            )
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
            if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed on exit (rolled back on error)."""
        with self.engine.connect() as plain:
            conn = plain.execution_options(triage_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def create_schema(self) -> None:
        """Create missing tables; refuse a database written by another schema version."""
        metadata.create_all(self.engine)
        with self.write() as conn:
            version = conn.execute(sa.select(schema_info.c.version)).scalar()
            if version is None:
                conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
            elif version != SCHEMA_VERSION:
                raise ConfigError(
                    f"index database has schema version {version}, this release needs "
                    f"{SCHEMA_VERSION}; migrate it or point TRIAGE_DATABASE_URL elsewhere"
                )

    def insert_ignore(self, table: sa.Table) -> Any:
        """``INSERT … ON CONFLICT DO NOTHING RETURNING <primary key>`` for this dialect.

        A row comes back only when one was inserted (``rowcount`` is not reliable here:
        psycopg reports -1).
        """
        insert = sqlite_insert(table) if self.is_sqlite else pg_insert(table)
        return insert.on_conflict_do_nothing().returning(*table.primary_key.columns)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    options: dict[str, Any] = dict(conn.get_execution_options())
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("triage_write") else "BEGIN")
