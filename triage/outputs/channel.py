"""The one interface every output channel implements, and its error."""

from __future__ import annotations

from typing import Any, Protocol

from triage.outputs.report import StudyReport


class DeliveryError(Exception):
    """A report could not be delivered.

    ``retryable``: the destination may accept it later (unreachable, busy, transient refusal);
    otherwise it refused the content itself and retrying the same bytes cannot help.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


#: What a channel says it delivered (JSON), kept with the delivery row; None if nothing to keep.
Receipt = dict[str, Any] | None


class Channel(Protocol):
    """Sends one report version to one destination; idempotent per (study, version)."""

    def send(self, report: StudyReport) -> Receipt:
        """Deliver ``report`` or raise :class:`DeliveryError`."""
