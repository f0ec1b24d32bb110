"""The contextual launch: every field's check, launch storage, and the launch/login redirects (no DMP needed)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from drimbox.consumer import fields
from drimbox.consumer.launch import Launch, parse_launch
from drimbox.consumer.store import ConsumerStore
from tests.support.consumer import INS, INS_OID, LAUNCH_FORM, FakeAuth, Pro, consumer_client, consumer_settings


def problems(form: dict[str, str]) -> dict[str, str]:
    with pytest.raises(fields.InvalidFields) as info:
        parse_launch(form.items())
    return dict(info.value.problems)


def with_(**changes: str) -> dict[str, str]:
    form = dict(LAUNCH_FORM)
    for name, value in changes.items():
        key = name.replace("__", ".")
        if value == "<drop>":
            form.pop(key, None)
        else:
            form[key] = value
    return form


def corsican_ins() -> str:
    nir = "185052A004123"
    return nir + f"{97 - int(nir.replace('2A', '19')) % 97:02d}"


def test_a_complete_form_is_read_and_normalised() -> None:
    form = with_(
        Patient__gender="F", Patient__birthDate="19790328", StudyInstanceUID="1.2.250.1.213.4.5.2.1.103",
        AccessionNumber="ACN103", AccessionNumberIssuer="urn:oid:1.2.250.1.925.994044785528.27", Modality="ct\\MR",
        StudyDate="20210101-20210131", AnatomicRegion="774007^^2.16.840.1.113883.6.96", Situation="Cabinet 1",
    )  # fmt: skip
    launch = parse_launch(form.items())
    assert (launch.ins, launch.ins_oid, launch.gender, launch.birth_date) == (INS, INS_OID, "female", "1979-03-28")
    assert launch.informed is True and launch.situation == "Cabinet 1"
    f = launch.filters
    assert f.modalities == ("CT", "MR") and f.region == "774007^^2.16.840.1.113883.6.96"
    assert (f.date_from, f.date_to) == (dt.date(2021, 1, 1), dt.date(2021, 1, 31))
    assert (f.accession, f.accession_issuer, f.study_uid) == ("ACN103", "1.2.250.1.925.994044785528.27",
                                                              "1.2.250.1.213.4.5.2.1.103")  # fmt: skip
    assert Launch.from_json(launch.to_json()) == launch


def test_the_ans_form_as_the_ans_test_server_posts_it_is_read() -> None:
    # The body the ANS contextual-call test server accepts: every name exactly as its ParameterList.java spells it.
    body = ("Patient.identifier.value=279035121518989&Patient.identifier.system=urn%3Aoid%3A1.2.250.1.213.1.4.10"
            "&Patient.name.family=PAT-TROIS&Patient.name.given=DOMINIQUE&Patient.gender=female"
            "&Patient.birthDate=1979-03-28&Address.district=51215&InformationEtConsentement=true&PatientID=IPP101"
            "&PatientIDIssuer=1.2.250.1.213.4.5.2.4&Situation=499700427885006")  # fmt: skip
    launch = parse_launch((k, v[0]) for k, v in parse_qs(body, keep_blank_values=True).items())
    assert (launch.ins, launch.ins_oid, launch.family, launch.informed) == (INS, INS_OID, "PAT-TROIS", True)
    assert (launch.district, launch.patient_id, launch.patient_id_issuer, launch.situation) == (
        "51215",
        "IPP101",
        "1.2.250.1.213.4.5.2.4",
        "499700427885006",
    )
    assert Launch.from_json(launch.to_json()) == launch


def test_field_names_are_case_sensitive_and_unknown_ones_refused() -> None:
    # Lower-cased names (what the ANS test server accepted before December 2024) are refused, naming the spelling.
    form = {k.lower() if k.startswith("Patient.") else k: v for k, v in LAUNCH_FORM.items()}
    found = problems(form)
    assert found["patient.identifier.value"] == ("is not a field of the ANS launch form: it is spelled "
                                                 "Patient.identifier.value")  # fmt: skip
    assert found["Patient.identifier.value"] == "is missing"
    assert problems({**LAUNCH_FORM, "situation": "1"}) == {
        "situation": "is not a field of the ANS launch form: it is spelled Situation"
    }
    assert problems({**LAUNCH_FORM, "Comment": "x"}) == {"Comment": "is not a field of the ANS launch form"}
    # A hostile name is not echoed.
    assert problems({**LAUNCH_FORM, "<script>\n": "x"}) == {"(a field)": "is not a field of the ANS launch form"}


def test_the_older_consent_field_is_read_with_the_same_meaning() -> None:
    form = {k: v for k, v in LAUNCH_FORM.items() if k != "InformationEtConsentement"}
    form["InformationEtOppositionConsultation"] = "false"
    form["Patient.identifier.system"] = INS_OID  # the bare OID is accepted too
    launch = parse_launch(form.items())
    assert launch.informed is False and launch.ins_oid == INS_OID
    # The access token a launch may carry is this box's extension: not an ANS field, not refused.
    assert parse_launch({**LAUNCH_FORM, "access_token": "t"}.items()).ins == INS


def test_corsican_ins_uses_19_and_18_for_the_key() -> None:
    assert parse_launch(with_(**{"Patient__identifier__value": corsican_ins()}).items()).ins == corsican_ins()


@pytest.mark.parametrize("name", ["Patient.identifier.value", "Patient.identifier.system", "Patient.name.family",
                                  "Patient.name.given", "Patient.gender", "Patient.birthDate", "Address.district",
                                  "InformationEtConsentement", "PatientID", "PatientIDIssuer"])  # fmt: skip
def test_each_required_field_is_named_when_missing(name: str) -> None:
    form = dict(LAUNCH_FORM)
    form.pop(name)
    assert problems(form) == {name: "is missing"}
    form[name] = "   "
    assert problems(form) == {name: "is missing"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Patient.identifier.value", "27903512151898", "15-character"),
        ("Patient.identifier.value", "279035121518988", "NIR key"),
        ("Patient.identifier.value", "2790351215189AB", "digits only"),
        ("Patient.identifier.value", "979035121518989", "digits only"),
        ("Patient.identifier.system", "1.2.250.1.213.1.4.7", "not an INS authority"),
        ("Patient.identifier.system", "urn:oid:not-an-oid", "must be an OID"),
        ("Patient.name.family", "PAT\x00TROIS", "control characters"),
        ("Patient.name.given", "x" * 101, "longer than 100"),
        ("Patient.gender", "femme", "male, female"),
        ("Patient.birthDate", "28/03/1979", "YYYY-MM-DD"),
        ("Patient.birthDate", "1979-02-30", "YYYY-MM-DD"),
        ("Patient.birthDate", (dt.date.today() + dt.timedelta(days=2)).isoformat(), "future"),
        ("InformationEtConsentement", "peut-être", "true or false"),
        ("StudyInstanceUID", "1.2.03.4", "DICOM UID"),
        ("StudyInstanceUID", "1." + "2" * 64, "DICOM UID"),
        ("AccessionNumber", "A" * 65, "longer than 64"),
        ("Modality", "C*T", "modality codes"),
        ("StudyDate", "2021-13-01", "date"),
        ("StudyDate", "20210201-20210101", "ends before it starts"),
        ("AnatomicRegion", "tête", "a code"),
        ("AnatomicRegion", "774007^^SNOMED", "must be an OID"),
        ("Situation", "a\nb", "control characters"),
        ("Address.district", "5" * 65, "longer than 64"),
        ("PatientID", "IPP\x00101", "control characters"),
        ("PatientIDIssuer", "x" * 65, "longer than 64"),
    ],
)
def test_each_invalid_field_is_named_with_its_problem(field: str, value: str, message: str) -> None:
    found = problems({**LAUNCH_FORM, field: value})
    assert list(found) == [field] and message in found[field], found


def test_issuer_without_accession_and_conflicting_duplicates_are_refused() -> None:
    assert "without an AccessionNumber" in problems({**LAUNCH_FORM, "AccessionNumberIssuer": "1.2.3"})[
        "AccessionNumberIssuer"]  # fmt: skip
    form = [*LAUNCH_FORM.items(), ("Patient.gender", "male")]
    with pytest.raises(fields.InvalidFields) as info:
        parse_launch(form)
    assert dict(info.value.problems) == {"Patient.gender": "is given twice with different values"}


def test_every_bad_field_is_listed_at_once_without_quoting_values() -> None:
    found = problems(with_(Patient__identifier__value="123", Patient__gender="x", Patient__name__family="<drop>"))
    assert set(found) == {"Patient.identifier.value", "Patient.gender", "Patient.name.family"}
    assert "123" not in " ".join(found.values())


def test_date_ranges_and_ins_mask() -> None:
    assert fields.parse_date_range("-20210131") == (None, dt.date(2021, 1, 31))
    assert fields.parse_date_range("2021-01-01-") == (dt.date(2021, 1, 1), None)
    assert fields.parse_date_range("2021-01-01") == (dt.date(2021, 1, 1), dt.date(2021, 1, 1))
    assert fields.mask_ins(INS) == "INS…989" and INS not in fields.mask_ins(INS)


async def test_launches_are_kept_until_their_ttl(tmp_path: Path) -> None:
    store = await ConsumerStore.open(tmp_path)
    try:
        launch_id = await store.save_launch({"a": 1}, ttl=60, now=1000.0)
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", launch_id)
        assert await store.launch(launch_id, ttl=60, now=1030.0) == {"a": 1}
        assert await store.launch(launch_id, ttl=60, now=1061.0) is None
        assert await store.launch("../etc/passwd", ttl=60) is None
        other = await store.save_launch({"b": 2}, ttl=60, now=2000.0)  # purges the expired one
        assert await store.launch(launch_id, ttl=10_000, now=2000.0) is None
        assert await store.launch(other, ttl=60, now=2000.0) == {"b": 2}
    finally:
        await store.close()


async def test_invalid_launch_answers_400_listing_the_fields(tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, "http://127.0.0.1:9/dmp")
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        resp = await client.post("/conso/launch", data={**LAUNCH_FORM, "Patient.birthDate": "1979-99-99",
                                                        "Patient.gender": ""}, allow_redirects=False)  # fmt: skip
        assert resp.status == 400 and resp.content_type == "text/html"
        page = await resp.text()
        assert "<code>Patient.birthDate</code>" in page and "<code>Patient.gender</code> est absent" in page
        assert "<script" not in page and resp.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_launch_without_login_goes_through_login_and_back_without_reposting(tmp_path: Path) -> None:
    auth = FakeAuth(None)
    settings = consumer_settings(tmp_path, "http://127.0.0.1:9/dmp")
    async with consumer_client(settings, auth) as client:
        resp = await client.post("/conso/launch", data={**LAUNCH_FORM, "Modality": "CT"}, allow_redirects=False)
        assert resp.status == 303
        login = urlsplit(resp.headers["Location"])
        assert login.path == "/auth/login"
        next_path = parse_qs(login.query)["next"][0]
        launch_id = next_path.rsplit("/", 1)[1]
        assert next_path == f"/conso/launches/{launch_id}" and INS not in resp.headers["Location"]
        # Still not logged in: back to the login, the launch kept.
        resp = await client.get(next_path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/auth/login?")
        auth.pro = Pro()
        resp = await client.get(next_path, allow_redirects=False)
        assert resp.status == 303
        target = urlsplit(resp.headers["Location"])
        assert target.path == f"/conso/patients/{INS}/exams"
        assert parse_qs(target.query) == {"oid": [INS_OID], "launch": [launch_id], "modality": ["CT"]}
        resp = await client.get("/conso/launches/" + "x" * 32, allow_redirects=False)
        assert resp.status == 404 and "a expiré" in await resp.text()


async def test_logged_in_launch_goes_straight_to_the_list_and_unlogged_api_is_401(tmp_path: Path) -> None:
    auth = FakeAuth(Pro())
    settings = consumer_settings(tmp_path, "http://127.0.0.1:9/dmp")
    async with consumer_client(settings, auth) as client:
        resp = await client.post("/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith(f"/conso/patients/{INS}/exams?oid=")
        auth.pro = None
        resp = await client.get(f"/conso/api/patients/{INS}/exams")
        assert resp.status == 401
        body = await resp.json()
        assert body["reason"] == "login_required" and body["login_url"].startswith("/auth/login?next=")
        resp = await client.get(f"/conso/patients/{INS}/exams?modality=CT", allow_redirects=False)
        assert resp.status == 303
        assert parse_qs(urlsplit(resp.headers["Location"]).query)["next"] == [
            f"/conso/patients/{INS}/exams?modality=CT"
        ]
        assert (await client.get("/conso/api/exams/1.2.3")).status == 401


async def test_bad_list_requests_name_their_parameters(tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, "http://127.0.0.1:9/dmp")
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        resp = await client.get("/conso/api/patients/123/exams?modality=C*T&from=2021-99-01&oid=1.2.3")
        assert resp.status == 400
        body = await resp.json()
        assert [f["field"] for f in body["fields"]] == ["ins", "oid", "modality", "from"]
        assert (await client.get("/conso/api/exams/01.2")).status == 400
        resp = await client.get(f"/conso/patients/{INS}/exams?to=yesterday")
        assert resp.status == 400 and "<code>to</code>" in await resp.text()


async def test_an_unreachable_dmp_is_a_503_page_and_json(tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, "http://127.0.0.1:9/dmp")  # port 9 (discard): nothing listens
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        resp = await client.post("/conso/launch", data=LAUNCH_FORM)  # follows the 303 to the list
        assert resp.status == 503 and "Le DMP ne répond pas" in await resp.text()
        resp = await client.get(f"/conso/api/patients/{INS}/exams")
        assert resp.status == 503 and (await resp.json())["reason"] == "dmp_unavailable"


def test_the_auth_gate_adapter_satisfies_consumer_auth() -> None:
    from drimbox.auth.professional import Professional
    from drimbox.consumer.auth import ProfessionalLike
    from drimbox.consumer.gate import GateAuth, GateProfessional

    view: ProfessionalLike = GateProfessional(Professional(id="810100000001", family="MEDIONI", profession="10"))
    assert (view.profession_code, view.specialty_code, view.structure_id) == ("10", None, None)
    auth = GateAuth.__new__(GateAuth)  # login_url needs no gate
    assert auth.login_url("/conso/launches/abc") == "/auth/login?next=%2Fconso%2Flaunches%2Fabc"
    assert auth.login_url("//evil.example/") == "/auth/login?next=%2F"
