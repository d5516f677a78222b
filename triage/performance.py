"""Live performance of the detectors: PPV from feedback, sensitivity from follow-up labels.

What counts
-----------
- **PPV** (per detector and model version): radiologists' verdicts on *flagged* findings
  (table ``feedback``).  ``agree`` is a true positive, ``disagree`` a false positive,
  ``unsure`` is left out.  Only the newest verdict per (study, detector, series revision)
  counts, so changing one's mind or clicking twice never counts twice.
- **Sensitivity / specificity**: follow-up labels (table ``labels``; the newest row per
  (study, detector) is in force) against the detector's result for that study (table
  ``analyses``; for each series its newest revision, and the study is flagged when any of its
  series is).  Labelled studies the detector did not analyse (outcome ``ood``: "AI not
  applicable", or ``not_eligible``) are counted apart and never as negatives.  Labels of
  studies without any analysis by that detector are not counted.
- **Strata**: overall, then age band, sex, vendor (manufacturer) and slice-thickness band, read
  from the ``inputs`` JSON the workers store with each analysis (``models.inputs`` keys; this
  module does not import ``models``).  Unknown values form the stratum ``unknown``.
- **Alert**: a row (overall or a stratum) alerts when it has at least
  ``settings.ppv_min_feedback`` verdicts and the lower end of its PPV Wilson 95 % interval is
  more than ``settings.ppv_alert_margin`` below the model card's validation PPV.  Without a
  card PPV for that model version there is no alert, and the row's ``note`` says so.

The card's validation PPV holds at the synthetic validation set's prevalence; a site's PPV
moves with its own prevalence, which is why the alert has a margin and looks at the lower
bound.  Each row therefore also gives the **PPV expected at this population's prevalence**:
the card's sensitivity and specificity applied to the prevalence implied by the row's flag
rate over the last :data:`FLAG_RATE_DAYS` days (``f = sens·p + (1-spec)·(1-p)``, so
``p = (f - (1-spec)) / (sens - (1-spec))`` and ``PPV = sens·p / f``).  With
``settings.ppv_alert_reference = "site_prevalence"`` the alert compares against it instead of
the card's PPV.  Everything here is monitoring of AI output, not a diagnosis.

:func:`live_performance` runs three queries; the verdicts are counted by the database, grouped
by detector, version, verdict and strata, so Python sees a few hundred rows.  10,000 verdicts
took 40-55 ms on SQLite and 80-110 ms on PostgreSQL on the (loaded) 2-core development
machine.  The metrics exporter and the web page call it directly.
:func:`import_labels` / :func:`import_labels_csv` validate and store labels row by row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from triage.analyses import Outcome, models_loaded
from triage.config import Settings
from triage.db import Database, analyses, feedback, labels, model_info, studies

logger = logging.getLogger(__name__)

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054

OVERALL = "overall"
#: Stratum name -> key of the analysis ``inputs`` JSON (``models.inputs.describe_inputs``).
STRATA: dict[str, str] = {
    "age_band": "age_band",
    "sex": "sex",
    "vendor": "manufacturer",
    "thickness_band": "thickness_band",
}
UNKNOWN = "unknown"
#: Window of the flag rate behind the expected PPV.
FLAG_RATE_DAYS = 90

#: Header of a label CSV (other columns are ignored).
CSV_COLUMNS = ("study_instance_uid", "detector", "positive")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_CHUNK = 500


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default).

    Raises
    ------
    ValueError
        ``n`` < 1 or ``successes`` outside 0..n.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class PerformanceRow:
    """Live performance of one detector version, overall or in one stratum.

    ``stratum`` is ``"overall"`` (``value`` ``"all"``) or one of :data:`STRATA`.  Proportions
    and intervals are ``None`` when their denominator is zero.
    """

    detector: str
    model_version: str
    stratum: str
    value: str
    n_verdicts: int  # agree + disagree (newest verdict per finding)
    n_agree: int  # true positives
    n_unsure: int  # left out of the PPV
    ppv: float | None
    ppv_ci: tuple[float, float] | None
    n_labelled_positives: int  # labelled positive and analysed
    n_detected: int  # of those, flagged
    sensitivity: float | None
    sensitivity_ci: tuple[float, float] | None
    n_labelled_negatives: int  # labelled negative and analysed
    n_true_negatives: int  # of those, not flagged
    specificity: float | None
    specificity_ci: tuple[float, float] | None
    n_labelled_ood: int  # labelled, but the AI declared the study out of distribution
    n_labelled_not_eligible: int  # labelled, but the series were not eligible
    card_ppv: float | None  # the model card's validation PPV for this version
    flag_rate: float | None  # flagged share of analysed studies, last FLAG_RATE_DAYS days
    n_analysed: int  # analysed studies behind flag_rate
    expected_ppv: float | None  # the card's sens/spec at the prevalence flag_rate implies
    alert: bool
    note: str  # why the row alerts or cannot


@dataclass
class _Tally:
    agree: int = 0
    disagree: int = 0
    unsure: int = 0
    positives: int = 0
    detected: int = 0
    negatives: int = 0
    true_negatives: int = 0
    ood: int = 0
    not_eligible: int = 0


def _with_strata(db: Database, source: Any) -> tuple[Any, list[Any]]:
    """``source`` plus the strata columns of its ``analyses`` row, one JSON parse per row.

    SQLite: one ``json_extract`` with several paths (a JSON array, column ``strata``);
    PostgreSQL: ``json_to_record`` joined laterally (columns ``s0``..``s3``).  Both are
    several times faster than one extraction per key.
    """
    keys = list(STRATA.values())
    if db.is_sqlite:
        paths = [f'$."{key}"' for key in keys]
        return source, [sa.func.json_extract(analyses.c.inputs, *paths).label("strata")]
    record = (sa.func.json_to_record(analyses.c.inputs)
              .table_valued(*(sa.column(key, sa.Text) for key in keys))
              .render_derived(name="strata", with_types=True))
    columns = [record.c[key].label(f"s{i}") for i, key in enumerate(keys)]
    return source.outerjoin(record, sa.true()), columns


def _unindexed(column: sa.Column[str]) -> sa.ColumnElement[str]:
    """``column || ''``: keeps the planner off the (detector, analysed_at) index in a join.

    Without statistics SQLite (and PostgreSQL before its first ANALYZE) may look up the
    analyses of a verdict by detector instead of by study, which scans every analysis of
    the detector once per verdict (measured: 27 s instead of 0.1 s for 10,000 verdicts).
    """
    return column.concat("")


def _cells(row: Any) -> Iterator[tuple[str, str]]:
    """``(stratum, value)`` pairs a row counts in: overall, then each of :data:`STRATA`."""
    mapping = row._mapping
    if "strata" in mapping:
        values = json.loads(mapping["strata"]) if mapping["strata"] else [None] * len(STRATA)
    else:
        values = [mapping[f"s{i}"] for i in range(len(STRATA))]
    yield OVERALL, "all"
    for name, value in zip(STRATA, values, strict=True):
        yield name, str(value) if value not in (None, "") else UNKNOWN


def _verdicts(db: Database) -> list[Any]:
    """Counts of the newest verdict per (study, detector, revision) on flagged findings.

    Grouped by detector, model version, verdict and the strata of the judged analysis, so
    the database does the row work (one ``analyses`` row per detector and job, and one job
    per series revision, so the join never multiplies a verdict).
    """
    newest = (
        sa.select(sa.func.max(feedback.c.feedback_id))
        .where(feedback.c.ai_flagged.is_(True))
        .group_by(feedback.c.study_instance_uid, feedback.c.detector, feedback.c.revision)
    )
    judged = feedback.outerjoin(analyses, sa.and_(
        analyses.c.study_instance_uid == feedback.c.study_instance_uid,
        analyses.c.series_instance_uid == feedback.c.series_instance_uid,
        _unindexed(analyses.c.detector) == feedback.c.detector,
        analyses.c.revision == feedback.c.revision,
    ))
    judged, strata = _with_strata(db, judged)
    keys = [feedback.c.detector, feedback.c.model_version, feedback.c.verdict, *strata]
    # IN (subquery), not a join on it: SQLite then builds an index of the newest ids
    # instead of sometimes scanning the derived table once per feedback row.
    query = (sa.select(*keys, sa.func.count().label("n")).select_from(judged)
             .where(feedback.c.feedback_id.in_(newest)).group_by(*keys))
    with db.read() as conn:
        return list(conn.execute(query))


def expected_ppv(flag_rate: float, sensitivity: float, specificity: float) -> float | None:
    """PPV a detector with ``sensitivity`` and ``specificity`` should show where it flags
    ``flag_rate`` of studies (the prevalence that flag rate implies, clipped to 0..1).

    ``None`` when the card's operating point cannot tell (sensitivity ≤ 1 - specificity) or
    nothing is flagged.
    """
    false_rate = 1.0 - specificity
    if flag_rate <= 0 or sensitivity <= false_rate:
        return None
    prevalence = min(1.0, max(0.0, (flag_rate - false_rate) / (sensitivity - false_rate)))
    return min(1.0, sensitivity * prevalence / flag_rate)


def _flag_counts(db: Database, since: float) -> dict[tuple[str, str], dict[tuple[str, str],
                                                                           tuple[int, int]]]:
    """(detector, version) -> cell -> (analysed, flagged), analyses since ``since``."""
    source, strata = _with_strata(db, analyses)
    keys = [analyses.c.detector, analyses.c.model_version, analyses.c.flagged, *strata]
    query = (sa.select(*keys, sa.func.count().label("n")).select_from(source)
             .where(analyses.c.outcome == Outcome.ANALYSED.value,
                    analyses.c.analysed_at >= since)
             .group_by(*keys))
    out: dict[tuple[str, str], dict[tuple[str, str], tuple[int, int]]] = defaultdict(dict)
    with db.read() as conn:
        rows = list(conn.execute(query))
    for row in rows:
        group = out[(row.detector, row.model_version)]
        for cell in _cells(row):
            n, k = group.get(cell, (0, 0))
            group[cell] = (n + row.n, k + (row.n if row.flagged else 0))
    return out


@dataclass(frozen=True, slots=True)
class _LabelledStudy:
    detector: str
    model_version: str
    positive: bool
    outcome: Outcome
    flagged: bool
    strata: Any  # the row whose inputs give the strata


def _labelled(db: Database) -> list[_LabelledStudy]:
    """Labels in force joined to each labelled study's current result."""
    source, strata = _with_strata(db, labels.join(analyses, sa.and_(
        analyses.c.study_instance_uid == labels.c.study_instance_uid,
        _unindexed(analyses.c.detector) == labels.c.detector)))
    query = sa.select(
        labels.c.label_id, labels.c.positive, analyses.c.study_instance_uid,
        analyses.c.series_instance_uid, analyses.c.detector, analyses.c.revision,
        analyses.c.analysed_at, analyses.c.model_version, analyses.c.outcome,
        analyses.c.flagged, *strata,
    ).select_from(source)
    in_force: dict[tuple[str, str], int] = {}
    # (study, detector) -> series -> newest (revision, analysed_at) row
    current: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    with db.read() as conn:
        rows = list(conn.execute(query))
    for row in rows:
        key = (row.study_instance_uid, row.detector)
        in_force[key] = max(in_force.get(key, 0), row.label_id)
    for row in rows:
        key = (row.study_instance_uid, row.detector)
        if row.label_id != in_force[key]:
            continue
        by_series = current[key]
        seen = by_series.get(row.series_instance_uid)
        if seen is None or (row.revision, row.analysed_at) > (seen.revision, seen.analysed_at):
            by_series[row.series_instance_uid] = row
    out = []
    for (_, detector), by_series in current.items():
        results = sorted(by_series.values(), key=lambda r: r.analysed_at)
        analysed = [r for r in results if r.outcome == Outcome.ANALYSED.value]
        if analysed:
            outcome, decisive = Outcome.ANALYSED, analysed[-1]
        elif any(r.outcome == Outcome.OOD.value for r in results):
            outcome, decisive = Outcome.OOD, results[-1]
        else:
            outcome, decisive = Outcome.NOT_ELIGIBLE, results[-1]
        out.append(_LabelledStudy(
            detector=detector, model_version=decisive.model_version,
            positive=bool(decisive.positive), outcome=outcome,
            flagged=any(bool(r.flagged) for r in analysed), strata=decisive,
        ))
    return out


