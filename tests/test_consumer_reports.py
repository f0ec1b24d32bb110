"""The report beside the images: the RIS's CDA in the simulated DMP, found, fetched and shown by the consumer."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.audit.events import AUDIT, REFUSED, SUCCESS, MemoryAudit
from drimbox.config import Settings
from drimbox.consumer import setup_consumer
from drimbox.demo.ris import publish_report
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.dimse.study_instances import StudyInstances
from drimbox.hl7.report import parse_report_message
from drimbox.source.dmp_gateway import XdsDmpGateway
from drimbox.xds.client import DmpClient, XdsRejected
from drimbox.xds.report_entry import PDF_FORMAT_CODE, REPORT_TYPE_CODE, report_entry
from drimbox.xds.structure import structure_signer
from tests.support.consumer import (
    LAUNCH_FORM,
    PATIENT,
    FakeAuth,
    Pro,
    consumer_settings,
    publish,
    source_identity,
    study_spec,
)

pytestmark = pytest.mark.sim
EXAM_C = ANS_EXAMS["C"]


def ris_settings(tmp: Path, dmp_url: str) -> Settings:
    s = Settings()
    s.box.var_dir = str(tmp / "ris-var")
    s.dmp.url = dmp_url
    s.dmp.timeout = 5.0
    return s


def oru_of(exam: Any = EXAM_C) -> bytes:
    return build_oru(build_cda(exam), control_id=f"T-{exam.name}")


async def test_the_ris_publishes_the_cda_report_and_the_dmp_keeps_it(dmp_url: str, tmp_path: Path) -> None:
    settings = ris_settings(tmp_path, dmp_url)
    unique_id = await publish_report(settings, oru_of())
    assert unique_id == EXAM_C.document_id
    async with DmpClient(dmp_url, signer=structure_signer(settings), identity=source_identity()) as client:
        (entry,) = await client.find_documents(PATIENT, type_codes=[REPORT_TYPE_CODE])
        assert entry.unique_id == EXAM_C.document_id and entry.mime_type == "text/xml"
        assert entry.class_code is not None and entry.class_code.code == "10"
        assert entry.format_code is not None and entry.format_code.code == PDF_FORMAT_CODE.code
        assert EXAM_C.study_uid in entry.study_uids and EXAM_C.accession in {a.value for a in entry.accession_numbers}
        assert entry.repository_unique_id
        data = await client.retrieve_document(entry.repository_unique_id, entry.unique_id, patient_id=PATIENT)
        assert data == parse_report_message(oru_of()).cda


async def test_the_dmp_refuses_a_report_whose_id_is_not_the_cda_s(dmp_url: str, tmp_path: Path) -> None:
    settings = ris_settings(tmp_path, dmp_url)
    message = parse_report_message(oru_of())
    gateway = XdsDmpGateway(settings)
    try:
        base = gateway.document_entry(message, StudyInstances(study_uid=EXAM_C.study_uid), "1.2.3")
        entry = dataclasses.replace(report_entry(base, message.cda, message.report), unique_id="1.2.250.1.999.77")
        with pytest.raises(XdsRejected, match="ClinicalDocument/id"):
            await gateway.client.provide_and_register(entry, gateway.submission_set(message), message.cda,
                                                      identity=gateway.identity(message))  # fmt: skip
        # The same CDA declared as a KOS is refused too: its kind is in the codes, not only the bytes.
        kos_like = dataclasses.replace(base, unique_id=EXAM_C.document_id)
        with pytest.raises(XdsRejected):
            await gateway.client.provide_and_register(kos_like, gateway.submission_set(message), message.cda,
                                                      identity=gateway.identity(message))  # fmt: skip
    finally:
        await gateway.close()


@pytest.fixture
async def consumer(tmp_path: Path, dmp_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    app[AUDIT] = MemoryAudit()
    setup_consumer(app, consumer_settings(tmp_path, dmp_url), FakeAuth(Pro()))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


def report_events(client: TestClient[web.Request, web.Application]) -> list[Any]:
    audit = client.app[AUDIT]
    assert isinstance(audit, MemoryAudit)
    return [e for e in audit.events if e.action == "consumer.report"]


async def test_the_consumer_shows_each_exam_s_report_or_says_there_is_none(
    consumer: TestClient[web.Request, web.Application], dmp_url: str, tmp_path: Path
) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    kos_c = await publish(dmp_url, settings, study_spec())  # exam C, whose report the RIS publishes
    kos_other = await publish(dmp_url, settings, study_spec(4, modality="MR", date="20220301"))
    await publish_report(ris_settings(tmp_path, dmp_url), oru_of())
    list_page = await consumer.post("/conso/launch", data=LAUNCH_FORM)
    assert list_page.status == 200 and f'href="/conso/exams/{kos_c}/report">Compte rendu</a>' in await list_page.text()

    listed = await (await consumer.get(f"/conso/api/patients/{LAUNCH_FORM['Patient.identifier.value']}/exams")).json()
    reports = {x["kos_uid"]: x["report"] for x in listed["exams"]}
    assert reports[kos_other] is None
    assert reports[kos_c] == {"url": f"/conso/exams/{kos_c}/report", "title": EXAM_C.title, "date": "2021-01-08"}
    detail = await (await consumer.get(f"/conso/api/exams/{kos_c}")).json()
    assert detail["report"] == reports[kos_c] and len(detail["series"]) == 2
    assert (await (await consumer.get(f"/conso/api/exams/{kos_other}")).json())["report"] is None

    page = await consumer.get(reports[kos_c]["url"])
    html = await page.text()
    assert page.status == 200 and '<html lang="fr">' in html
    assert "Compte rendu" in html and "Visualisation non diagnostique" in html and "08/01/2021" in html
    assert f'<iframe src="/conso/exams/{kos_c}/report.pdf"' in html
    assert "frame-ancestors 'self'" in page.headers["Content-Security-Policy"] and "script-src" not in html
    assert page.headers["Cache-Control"] == "no-store"

    pdf = await consumer.get(f"/conso/exams/{kos_c}/report.pdf")
    assert pdf.status == 200 and pdf.content_type == "application/pdf"
    assert (await pdf.read()).startswith(b"%PDF-")
    assert pdf.headers["Content-Disposition"].startswith("inline")
    assert {"default-src 'none'", "sandbox"} <= {d.strip() for d in pdf.headers["Content-Security-Policy"].split(";")}
    assert pdf.headers["X-Content-Type-Options"] == "nosniff"

    none = await consumer.get(f"/conso/exams/{kos_other}/report")
    assert none.status == 200 and "Aucun compte rendu publié pour cet examen" in await none.text()
    assert (await consumer.get(f"/conso/exams/{kos_other}/report.pdf")).status == 404
    english = await consumer.get(f"/conso/exams/{kos_other}/report", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert "No report published for this exam" in await english.text()

    unknown = await consumer.get("/conso/exams/1.2.250.1.999.404/report")
    assert unknown.status == 404 and "rouvrez la liste des examens" in await unknown.text()
    assert (await consumer.get("/conso/exams/not-a-uid/report")).status == 400

    events = report_events(consumer)
    shown = [e for e in events if e.outcome == SUCCESS and e.kos == kos_c]
    assert len(shown) == 2 and all(e.professional == Pro().id and e.detail["report"] == EXAM_C.document_id
                                   for e in shown)  # fmt: skip


async def test_the_report_follows_the_exam_s_access_rules(
    consumer: TestClient[web.Request, web.Application], dmp_url: str, tmp_path: Path
) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    kos_c = await publish(dmp_url, settings, study_spec())
    await publish_report(ris_settings(tmp_path, dmp_url), oru_of())
    assert (await consumer.post("/conso/launch", data=LAUNCH_FORM)).status == 200
    assert (await consumer.get(f"/conso/exams/{kos_c}/report")).status == 200
    # The software's next launch says the patient opposes: the report is refused like the images.
    assert (
        await consumer.post("/conso/launch", data={**LAUNCH_FORM, "InformationEtConsentement": "false"})
    ).status == 403
    for path in (f"/conso/exams/{kos_c}/report", f"/conso/exams/{kos_c}/report.pdf"):
        refused = await consumer.get(path)
        body = await refused.text()
        assert refused.status == 403 and "%PDF" not in body and "refusé" in body
    assert [e.outcome for e in report_events(consumer)][-2:] == [REFUSED, REFUSED]


async def test_nobody_logged_in_is_sent_to_the_login(dmp_url: str, tmp_path: Path) -> None:
    app = web.Application()
    setup_consumer(app, consumer_settings(tmp_path, dmp_url), FakeAuth(None))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path in ("/conso/exams/1.2.3/report", "/conso/exams/1.2.3/report.pdf"):
            resp = await client.get(path, allow_redirects=False)
            assert resp.status == 303 and resp.headers["Location"].startswith("/auth/login?")
