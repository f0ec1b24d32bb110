"""The XDM ZIP: the layout IHE ITI-32 and the ANS sample use, and what a reader refuses."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable

import pytest
from lxml import etree

from drimbox.state.credentials import generate_test_credentials
from drimbox.xds import metadata as m
from drimbox.xds import namespaces as ns
from drimbox.xds import schema
from drimbox.xds.signature import SignedDocument, sign_submission
from drimbox.xds.vihf import VihfSigner
from drimbox.xds.xdm import KOS_FILE, SIGNATURE_FILE, XdmError, build_package, read_package
from tests.test_xds_metadata import KOS, make_entry, make_submission

R = f"{{{ns.RIM}}}"
META = "IHE_XDM/SUBSET01/METADATA.XML"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> VihfSigner:
    return VihfSigner.from_files(*generate_test_credentials(tmp_path_factory.mktemp("xdm"), "xdm test"))


def package(signer: VihfSigner, kos: bytes = KOS, signed_kos: bytes | None = None) -> bytes:
    entry, ss = make_entry(), make_submission()
    xml = sign_submission(signer.key, signer.certificate, "sig-x", ss.unique_id,
                          [SignedDocument(entry.unique_id, kos if signed_kos is None else signed_kos)])  # fmt: skip
    return build_package(entry, ss, kos, m.SubmissionSignature("1.2.250.1.999.1.1.5.9", xml))


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def test_layout_is_the_ihe_xdm_one(signer: VihfSigner) -> None:
    files = members(package(signer))
    assert set(files) == {"INDEX.HTM", "README.TXT", META, f"IHE_XDM/SUBSET01/{KOS_FILE}",
                          f"IHE_XDM/SUBSET01/{SIGNATURE_FILE}"}  # fmt: skip
    assert files[f"IHE_XDM/SUBSET01/{KOS_FILE}"] == KOS
    root = etree.fromstring(files[META])
    assert root.tag == f"{{{ns.LCM}}}SubmitObjectsRequest"
    schema.validate(root)
    uris = {eo.get("mimeType"): eo.findtext(f"{R}Slot[@name='URI']/{R}ValueList/{R}Value")
            for eo in root.iter(f"{R}ExtrinsicObject")}  # fmt: skip
    assert uris == {"application/dicom": KOS_FILE, "text/xml": SIGNATURE_FILE}
    readme = files["README.TXT"].decode()
    assert "Centre de radiologie Ambroise (101235555)" in readme and "\r\n" in readme
    assert b"PAT-TROIS" not in files["INDEX.HTM"] + files["README.TXT"]  # the cover pages name no patient


def test_package_reads_back(signer: VihfSigner) -> None:
    exam = read_package(package(signer))
    assert exam.kos == KOS and exam.entry.unique_id == make_entry().unique_id and exam.entry.is_kos
    assert exam.submission_uid == make_submission().unique_id
    assert exam.signature.certificate == signer.certificate


def _replace(name: str, data: bytes) -> Callable[[dict[str, bytes]], None]:
    def edit(files: dict[str, bytes]) -> None:
        files[name] = data

    return edit


def _ans_layout(files: dict[str, bytes]) -> None:
    """As the ANS sample: IHE_XDM/SS000001/, and URI slots relative to IHE_XDM."""
    for name in list(files):
        if name.startswith("IHE_XDM/SUBSET01/"):
            files[name.replace("SUBSET01", "SS000001")] = files.pop(name)
    meta = files["IHE_XDM/SS000001/METADATA.XML"]
    files["IHE_XDM/SS000001/METADATA.XML"] = meta.replace(f">{KOS_FILE}<".encode(), f">SS000001/{KOS_FILE}<".encode())


def test_ans_layout_is_read_too(signer: VihfSigner) -> None:
    files = members(package(signer))
    _ans_layout(files)
    assert read_package(rezip(files)).kos == KOS


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_replace(f"IHE_XDM/SUBSET01/{KOS_FILE}", KOS + b"x"), "size differs"),
        (lambda f: f.pop(f"IHE_XDM/SUBSET01/{SIGNATURE_FILE}"), "signature file named by the metadata is not"),
        (_replace(META, b"<not xml"), "not well-formed"),
        (_replace(META, b"<x/>"), "not an ebRS lcm:SubmitObjectsRequest"),
        (_replace("IHE_XDM/SUBSET02/METADATA.XML", b"<x/>"), "found 2"),
        (lambda f: f.pop(META), "found 0"),
        (_replace("../evil", b"x"), "outside itself"),
    ],
    ids=["kos altered", "signature missing", "metadata broken", "not ebRS", "two subsets", "no metadata", "traversal"],
)
def test_damaged_packages_are_refused(
    signer: VihfSigner, edit: Callable[[dict[str, bytes]], None], message: str
) -> None:
    files = members(package(signer))
    edit(files)
    with pytest.raises(XdmError, match=message):
        read_package(rezip(files))


def test_signature_that_does_not_cover_the_kos_is_refused(signer: VihfSigner) -> None:
    with pytest.raises(XdmError, match="signature: the manifest digest"):
        read_package(package(signer, signed_kos=KOS + b"other"))


def test_metadata_that_fails_its_schema_is_refused(signer: VihfSigner) -> None:
    files = members(package(signer))
    root = etree.fromstring(files[META])
    eo = root.find(f".//{R}ExtrinsicObject")
    assert eo is not None
    eo.append(etree.Element(R + "Slot", name="late"))  # after ExternalIdentifier: not where rim.xsd allows a Slot
    files[META] = etree.tostring(root)
    with pytest.raises(XdmError, match="does not conform to its schema"):
        read_package(rezip(files))


def test_kos_hash_is_checked(signer: VihfSigner) -> None:
    files = members(package(signer))
    same_size = bytes(reversed(KOS))
    files[f"IHE_XDM/SUBSET01/{KOS_FILE}"] = same_size
    assert hashlib.sha1(same_size).hexdigest() != hashlib.sha1(KOS).hexdigest()
    with pytest.raises(XdmError, match="SHA-1 differs"):
        read_package(rezip(files))


def test_not_a_zip_and_oversized_are_refused(signer: VihfSigner) -> None:
    with pytest.raises(XdmError, match="not a ZIP"):
        read_package(b"PK\x03\x04 nothing")
    with pytest.raises(XdmError, match="larger than"):
        read_package(package(signer), max_bytes=100)
