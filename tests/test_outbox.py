"""The publication outbox: durable acceptance, idempotence, per-study ordering, re-queueing."""

import time
from pathlib import Path

from drimbox.state.outbox import Outbox


async def accept(outbox: Outbox, control_id: str, document_id: str, action: str = "publish", study: str = "1.2.3"):
    return await outbox.accept(
        sender="RIS|CENTRE", control_id=control_id, raw=b"MSH|...", action=action, document_id=document_id,
        accession="ACN1", study_uid=study, report={},
    )


async def test_accepted_message_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "drimbox.sqlite"
    outbox = Outbox(db)
    first = await accept(outbox, "MSG1", "DOC1")
    outbox.close()
    reopened = Outbox(db)
    try:
        job = await reopened.next_due(time.time())
        assert job is not None and job.id == first.publication_id and job.state == "received"
        assert await reopened.raw_message(job.id) == b"MSH|..."
    finally:
        reopened.close()


async def test_same_control_id_or_same_document_is_a_duplicate(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "db.sqlite")
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


async def test_jobs_of_one_study_run_in_order_and_withdrawal_overtakes_unpublished(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "db.sqlite")
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


async def test_requeue_puts_failed_jobs_back(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "db.sqlite")
    try:
        a = await accept(outbox, "M1", "D1")
        await outbox.update(a.publication_id, state="failed", last_error="boom")
        assert await outbox.next_due(time.time()) is None
        assert outbox.requeue("ACN1") == 1
        job = await outbox.next_due(time.time() + 1)
        assert job is not None and job.state == "received"
    finally:
        outbox.close()


async def test_a_busy_study_does_not_hold_up_the_others(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "db.sqlite")
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
