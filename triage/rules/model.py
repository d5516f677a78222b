"""Schema, loader and matcher of the routing-rules file.

A rule matches a series when every attribute condition holds (AND), at least one of
``any_of`` holds (OR) and none of ``none_of`` holds (NOT).  All matching rules contribute
their detectors; the series goes to the ``stat`` queue if any matching rule says so or the
request priority is one of ``stat_priorities``.  A series that matches no rule gets a
"not analysed" reason naming, per rule, the first condition that failed.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triage.domain import QueueName
from triage.errors import ConfigError

_MAX_REASON = 500

FactName = Literal[
    "modality", "body_part_examined", "study_description", "series_description",
    "slice_thickness", "contrast_agent", "request_priority",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """Closed numeric interval; a missing bound is open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Condition(_Strict):
    """Conditions on a series; all given ones must hold."""

    modality: list[str] | None = None
    body_part_examined: list[str] | None = None
    series_description: str | None = Field(default=None, description="regex, case-insensitive")
    study_description: str | None = Field(default=None, description="regex, case-insensitive")
    image_type_includes: list[str] | None = None
    image_type_excludes: list[str] | None = None
    slice_thickness_mm: Range | None = None
    slices: Range | None = None
    contrast: Literal["any", "absent", "present"] = "any"
    sop_class_uid: list[str] | None = None
    missing: list[FactName] | None = Field(
        default=None, description="attributes that must be absent from the headers"
    )
    any_of: list[Condition] | None = None
    none_of: list[Condition] | None = None

    @field_validator("series_description", "study_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @field_validator(
        "modality", "body_part_examined", "image_type_includes", "image_type_excludes"
    )
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [v.strip().upper() for v in value]

    def check(self, facts: SeriesFacts) -> str | None:
        """Return ``None`` when the series satisfies this condition, else why not."""
        checks = (
            self._check_values("modality", self.modality, facts.modality),
            self._check_values("body part", self.body_part_examined, facts.body_part_examined),
            self._check_regex("series description", self.series_description,
                              facts.series_description),
            self._check_regex("study description", self.study_description,
                              facts.study_description),
            self._check_image_type(facts.image_type),
            self._check_range("slice thickness", "mm", self.slice_thickness_mm,
                              facts.slice_thickness),
            self._check_range("slices", "", self.slices, facts.slices),
            self._check_contrast(facts.contrast_agent),
            self._check_values("SOP class", self.sop_class_uid, facts.sop_class_uid),
            self._check_missing(facts),
        )
        for reason in checks:
            if reason:
                return reason
        if self.any_of:
            reasons = [c.check(facts) for c in self.any_of]
            if all(reasons):
                return "none of: " + " | ".join(r for r in reasons if r)
        for cond in self.none_of or ():
            if cond.check(facts) is None:
                return "excluded by a none_of condition"
        return None

    @staticmethod
    def _check_values(label: str, allowed: list[str] | None, value: str | None) -> str | None:
        if allowed is None:
            return None
        if value is None or value.strip().upper() not in allowed:
            shown = "missing" if not value else repr(value)
            return f"{label} {shown} not in {', '.join(allowed)}"
        return None

    def _check_missing(self, facts: SeriesFacts) -> str | None:
        present = [name for name in self.missing or () if getattr(facts, name) not in (None, "")]
        if present:
            return f"{', '.join(present).replace('_', ' ')} present"
        return None

    @staticmethod
    def _check_regex(label: str, pattern: str | None, value: str | None) -> str | None:
        if pattern is None:
            return None
        if value is None or not re.search(pattern, value, re.IGNORECASE):
            return f"{label} does not match /{pattern}/"
        return None

    def _check_image_type(self, image_type: Sequence[str]) -> str | None:
        present = {v.upper() for v in image_type}
        missing = [v for v in self.image_type_includes or () if v not in present]
        if missing:
            return f"image type lacks {', '.join(missing)}"
        excluded = [v for v in self.image_type_excludes or () if v in present]
        if excluded:
            return f"image type is {', '.join(excluded)}"
        return None

    @staticmethod
    def _check_range(
        label: str, unit: str, bounds: Range | None, value: float | None
    ) -> str | None:
        if bounds is None:
            return None
        suffix = f" {unit}" if unit else ""
        if value is None:
            return f"{label} unknown"
        if bounds.min is not None and value < bounds.min:
            return f"{label} {value:g}{suffix} below {bounds.min:g}"
        if bounds.max is not None and value > bounds.max:
            return f"{label} {value:g}{suffix} above {bounds.max:g}"
        return None

    def _check_contrast(self, agent: str | None) -> str | None:
        has_contrast = bool(agent and agent.strip())
        if self.contrast == "absent" and has_contrast:
            return "contrast agent present"
        if self.contrast == "present" and not has_contrast:
            return "no contrast agent"
        return None


class Rule(_Strict):
    """A named rule: when ``match`` holds, run ``detectors`` on ``queue``."""

    name: str = Field(min_length=1)
    description: str = ""
    match: Condition
    detectors: list[str] = Field(min_length=1)
    queue: QueueName = QueueName.ROUTINE


class RoutingRules(_Strict):
    """The whole rules file."""

    version: Literal[1] = 1
    stat_priorities: list[str] = Field(default_factory=lambda: ["STAT"])
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("stat_priorities")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [v.strip().upper() for v in value]

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingRules:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate rule names: {', '.join(dupes)}")
        return self

    def route(self, facts: SeriesFacts) -> Route:
        """Decide what to do with a complete series."""
        matched: list[Rule] = []
        misses: list[str] = []
        for rule in self.rules:
            reason = rule.match.check(facts)
            if reason is None:
                matched.append(rule)
            else:
                misses.append(f"{rule.name}: {reason}")
        if not matched:
            detail = "; ".join(misses) if misses else "no rules configured"
            reason = f"no routing rule matched ({detail})"
            if len(reason) > _MAX_REASON:
                reason = reason[: _MAX_REASON - 1] + "…"
            return Route(detectors=(), queue=None, rules=(), reason=reason)
        detectors: list[str] = []
        for rule in matched:
            detectors.extend(d for d in rule.detectors if d not in detectors)
        priority = (facts.request_priority or "").strip().upper()
        stat = priority in self.stat_priorities or any(
            r.queue is QueueName.STAT for r in matched
        )
        return Route(
            detectors=tuple(detectors),
            queue=QueueName.STAT if stat else QueueName.ROUTINE,
            rules=tuple(r.name for r in matched),
            reason=None,
        )


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What routing may look at: header attributes of the series and its instance count."""

    modality: str | None
    body_part_examined: str | None
    study_description: str | None
    series_description: str | None
    image_type: tuple[str, ...]
    slice_thickness: float | None
    contrast_agent: str | None
    sop_class_uid: str | None
    slices: int
    request_priority: str | None


@dataclass(frozen=True, slots=True)
class Route:
    """Routing decision: detectors and queue, or the reason nothing applies."""

    detectors: tuple[str, ...]
    queue: QueueName | None
    rules: tuple[str, ...]
    reason: str | None


def load_rules(path: Path) -> RoutingRules:
    """Read and validate a rules file (``.yaml``/``.yml``, ``.json`` or ``.toml``).

    Raises
    ------
    ConfigError
        With the file name and the offending key, when the file is missing or invalid.
    """
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"routing rules {path}: {exc.strerror or exc}") from None
    try:
        suffix = path.suffix.lower()
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text.decode())
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"routing rules {path}: use a .yaml, .json or .toml file")
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"routing rules {path}: cannot parse: {exc}") from None
    try:
        return RoutingRules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"routing rules {path}: {problems}") from None
