"""Fuzzing URLs: DICOMweb paths, queries and Accept headers, the viewer's files and report link, the launch form."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import event, example, given
from hypothesis import strategies as st

from drimbox.archive import Archive
from drimbox.consumer.fields import InvalidFields
from drimbox.consumer.launch import OPTIONAL, REQUIRED, Launch, parse_launch
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.source.native_backend import NativeBackend
from drimbox.viewer.routes import viewer_routes
from tests.fuzz.support import BackgroundLoop, LoopbackApp, budget, raw_http
from tests.support.dicomweb import MULTIFRAME_SERIES, MULTIFRAME_SOP, MULTIFRAME_STUDY, write_samples
from tests.support.folder_backend import FolderBackend
from tests.test_viewer_routes import STUDY, FakeGate, FakeOutbox, Pub

SENTINEL = "drimbox-fuzz-sentinel-must-never-be-served"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The DICOMweb routes over the folder backend, and the viewer's routes over a folder with a secret next to it."""
    root = tmp_path_factory.mktemp("web")
    samples = write_samples(root / "data")
    viewer = root / "viewer"
    viewer.mkdir()
    (viewer / "index.html").write_text("<!doctype html><p>non-diagnostic viewer</p>")
    (viewer / "main.js").write_text("// viewer")
    for secret in (root / "secret.js", root / "data" / "secret.js", root / "secret.html"):
        secret.write_text(SENTINEL)
    loop = BackgroundLoop()
    backend = loop.run(FolderBackend.open(samples.root))
    loop.close()
    # The same data in the Native archive under /native: its QIDO is SQL over the SQLite index.
    archive = Archive.open(root / "var")
    for path in [*samples.ct_paths, samples.multiframe_path, samples.rle_path]:
        archive.store_part10(path.read_bytes(), source_ae="FUZZ")
    app = web.Application()
    app.add_routes(dicomweb_routes(backend))
    app.add_routes(dicomweb_routes(NativeBackend(archive), base="/native"))
    outbox = FakeOutbox({STUDY: [Pub("published")], "1.2.3": [Pub("withdrawn")]})
    app.add_routes(viewer_routes(FakeGate(True), outbox, directory=viewer))  # type: ignore[arg-type]
    http = LoopbackApp(app)
    yield http.port
    http.close()
    archive.close()


VALID = [MULTIFRAME_STUDY, MULTIFRAME_SERIES, MULTIFRAME_SOP]
HOSTILE_SEGMENTS = [
    "..", ".", "%2e%2e", "%2E%2E", "..%2F..%2Fetc%2Fpasswd", "..\\..\\secret.js", "%2e%2e%5csecret.js", "%5c", "%2F",
    "1.2.3' OR '1'='1", "1.2.3;DROP TABLE instances", "1" * 65, "1." * 40, "1..2", ".1", "1.2.", "1.2%00", "1.2%0A",
    "١.٢", "²", "1.2.3*", "1.2.3?", "%", "%zz", "~", "$", "1.2.3\\", "a" * 9000, "", "%C0%AE%C0%AE", "%u002e",
]  # fmt: skip
WORDS = ["studies", "series", "instances", "metadata", "frames", "rendered", "thumbnail", "bulkdata"]
FRAMES = ["1", "0", "-1", "1,2", "1,,2", "²", "1" * 30, ",", "1,3,99", "1-3", "1" + ",1" * 10001]
SEGMENT = st.one_of(st.sampled_from(VALID + HOSTILE_SEGMENTS + WORDS + FRAMES),
                    st.text(max_size=12).map(lambda t: quote(t, safe="")))  # fmt: skip
QUERY_KEYS = [
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
    "StudyDate",
    "PatientName",
    "00100010",
    "Modality",
    "StudyInstanceUID",
    "quality",
    "viewport",
    "window",
    "annotation",
    "charset",
    "SOPInstanceUID",
    "x",
    "PatientID",
    "AccessionNumber",
    "StudyTime",
    "SeriesInstanceUID",
    "ModalitiesInStudy",
    "00080020",
    "InstanceNumber",
    "NumberOfStudyRelatedInstances",
    "ReferencedSOPSequence",
    "0020000D",
    "FFFFFFFF",
]
QUERY_VALUES = st.one_of(st.sampled_from(["all", "-1", "0", "99999999999999999999", "1e3", "²", "*", "?", "",
                                          "20240101-20230101", "1,2,3", "a" * 3000, "%", "%00", "1.2.3\\1.2.4",
                                          "' OR 1=1 --", "x'); DROP TABLE instances; --", "_", "%%", "\\", "*'*",
                                          "PAT*", "-", "20240101-", "-20240101", "1.2.3,", ",", "CT\\MR", "1" * 70]),
                         st.text(max_size=10))  # fmt: skip
