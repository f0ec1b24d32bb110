"""Exams from KOS made with build_kos and from DMP entries; what is new since the last visit; the HTML page."""

from __future__ import annotations

from pathlib import Path

from drimbox.consumer import exams as ex
from drimbox.consumer import pages
from drimbox.consumer.catalog import ExamList
from drimbox.consumer.launch import parse_launch
from drimbox.consumer.lookup import ExamFilters, PatientRef
from drimbox.consumer.store import ConsumerStore
from drimbox.i18n import Messages
from drimbox.manifest import parse_kos
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import Author, Code, ReferenceId, xon
from drimbox.xds.query import DocumentEntryInfo
from tests.support.consumer import ACN_ISSUER, INS, INS_OID, LAUNCH_FORM, PATIENT, Pro, make_kos, study_spec

PATIENT_REF = PatientRef(INS, INS_OID)


def entry(kos_uid: str, **overrides: object) -> DocumentEntryInfo:
    values: dict[str, object] = dict(
        entry_uuid="urn:uuid:7f0b5d1e-0000-4000-8000-000000000001", unique_id=kos_uid, patient_id=PATIENT,
        status=ns.STATUS_APPROVED, mime_type="application/dicom", repository_unique_id="1.2.250.1.213.4.1.1.1",
        service_start="20210108102500", format_code=Code(*ns.KOS_FORMAT_CODE),
        event_codes=[Code("CT", ns.MODALITY_SCHEME, "Computed Tomography"),
                     Code("774007", "2.16.840.1.113883.6.96", "structure de la tête et/ou du cou")],
        reference_ids=[ReferenceId.accession("ACN103", ACN_ISSUER), ReferenceId.study("1.2.250.1.213.4.5.2.1.103")],
        authors=[Author(institutions=[xon("Centre de radiologie Ambroise", "101235555")])],
    )  # fmt: skip
    values.update(overrides)
    return DocumentEntryInfo(**values)  # type: ignore[arg-type]


def test_an_exam_from_a_kos_alone() -> None:
    kos_uid, data = make_kos(study_spec(), public_url="https://source.example:8443/box")
    exam = ex.from_kos(parse_kos(data))
    assert exam.kos_uid == kos_uid and exam.study_uid == "1.2.250.1.213.4.5.2.1.103"
    assert (exam.date, exam.time, exam.accession) == ("2021-01-08", "10:25", "ACN103")
    assert exam.description == "CT Head W contrast IV"
    assert len(exam.series) == 2 and exam.instance_count == 6
    assert {s.modality for s in exam.series} == {"CT"} and exam.modalities == ["CT"]
    assert exam.sources == ["source.example:8443"]
    series = exam.series[0]
    assert series.retrieve_url.startswith(
        "https://source.example:8443/box/dicom-web/studies/1.2.250.1.213.4.5.2.1.103/series/"
    )
    assert series.count == 3 and len(set(series.instance_uids)) == 3
    detail = exam.to_json(with_series=True)
    assert detail["series_count"] == 2 and detail["instance_count"] == 6
    assert detail["series"][0]["count"] == 3 and detail["view_url"] == f"/viewer/?kos={kos_uid}"
    assert detail["import_url"] == f"/conso/api/exams/{kos_uid}/import"


def test_the_dmp_entry_completes_the_kos_and_secondary_capture_takes_its_modality() -> None:
    kos_uid, data = make_kos(study_spec(4, modality="MR", date="20220301"))  # MR written as Secondary Capture
    exam = ex.from_kos(parse_kos(data), entry(kos_uid, service_start="20220301083000",
                                              event_codes=[Code("MR", ns.MODALITY_SCHEME, "")]))  # fmt: skip
    assert (exam.date, exam.time) == ("2022-03-01", "08:30")
    assert exam.institution == "Centre de radiologie Ambroise" and exam.accession == "ACN104"
    assert [s.modality for s in exam.series] == ["MR", "MR"] and exam.status == ex.AVAILABLE


def test_an_exam_whose_kos_cannot_be_had_is_listed_as_unavailable() -> None:
    exam = ex.unavailable(entry("1.2.3.4"), "the DMP cannot be reached")
    assert exam.status == ex.UNAVAILABLE and exam.problem == "the DMP cannot be reached"
    assert (exam.date, exam.modalities, exam.regions) == ("2021-01-08", ["CT"], ["structure de la tête et/ou du cou"])
    assert exam.series == [] and exam.to_json()["instance_count"] == 0


def test_a_kos_of_another_patient_is_refused() -> None:
    _, data = make_kos(study_spec())
    kos = parse_kos(data)
    assert ex.kos_patient_problem(kos, INS, INS_OID) is None
    assert "another patient" in (ex.kos_patient_problem(kos, "248039121518984", INS_OID) or "")
    assert "authority" in (ex.kos_patient_problem(kos, INS, "1.2.250.1.213.1.4.8") or "")
    # On the list, the professional reads why in their language.
    other = ex.unavailable(entry("1.2.3.5"), ex.kos_patient_problem(kos, "248039121518984", INS_OID) or "")
    assert other.problem_code == "other_patient" and other.to_json()["problem_code"] == "other_patient"
    page = pages.exam_list(ExamList(PATIENT_REF, ExamFilters(), [other], None), Pro(), None, {"oid": INS_OID})
    assert "Indisponible : le manifeste désigne un autre patient" in page


