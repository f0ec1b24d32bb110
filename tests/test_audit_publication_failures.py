"""A publication that ends in failure is in the trail once, with its reason; retries of a transient error are not."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from drimbox.audit.events import MemoryAudit
from drimbox.config import load_settings
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.source.dmp_gateway import XdsDmpGateway
from drimbox.source.intake import ReportIntake
from drimbox.source.outbox import Outbox
from drimbox.source.publish import Publisher
from drimbox.source.worker import PublicationWorker

INS = "279035121518989"


async def test_a_terminal_failure_is_recorded_once_and_a_transient_one_not_at_all(tmp_path: Path) -> None:
    settings = load_settings(env={"DRIMBOX_BOX__VAR_DIR": str(tmp_path / "var")})
    # Nothing listens on the PACS port: the C-FIND of a publication fails, a transient error retried later.
    settings = dataclasses.replace(settings, pacs=dataclasses.replace(settings.pacs, port=free_port(), timeout=5.0))
    settings.var_path.mkdir(parents=True)
    outbox = Outbox(settings.var_path / "drimbox.sqlite")
    dmp = XdsDmpGateway(settings)
    audit = MemoryAudit()
    worker = PublicationWorker(settings, outbox, Publisher(settings, outbox, dmp, audit=audit))
    intake = ReportIntake(outbox)
    spec = ANS_EXAMS["I"]
    try:
        cda = build_cda(spec)
        assert b"|AA|" in await intake(build_oru(cda, control_id="P1"))
        job = (await outbox.search(accession=spec.accession))[0]
        for _ in range(2):
            await worker.run_job(job)
            job = (await outbox.search(accession=spec.accession))[0]
        assert job.state == "retrying" and audit.events == []
        # A withdrawal of a report never published: refused before the DMP is asked, a terminal state.
        assert b"|AA|" in await intake(build_oru(cda, action="withdraw", control_id="W1"))
        withdraw = (await outbox.search(accession=spec.accession))[-1]
        await worker.run_job(withdraw)
        assert (await outbox.get(withdraw.id)).state == "rejected"  # type: ignore[union-attr]
    finally:
        await dmp.close()
        outbox.close()
    [e] = audit.events
    assert (e.action, e.outcome, e.patient, e.professional, e.study) == (
        "dmp.withdraw",
        "refused",
        INS,
        spec.author_id,
        spec.study_uid,
    )
    assert e.patient_name == f"{spec.family}^{spec.given}" and e.source == settings.dmp.url
    assert e.detail["state"] == "rejected" and e.detail["accession"] == spec.accession
    assert "nothing to withdraw" in e.detail["reason"]


@pytest.mark.sim
async def test_a_withdrawal_the_dmp_refuses_is_recorded_as_a_failure_with_the_dmp_reason(
    tmp_path: Path, sim: Any
) -> None:
    settings = load_settings(env={"DRIMBOX_BOX__VAR_DIR": str(tmp_path / "var"), "DRIMBOX_DMP__URL": f"{sim.url}/dmp",
                                  "DRIMBOX_DMP__TIMEOUT": "5"})  # fmt: skip
    settings.var_path.mkdir(parents=True)
    outbox = Outbox(settings.var_path / "drimbox.sqlite")
    dmp = XdsDmpGateway(settings)
    audit = MemoryAudit()
    worker = PublicationWorker(settings, outbox, Publisher(settings, outbox, dmp, audit=audit))
    intake = ReportIntake(outbox)
    spec = ANS_EXAMS["I"]
    try:
        cda = build_cda(spec)
        assert b"|AA|" in await intake(build_oru(cda, control_id="P1"))
        # The box believes it published an entry the DMP never had: the DMP refuses to withdraw it.
        published = (await outbox.search(accession=spec.accession))[0]
        await outbox.update(published.id, state="published", kos_uid="1.2.250.1.999.1",
                            entry_uuid="urn:uuid:00000000-0000-4000-8000-000000000001")  # fmt: skip
        assert b"|AA|" in await intake(build_oru(cda, action="withdraw", control_id="W1"))
        withdraw = (await outbox.search(accession=spec.accession))[-1]
        await worker.run_job(withdraw)
        assert (await outbox.get(withdraw.id)).state == "failed"  # type: ignore[union-attr]
    finally:
        await dmp.close()
        outbox.close()
    [e] = audit.events
    assert (e.action, e.outcome, e.patient, e.study) == ("dmp.withdraw", "failure", INS, spec.study_uid)
    assert e.detail["state"] == "failed" and "rejected by the DMP" in e.detail["reason"]
    # The DMP's words are kept, identity traits are not (they have their own fields).
    assert INS not in e.detail["reason"] and spec.family not in e.detail["reason"]
