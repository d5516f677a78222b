"""Exception hierarchy of the triage service.

::

    TriageError
     ├── ConfigError              bad settings or routing rules; raised at start-up
     ├── StoreError               an instance could not be made durable
     │    ├── OutOfResourcesError   disk full, spool watermark, index down → 0xA700
     │    └── InvalidInstanceError  unreadable dataset or missing keys    → 0xC210 range
     └── JobError                 the job ledger refused an operation
          └── JobNotFoundError      no job with that id

DIMSE statuses are chosen from these in exactly one place (:mod:`triage.listener`).
"""


class TriageError(Exception):
    """Base class of every error raised on purpose by the service."""


class ConfigError(TriageError):
    """Settings or routing rules are invalid or missing."""


class StoreError(TriageError):
    """An instance could not be stored."""


class OutOfResourcesError(StoreError):
    """Storage resources (disk, index database) are unavailable; the sender should retry."""


class InvalidInstanceError(StoreError):
    """The received data set cannot be understood or lacks a required attribute.

    Parameters
    ----------
    message
        What is wrong, without dataset contents.
    status
        The DIMSE failure status to answer with (``0xC210``-``0xC21F``: cannot understand).
    """

    def __init__(self, message: str, *, status: int = 0xC210) -> None:
        super().__init__(message)
        if not 0xC200 <= status <= 0xCFFF:
            raise ValueError(f"status 0x{status:04X} is not a 'cannot understand' status")
        self.status = status


class JobError(TriageError):
    """The job ledger refused an operation."""


class JobNotFoundError(JobError):
    """No job has the requested id."""