ACCEPT = st.one_of(st.sampled_from([
    "", "*/*", "application/dicom+json", 'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.3', "multipart/related; type=", "image/jpeg;q=x",
    "application/octet-stream;q=0", 'multipart/related; type="application/octet-stream"', "text/html", ";;;,,,",
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50', "image/png, image/jpeg;q=0.5",
    'multipart/related; boundary="' + "x" * 200 + '"', "application/dicom+json;q=0.0000001",
]), st.text(max_size=40).map(lambda t: t.encode("latin-1", "replace").decode("latin-1")))  # fmt: skip


# The route shapes, with slots for the study (S), series (E), instance (I), frames (F) and bulk data path (B).
SHAPES = [
    "studies", "series", "instances", "studies/S", "studies/S/metadata", "studies/S/series", "studies/S/instances",
    "studies/S/thumbnail", "studies/S/series/E", "studies/S/series/E/metadata", "studies/S/series/E/instances",
    "studies/S/series/E/instances/I", "studies/S/series/E/instances/I/metadata", "studies/S/series/E/instances/I/rendered",
    "studies/S/series/E/instances/I/frames/F", "studies/S/series/E/instances/I/frames/F/rendered",
    "studies/S/series/E/instances/I/frames/F/thumbnail", "studies/S/series/E/instances/I/bulkdata/B",
]  # fmt: skip
SLOTS = {"S": MULTIFRAME_STUDY, "E": MULTIFRAME_SERIES, "I": MULTIFRAME_SOP, "F": "1", "B": "7FE00010"}
BULK = ["7FE00010", "00081140/0/00081155", "00081140/²/00081155", "00081140/99/00081155", "zzzz", "0008,0016", "7FE0"]


@st.composite
def dicomweb_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    base = draw(st.sampled_from(["dicom-web", "native"]))
    if draw(st.booleans()):
        segments = [base, *draw(st.lists(SEGMENT, min_size=1, max_size=8))]
    else:  # a real route shape, each slot right or hostile
        segments = [base]
        for part in draw(st.sampled_from(SHAPES)).split("/"):
            if part not in SLOTS:
                segments.append(part)
            elif draw(st.integers(0, 2)) > 0:
                segments.append(SLOTS[part])
            else:
                pool = FRAMES if part == "F" else BULK if part == "B" else HOSTILE_SEGMENTS
                segments.append(draw(st.one_of(st.sampled_from(pool), SEGMENT)))
    query = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), QUERY_VALUES), max_size=4))
    target = "/" + "/".join(segments)
    if query:
        target += "?" + "&".join(f"{k}={quote(v, safe='%')}" for k, v in query)
    return target.encode("utf-8"), draw(ACCEPT)


def _clean_header(value: str) -> str:
    return "".join(c for c in value if c >= " " and c != "\x7f")


def _is_http_layer_refusal(answer: object) -> bool:
    """aiohttp's own answers before any route runs (bad request line, too long): plain text, not ours."""
    body = getattr(answer, "body", b"")
    return body.startswith((b"Bad status", b"Invalid", b"Got more than", b"400, message", b"Bad Request"))


@budget(0.6)
@given(dicomweb_requests())
@example((f"/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{MULTIFRAME_SOP}/frames/²"
          .encode(), ""), )  # fmt: skip  # found: "²".isdigit() then int("²")
@example((f"/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{MULTIFRAME_SOP}/bulkdata/"
          "00081140/²/00081155".encode(), ""))  # fmt: skip
def test_dicomweb_answers_hostile_urls_with_json_errors(box: int, request: tuple[bytes, str]) -> None:
    target, accept = request
    answer = raw_http(box, "GET", target, {"Accept": _clean_header(accept)} if accept else None)
    event(f"/{target.split(b'/')[1].decode()} HTTP {answer.status}")
    assert answer.status != 500 and answer.status < 502, (answer.status, target, answer.body[:300])
    if answer.status >= 400 and not _is_http_layer_refusal(answer):
        assert answer.headers.get("content-type", "").startswith("application/json"), (target, answer.body[:200])
        assert "error" in json.loads(answer.body)
    assert SENTINEL.encode() not in answer.body


