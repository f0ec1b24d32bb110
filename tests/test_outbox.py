"""The publication outbox: durable acceptance, idempotence, per-study ordering, re-queueing."""

import time
from pathlib import Path
from typing import Any

import pytest

from drimbox.source.outbox import OrderMismatch, Outbox


async def accept(
    outbox: Outbox, control_id: str, document_id: str, action: str = "publish", study: str = "1.2.3"
) -> Any:
    return await outbox.accept(
        sender="RIS|CENTRE",
        control_id=control_id,
        raw=b"MSH|...",
        action=action,
        document_id=document_id,
        accession="ACN1",
        study_uid=study,
        report={},
    )


async def test_accepted_message_survives_reopening(tmp_path: Path, state_url: str) -> None:
    db = tmp_path / "drimbox.sqlite"
    outbox = Outbox(db, url=state_url)
    first = await accept(outbox, "MSG1", "DOC1")
    outbox.close()
    reopened = Outbox(db, url=state_url)
    try:
        job = await reopened.next_due(time.time())
        assert job is not None and job.id == first.publication_id and job.state == "received"
        assert await reopened.raw_message(job.id) == b"MSH|..."
    finally:
        reopened.close()


async def test_same_control_id_or_same_document_is_a_duplicate(tmp_path: Path, state_url: str) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        a = await accept(outbox, "MSG1", "DOC1")
        again = await accept(outbox, "MSG1", "DOC1")
        resent_new_id = await accept(outbox, "MSG2", "DOC1")
        withdraw = await accept(outbox, "MSG3", "DOC1", action="withdraw")
        assert not a.duplicate and again.duplicate and resent_new_id.duplicate
        assert again.publication_id == resent_new_id.publication_id == a.publication_id
        assert not withdraw.duplicate
        assert len(await outbox.search(accession="ACN1")) == 2
    finally:
        outbox.close()


async def test_jobs_of_one_study_run_in_order_and_withdrawal_overtakes_unpublished(
    tmp_path: Path, state_url: str
) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        first = await accept(outbox, "M1", "D1", study="1.2.3")
        second = await accept(outbox, "M2", "D2", action="replace", study="1.2.3")
        other = await accept(outbox, "M3", "D3", study="9.9.9")
        job = await outbox.next_due(time.time())
        assert job is not None and job.id == first.publication_id
        await outbox.update(first.publication_id, state="retrying", next_attempt_at=time.time() + 60)
        # The replacement waits behind its original; another study does not.
        job = await outbox.next_due(time.time())
        assert job is not None and job.id == other.publication_id
        await accept(outbox, "M4", "D4", action="withdraw", study="1.2.3")
        states = {p.id: p.state for p in await outbox.search(study_uid="1.2.3")}
        assert states[first.publication_id] == "withdrawn" and states[second.publication_id] == "withdrawn"
    finally:
        outbox.close()


async def test_requeue_puts_failed_jobs_back(tmp_path: Path, state_url: str) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        a = await accept(outbox, "M1", "D1")
        await outbox.update(a.publication_id, state="failed", last_error="boom")
        assert await outbox.next_due(time.time()) is None
        assert outbox.requeue("ACN1") == 1
        job = await outbox.next_due(time.time() + 1)
        assert job is not None and job.state == "received"
    finally:
        outbox.close()


async def test_a_busy_study_does_not_hold_up_the_others(tmp_path: Path, state_url: str) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        first = await accept(outbox, "M1", "D1", study="1.2.3")
        other = await accept(outbox, "M2", "D2", study="9.9.9")
        job = await outbox.next_due(time.time(), frozenset({"1.2.3"}))
        assert job is not None and job.id == other.publication_id != first.publication_id
    finally:
        outbox.close()


