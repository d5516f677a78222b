"""Celery composition root: the broker configuration shared by publishers and workers.

``celery -A workers.app worker`` looks up the module attribute ``app``; it is built on first
access from the ``TRIAGE_*`` environment (PEP 562 ``__getattr__``), so importing this module
has no side effects.  The service builds its own client with :func:`create_app`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from triage.config import Settings, load_settings
from triage.domain import QueueName

#: Name of the one task: payload ``[job_id]``; see :mod:`workers.tasks`.
ANALYZE_SERIES = "triage.analyze_series"


def create_app(settings: Settings) -> Celery:
    """A Celery app for ``settings``: queues ``stat`` then ``routine``, late acks, prefetch 1."""
    app = Celery("triage", broker=settings.broker_url, include=["workers.tasks"])
    transport = {
        "visibility_timeout": settings.broker_visibility_timeout_s,
        # Without this kombu round-robins queues; with it `stat` is always drained first.
        "queue_order_strategy": "priority",
    }
    app.conf.update(
        task_queues=tuple(
            Queue(q.value, Exchange(q.value, type="direct"), routing_key=q.value)  # type: ignore[no-untyped-call]
            for q in (QueueName.STAT, QueueName.ROUTINE)
        ),
        task_default_queue=QueueName.ROUTINE.value,
        task_default_exchange=QueueName.ROUTINE.value,
        task_default_routing_key=QueueName.ROUTINE.value,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        app = create_app(load_settings())
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