def live_performance(db: Database, settings: Settings) -> list[PerformanceRow]:
    """PPV, sensitivity and specificity per detector version, overall and per stratum.

    Rows come sorted by detector and model version, the ``overall`` row of each version
    first, then the strata in :data:`STRATA` order and their values alphabetically.

    Parameters
    ----------
    db
        The index database.
    settings
        Gives ``ppv_alert_margin`` and ``ppv_min_feedback``.

    Returns
    -------
    list[PerformanceRow]
        One row per (detector, model version, stratum, value) that has any verdict or label.
    """
    tallies: dict[tuple[str, str], dict[tuple[str, str], _Tally]] = defaultdict(
        lambda: defaultdict(_Tally))
    for row in _verdicts(db):
        group = tallies[(row.detector, row.model_version)]
        for cell in _cells(row):
            tally = group[cell]
            if row.verdict == "agree":
                tally.agree += row.n
            elif row.verdict == "disagree":
                tally.disagree += row.n
            else:
                tally.unsure += row.n
    for study in _labelled(db):
        group = tallies[(study.detector, study.model_version)]
        for cell in _cells(study.strata):
            tally = group[cell]
            if study.outcome is Outcome.OOD:
                tally.ood += 1
            elif study.outcome is Outcome.NOT_ELIGIBLE:
                tally.not_eligible += 1
            elif study.positive:
                tally.positives += 1
                tally.detected += study.flagged
            else:
                tally.negatives += 1
                tally.true_negatives += not study.flagged
    cards = models_loaded(db)
    flags = _flag_counts(db, time.time() - FLAG_RATE_DAYS * 86400.0) if tallies else {}
    order = {name: i for i, name in enumerate((OVERALL, *STRATA))}
    out = []
    for (detector, version), group in sorted(tallies.items()):
        card = cards.get(detector)
        card_ppv, card_note = None, f"no model card PPV known for {detector}: no alert"
        operating: tuple[float, float] | None = None
        if card is not None and card.version != version:
            card_note = f"the loaded model card is for version {card.version}: no alert"
        elif card is not None and card.validation_ppv is not None:
            card_ppv = card.validation_ppv
            validation = card.info.get("validation") or {}
            if validation.get("sensitivity") is not None and \
                    validation.get("specificity") is not None:
                operating = (float(validation["sensitivity"]), float(validation["specificity"]))
        elif card is not None:
            card_note = f"the model card of {detector} gives no validation PPV: no alert"
        for cell, tally in sorted(group.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            analysed, flagged = flags.get((detector, version), {}).get(cell, (0, 0))
            out.append(_row(detector, version, cell, tally, card_ppv=card_ppv,
                            card_note=card_note, settings=settings, analysed=analysed,
                            flagged=flagged, operating=operating))
    return out


def _proportion(k: int, n: int) -> tuple[float | None, tuple[float, float] | None]:
    return (k / n, wilson_interval(k, n)) if n else (None, None)


def _row(detector: str, version: str, cell: tuple[str, str], tally: _Tally, *,
         card_ppv: float | None, card_note: str, settings: Settings, analysed: int = 0,
         flagged: int = 0, operating: tuple[float, float] | None = None) -> PerformanceRow:
    stratum, value = cell
    n = tally.agree + tally.disagree
    ppv, ppv_ci = _proportion(tally.agree, n)
    sensitivity, sensitivity_ci = _proportion(tally.detected, tally.positives)
    specificity, specificity_ci = _proportion(tally.true_negatives, tally.negatives)
    flag_rate = flagged / analysed if analysed else None
    expected = (expected_ppv(flag_rate, *operating)
                if flag_rate is not None and operating is not None else None)
    reference, what = card_ppv, "the card's validation PPV"
    if settings.ppv_alert_reference == "site_prevalence" and card_ppv is not None:
        reference, what = expected, "the PPV expected at this population's flag rate"
        if expected is None:
            card_note = "no expected PPV at this population's flag rate yet: no alert"
    alert = False
    margin = f"{settings.ppv_alert_margin * 100:g}"
    if reference is None:
        note = card_note
    elif ppv_ci is None or n < settings.ppv_min_feedback:
        note = f"{n} of {settings.ppv_min_feedback} verdicts needed before this can alert"
    elif ppv_ci[0] < reference - settings.ppv_alert_margin:
        alert = True
        note = (f"PPV lower 95% bound {ppv_ci[0]:.1%} is more than {margin} points below "
                f"{what} {reference:.1%}")
    else:
        note = (f"PPV lower 95% bound {ppv_ci[0]:.1%} is within {margin} points of "
                f"{what} {reference:.1%}")
    return PerformanceRow(
        detector=detector, model_version=version, stratum=stratum, value=value,
        n_verdicts=n, n_agree=tally.agree, n_unsure=tally.unsure, ppv=ppv, ppv_ci=ppv_ci,
        n_labelled_positives=tally.positives, n_detected=tally.detected,
        sensitivity=sensitivity, sensitivity_ci=sensitivity_ci,
        n_labelled_negatives=tally.negatives, n_true_negatives=tally.true_negatives,
        specificity=specificity, specificity_ci=specificity_ci,
        n_labelled_ood=tally.ood, n_labelled_not_eligible=tally.not_eligible,
        card_ppv=card_ppv, flag_rate=flag_rate, n_analysed=analysed, expected_ppv=expected,
        alert=alert, note=note,
    )


# --- follow-up labels ----------------------------------------------------------------------


class LabelFormatError(ValueError):
    """A label file that cannot be read at all (no or wrong header, not text): HTTP 400."""


@dataclass(frozen=True, slots=True)
class LabelError:
    """Why one row was not imported.  ``line``: CSV line, or 1-based position in a list."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Outcome of one import: good rows are stored even when others fail."""

    imported: int  # new label rows
    unchanged: int  # rows equal to the label already in force from the same source
    errors: tuple[LabelError, ...]


def parse_positive(value: object) -> bool:
    """``true/false``, ``1/0`` or ``yes/no`` (any case) as a bool.

    Raises
    ------
    ValueError
        Anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError("positive must be true/false, 1/0 or yes/no")


def read_labels_csv(text: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a label CSV with their line numbers (the header is line 1).

    The header must name ``study_instance_uid``, ``detector`` and ``positive``; the
    delimiter is a comma (a semicolon is accepted when the header has no comma); blank lines
    are skipped and extra columns ignored.

    Raises
    ------
    LabelFormatError
        Empty file or a header without the three columns.
    """
    text = text.removeprefix("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = ";" if "," not in first and ";" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise LabelFormatError("the CSV is empty")
    names = [h.strip().lower() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in names]
    if missing:
        raise LabelFormatError(f"the CSV header needs the columns {', '.join(CSV_COLUMNS)} "
                               f"(missing: {', '.join(missing)})")
    out = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        out.append((reader.line_num, {n: (cells[i] if i < len(cells) else "")
                                      for i, n in enumerate(names)}))
    return out


def import_labels(db: Database, rows: Iterable[Mapping[str, Any]], *, user: str,
                  source: str, clock: float | None = None) -> ImportResult:
    """Validate and store follow-up labels; bad rows are reported, good ones kept.

    Each row needs ``study_instance_uid`` (a study in the index), ``detector`` (one that
    has analysed something or is loaded by a worker) and ``positive``.  A row whose value
    equals the label in force for its (study, detector) from the same ``source`` is counted
    as unchanged, so re-importing a file adds nothing.  Two rows of one import that
    contradict each other: the later one is reported as an error.

    Raises
    ------
    ValueError
        ``source`` empty or longer than 64 characters.
    """
    return _import(db, enumerate(rows, start=1), user=user, source=source, clock=clock)


def import_labels_csv(db: Database, text: str, *, user: str, source: str,
                      clock: float | None = None) -> ImportResult:
    """:func:`import_labels` for a CSV (see :func:`read_labels_csv`); errors by CSV line.

    Raises
    ------
    LabelFormatError
        The CSV cannot be read at all.
    """
    return _import(db, read_labels_csv(text), user=user, source=source, clock=clock)


def _import(db: Database, numbered: Iterable[tuple[int, Mapping[str, Any]]], *, user: str,
            source: str, clock: float | None) -> ImportResult:
    if not source or len(source) > 64:
        raise ValueError("source must have 1 to 64 characters")
    items = list(numbered)
    errors: list[LabelError] = []
    parsed: list[tuple[int, str, str, bool]] = []
    for line, row in items:
        uid = str(row.get("study_instance_uid") or "").strip()
        detector = str(row.get("detector") or "").strip()
        if not uid or len(uid) > 64:
            errors.append(LabelError(line, "study_instance_uid missing or longer than 64"))
            continue
        if not detector:
            errors.append(LabelError(line, "detector missing"))
            continue
        try:
            positive = parse_positive(row.get("positive"))
        except ValueError as exc:
            errors.append(LabelError(line, str(exc)))
            continue
        parsed.append((line, uid, detector, positive))
    now = time.time() if clock is None else clock
    imported = unchanged = 0
    with db.write() as conn:
        known_detectors = set(conn.execute(sa.select(analyses.c.detector).distinct()).scalars())
        known_detectors |= set(conn.execute(sa.select(model_info.c.name)).scalars())
        uids = sorted({p[1] for p in parsed})
        known_studies = set(_in_chunks(conn, studies.c.study_instance_uid, uids))
        force: dict[tuple[str, str], tuple[bool, str]] = {}
        for chunk in _chunks(uids):
            for r in conn.execute(sa.select(labels).where(
                    labels.c.study_instance_uid.in_(chunk)).order_by(labels.c.label_id)):
                force[(r.study_instance_uid, r.detector)] = (bool(r.positive), r.source)
        this_import: dict[tuple[str, str], tuple[int, bool]] = {}
        for line, uid, detector, positive in parsed:
            key = (uid, detector)
            if uid not in known_studies:
                errors.append(LabelError(line, "study not in the index"))
            elif detector not in known_detectors:
                errors.append(LabelError(line, f"unknown detector {detector[:64]!r}"))
            elif key in this_import and this_import[key][1] != positive:
                errors.append(LabelError(
                    line, f"contradicts line {this_import[key][0]} for the same study "
                    "and detector"))
            elif force.get(key) == (positive, source):
                unchanged += 1
                this_import.setdefault(key, (line, positive))
            else:
                conn.execute(labels.insert().values(
                    study_instance_uid=uid, detector=detector, positive=positive,
                    source=source, user=user[:64] or "unknown", created_at=now))
                force[key] = (positive, source)
                this_import[key] = (line, positive)
                imported += 1
    errors.sort(key=lambda e: e.line)
    logger.info("Labels imported by %s: %d new, %d unchanged, %d rejected",
                user, imported, unchanged, len(errors))
    return ImportResult(imported=imported, unchanged=unchanged, errors=tuple(errors))


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def _in_chunks(conn: sa.Connection, column: sa.Column[str], values: Sequence[str]
               ) -> Iterator[str]:
    for chunk in _chunks(values):
        yield from conn.execute(sa.select(column).where(column.in_(chunk))).scalars()