async def test_an_older_outbox_gains_the_rejection_sender_and_a_revise_job_names_it(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "drimbox.sqlite"
    # The rejections table as boxes created it before the sender ("AE@address") was kept.
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE rejections (note_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, reason_code TEXT"
                     " NOT NULL, sop_uids TEXT NOT NULL, received_at REAL NOT NULL, publication_id INTEGER)")  # fmt: skip
    outbox = Outbox(db)
    try:
        published = await accept(outbox, "MSG1", "DOC1")
        await outbox.update(published.publication_id, state="published", kos_uid="9.9", published_at=time.time())
        revise = outbox.record_rejection("1.2.3.9", "1.2.3", "113001", frozenset({"1.2.3.4.5"}), "PACS@10.0.0.7")
        assert revise is not None and not revise.duplicate
        note = await outbox.rejection_of(revise.publication_id)
        assert note is not None and (note.peer, note.sop_uids) == ("PACS@10.0.0.7", frozenset({"1.2.3.4.5"}))
        assert await outbox.rejection_of(published.publication_id) is None
    finally:
        outbox.close()


F_STUDIES = [("1.2.250.1.213.4.5.2.1.106", "ACN106"), ("1.2.250.1.213.4.5.2.1.107", "ACN107")]


async def _accept_f(outbox: Outbox, control_id: str, action: str = "publish") -> None:
    await outbox.accept(
        sender="RIS|CENTRE", control_id=control_id, raw=f"MSH|F|{control_id}".encode(), action=action,
        document_id="DOC-F", accession="ACN106", study_uid=F_STUDIES[0][0], report={},
        other_studies=F_STUDIES[1:],
    )  # fmt: skip


async def test_a_report_naming_two_studies_queues_one_job_per_study(tmp_path: Path, state_url: str) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        await _accept_f(outbox, "F1")
        jobs = await outbox.search()
        assert [(j.study_uid, j.accession, j.document_id) for j in jobs] == [(s, a, "DOC-F") for s, a in F_STUDIES]
        # Both read the report's one message; the studies do not wait for each other.
        assert [await outbox.raw_message(j.id) for j in jobs] == [b"MSH|F|F1", b"MSH|F|F1"]
        first = await outbox.next_due(time.time())
        second = await outbox.next_due(time.time(), frozenset({F_STUDIES[0][0]}))
        assert first is not None and second is not None and {first.id, second.id} == {j.id for j in jobs}
        # Re-sent under another MSH-10: nothing new.
        await _accept_f(outbox, "F2")
        assert len(await outbox.search()) == 2
        # Its withdrawal overtakes both pending jobs.
        await _accept_f(outbox, "F3", action="withdraw")
        states = [(j.action, j.study_uid, j.state) for j in await outbox.search()]
        assert states[:2] == [("publish", s, "withdrawn") for s, _ in F_STUDIES]
        assert states[2:] == [("withdraw", s, "received") for s, _ in F_STUDIES]
    finally:
        outbox.close()


async def _cancel(outbox: Outbox, control_id: str, study: str = "1.2.3", accession: str = "ACN1") -> Any:
    return await outbox.accept_cancel(sender="RIS|CENTRE", control_id=control_id, raw=b"MSH|OMI",
                                      studies=[(study, accession)])  # fmt: skip


async def test_an_order_cancel_drops_pending_jobs_and_queues_a_withdrawal_of_a_live_kos(
    tmp_path: Path, state_url: str
) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        pending = await accept(outbox, "M1", "DOC1")
        [c] = await _cancel(outbox, "O1")
        assert (c.dropped, c.withdrawing, c.known, c.duplicate) == (1, False, True, False)
        assert (await outbox.get(pending.publication_id)).state == "cancelled"  # type: ignore[union-attr]
        assert (await outbox.get(c.publication_id)).state == "cancelled"  # type: ignore[union-attr]
        assert (await _cancel(outbox, "O1"))[0].duplicate  # the same message again

        live = await accept(outbox, "M2", "DOC2", study="1.2.4")
        await outbox.update(live.publication_id, state="published", kos_uid="9.9", entry_uuid="urn:uuid:x",
                            published_at=time.time())  # fmt: skip
        [c] = await _cancel(outbox, "O2", study="1.2.4")
        assert (c.dropped, c.withdrawing) == (0, True)
        job = await outbox.next_due(time.time())
        assert job is not None and (job.id, job.action, job.state) == (c.publication_id, "cancel", "received")
        assert await outbox.raw_message(job.id) == b"MSH|OMI"
    finally:
        outbox.close()


async def test_an_order_cancel_of_an_unknown_study_is_recorded_and_a_wrong_accession_refused(
    tmp_path: Path, state_url: str
) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        [c] = await _cancel(outbox, "O1", study="1.2.3.4.5.6.7.8.9", accession="ACN108")
        assert (c.known, c.withdrawing) == (False, False)
        row = await outbox.get(c.publication_id)
        assert row is not None and (row.action, row.state, row.accession) == ("cancel", "cancelled", "ACN108")
        assert "unknown study" in (row.last_error or "")

        await accept(outbox, "M1", "DOC1")  # study 1.2.3 under ACN1
        with pytest.raises(OrderMismatch):
            await _cancel(outbox, "O2", accession="ACN999")
        assert [j.state for j in await outbox.search(study_uid="1.2.3")] == ["received"]  # untouched
    finally:
        outbox.close()


async def test_an_outbox_of_the_previous_layout_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from drimbox.source.outbox import SCHEMA

    db = tmp_path / "old.sqlite"
    old = SCHEMA.replace("    message_id INTEGER,\n", "").replace(
        "UNIQUE (document_id, action, study_uid)", "UNIQUE (document_id, action)"
    )
    assert old != SCHEMA
    conn = sqlite3.connect(db)
    conn.executescript(old)
    conn.execute(
        "INSERT INTO publications (action, document_id, accession, study_uid, state, report, created_at, updated_at,"
        " next_attempt_at, window_start) VALUES ('publish', 'DOC-F', 'ACN106', ?, 'published', '{}', 1, 1, 1, 1)",
        (F_STUDIES[0][0],),
    )
    conn.commit()
    conn.close()
    outbox = Outbox(db)
    try:
        await _accept_f(outbox, "F1", action="replace")  # two studies, one document: needs the new key
        assert len(await outbox.search()) == 3
        assert (await outbox.search(study_uid=F_STUDIES[0][0]))[0].state == "published"
    finally:
        outbox.close()


async def test_an_iocm_note_on_the_second_study_of_a_report_revises_it_with_the_report(
    tmp_path: Path, state_url: str
) -> None:
    outbox = Outbox(tmp_path / "db.sqlite", url=state_url)
    try:
        await _accept_f(outbox, "F1")
        second = (await outbox.search(study_uid=F_STUDIES[1][0]))[0]
        await outbox.update(
            second.id, state="published", kos_uid="9.8", entry_uuid="urn:uuid:y", published_at=time.time()
        )
        accepted = outbox.record_rejection("1.9.9", F_STUDIES[1][0], "113039", frozenset({"1.2"}))
        assert accepted is not None
        revise = await outbox.get(accepted.publication_id)
        assert revise is not None and (revise.action, revise.study_uid) == ("revise", F_STUDIES[1][0])
        assert await outbox.raw_message(revise.id) == b"MSH|F|F1"
    finally:
        outbox.close()
