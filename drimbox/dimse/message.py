"""PS3.7 DIMSE command sets (group 0000, Implicit VR Little Endian) and the Part-10 header of a received instance."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from drimbox.dimse.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, PduError

# Command Field values (PS3.7 §E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF

# Command element numbers (group 0000).
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
REMAINING = 0x1020
COMPLETED = 0x1021
FAILED = 0x1022
WARNING = 0x1023
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031

NO_DATA_SET = 0x0101
PENDING = frozenset({0xFF00, 0xFF01})
CANCEL = 0xFE00
SUCCESS = 0x0000
# C-STORE statuses we answer (PS3.4 §B.2.3; 0x0124 is PS3.7 Annex C "Refused: Not Authorized").
REFUSED_NOT_AUTHORIZED = 0x0124
REFUSED_OUT_OF_RESOURCES = 0xA700

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


class Command:
    """A decoded command set: element number → raw value, with typed accessors."""

    __slots__ = ("trailing", "values")

    def __init__(self, values: dict[int, bytes]) -> None:
        self.values = values
        self.trailing = b""

    def us(self, element: int, default: int | None = None) -> int | None:
        raw = self.values.get(element)
        if raw is None or len(raw) < 2:
            return default
        return int(_US.unpack_from(raw)[0])

    def text(self, element: int) -> str:
        """A UI, AE or LO value without its padding ('' when absent)."""
        raw = self.values.get(element)
        # "?" rather than U+FFFD for a non-ASCII byte: the value is echoed in responses, which are encoded in ASCII.
        return "" if raw is None else raw.decode("ascii", "replace").replace("\ufffd", "?").rstrip("\0 ").lstrip(" ")

    @property
    def field(self) -> int:
        value = self.us(COMMAND_FIELD)
        if value is None:
            raise PduError("command set without Command Field (0000,0100)")
        return value

    @property
    def has_data_set(self) -> bool:
        return self.us(COMMAND_DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET

    @property
    def status(self) -> int | None:
        return self.us(STATUS)

    def sub_operations(self) -> tuple[int, int, int, int]:
        """(remaining, completed, failed, warning) sub-operation counts; absent ones are 0."""
        return (
            self.us(REMAINING, 0) or 0,
            self.us(COMPLETED, 0) or 0,
            self.us(FAILED, 0) or 0,
            self.us(WARNING, 0) or 0,
        )


def parse_command(data: bytes) -> Command:
    """Decode a command set (Implicit VR Little Endian, group 0000).

    Bytes after group 0000 are kept in `trailing`: Orthanc 1.10 (dcmtk) sends the identifier of a C-GET
    response to C-CANCEL (Failed SOP Instance UID List) inside the command fragments, with Command Data
    Set Type "none".
    """
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(data, pos)
        if group != 0x0000 and values:
            break
        pos += 8
        if group != 0x0000 or pos + length > end:
            raise PduError(f"malformed command set at element ({group:04X},{element:04X})")
        values[element] = data[pos : pos + length]
        pos += length
    command = Command(values)
    command.trailing = data[pos:]
    return command


def us(value: int) -> bytes:
    return _US.pack(value)


def ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)


def encode_command(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """A command set with its Command Group Length; `elements` are (element number, encoded value)."""
    body = b"".join(_ELEMENT.pack(0, el, len(v)) + v for el, v in sorted(elements))
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def c_store_rsp(request: Command, status: int) -> bytes:
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, ui(request.text(AFFECTED_SOP_CLASS_UID))),
            (COMMAND_FIELD, us(C_STORE_RSP)),
            (MESSAGE_ID_BEING_RESPONDED_TO, us(request.us(MESSAGE_ID, 0) or 0)),
            (COMMAND_DATA_SET_TYPE, us(NO_DATA_SET)),
            (STATUS, us(status)),
            (AFFECTED_SOP_INSTANCE_UID, ui(request.text(AFFECTED_SOP_INSTANCE_UID))),
        ]
    )


def c_echo_rsp(request: Command) -> bytes:
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, ui(VERIFICATION)),
            (COMMAND_FIELD, us(C_ECHO_RSP)),
            (MESSAGE_ID_BEING_RESPONDED_TO, us(request.us(MESSAGE_ID, 0) or 0)),
            (COMMAND_DATA_SET_TYPE, us(NO_DATA_SET)),
            (STATUS, us(SUCCESS)),
        ]
    )


def c_echo_rq(message_id: int) -> bytes:
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, ui(VERIFICATION)),
            (COMMAND_FIELD, us(C_ECHO_RQ)),
            (MESSAGE_ID, us(message_id)),
            (COMMAND_DATA_SET_TYPE, us(NO_DATA_SET)),
        ]
    )


def c_cancel_rq(message_id: int) -> bytes:
    return encode_command(
        [
            (COMMAND_FIELD, us(C_CANCEL_RQ)),
            (MESSAGE_ID_BEING_RESPONDED_TO, us(message_id)),
            (COMMAND_DATA_SET_TYPE, us(NO_DATA_SET)),
        ]
    )


def retrieve_rq(command_field: int, sop_class: str, message_id: int, move_destination: str = "") -> bytes:
    """C-GET-RQ, C-MOVE-RQ or C-FIND-RQ (medium priority, an identifier follows)."""
    elements = [
        (AFFECTED_SOP_CLASS_UID, ui(sop_class)),
        (COMMAND_FIELD, us(command_field)),
        (MESSAGE_ID, us(message_id)),
        (PRIORITY, us(0)),
        (COMMAND_DATA_SET_TYPE, us(0x0000)),
    ]
    if move_destination:
        elements.append((MOVE_DESTINATION, ae(move_destination)))
    return encode_command(elements)


def retrieve_identifier(study_uid: str, series_uid: str | None, sop_uid: str | None) -> tuple[str, bytes]:
    """(level, identifier) of a Study Root retrieve, encoded Implicit VR Little Endian."""
    level = "IMAGE" if sop_uid else "SERIES" if series_uid else "STUDY"
    elements: list[tuple[int, int, bytes]] = []
    if sop_uid:
        elements.append((0x0008, 0x0018, ui(sop_uid)))
    cs = level.encode("ascii")
    elements.append((0x0008, 0x0052, cs + b" " if len(cs) % 2 else cs))
    elements.append((0x0020, 0x000D, ui(study_uid)))
    if series_uid:
        elements.append((0x0020, 0x000E, ui(series_uid)))
    return level, b"".join(_ELEMENT.pack(g, e, len(v)) + v for g, e, v in elements)


def series_query(study_uid: str) -> bytes:
    """C-FIND identifier (Implicit VR Little Endian) asking the Series Instance UIDs of a study."""
    return b"".join(
        _ELEMENT.pack(g, e, len(v)) + v
        for g, e, v in ((0x0008, 0x0052, b"SERIES"), (0x0020, 0x000D, ui(study_uid)), (0x0020, 0x000E, b""))
    )


def _explicit(group_element: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", *group_element) + vr + struct.pack("<H", len(value)) + value


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and the File Meta Information (PS3.10 §7.1) to put before a received data set."""
    source = source_ae.encode("ascii")
    elements = b"".join(
        (
            struct.pack("<HH", 0x0002, 0x0001) + b"OB\0\0" + struct.pack("<L", 2) + b"\0\x01",
            _explicit((0x0002, 0x0002), b"UI", ui(sop_class)),
            _explicit((0x0002, 0x0003), b"UI", ui(sop_instance)),
            _explicit((0x0002, 0x0010), b"UI", ui(transfer_syntax)),
            _explicit((0x0002, 0x0012), b"UI", ui(IMPLEMENTATION_CLASS_UID)),
            _explicit((0x0002, 0x0013), b"SH", ui(IMPLEMENTATION_VERSION).replace(b"\0", b" ")),
            _explicit((0x0002, 0x0016), b"AE", source + b" " if len(source) % 2 else source) if source else b"",
        )
    )
    group_length = _explicit((0x0002, 0x0000), b"UL", struct.pack("<L", len(elements)))
    return bytes(128) + b"DICM" + group_length + elements
