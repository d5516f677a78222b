"""HTTP API and web page: probes, the prioritized worklist, study detail, previews, feedback.

OpenAPI at /docs.  AI output is labelled as such in every response.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import html
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from triage import __version__, reports
from triage.auth import SessionSigner, User, UserDirectory, is_loopback, load_secret
from triage.config import Settings
from triage.db import Database
from triage.domain import DeliveryState, Priority, QueueName, Reading, WorkState
from triage.errors import ConfigError
from triage.feedback import FeedbackError, Verdict, list_feedback, record_feedback
from triage.metrics import build_registry
from triage.outputs.report import ReportStatus
from triage.performance import (
    LabelFormatError,
    PerformanceRow,
    import_labels,
    import_labels_csv,
    live_performance,
)
from triage.worklist import ReadingError, list_studies, mark_reported

AI_NOTICE = ("AI triage output: not for diagnosis. Bundled models were trained on synthetic "
             "phantoms only. Every study stays on the list.")
PAGE = Path(__file__).parent / "web" / "index.html"
PERFORMANCE_PAGE = Path(__file__).parent / "web" / "performance.html"
#: Script and style shared by the pages, served under /ui/.
UI_ASSETS = {"common.js": "text/javascript", "common.css": "text/css"}
PERFORMANCE_NOTICE = (
    "Monitoring of AI output, not a diagnosis. The model card's validation PPV holds at the "
    "synthetic validation set's prevalence; a site's PPV moves with its own prevalence.")
MAX_LABEL_UPLOAD = 10 * 2**20
SESSION_COOKIE = "triage_session"
# /metrics carries counts, durations and model names only (no PHI): Prometheus scrapes it.
_PUBLIC = frozenset({"/healthz", "/readyz", "/login", "/logout", "/metrics"})
_JOB_ID = re.compile(r"^[0-9a-f-]{36}$")
_PREVIEW = re.compile(r"^[a-z_]{1,32}\.png$")

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], None]


class FindingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    detector: str
    finding: str
    probability: float = Field(description="AI score 0..1 (not a diagnosis)")
    threshold: float
    flagged: bool
    severity: int
    model_name: str
    model_version: str
    series_instance_uid: str
    slice_range: tuple[int, int] | None = Field(
        description="first and last flagged slice, 0-based from inferior to superior")
    key_slice: int | None
    slices: int | None
    key_sop_instance_uid: str | None
    preview: str | None = Field(description="URL of the AI-generated key-slice preview (PNG)")
    withdrawn: bool = Field(description="an admin retracted the study's AI result: it no "
                            "longer flags (the series says why)")


class SeriesOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    instance_count: int
    revision: int
    state: WorkState
    reason: str | None = Field(description="why a series is NOT_ANALYSED or FAILED")
    ready_trigger: str | None
    queue: QueueName | None
    detectors: list[str]
    attempts: int
    result: dict[str, Any] | None
    received_at: AwareDatetime = Field(description="first instance received (UTC)")
    last_received_at: AwareDatetime
    findings: list[FindingOut]


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    study_instance_uid: str
    state: WorkState
    stat: bool
    modality: str | None
    study_description: str | None
    instance_count: int
    received_at: AwareDatetime = Field(description="first instance received (UTC)")
    last_received_at: AwareDatetime
    priority: Priority = Field(description="HIGH: AI flag; MEDIUM: ordered STAT; LOW: other")
    severity: int
    findings: list[FindingOut] = Field(description="flagged first, then by score")
    series: list[SeriesOut]
    reading: Reading = Field(description="OPEN; IN_PROGRESS: a reading workstation claimed its "
                             "UPS workitem; REPORTED: sorted below every open study")
    reported_by: str | None = Field(description="who marked it reported, or 'UPS performer'")
    reported_at: AwareDatetime | None


class WorklistOut(BaseModel):
    ai_notice: str = Field(default=AI_NOTICE)
    studies: list[StudyOut]


class FeedbackIn(BaseModel):
    detector: str = Field(description="the detector whose finding is judged")
    verdict: Verdict
    comment: str | None = Field(default=None, max_length=2000)
    series_instance_uid: str | None = Field(
        default=None, description="needed only when several series carry the detector")


class FeedbackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    feedback_id: int
    series_instance_uid: str
    detector: str
    model_version: str
    revision: int
    ai_flagged: bool
    ai_probability: float
    verdict: Verdict
    comment: str | None
    user: str
    created_at: AwareDatetime


class ReportedIn(BaseModel):
    reported: bool = Field(default=True, description="true: reported; false: reopen it")


class RetractIn(BaseModel):
    reason: str = Field(min_length=3, max_length=500)


class RetractOut(BaseModel):
    version: int = Field(description="the report version that withdraws the result")


class DeliveryOut(BaseModel):
    destination: str
    state: DeliveryState = Field(description="PENDING, SENDING, SENT or DEAD (given up)")
    attempts: int
    last_error: str | None
    sent_at: AwareDatetime | None


class ReportVersionOut(BaseModel):
    version: int
    status: ReportStatus
    priority: Priority
    reason: str | None
    created_at: AwareDatetime
    deliveries: list[DeliveryOut]


class StudyDetailOut(BaseModel):
    ai_notice: str = Field(default=AI_NOTICE)
    study: StudyOut
    feedback: list[FeedbackOut]
    reports: list[ReportVersionOut] = Field(description="what was sent to PACS/RIS/UPS")


class PerformanceRowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    detector: str
    model_version: str
    stratum: str = Field(description="overall, age_band, sex, vendor or thickness_band")
    value: str = Field(description="the stratum's value; 'all' for overall")
    n_verdicts: int = Field(description="agree + disagree, newest verdict per finding")
    n_agree: int = Field(description="true positives (agree)")
    n_unsure: int = Field(description="unsure verdicts, left out of the PPV")
    ppv: float | None
    ppv_ci: tuple[float, float] | None = Field(description="Wilson 95% interval")
    n_labelled_positives: int = Field(description="follow-up positives the AI analysed")
    n_detected: int = Field(description="of those, flagged by the AI")
    sensitivity: float | None
    sensitivity_ci: tuple[float, float] | None
    n_labelled_negatives: int = Field(description="follow-up negatives the AI analysed")
    n_true_negatives: int
    specificity: float | None
    specificity_ci: tuple[float, float] | None
    n_labelled_ood: int = Field(description="labelled, but AI not applicable (out of "
                                "distribution): not counted as negatives")
    n_labelled_not_eligible: int
    card_ppv: float | None = Field(description="the model card's validation PPV")
    flag_rate: float | None = Field(description="flagged share of analysed studies in this "
                                    "population over the last 90 days")
    n_analysed: int
    expected_ppv: float | None = Field(description="the card's sensitivity and specificity at "
                                       "the prevalence this population's flag rate implies")
    alert: bool
    note: str = Field(description="why the row alerts, or why it cannot")


class PerformanceOut(BaseModel):
    notice: str = Field(default=PERFORMANCE_NOTICE)
    ppv_alert_margin: float
    ppv_min_feedback: int
    rows: list[PerformanceRowOut]


class LabelIn(BaseModel):
    study_instance_uid: str
    detector: str
    positive: bool | int | str = Field(description="true/false, 1/0 or yes/no")


class LabelErrorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    line: int = Field(description="CSV line (header = 1), or 1-based position in the list")
    message: str


class LabelImportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    imported: int = Field(description="new labels stored")
    unchanged: int = Field(description="equal to the label in force from the same source")
    errors: list[LabelErrorOut] = Field(description="rows not imported, and why")


def _csv_upload(content_type: str, body: bytes) -> tuple[str | None, bytes]:
    """(file name, bytes) of a label CSV sent raw or as the multipart field ``file``."""
    if not content_type.startswith("multipart/form-data"):
        return None, body
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
        policy=email.policy.HTTP)
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return part.get_filename(), payload if isinstance(payload, bytes) else b""
    raise HTTPException(400, "multipart upload needs a field named 'file'")


class SessionOut(BaseModel):
    user: str
    role: str = Field(description="radiologist or admin")
    login_required: bool = Field(
        description="false on loopback, where every caller is the admin 'local'")


class HealthOut(BaseModel):
    status: str
    version: str


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str]


def spool_check(settings: Settings) -> ReadinessCheck:
    """Readiness of the spool: writable and above its free-space watermark."""

    def check() -> None:
        spool = settings.spool
        if not os.access(spool, os.W_OK):
            raise RuntimeError(f"spool {spool} is not writable")
        st = os.statvfs(spool)
        free = st.f_bavail * st.f_frsize
        if free < settings.spool_min_free_mb * 2**20:
            raise RuntimeError(f"spool free space {free // 2**20} MiB below the watermark")

    return check


def _login_page(error: str = "") -> str:
    message = f'<p class="err">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>CT triage: sign in</title><style>body{{font:15px system-ui;background:#111418;
color:#e8eaed;display:grid;place-items:center;height:90vh}}form{{display:grid;gap:8px;
width:18em}}input,button{{padding:6px}}.err{{color:#f28b82}}</style></head><body>
<form method="post" action="/login"><h1>CT triage worklist</h1>{message}
<label>User <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label><button type="submit">Sign in</button>
<small>AI triage output: not for diagnosis.</small></form></body></html>"""


