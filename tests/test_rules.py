"""Routing rules: schema validation and matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triage.config import DEFAULT_RULES_FILE
from triage.domain import QueueName
from triage.errors import ConfigError
from triage.rules import RoutingRules, SeriesFacts, load_rules


def facts(**overrides: object) -> SeriesFacts:
    values: dict[str, object] = {
        "modality": "CT",
        "body_part_examined": "HEAD",
        "study_description": "CT HEAD WO",
        "series_description": "Axial 2.5",
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "slice_thickness": 2.5,
        "contrast_agent": None,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "slices": 40,
        "request_priority": None,
    }
    values.update(overrides)
    return SeriesFacts(**values)  # type: ignore[arg-type]


@pytest.fixture
def default_rules() -> RoutingRules:
    return load_rules(DEFAULT_RULES_FILE)


def test_head_ct_goes_to_hemorrhage_and_stroke(default_rules: RoutingRules) -> None:
    route = default_rules.route(facts())
    assert route.detectors == ("hemorrhage", "stroke")
    assert route.queue is QueueName.ROUTINE
    assert route.reason is None


def test_stat_request_priority_selects_the_stat_queue(default_rules: RoutingRules) -> None:
    assert default_rules.route(facts(request_priority="stat")).queue is QueueName.STAT


def test_thick_slices_are_not_analysed_with_a_reason(default_rules: RoutingRules) -> None:
    route = default_rules.route(facts(slice_thickness=7.5))
    assert route.detectors == ()
    assert route.queue is None
    assert route.reason is not None
    assert "slice thickness 7.5 mm above 5" in route.reason


def test_contrast_head_ct_is_not_analysed(default_rules: RoutingRules) -> None:
    route = default_rules.route(facts(contrast_agent="Omnipaque"))
    assert route.reason is not None and "contrast agent present" in route.reason


def test_localizer_is_not_analysed(default_rules: RoutingRules) -> None:
    route = default_rules.route(facts(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    assert route.reason is not None and "LOCALIZER" in route.reason


def test_description_stands_in_only_when_body_part_is_missing(
    default_rules: RoutingRules,
) -> None:
    assert default_rules.route(facts(body_part_examined=None)).detectors
    route = default_rules.route(
        facts(body_part_examined=None, study_description="CT ABDOMEN", series_description="x")
    )
    assert route.detectors == ()


def test_cspine_ct_goes_to_fracture_detector(default_rules: RoutingRules) -> None:
    route = default_rules.route(facts(body_part_examined="CSPINE", slice_thickness=1.0))
    assert route.detectors == ("cspine_fracture",)


def test_every_matching_rule_contributes_its_detectors() -> None:
    rules = RoutingRules.model_validate({
        "rules": [
            {"name": "a", "match": {"modality": ["CT"]}, "detectors": ["x", "y"]},
            {"name": "b", "match": {"slices": {"min": 10}}, "detectors": ["y", "z"],
             "queue": "stat"},
            {"name": "c", "match": {"modality": ["MR"]}, "detectors": ["never"]},
        ]
    })
    route = rules.route(facts())
    assert route.detectors == ("x", "y", "z")
    assert route.rules == ("a", "b")
    assert route.queue is QueueName.STAT


def test_none_of_excludes() -> None:
    rules = RoutingRules.model_validate({
        "rules": [{"name": "a", "match": {"none_of": [{"series_description": "scout"}]},
                   "detectors": ["x"]}]
    })
    assert rules.route(facts(series_description="Scout view")).detectors == ()
    assert rules.route(facts()).detectors == ("x",)


def test_missing_attribute_fails_a_range_condition() -> None:
    rules = RoutingRules.model_validate({
        "rules": [{"name": "a", "match": {"slice_thickness_mm": {"max": 5}}, "detectors": ["x"]}]
    })
    route = rules.route(facts(slice_thickness=None))
    assert route.reason is not None and "slice thickness unknown" in route.reason


def test_rules_load_from_json_and_toml(tmp_path: Path) -> None:
    data = {"rules": [{"name": "a", "match": {"modality": ["CT"]}, "detectors": ["x"]}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.toml").write_text(
        '[[rules]]\nname = "a"\ndetectors = ["x"]\n[rules.match]\nmodality = ["CT"]\n'
    )
    assert load_rules(tmp_path / "r.json") == load_rules(tmp_path / "r.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{name: a, match: {modality: [CT]}, detectors: []}]", "detectors"),
        ("rules: [{name: a, match: {series_description: '('}, detectors: [x]}]",
         "invalid regular expression"),
        ("rules: [{name: a, match: {bodypart: [HEAD]}, detectors: [x]}]", "bodypart"),
        ("rules: [{name: a, match: {slices: {min: 9, max: 2}}, detectors: [x]}]", "above max"),
        ("rules: [{name: a, match: {}, detectors: [x]}, {name: a, match: {}, detectors: [y]}]",
         "duplicate rule names"),
        ("rules: [{name: a, match: {}, detectors: [x], queue: urgent}]", "queue"),
        ("rules: [", "cannot parse"),
    ],
)
def test_invalid_rules_are_refused_with_the_offending_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_rules(path)


def test_missing_rules_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rules"):
        load_rules(tmp_path / "absent.yaml")
