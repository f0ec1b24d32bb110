"""Writes and reads the XDM ZIP: INDEX.HTM, README.TXT, IHE_XDM/SUBSET01/METADATA.XML, the KOS and its signature."""

from __future__ import annotations

import hashlib
import html
import io
import posixpath
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from drimbox import __version__
from drimbox.xds import metadata, schema
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import KosDocumentEntry, MetadataError, SubmissionSet, SubmissionSignature
from drimbox.xds.query import DocumentEntryInfo, parse_document_entry
from drimbox.xds.signature import SignatureError, VerifiedSignature, verify_submission

R = f"{{{ns.RIM}}}"
SUBSET = "IHE_XDM/SUBSET01"
KOS_FILE = "KOS_1_1.DCM"  # names as in the ANS sample (KA202401/IHE_XDM/SS000001/KOS_1_1.DCM, SIGN_1.XML)
SIGNATURE_FILE = "SIGN_1.XML"
MAX_PACKAGE_BYTES = 32 * 1024 * 1024
MAX_MEMBERS = 64
CRLF = "\r\n"  # README.TXT and INDEX.HTM are read on any system, as in the reference's packages


class XdmError(ValueError):
    """A package that is not a usable XDM of one signed exam; the message says what, never patient identity."""


def _uri_slot(eo: etree._Element, uri: str) -> None:
    # rim.xsd: Slots come first in a RegistryObject; the ANS sample's trailing URI slot would not validate.
    slot = etree.Element(R + "Slot", name="URI")
    etree.SubElement(etree.SubElement(slot, R + "ValueList"), R + "Value").text = uri
    eo.insert(0, slot)


def _sender(submission: SubmissionSet) -> str:
    xon = submission.author.institutions[0] if submission.author.institutions else ""
    parts = xon.split("^")
    name, ident = metadata.hl7_unescape(parts[0]), metadata.hl7_unescape(parts[9]) if len(parts) > 9 else ""
    return f"{name} ({ident})" if ident else name


def _readme(sender: str, created: str) -> str:
    lines = [
        "Emetteur :", "=========", f"    . Organisme : {sender}", "",
        "Application de l'emetteur :", "==========================", "    . Nom : drimbox",
        f"    . Version : {__version__}", "",
        "Instructions :", "=============",
        ". Importez ce paquet IHE XDM dans une DRIMbox consommatrice : les images s'ouvrent depuis le",
        "  manifeste KOS (adresses de recuperation de la DRIMbox source).", "",
        f"Cree le : {created}", "",
        "Arborescence :", "=============", "    README.TXT", "    INDEX.HTM", "    IHE_XDM",
        "        SUBSET01", "            METADATA.XML", f"            {KOS_FILE}", f"            {SIGNATURE_FILE}", "",
    ]  # fmt: skip
    return CRLF.join(lines)


def _index(sender: str) -> str:
    # Names no patient: the package may travel by secure messaging, its cover page should not tell who it is about.
    s = html.escape(sender)
    return CRLF.join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">',
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Examen d\'imagerie (IHE XDM)</title></head><body>',
        f"<p>Emetteur : {s}</p>",
        '<p>Voir le fichier <a href="README.TXT">README.TXT</a>.</p>',
        f'<ul><li><a href="{SUBSET}/METADATA.XML">METADATA.XML</a></li>',
        f'<li><a href="{SUBSET}/{KOS_FILE}">Manifeste KOS</a></li>',
        f'<li><a href="{SUBSET}/{SIGNATURE_FILE}">Signature</a></li></ul>',
        "</body></html>", "",
    ])  # fmt: skip