def auth_required(settings: Settings) -> bool:
    """Login is required off loopback (or when configured so)."""
    return settings.web_auth == "required" or not is_loopback(settings.web_host)


def create_app(
    settings: Settings,
    db: Database,
    *,
    checks: Mapping[str, ReadinessCheck] | None = None,
    users: UserDirectory | None = None,
) -> FastAPI:
    """Build the web application.

    Parameters
    ----------
    settings
        Service settings.
    db
        The index database.
    checks
        Extra readiness checks by name (e.g. the broker); each raises when not ready.
    users
        The user directory; default: read ``settings.users_file``.

    Raises
    ------
    ConfigError
        Login is required (not on loopback) but no user is configured.
    """
    app = FastAPI(
        title="CT triage daemon",
        version=__version__,
        description="Prioritized CT worklist. AI output is not for diagnosis.",
    )
    directory = users if users is not None else UserDirectory.load(settings.users_file)
    secured = auth_required(settings)
    if secured and not len(directory):
        raise ConfigError(
            f"the web UI on {settings.web_host} needs users (login is required off loopback) "
            f"and {settings.users_file} has none: run `triage users add NAME --role radiologist`"
        )
    signer = SessionSigner(load_secret(settings.data_dir / "web-secret"),
                           max_age_s=settings.session_hours * 3600) if secured else None

    def current_user(request: Request) -> User | None:
        if signer is None:
            return User("local", "admin")
        token = request.cookies.get(SESSION_COOKIE)
        if token and (user := signer.verify(token)) and directory.get(user.name):
            return user
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, binascii.Error):
                return None
            return directory.authenticate(name, password)
        return None

    @app.middleware("http")
    async def require_login(request: Request, call_next: Any) -> Response:
        if request.url.path in _PUBLIC:
            response: Response = await call_next(request)
            return response
        user = current_user(request)
        if user is None:
            if request.url.path in ("/", "/performance") and request.method == "GET":
                return RedirectResponse("/login", status_code=303)
            # A script of our pages (fetch: Sec-Fetch-Mode cors/same-origin) gets a challenge
            # browsers do not answer with their Basic dialog, so the page can go to /login
            # when a session ends; everything else is offered HTTP Basic.
            scripted = request.headers.get("sec-fetch-mode", "navigate") != "navigate"
            scheme = "Session" if scripted else "Basic"
            return JSONResponse({"detail": "login required"}, status_code=401,
                                headers={"WWW-Authenticate": f'{scheme} realm="triage"'})
        request.state.user = user.name
        request.state.role = user.role
        response = await call_next(request)
        return response

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> Response:
        if signer is None:
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(_login_page())

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if signer is None:
            return RedirectResponse("/", status_code=303)
        form = parse_qs((await request.body()).decode(errors="replace"))
        name = (form.get("username") or [""])[0]
        user = directory.authenticate(name, (form.get("password") or [""])[0])
        if user is None:
            logger.warning("Failed web login")
            return HTMLResponse(_login_page("Wrong user name or password."), status_code=401)
        logger.info("Web login by %s (%s)", user.name, user.role)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, signer.issue(user), httponly=True,
                            samesite="strict", max_age=int(signer.max_age_s),
                            secure=request.url.scheme == "https")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response
    all_checks: dict[str, ReadinessCheck] = {"database": db.ping, "spool": spool_check(settings)}
    all_checks.update(checks or {})

    @app.get("/healthz", response_model=HealthOut, tags=["ops"])
    def healthz() -> HealthOut:
        """Liveness: the web process answers."""
        return HealthOut(status="ok", version=__version__)

    @app.get("/readyz", response_model=ReadyOut, tags=["ops"],
             responses={503: {"model": ReadyOut}})
    def readyz() -> Any:
        """Readiness: database, broker and spool are usable (503 otherwise)."""
        results: dict[str, str] = {}
        for name, check in all_checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
        ready = all(v == "ok" for v in results.values())
        body = ReadyOut(ready=ready, checks=results)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    registry = build_registry(settings, db)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """Prometheus metrics of the whole installation, read from the index DB and Redis."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    severity = dict(settings.finding_severity)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        """The worklist page (polls /api/worklist)."""
        return HTMLResponse(PAGE.read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    @app.get("/api/session", response_model=SessionOut, tags=["worklist"])
    def session(request: Request) -> SessionOut:
        """Who is signed in, with which role (the page offers admin actions by it)."""
        return SessionOut(user=str(request.state.user), role=str(request.state.role),
                          login_required=secured)

    @app.get("/api/worklist", response_model=WorklistOut, tags=["worklist"])
    def worklist(
        limit: int = Query(default=500, ge=1, le=5000),
        state: Annotated[list[WorkState] | None, Query()] = None,
        finding: Annotated[list[str] | None, Query(description="flagged detector")] = None,
        modality: Annotated[list[str] | None, Query()] = None,
        reading: Annotated[list[Reading] | None, Query()] = None,
    ) -> WorklistOut:
        """Studies in priority order: open before reported, then flagged findings by severity
        and score, then STAT, then the longest waiting.  Filters narrow the list; without
        them nothing is left out."""
        studies = list_studies(db, limit=limit, severity=severity)
        if state:
            studies = [s for s in studies if s.state in state]
        if reading:
            studies = [s for s in studies if s.reading in reading]
        if finding:
            studies = [s for s in studies
                       if any(f.flagged and f.detector in finding for f in s.findings)]
        if modality:
            wanted = {m.upper() for m in modality}
            studies = [s for s in studies if (s.modality or "").upper() in wanted]
        return WorklistOut(studies=[StudyOut.model_validate(s) for s in studies])

    def one_study(uid: str) -> Any:
        found = list_studies(db, study_uid=uid, severity=severity)
        if not found:
            raise HTTPException(404, "unknown study")
        return found[0]

    @app.get("/api/studies/{study_uid}", response_model=StudyDetailOut, tags=["worklist"],
             responses={404: {"description": "unknown study"}})
    def study(study_uid: str) -> StudyDetailOut:
        """One study: its series, AI findings and the feedback given on them."""
        item = one_study(study_uid)
        return StudyDetailOut(
            study=StudyOut.model_validate(item),
            feedback=[FeedbackOut.model_validate(f) for f in list_feedback(db, study_uid)],
            reports=[ReportVersionOut.model_validate(r) for r in reports.history(db, study_uid)],
        )

    @app.get("/api/studies/{study_uid}/previews/{job_id}/{name}", tags=["worklist"],
             response_class=FileResponse,
             responses={404: {"description": "no such preview"}})
    def preview(study_uid: str, job_id: str, name: str) -> FileResponse:
        """AI-generated key-slice preview (PNG), not for diagnosis."""
        item = one_study(study_uid)
        if (not _JOB_ID.match(job_id) or not _PREVIEW.match(name)
                or job_id not in {s.job_id for s in item.series}):
            raise HTTPException(404, "no such preview")
        path = settings.data_dir / "previews" / job_id / name
        if not path.is_file():
            raise HTTPException(404, "no such preview")
        return FileResponse(path, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/studies/{study_uid}/feedback", response_model=FeedbackOut, status_code=201,
              tags=["feedback"], responses={404: {"description": "unknown study"},
                                            409: {"description": "no such finding"}})
    def post_feedback(study_uid: str, body: FeedbackIn, request: Request) -> FeedbackOut:
        """Record a radiologist's verdict on one AI finding (append-only)."""
        user = str(request.state.user)
        try:
            item = record_feedback(db, study_uid, detector=body.detector, verdict=body.verdict,
                                   comment=body.comment, series_uid=body.series_instance_uid,
                                   user=user)
        except FeedbackError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        logger.info("Feedback %s on %s by %s", item.verdict.value, item.detector, user)
        return FeedbackOut.model_validate(item)

    @app.post("/api/studies/{study_uid}/reported", response_model=StudyOut, tags=["worklist"],
              responses={404: {"description": "unknown study"},
                         409: {"description": "completed by a reading workstation (UPS)"}})
    def reported(study_uid: str, body: ReportedIn, request: Request) -> StudyOut:
        """Mark the study reported (it sorts below every open study, never leaves the list),
        or reopen it with ``{"reported": false}``."""
        try:
            mark_reported(db, study_uid, user=str(request.state.user), reported=body.reported)
        except ReadingError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        logger.info("Study marked %s by %s", "reported" if body.reported else "open",
                    request.state.user)
        return StudyOut.model_validate(one_study(study_uid))

    @app.post("/api/studies/{study_uid}/retract", response_model=RetractOut, tags=["feedback"],
              responses={403: {"description": "admins only"},
                         409: {"description": "no AI result stands for the study"}})
    def retract_result(study_uid: str, body: RetractIn, request: Request) -> RetractOut:
        """Withdraw the study's AI result here and on every channel (admin).  The study stays
        listed, its findings marked withdrawn, at the priority it would have without AI."""
        if request.state.role != "admin":
            raise HTTPException(403, "only admins can retract AI results")
        one_study(study_uid)
        version = reports.retract(db, study_uid, [d.name for d in settings.destinations],
                                  reason=body.reason)
        if version is None:
            raise HTTPException(409, "no AI result stands for this study")
        logger.warning("AI result of a study retracted by %s (report version %d)",
                       request.state.user, version)
        return RetractOut(version=version)

    @app.get("/ui/{name}", include_in_schema=False)
    def ui_asset(name: str) -> Response:
        """Script and style shared by the pages."""
        media_type = UI_ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="no such file")
        return Response((PAGE.parent / name).read_text(encoding="utf-8"),
                        media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/performance", response_class=HTMLResponse, include_in_schema=False)
    def performance_page() -> HTMLResponse:
        """The live-performance page (polls /api/performance)."""
        return HTMLResponse(PERFORMANCE_PAGE.read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    @app.get("/api/performance", response_model=PerformanceOut, tags=["performance"])
    def performance() -> PerformanceOut:
        """Live PPV (radiologists' verdicts on flagged findings: agree = true positive,
        disagree = false positive, unsure left out) and sensitivity/specificity (follow-up
        labels) per detector version, overall and by age band, sex, vendor and slice
        thickness, with Wilson 95% intervals and the PPV alert.  Monitoring, not diagnosis."""
        rows: list[PerformanceRow] = live_performance(db, settings)
        return PerformanceOut(ppv_alert_margin=settings.ppv_alert_margin,
                              ppv_min_feedback=settings.ppv_min_feedback,
                              rows=[PerformanceRowOut.model_validate(r) for r in rows])

    def admin_only(request: Request) -> str:
        if request.state.role != "admin":
            raise HTTPException(403, "only admins can import follow-up labels")
        return str(request.state.user)

    @app.post("/api/labels", response_model=LabelImportOut, tags=["performance"],
              responses={400: {"description": "bad source"},
                         403: {"description": "admins only"}})
    def post_labels(body: list[LabelIn], request: Request,
                    source: str = Query(default="api", min_length=1, max_length=64,
                                        description="where the labels come from")
                    ) -> LabelImportOut:
        """Import follow-up labels (admin); each row is checked on its own, good rows are
        stored, bad rows come back in ``errors``; re-importing the same rows adds nothing."""
        user = admin_only(request)
        result = import_labels(db, [item.model_dump() for item in body], user=user,
                               source=source)
        return LabelImportOut.model_validate(result)

    @app.post("/api/labels/csv", response_model=LabelImportOut, tags=["performance"],
              responses={400: {"description": "not a label CSV"},
                         403: {"description": "admins only"},
                         413: {"description": "larger than 10 MiB"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "text/csv": {"schema": {"type": "string"}},
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["file"],
                      "properties": {"file": {"type": "string", "format": "binary"}}}},
              }}})
    async def post_labels_csv(
        request: Request,
        source: str | None = Query(default=None, min_length=1, max_length=64,
                                   description="default: csv:<uploaded file name>"),
    ) -> LabelImportOut:
        """Import follow-up labels from a CSV (admin), sent as the body or uploaded as the
        form field ``file``; header ``study_instance_uid,detector,positive``.  Errors are
        reported per CSV line; the good lines are stored."""
        user = admin_only(request)
        body = await request.body()
        if len(body) > MAX_LABEL_UPLOAD:
            raise HTTPException(413, "label files are limited to 10 MiB")
        name, data = _csv_upload(request.headers.get("content-type", ""), body)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise HTTPException(400, "the CSV must be UTF-8 text") from None
        label_source = source or f"csv:{name or 'upload'}"[:64]
        try:
            result = await run_in_threadpool(import_labels_csv, db, text, user=user,
                                             source=label_source)
        except LabelFormatError as exc:
            raise HTTPException(400, str(exc)) from None
        return LabelImportOut.model_validate(result)

    return app
