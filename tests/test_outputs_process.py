"""`triage outputs` as a process: HL7 to a real MLLP receiver, UPS workitems, a retraction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.conftest import Proc, free_port, triage_argv, wait_for
from tests.dicom_factory import series_uids
from tests.test_api import _result, pipeline, stage
from tests.test_reports import _analyse
from triage import reports
from triage.api import create_app
from triage.config import load_settings
from triage.db import Database, deliveries, ups_workitems
from triage.outputs.mllp import MllpReceiver

pytestmark = pytest.mark.integration


def _segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def test_results_and_a_retraction_reach_hl7_and_ups(spawn: Callable[..., Proc],
                                                    tmp_path: Path) -> None:
    with MllpReceiver() as ris:
        host, port = ris.address
        destinations = [
            {"name": "ris", "kind": "hl7", "host": host, "port": port, "timeout_s": 5},
            {"name": "worklist", "kind": "ups"},
        ]
        settings = load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0,
                                 ups_port=free_port(), destinations=destinations)
        db = Database(settings.db_url)
        db.create_schema()
        store, ledger, assembler = pipeline(settings.spool, db)
        stage(store, tmp_path / "s", 20)
        study_uid, _ = series_uids(sorted((tmp_path / "s").glob("*.dcm")))
        _analyse(assembler, ledger, _result(0.97, True), time.time() + 60)
        assert reports.refresh(db, study_uid, ["ris", "worklist"]) == 1

        outputs = spawn("outputs", triage_argv("outputs"), settings.to_env())
        outputs.wait_output("Sending results to ris (hl7), worklist (ups)", 30)
        first = wait_for(lambda: ris.messages, 30, what="ORU version 1")[0]
        (obr,) = _segments(first, "OBR")
        assert obr[25] == "F" and obr[27].endswith("S")  # final, STAT priority
        assert "Test^Phantom" in first  # demographics go to the RIS (never to our logs)

        def workitem() -> object:
            with db.read() as conn:
                return conn.execute(sa.select(ups_workitems.c.priority)).scalar()

        assert wait_for(workitem, 30, what="UPS workitem") == "HIGH"

        # an admin withdraws the result: every channel gets the correction
        client = TestClient(create_app(settings, db))
        retracted = client.post(f"/api/studies/{study_uid}/retract",
                                json={"reason": "wrong series analysed"})
        assert retracted.status_code == 200 and retracted.json() == {"version": 2}
        second = wait_for(lambda: ris.messages[1:], 30, what="ORU version 2")[0]
        (obr,) = _segments(second, "OBR")
        assert obr[25] == "C"
        findings = [seg for seg in _segments(second, "OBX") if seg[4].startswith("hemorrhage")]
        assert findings and {seg[11] for seg in findings} == {"D"}  # withdrawn observations
        assert "RETRACTED" in second
        assert wait_for(lambda: workitem() == "LOW", 30, what="UPS priority LOW")

        def states() -> list[tuple[Any, ...]]:
            with db.read() as conn:
                rows = conn.execute(sa.select(deliveries.c.version, deliveries.c.destination,
                                              deliveries.c.state)
                                    .order_by(deliveries.c.version, deliveries.c.destination)
                                    ).all()
            return [tuple(r) for r in rows]

        # the receiver has the message before the dispatcher has its ACK and marks it SENT
        expected = [(1, "ris", "SENT"), (1, "worklist", "SENT"),
                    (2, "ris", "SENT"), (2, "worklist", "SENT")]
        wait_for(lambda: states() == expected, 30, what="every delivery SENT")
        assert states() == expected
        detail = client.get(f"/api/studies/{study_uid}").json()
        assert [(r["version"], r["status"], [d["state"] for d in r["deliveries"]])
                for r in detail["reports"]] == [(1, "FINAL", ["SENT", "SENT"]),
                                                (2, "RETRACTED", ["SENT", "SENT"])]
        log = outputs.output()
        assert "Test^Phantom" not in log and "PHANTOM-1" not in log
        assert json.dumps(destinations)  # settings travelled through the environment
        db.dispose()
