"""The attributes the index keeps, read from an encoded data set without touching its pixel data."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from drimbox.archive.errors import (
    BAD_IDENTIFIERS,
    UNKNOWN_TRANSFER_SYNTAX,
    UnreadableDataset,
)
from drimbox.dimse.uid import is_lenient_uid

# What the archive accepts: the uncompressed syntaxes and the compressed ones modalities and PACS send.
# Compressed data sets are stored as received; their header is Explicit VR Little Endian.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    ExplicitVRBigEndian,
)

# A deflated data set may inflate to this many times its size (and always to 16 MiB), at most 2 GiB: beyond it is
# a decompression bomb (1 MiB of deflate can hold 1 GiB), which would cost that memory and minutes of parsing.
MAX_DEFLATE_RATIO = 100
MIN_INFLATE_LIMIT = 16 * 1024 * 1024
MAX_INFLATED_BYTES = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class InstanceAttributes:
    """Patient, study, series and instance attributes of one stored instance, as the index keeps them."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    accession_issuer_oid: str = ""
    accession_issuer_local: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: int | None = None
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None


# Character sets whose text values are one Python codec away; others go through pydicom's decoding.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_ASCII_VRS = {"UI", "CS", "DA", "TM", "DT", "IS", "DS", "AS", "AE"}
_TEXT_VRS = {"SH", "LO", "PN", "ST", "LT", "UC", "UT"}
# Values longer than this are skipped over, not read: no indexed attribute is that long.
_DEFER = 1024


