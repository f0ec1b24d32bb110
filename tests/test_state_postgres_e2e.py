"""A source box whose state is on PostgreSQL ([state] url) publishes end to end; a second instance sees the same state."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box, pytest.mark.postgres]

INS = "279035121518989"


def test_a_box_on_postgresql_publishes_and_another_instance_shares_its_state(
    postgres_url: str, orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    # postgres_url first: its database is dropped after the boxes using it have stopped.
    orthanc.clear()
    orthanc.store_files(write_study(tmp_path / "study-C", study_for_exam(ANS_EXAMS["C"], instances=6)))
    state = {"url": postgres_url}
    a = source_box(orthanc, state=state)
    ack = asyncio.run(send_message("127.0.0.1", a.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")))
    assert b"MSA|AA" in ack, ack
    pub = a.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub
    # One KOS in the DMP, the very bytes the outbox keeps for a replay by any instance.
    docs = [d for d in sim.documents(INS) if d["uniqueId"] == pub["kos_uid"]]
    assert len(docs) == 1
    with psycopg.connect(postgres_url) as conn:
        kept = conn.execute("SELECT data FROM outbox.kos WHERE uid = %s", (pub["kos_uid"],)).fetchone()
        audited = conn.execute("SELECT count(*) FROM audit.audit WHERE action = 'dmp.register'").fetchone()
    assert kept is not None and bytes(kept[0]) == sim.document_bytes(pub["kos_uid"])
    assert audited is not None and audited[0] == 1
    assert not (a.work / "box-var" / "drimbox.sqlite").exists()  # nothing went to SQLite
    # A second instance on the same database: the same publications, the same duplicate detection.
    b = source_box(orthanc, state=state)
    assert [p["state"] for p in b.publications("ACN103")] == ["published"]
    again = asyncio.run(send_message("127.0.0.1", b.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")))
    assert b"MSA|AA" in again, again
    assert len(b.publications("ACN103")) == 1