def test_overlong_urls_are_refused_before_any_handler(box: int) -> None:
    for target in (b"/dicom-web/studies/" + b"1." * 20_000, b"/dicom-web/studies?PatientName=" + b"a" * 20_000):
        answer = raw_http(box, "GET", target)
        assert 400 <= answer.status < 500, answer.status


VIEWER_NAMES = st.one_of(st.sampled_from([
    "../secret.js", "..%2Fsecret.js", "%2e%2e/secret.js", "%2e%2e%2fsecret.js", "..\\secret.js", "%2e%2e%5csecret.js",
    "..%5Csecret.js", "....//secret.js", "%252e%252e%252fsecret.js", "..;/secret.js", "%c0%ae%c0%ae/secret.js",
    "../../data/secret.js", "main.js%00.html", "main.js/", "/etc/passwd", "..", ".", "index.html", "main.js",
    "secret.html", "%2e%2e/secret.html", "README.md", ".hidden.js", "main.JS", "main.js?x=../secret.js",
]), st.text(max_size=20).map(lambda t: quote(t, safe="/%.")))  # fmt: skip


@budget(0.5)
@given(VIEWER_NAMES)
def test_viewer_serves_only_its_own_files(box: int, name: str) -> None:
    answer = raw_http(box, "GET", b"/viewer/" + name.encode())
    assert answer.status in (200, 301, 400, 404, 405), (answer.status, name)
    assert SENTINEL.encode() not in answer.body, name
    if answer.status == 200:
        assert answer.body in (b"<!doctype html><p>non-diagnostic viewer</p>", b"// viewer"), name


LINK_KEYS = ["requestType", "studyUID", "Accessionnumber", "idCDA", "REQUESTTYPE", "studyuid", "x"]
LINK_VALUES = st.one_of(st.sampled_from(["STUDY", "study", "SERIES", STUDY, "1.2.3", STUDY + "\n", "1" * 65, "١.٢",
                                         "ACN103", "a" * 300, "", "<script>", "1.2.3' OR 1=1"]),
                        st.text(max_size=12))  # fmt: skip


@budget(0.5)
@given(st.lists(st.tuples(st.sampled_from(LINK_KEYS), LINK_VALUES), max_size=5))
@example([("requestType", "STUDY"), ("studyUID", STUDY + "\n")])  # found: "$" let a final newline through
def test_report_link_answers_a_redirect_or_an_error_page(box: int, params: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params)
    answer = raw_http(box, "GET", f"/IHEInvokeImageDisplay?{query}".encode())
    assert answer.status in (303, 400, 404, 410), (answer.status, params)
    if answer.status == 303:
        location = answer.headers["location"]
        study = location.split("study=", 1)[1]
        assert study == STUDY, location
    else:
        assert b"<script>" not in answer.body


# -- the consumer's launch form (parsed before anything else sees it) -------------------------------------------

GOOD_FORM = {
    "Patient.identifier.value": "279035121518989", "Patient.identifier.system": "1.2.250.1.213.1.4.10",
    "Patient.name.family": "PAT-TROIS", "Patient.name.given": "DOMINIQUE", "Patient.gender": "female",
    "Patient.birthDate": "1979-03-28", "InformationEtConsentement": "true", "Address.district": "51215",
    "PatientID": "IPP101", "PatientIDIssuer": "1.2.250.1.213.4.5.2.4",
}  # fmt: skip
FORM_VALUES = st.one_of(st.sampled_from([
    "", " ", "²", "١٢٣", "1" * 200, "a" * 5000, "1979-02-30", "0000-00-00", "9999-12-31", "19790328", "2024-01-01/2023-01-01",
    "CT\\MR", "CT,,MR", "1.2..3", "1.2.3\n", "<script>", "\x00", "oui", "NON", "M", "x^y^z", "279035121518989 ",
]), st.text(max_size=20))  # fmt: skip


@given(st.dictionaries(st.sampled_from([*REQUIRED, *OPTIONAL, "InformationEtOppositionConsultation", "patient.GENDER"]),
                       FORM_VALUES, max_size=6), st.booleans())  # fmt: skip
def test_launch_form_gives_a_launch_or_names_the_bad_fields(changes: dict[str, str], twice: bool) -> None:
    form = list({**GOOD_FORM, **changes}.items())
    if twice and changes:
        form.append(next(iter(changes.items())))
    try:
        launch = parse_launch(form)
    except InvalidFields as exc:
        assert str(exc)
    else:
        assert isinstance(launch, Launch)
        assert len(launch.ins) == 15 and launch.ins.isascii()  # digits, or 2A/2B (Corsica)
        Launch.from_json(launch.to_json())