class _Reader:
    """Values of a parsed header, decoded straight from their bytes when that is simple (much cheaper
    than pydicom's element conversion, which validates every value), through pydicom otherwise."""

    def __init__(self, ds: Dataset, little: bool) -> None:
        self.ds = ds
        self.little = little
        charset = self._raw_text(0x00080005)
        self.codec = _CODECS.get(charset.strip()) if charset is not None else "ascii"

    def _raw(self, tag: int) -> tuple[str, bytes] | None:
        elem = self.ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement):
            return None
        if elem.value is None:
            return elem.VR or dictionary_VR(tag), b""
        return elem.VR or dictionary_VR(tag), bytes(elem.value)

    def _raw_text(self, tag: int) -> str | None:
        raw = self._raw(tag)
        return None if raw is None else raw[1].decode("ascii", "replace").strip(" \0")

    def text(self, keyword: str) -> str:
        tag = int(tag_for_keyword(keyword) or 0)
        raw = self._raw(tag)
        if raw is not None:
            vr, value = raw
            if vr in _ASCII_VRS:
                return value.decode("ascii", "replace").strip(" \0")
            if vr in _TEXT_VRS and self.codec is not None:
                return value.decode(self.codec, "replace").strip(" \0")
        return _text(self.ds, keyword)

    def integer(self, keyword: str) -> int | None:
        tag = int(tag_for_keyword(keyword) or 0)
        raw = self._raw(tag)
        if raw is not None and raw[0] == "US" and len(raw[1]) >= 2:
            return int.from_bytes(raw[1][:2], "little" if self.little else "big")
        text = self.text(keyword)
        try:
            return int(float(text.split("\\")[0])) if text else None
        except ValueError:
            return None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _decoded(dataset: bytes, transfer_syntax: str) -> tuple[bytes, bool, bool]:
    """The data set's bytes (inflated if deflated) and its (implicit VR, little endian) flags."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise UnreadableDataset(f"transfer syntax {transfer_syntax} is not supported", UNKNOWN_TRANSFER_SYNTAX)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            # Raw deflate, no zlib header (PS3.5 A.5); only for reading: the stored bytes stay deflated.
            limit = min(MAX_INFLATED_BYTES, max(MIN_INFLATE_LIMIT, MAX_DEFLATE_RATIO * len(dataset)))
            dataset = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset, limit + 1)
        except zlib.error:
            raise UnreadableDataset("deflated data set cannot be inflated") from None
        if len(dataset) > limit:
            raise UnreadableDataset(f"deflated data set inflates beyond {limit} bytes (a decompression bomb?)")
    return dataset, transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian


def read_attributes(dataset: bytes, transfer_syntax: str) -> InstanceAttributes:
    """Parse an encoded data set (no File Meta) and return what the index keeps.

    Raises UnreadableDataset (status 0xC000-family) when the data set cannot be parsed, is cut
    short, or lacks a valid Study, Series or SOP Instance UID. Large values (pixel data) are
    skipped over, never read or decoded.
    """
    data, implicit, little = _decoded(dataset, transfer_syntax)
    stream = BytesIO(data)
    try:
        # Every element is walked (values over _DEFER bytes are skipped over, pixel data included),
        # so a data set cut short is caught: the last skip lands past its end.
        ds = read_dataset(stream, implicit, little, defer_size=_DEFER)
        _check_extent(ds, data, stream.tell(), implicit)
        attrs = _collect(_Reader(ds, little), transfer_syntax)
    except UnreadableDataset:
        raise
    except Exception as exc:
        # pydicom raises many kinds; their messages may quote values, so only the kind is kept.
        raise UnreadableDataset(f"data set cannot be parsed ({type(exc).__name__})") from None
    for name, uid in (("Study", attrs.study_uid), ("Series", attrs.series_uid), ("SOP", attrs.sop_uid)):
        if not is_lenient_uid(uid):  # lenient: modalities and PACS send UIDs with leading zeros
            raise UnreadableDataset(f"{name} Instance UID missing or not a valid UID", BAD_IDENTIFIERS)
    return attrs


def _check_extent(ds: Dataset, data: bytes, end: int, implicit: bool) -> None:
    """Refuse a data set encoded otherwise than its transfer syntax says, cut short, or followed by junk."""
    if ds.original_encoding[0] not in (None, implicit):
        # pydicom silently switches to the other VR encoding when it guesses so; the archive does not.
        raise UnreadableDataset("data set is not encoded in the transfer syntax it was sent with")
    size = len(data)
    tags = list(ds.keys())
    if tags:
        last = ds.get_item(tags[-1], keep_deferred=True)
        if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
            end = last.value_tell + last.length
    if end > size:
        raise UnreadableDataset(f"data set truncated: its last element ends {end - size} bytes past its end")
    # pydicom stops quietly at a partial element header; zero bytes are tolerated as padding.
    if data[end:].strip(b"\0"):
        raise UnreadableDataset(f"data set followed by {size - end} bytes that are not an element")


def _collect(r: _Reader, transfer_syntax: str) -> InstanceAttributes:
    oid = local = ""
    if r.ds.get_item(0x00080051, keep_deferred=True) is not None:
        issuers = r.ds.get("IssuerOfAccessionNumberSequence")
        if issuers:
            oid = _text(issuers[0], "UniversalEntityID")
            local = _text(issuers[0], "LocalNamespaceEntityID")
    return InstanceAttributes(
        study_uid=r.text("StudyInstanceUID"),
        series_uid=r.text("SeriesInstanceUID"),
        sop_uid=r.text("SOPInstanceUID"),
        sop_class_uid=r.text("SOPClassUID"),
        transfer_syntax_uid=transfer_syntax,
        patient_id=r.text("PatientID"),
        issuer_of_patient_id=r.text("IssuerOfPatientID"),
        patient_name=r.text("PatientName"),
        patient_birth_date=r.text("PatientBirthDate"),
        patient_sex=r.text("PatientSex"),
        study_date=r.text("StudyDate"),
        study_time=r.text("StudyTime"),
        accession_number=r.text("AccessionNumber"),
        accession_issuer_oid=oid,
        accession_issuer_local=local,
        study_id=r.text("StudyID"),
        study_description=r.text("StudyDescription"),
        referring_physician_name=r.text("ReferringPhysicianName"),
        modality=r.text("Modality"),
        series_number=r.integer("SeriesNumber"),
        series_description=r.text("SeriesDescription"),
        body_part_examined=r.text("BodyPartExamined"),
        instance_number=r.integer("InstanceNumber"),
        number_of_frames=r.integer("NumberOfFrames"),
        rows=r.integer("Rows"),
        columns=r.integer("Columns"),
    )
