"""Value types and enums shared by the service modules; no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SeriesState(enum.StrEnum):
    """Where a series is in assembly (its analysis state lives in its job)."""

    RECEIVING = "RECEIVING"
    READY = "READY"
    NOT_ANALYSED = "NOT_ANALYSED"


class ReadyTrigger(enum.StrEnum):
    """Why a series was declared complete."""

    COUNT = "count"  # the expected instance count from the headers was reached
    RELEASE = "release"  # the delivering association was released and a grace period passed
    TIMER = "timer"  # nothing arrived for ``stable_age_s``
    MAX_WAIT = "max_wait"  # forced upper bound while instances kept trickling in


class JobState(enum.StrEnum):
    """States of an analysis job in the outbox/ledger table."""

    PENDING = "PENDING"  # written, not yet handed to the broker (or publish failed)
    PUBLISHED = "PUBLISHED"  # handed to the broker
    RUNNING = "RUNNING"  # claimed by a worker holding a lease
    DONE = "DONE"
    FAILED = "FAILED"  # attempt cap reached or poison input
    SUPERSEDED = "SUPERSEDED"  # a late instance reopened the series; a newer revision exists


class DeliveryState(enum.StrEnum):
    """State of one report version's delivery to one destination (``deliveries`` table)."""

    PENDING = "PENDING"  # due at next_attempt_at
    SENDING = "SENDING"  # leased by a dispatcher thread
    SENT = "SENT"  # the destination accepted it (receipt recorded)
    DEAD = "DEAD"  # given up: max attempts reached or a non-retryable error


class QueueName(enum.StrEnum):
    """Celery queues; ``stat`` is always consumed first."""

    STAT = "stat"
    ROUTINE = "routine"


class WorkState(enum.StrEnum):
    """What the worklist shows for a series or a study.

    RECEIVING → QUEUED → ANALYZING → FLAGGED | NO_FINDINGS | NOT_ANALYSED(reason) |
    FAILED(reason).  Each step is a compare-and-set transition of the series' job row; a late
    instance starts a new revision (back to RECEIVING).
    """

    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    ANALYZING = "ANALYZING"
    FLAGGED = "FLAGGED"
    NO_FINDINGS = "NO_FINDINGS"
    NOT_ANALYSED = "NOT_ANALYSED"
    FAILED = "FAILED"


class Priority(enum.StrEnum):
    """Worklist priority, in DICOM UPS terms (Scheduled Procedure Step Priority).

    HIGH: an AI finding is flagged; MEDIUM: ordered STAT; LOW: everything else.
    """

    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class Reading(enum.StrEnum):
    """Where a study stands with the radiologists (independent of the AI's state).

    OPEN: waiting to be read; IN_PROGRESS: a reading workstation has claimed its UPS workitem;
    REPORTED: marked reported on the worklist page, or its UPS workitem was COMPLETED.
    Reported studies sort below the open ones; they are never removed.
    """

    OPEN = "OPEN"
    IN_PROGRESS = "IN_PROGRESS"
    REPORTED = "REPORTED"


class StoreOutcome(enum.StrEnum):
    """Result of storing one instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes of a received instance that the service relies on.

    Patient demographics are carried for the worklist database only; they are
    never logged and never used as metric labels.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    instance_number: int | None = None
    series_number: int | None = None
    body_part_examined: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    image_type: tuple[str, ...] = ()
    slice_thickness: float | None = None
    contrast_agent: str | None = None
    request_priority: str | None = None
    expected_count: int | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None


@dataclass(frozen=True, slots=True)
class JobMessage:
    """What is published to the broker for a job: its id and its queue, nothing else."""

    job_id: str
    queue: QueueName