# Keys the index matches on, and values shaped like what they take (so the SQL runs) with hostile twists.
MATCH_KEYS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "Modality",
    "ModalitiesInStudy",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "00100010",
    "0020000D",
    "StudyDescription",
    "SeriesNumber",
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
]
MATCH_VALUES = [
    "*", "?", "PAT*", "*TROIS*", "PAT-TROIS^DOMINIQUE", "ACN103", "CT", "CT\\MR", "20240506", "20240101-20241231",
    "-20240101", "20240101-", "1200-1300", MULTIFRAME_STUDY, f"{MULTIFRAME_STUDY}\\1.2.3", f"{MULTIFRAME_STUDY},1.2",
    "1", "3", "O'Brien", "100%", "a_b", "[x]", "\\", "*\\*", "' OR ''='", "\"", "all", "PatientName,StudyDate",
]  # fmt: skip


@budget(0.6)
@given(st.sampled_from(["dicom-web", "native"]),
       st.sampled_from(["studies", "series", "instances", f"studies/{MULTIFRAME_STUDY}/series",
                        f"studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances"]),
       st.lists(st.tuples(st.sampled_from(MATCH_KEYS), st.one_of(QUERY_VALUES, st.sampled_from(MATCH_VALUES))),
                max_size=3))  # fmt: skip
@example("native", "studies", [("offset", "99999999999999999999")])  # found: SQLite OverflowError → 500
@example("native", "studies", [("ModalitiesInStudy", "\\")])  # found: an empty OR list, SQL syntax error → 500
@example("native", "series", [("SeriesNumber", "99999999999999999999")])  # found: SQLite OverflowError → 500
def test_qido_answers_matches_or_a_json_error(box: int, base: str, level: str, query: list[tuple[str, str]]) -> None:
    target = f"/{base}/{level}?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    answer = raw_http(box, "GET", target.encode(), {"Accept": "application/dicom+json"})
    event(f"/{base} HTTP {answer.status}")
    assert answer.status in (200, 204, 400), (answer.status, target, answer.body[:300])
    if answer.status == 200:
        assert isinstance(json.loads(answer.body), list)
    elif answer.status == 400 and not _is_http_layer_refusal(answer):  # a request line over 8190 bytes
        assert "error" in json.loads(answer.body)


RENDER_VALUES = st.one_of(st.sampled_from([
    "40,400", "nan,400", "40,nan", "inf,1", "-inf,1e309", "40,1e-320", "1e308,1e308", "40,400,sigmoid", "40,400,LINEAR_EXACT",
    "40,0", "40,-1", "40", ",", "40,400,x", "40,400,linear,1", "0x10,5", "١,٢", "4096,4096", "1,1", "0,0", "64,64,0,0,64,64",
    "4097,1", "100", "0", "101", "-5", "²", "",
]), st.text(max_size=10))  # fmt: skip
RENDER_PATHS = [
    f"/{{base}}/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{MULTIFRAME_SOP}/rendered",
    f"/{{base}}/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{MULTIFRAME_SOP}/frames/2/rendered",
    f"/{{base}}/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{MULTIFRAME_SOP}/thumbnail",
    f"/{{base}}/studies/{MULTIFRAME_STUDY}/thumbnail",
]


@budget(0.3)
@given(st.sampled_from(["dicom-web", "native"]), st.sampled_from(RENDER_PATHS),
       st.dictionaries(st.sampled_from(["window", "viewport", "quality", "annotation"]), RENDER_VALUES, max_size=3),
       st.sampled_from(["image/jpeg", "image/png", "image/gif", "*/*", "image/*", "image/png;q=0,image/jpeg;q=0"]))  # fmt: skip
@example("native", RENDER_PATHS[0], {"window": "nan,400"}, "image/jpeg")  # found: rendered a blank image
def test_rendered_answers_an_image_or_a_json_error(
    box: int, base: str, path: str, params: dict[str, str], accept: str
) -> None:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    answer = raw_http(box, "GET", (path.format(base=base) + "?" + query).encode(), {"Accept": accept})
    event(f"HTTP {answer.status}")
    assert answer.status in (200, 400, 404, 406), (answer.status, path, params, answer.body[:200])
    if answer.status == 200:
        assert answer.headers["content-type"].startswith("image/")
        assert _finite_window(params.get("window", "")), "a NaN or infinite window rendered an image"
    else:
        assert "error" in json.loads(answer.body)


def _finite_window(text: str) -> bool:
    try:
        return all(math.isfinite(float(p)) for p in text.split(",")[:2]) if text else True
    except ValueError:
        return True
