"""Routing rules: which series go to which detectors and queue (validated data file + matcher)."""

from triage.rules.model import (
    Condition,
    Range,
    Route,
    RoutingRules,
    Rule,
    SeriesFacts,
    load_rules,
)

__all__ = ["Condition", "Range", "Route", "RoutingRules", "Rule", "SeriesFacts", "load_rules"]
