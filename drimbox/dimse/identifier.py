"""C-FIND identifiers in Implicit VR Little Endian: queries encoded by pydicom, answers read as far as needed."""

# A 300-instance IMAGE-level answer set is 300 small data sets of ~25 elements. pydicom's read_dataset
# and value conversion cost ≈ 0.1 ms per answer for the dozen values a KOS needs; `RawAnswer` below only
# splits the top level into tag → raw bytes (one struct.unpack_from per element) and decodes a value when
# asked, ≈ 15 µs per answer (see perf/dimse_find.py). QIDO-RS needs every element as a pydicom Dataset:
# `decode` gives it, with pydicom's lazy conversion.

from __future__ import annotations

import struct
from functools import lru_cache
from io import BytesIO

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue

_ELEMENT = struct.Struct("<HHL")
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
SPECIFIC_CHARACTER_SET = 0x00080005
_ESC = 0x1B
# Characters that reset the ISO 2022 code element (PS3.5 §6.1.2.5.3): value and PN component separators.
_VALUE_DELIMITERS = {0x5C}
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}
# Text VRs: values are characters padded to even length, several values joined by a backslash.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# An undefined-length sequence nested deeper than this is garbage (or hostile), not a C-FIND answer.
_MAX_DEPTH = 16


class IdentifierError(ValueError):
    """An answer that is not a well-formed Implicit VR Little Endian data set."""


def tag(keyword: str) -> int:
    """The tag of a DICOM keyword (raises KeyError naming an unknown one)."""
    found = tag_for_keyword(keyword)
    if found is None:
        raise KeyError(f"not a DICOM keyword: {keyword}")
    return int(found)


def _encode_simple(ds: Dataset) -> bytes | None:
    """`ds` encoded directly when every value is empty or ASCII text (a QIDO query, nearly always), else None.

    pydicom's write_dataset takes ≈ 140 µs for a 20-key QIDO identifier, a tenth of a pooled C-FIND's
    round trip to Orthanc; this takes ≈ 25 µs and gives the same bytes.
    """
    parts: list[bytes] = []
    for elem in ds:
        value = elem.value
        if value is None or value == "" or (elem.VR == "SQ" and len(value) == 0):
            raw = b""
        elif elem.VR in _TEXT_VRS:
            text = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
            if not text.isascii():
                return None
            raw = text.encode("ascii")
            if len(raw) % 2:
                raw += b"\0" if elem.VR == "UI" else b" "
        else:
            return None
        parts.append(_ELEMENT.pack(elem.tag.group, elem.tag.element, len(raw)) + raw)
    return b"".join(parts)


def encode(ds: Dataset) -> bytes:
    """`ds` as an Implicit VR Little Endian data set (the only syntax our C-FIND context proposes)."""
    simple = _encode_simple(ds)
    if simple is not None:
        return simple
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes) -> Dataset:
    """A whole answer as a pydicom Dataset (values converted lazily, on first access)."""
    return read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)


@lru_cache(maxsize=512)
def _is_person_name(element: int) -> bool:
    try:
        return bool(dictionary_VR(element) == "PN")
    except KeyError:
        return False


@lru_cache(maxsize=64)
def _python_encodings(charset: bytes) -> tuple[str, ...]:
    terms = [t.strip() for t in charset.decode("ascii", "replace").rstrip("\0 ").split("\\")]
    # An empty first value means the default repertoire, then code extensions (PS3.3 C.12.1.1.2).
    return tuple(convert_encodings([t or "ISO_IR 6" for t in terms] or ["ISO_IR 6"]))