def test_filters_are_checked_again_on_the_entries() -> None:
    e = entry("1.2.3.4")
    assert ExamFilters().matches(e)
    assert ExamFilters(modalities=("CT", "MR")).matches(e) and not ExamFilters(modalities=("MR",)).matches(e)
    assert ExamFilters(region="774007").matches(e) and not ExamFilters(region="774007^^1.2.3").matches(e)
    assert ExamFilters.from_query({"from": "2021-01-08", "to": "2021-01-08"}).matches(e)
    assert not ExamFilters.from_query({"from": "2021-01-09"}).matches(e)
    assert ExamFilters(accession="ACN103", accession_issuer=ACN_ISSUER).matches(e)
    assert not ExamFilters(accession="ACN103", accession_issuer="1.2.3").matches(e)
    assert not ExamFilters(study_uid="1.2.3").matches(e)
    assert not ExamFilters().matches(entry("1.2.3.4", status=ns.STATUS_DEPRECATED))
    assert not ExamFilters().matches(entry("1.2.3.4", format_code=Code("urn:x", "1.2.3")))


def test_newest_first() -> None:
    exams = [ex.Exam("a", date="2020-01-01"), ex.Exam("b", date="2022-05-01", time="08:00"),
             ex.Exam("c", date="2022-05-01", time="09:00"), ex.Exam("d")]  # fmt: skip
    assert [x.kos_uid for x in ex.newest_first(exams)] == ["c", "b", "a", "d"]


async def test_new_exams_are_counted_per_consultation(tmp_path: Path) -> None:
    store = await ConsumerStore.open(tmp_path)
    try:
        first = await store.record_visit("pro1", "p|o", ["k1", "k2"], window=60, now=1000.0)
        assert first.previous is None and first.new == {"k1", "k2"}
        # A reload within the consultation keeps saying what was new when it began.
        again = await store.record_visit("pro1", "p|o", ["k1", "k2"], window=60, now=1030.0)
        assert again.previous is None and again.new == {"k1", "k2"}
        later = await store.record_visit("pro1", "p|o", ["k1", "k2", "k3"], window=60, now=5000.0)
        assert later.previous == 1000.0 and later.new == {"k3"}
        other = await store.record_visit("pro2", "p|o", ["k1"], window=60, now=5000.0)
        assert other.previous is None and other.new == {"k1"}
    finally:
        await store.close()


def test_the_exam_is_named_by_its_title_or_study_not_by_the_document_class() -> None:
    kos_uid, data = make_kos(study_spec(study_description="TDM cérébrale"))
    generic = entry(kos_uid, title="CR d'imagerie médicale", class_code=Code("REPORTS", "1.2.250.1.213.1.1.4.1",
                                                                            "CR d'imagerie médicale"))  # fmt: skip
    assert ex.from_kos(parse_kos(data), generic).description == "TDM cérébrale"
    assert ex.from_kos(parse_kos(data), entry(kos_uid, title="Scanner du crâne")).description == "Scanner du crâne"


def test_the_exam_page_escapes_everything_and_has_no_script() -> None:
    kos_uid, data = make_kos(study_spec())
    good = ex.from_kos(parse_kos(data), entry(kos_uid))
    good.description, good.is_new = '<script>alert("x")</script>', True
    bad = ex.unavailable(entry("1.2.3.9", service_start="20190101"), "cannot <b>reach</b> the DMP")
    launch = parse_launch({**LAUNCH_FORM, "Patient.name.family": "O'<i>Brien"}.items())
    result = ExamList(PATIENT_REF, ExamFilters(modalities=("CT",)), [good, bad], previous_visit=1_700_000_000.0)
    html = pages.exam_list(result, Pro(given="<Jean>"), launch, {"oid": INS_OID})
    assert "<script" not in html and "&lt;script&gt;" in html and "&lt;b&gt;reach" in html
    assert "O&#x27;&lt;I&gt;BRIEN" in html and "&lt;Jean&gt;" in html
    assert "1 nouvel(s) examen(s) depuis votre dernière consultation" in html and "nouveau depuis" in html
    assert "08/01/2021" in html and "127.0.0.1:18080" in html and "Examens d&#x27;imagerie" in html
    assert f'href="/viewer/?kos={kos_uid}"' in html and 'action="/conso/imports"' in html
    assert f'name="one" value="{kos_uid}"' in html and f'name="kos" value="{kos_uid}"' in html
    assert "Indisponible : cannot" in html and "Tous les examens" in html
    assert html.index("08/01/2021") < html.index("01/01/2019")
    english = pages.exam_list(result, Pro(given="<Jean>"), launch, {"oid": INS_OID}, m=Messages("en"))
    assert "1 new exam(s) since your last consultation" in english and "2021-01-08" in english
    assert "Unavailable: cannot" in english and "Every exam" in english