def build_package(
    entry: KosDocumentEntry,
    submission: SubmissionSet,
    kos: bytes,
    signature: SubmissionSignature,
    *,
    now: datetime | None = None,
) -> bytes:
    """The XDM ZIP of one exam: the same metadata as its ITI-41, plus the URI of each document in the package."""
    payload, _ = metadata.build_provide_and_register(entry, submission, kos, signature=signature)
    request = payload.find(f"{{{ns.LCM}}}SubmitObjectsRequest")
    assert request is not None
    for eo in request.iter(R + "ExtrinsicObject"):
        _uri_slot(eo, KOS_FILE if eo.get("id") == entry.entry_uuid else SIGNATURE_FILE)
    standalone = etree.fromstring(etree.tostring(request))  # its own namespace declarations, out of the SOAP body
    schema.validate(standalone)
    xml = etree.tostring(standalone, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    created = (now or datetime.now(UTC)).astimezone(UTC)
    sender = _sender(submission)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        stamp = created.timetuple()[:6]
        for name, data in (("INDEX.HTM", _index(sender).encode()),
                           ("README.TXT", _readme(sender, created.strftime("%Y-%m-%dT%H:%M:%SZ")).encode()),
                           (f"{SUBSET}/METADATA.XML", xml), (f"{SUBSET}/{KOS_FILE}", kos),
                           (f"{SUBSET}/{SIGNATURE_FILE}", signature.xml)):  # fmt: skip
            z.writestr(zipfile.ZipInfo(name, stamp), data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class XdmExam:
    """What a valid package holds: the KOS's DocumentEntry and bytes, and the signature that covers them."""

    entry: DocumentEntryInfo
    kos: bytes
    signature: VerifiedSignature
    submission_uid: str


def _members(data: bytes, max_bytes: int) -> dict[str, bytes]:
    if len(data) > max_bytes:
        raise XdmError(f"the package is larger than {max_bytes} bytes")
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise XdmError("the package is not a ZIP file") from None
    if len(infos) > MAX_MEMBERS:
        raise XdmError(f"the package holds more than {MAX_MEMBERS} files")
    if sum(i.file_size for i in infos) > max_bytes:  # before inflating anything: no ZIP bomb
        raise XdmError(f"the package's content is larger than {max_bytes} bytes")
    members: dict[str, bytes] = {}
    with z:
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            if name.startswith("/") or ".." in name.split("/"):
                raise XdmError("the package names a file outside itself")
            try:
                members[name.upper()] = z.read(info)
            except (zipfile.BadZipFile, ValueError, OSError, RuntimeError):
                raise XdmError("a file of the package cannot be read (damaged or encrypted)") from None
    return members


def _slot(eo: etree._Element, name: str) -> str:
    for s in eo.iterfind(R + "Slot"):
        if s.get("name") == name:
            return (s.findtext(f"{R}ValueList/{R}Value") or "").strip()
    return ""


def _document(members: dict[str, bytes], subset: str, eo: etree._Element, what: str) -> bytes:
    uri = _slot(eo, "URI")
    if not uri:
        raise XdmError(f"the {what} entry has no URI slot naming its file")
    # IHE: relative to METADATA.XML; the ANS sample writes it relative to IHE_XDM ("SS000001/KOS_1_1.DCM").
    for base in (subset, posixpath.dirname(subset)):
        path = posixpath.normpath(posixpath.join(base, uri)).upper()
        if path in members and not path.startswith(".."):
            data = members[path]
            break
    else:
        raise XdmError(f"the {what} file named by the metadata is not in the package")
    size, digest = _slot(eo, "size"), _slot(eo, "hash")
    if size and size != str(len(data)):
        raise XdmError(f"the {what} file's size differs from the metadata's")
    if digest and digest.lower() != hashlib.sha1(data).hexdigest():
        raise XdmError(f"the {what} file's SHA-1 differs from the metadata's hash")
    return data


def read_package(data: bytes, *, max_bytes: int = MAX_PACKAGE_BYTES) -> XdmExam:
    """Check an XDM package of one exam (metadata schema, files, hashes, signature) and return what it holds."""
    members = _members(data, max_bytes)
    subsets = sorted(n.rsplit("/", 1)[0] for n in members
                     if n.startswith("IHE_XDM/") and n.endswith("/METADATA.XML") and n.count("/") == 2)  # fmt: skip
    if len(subsets) != 1:
        raise XdmError(f"an XDM package of one exam has one IHE_XDM/<subset>/METADATA.XML, found {len(subsets)}")
    subset = subsets[0]
    try:
        root = etree.fromstring(members[f"{subset}/METADATA.XML"], schema.safe_parser())
    except etree.XMLSyntaxError:
        raise XdmError("METADATA.XML is not well-formed XML") from None
    if root.tag != f"{{{ns.LCM}}}SubmitObjectsRequest":
        raise XdmError("METADATA.XML is not an ebRS lcm:SubmitObjectsRequest")
    try:
        schema.validate(root)
    except schema.SchemaError as exc:
        raise XdmError(f"METADATA.XML: {exc}") from None
    rol = root.find(R + "RegistryObjectList")
    assert rol is not None  # the schema requires it
    packages = rol.findall(R + "RegistryPackage")
    if len(packages) != 1:
        raise XdmError("METADATA.XML must hold one SubmissionSet")
    ss = packages[0]
    ss_uid = next((e.get("value", "") for e in ss.iterfind(R + "ExternalIdentifier")
                   if e.get("identificationScheme") == ns.SS_UNIQUE_ID), "")  # fmt: skip
    try:
        entries = [(eo, parse_document_entry(eo)) for eo in rol.iterfind(R + "ExtrinsicObject")]
    except MetadataError as exc:
        raise XdmError(f"METADATA.XML: {exc}") from None
    kos_entries = [(eo, e) for eo, e in entries if e.is_kos]
    signatures = [(eo, e) for eo, e in entries if e.type_code is not None
                  and e.type_code.code == metadata.SIGNATURE_TYPE_CODE.code]  # fmt: skip
    if len(kos_entries) != 1 or len(signatures) != 1 or len(entries) != 2:
        raise XdmError("the package must hold one KOS and its signature, and nothing else")
    (kos_eo, kos_entry), (sig_eo, _) = kos_entries[0], signatures[0]
    if not any(a.get("associationType") == metadata.ASSOC_SIGNS and a.get("sourceObject") == sig_eo.get("id")
               and a.get("targetObject") == ss.get("id") for a in rol.iterfind(R + "Association")):  # fmt: skip
        raise XdmError("no signs association links the signature to the SubmissionSet")
    kos = _document(members, subset, kos_eo, "KOS")
    signed = _document(members, subset, sig_eo, "signature")
    try:
        verified = verify_submission(signed, ss_uid, {kos_entry.unique_id: kos})
    except SignatureError as exc:
        raise XdmError(f"signature: {exc}") from None
    return XdmExam(kos_entry, kos, verified, ss_uid)