class RawAnswer:
    """The top-level elements of one answer, as raw values; text decoded on request, sequences split on request.

    Values are the bytes received, so an element is present (`tag in answer`) even when empty, which is how
    a C-FIND SCP says "asked, but no value".
    """

    __slots__ = ("_charset", "_values")

    def __init__(self, values: dict[int, bytes | list[RawAnswer]], charset: bytes = b"") -> None:
        self._values = values
        # Items inherit the Specific Character Set of the data set that holds them (PS3.5 §7.5.3).
        raw = values.get(SPECIFIC_CHARACTER_SET)
        self._charset = raw if isinstance(raw, bytes) else charset

    @classmethod
    def parse(cls, data: bytes | memoryview, charset: bytes = b"") -> RawAnswer:
        """Split an Implicit VR Little Endian data set; raise IdentifierError if it is malformed."""
        buf = bytes(data)
        values, _ = _elements(buf, 0, len(buf), 0, charset, in_item=False)
        return cls(values, charset)

    def __contains__(self, element: int) -> bool:
        return element in self._values

    def raw(self, element: int) -> bytes:
        value = self._values.get(element, b"")
        return value if isinstance(value, bytes) else b""

    def text(self, element: int) -> str:
        """The value as text, each of several values stripped and joined by a backslash ('' when absent).

        Not for LT, ST and UT, where a backslash is text: no C-FIND key we read has those VRs.
        """
        raw = self.raw(element)
        if not raw:
            return ""
        if raw.isascii() and _ESC not in raw:
            text = raw.decode("ascii")
        else:
            delimiters = _PN_DELIMITERS if _is_person_name(element) else _VALUE_DELIMITERS
            text = decode_bytes(raw, list(_python_encodings(self._charset)), delimiters)
        if "\\" in text:
            return "\\".join(part.strip(" \0") for part in text.split("\\"))
        return text.strip(" \0")

    def number(self, element: int) -> int | None:
        """An IS or DS value as an integer (None when absent, empty or not a number)."""
        text = self.text(element)
        try:
            return int(float(text)) if text else None
        except ValueError:
            return None

    def items(self, element: int) -> list[RawAnswer]:
        """The items of a sequence element ([] when absent or empty)."""
        value = self._values.get(element)
        if value is None:
            return []
        if isinstance(value, bytes):
            # A defined-length sequence: split on first use (most answers never look inside).
            items, _ = _items(value, 0, len(value), 1, self._charset, defined=True)
            self._values[element] = value = items
        return value


def _elements(
    buf: bytes, pos: int, end: int, depth: int, charset: bytes, in_item: bool
) -> tuple[dict[int, bytes | list[RawAnswer]], int]:
    """Elements from `pos` up to `end` (or an Item Delimitation Item when `in_item`); the position after.

    `charset` is the enclosing Specific Character Set, replaced by this data set's own: it sorts before
    any sequence, so it is known by the time the items of one are read.
    """
    values: dict[int, bytes | list[RawAnswer]] = {}
    unpack = _ELEMENT.unpack_from
    while pos < end:
        if pos + 8 > end:
            raise IdentifierError(f"truncated element header at byte {pos}")
        group, number, length = unpack(buf, pos)
        element = group << 16 | number
        pos += 8
        if element == _ITEM_END:
            if in_item:
                return values, pos
            raise IdentifierError(f"item delimiter outside an item at byte {pos - 8}")
        if length == _UNDEFINED:
            # Only a sequence has an undefined length in Implicit VR: its items must be walked to find its end.
            if depth >= _MAX_DEPTH:
                raise IdentifierError("sequences nested too deep")
            items, pos = _items(buf, pos, end, depth + 1, charset, defined=False)
            values[element] = items
            continue
        if pos + length > end:
            raise IdentifierError(f"element ({group:04X},{number:04X}) runs past the end of the data set")
        value = values[element] = buf[pos : pos + length]
        if element == SPECIFIC_CHARACTER_SET:
            charset = value
        pos += length
    if in_item:
        raise IdentifierError("undefined-length item without its delimiter")
    return values, pos


def _items(buf: bytes, pos: int, end: int, depth: int, charset: bytes, defined: bool) -> tuple[list[RawAnswer], int]:
    """Items of a sequence from `pos`: up to `end` when `defined`, else up to its Sequence Delimitation Item."""
    items: list[RawAnswer] = []
    while pos < end:
        if pos + 8 > end:
            raise IdentifierError(f"truncated item header at byte {pos}")
        group, number, length = _ELEMENT.unpack_from(buf, pos)
        element = group << 16 | number
        pos += 8
        if element == _SEQUENCE_END and not defined:
            return items, pos
        if element != _ITEM:
            raise IdentifierError(f"({group:04X},{number:04X}) where a sequence item was expected")
        if length == _UNDEFINED:
            values, pos = _elements(buf, pos, end, depth, charset, in_item=True)
        else:
            if pos + length > end:
                raise IdentifierError("sequence item runs past the end of the data set")
            values, _ = _elements(buf, pos, pos + length, depth, charset, in_item=False)
            pos += length
        items.append(RawAnswer(values, charset))
    if not defined:
        raise IdentifierError("undefined-length sequence without its delimiter")
    return items, pos
