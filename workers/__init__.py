"""Celery side of the triage daemon: turns a ready series into analysis results."""
