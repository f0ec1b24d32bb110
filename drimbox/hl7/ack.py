"""HL7 v2 acknowledgements: the MSH peek that any NAK starts from, HL7Error, and ACK/NAK building."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

# HL7 table 0357 (message error condition codes) for the codes this box emits.
ERROR_TEXTS = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}

# MSH-18 (HL7 table 0211) → Python codec. An empty MSH-18 means ASCII in HL7; UTF-8 is read instead
# because it is a superset and French RIS that leave MSH-18 empty send UTF-8 in practice.
CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso-8859-15",
}

# Echoed values are capped so that a garbage header cannot make a NAK arbitrarily large.
_ECHO_MAX = 256
# peek_header looks for an MSH this far into the bytes, no further.
_PEEK_WINDOW = 64 * 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class HL7Error(Exception):
    """A message that is refused (AR) or in error (AE); becomes the ERR segment of the NAK.

    ``text`` is shown to the sender and may be logged: it never carries patient identity.
    """

    def __init__(self, ack_code: str, error_code: str, text: str, location: str = "", severity: str = "E") -> None:
        if ack_code not in ("AE", "AR"):
            raise ValueError(f"ack_code must be AE or AR, not {ack_code!r}")
        where = f" at {location}" if location else ""
        super().__init__(f"{ack_code} {error_code}{where}: {text}")
        self.ack_code = ack_code
        self.error_code = error_code
        self.text = text
        # An ERL (ERR-2): segment^sequence^field[^repetition^component^subcomponent], e.g. OBX^1^5.
        self.location = location
        self.severity = severity


@dataclass(frozen=True)
class Delimiters:
    """The separators a message declares in MSH-1/MSH-2; "" stands for one it does not declare."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, field: str, encoding: str) -> Delimiters:
        chars = [encoding[i] if len(encoding) > i else "" for i in range(4)]
        return cls(field, chars[0], chars[1], chars[2], chars[3])

    def problem(self) -> str | None:
        """Why these delimiters cannot be used to read a message, or None if they can."""
        chars = [self.field, self.component, self.repetition, self.escape, self.subcomponent]
        if any(len(c) != 1 for c in chars):
            return "MSH-2 must declare four encoding characters"
        if any(c.isalnum() or c.isspace() or not c.isprintable() for c in chars):
            return "MSH-1/MSH-2 delimiters must be printable, non-alphanumeric characters"
        if len(set(chars)) != len(chars):
            return "MSH-1/MSH-2 delimiters must all be different"
        return None

    def split(self, value: str, separator: str) -> list[str]:
        return value.split(separator) if separator else [value]

    def get(self, value: str, index: int, sub: int = 1) -> str:
        """Component ``index`` (1-based), subcomponent ``sub``, unescaped; "" if absent."""
        components = self.split(value, self.component)
        if len(components) < index:
            return ""
        subs = self.split(components[index - 1], self.subcomponent)
        return self.unescape(subs[sub - 1]) if len(subs) >= sub else ""

    def unescape(self, value: str) -> str:
        """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\; other escapes (formatting, hex) become a space."""
        if not self.escape or self.escape not in value:
            return value
        table = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
        }
        parts = value.split(self.escape)
        out = [parts[0]]
        # Odd-numbered pieces sit between two escape characters.
        for i in range(1, len(parts), 2):
            if i + 1 >= len(parts):
                out.append(self.escape + parts[i])  # unterminated: keep literally
                break
            out.append(table.get(parts[i], " "))
            out.append(parts[i + 1])
        return "".join(out)

    def to_standard(self, value: str) -> str:
        """Rewrite a composite value as ER7 with the standard delimiters and escapes."""
        return "^".join(
            "&".join(escape(self.unescape(s)) for s in self.split(c, self.subcomponent))
            for c in self.split(value, self.component)
        )


STANDARD = Delimiters()


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields an ACK needs. Simple fields are unescaped text; the four MSH-3..6 HD fields are
    kept as ER7 with the standard ^ & delimiters, ready to be copied into the ACK."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    timestamp: str
    message_type: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    message_structure: str  # MSH-9.3
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    country: str  # MSH-17
    charset: str  # MSH-18, first repetition, as sent

    @property
    def codec(self) -> str | None:
        """Python codec for MSH-18, or None if this box does not know that character set."""
        return CHARSETS.get(self.charset.strip().upper())

    @property
    def delimiters(self) -> Delimiters:
        return Delimiters.from_msh(self.field_separator, self.encoding_characters)


def _find_msh(raw: bytes) -> int:
    """Offset of an MSH that starts the data or a line within the peek window, else -1."""
    window = raw[:_PEEK_WINDOW]
    start = len(window) - len(window.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n\x0b"))
    if window.startswith(b"MSH", start):
        return start
    match = re.search(rb"[\r\n]MSH", window)
    return match.start() + 1 if match else -1


def peek_header(raw: bytes) -> MessageHeader | None:
    """Read the MSH leniently, from any bytes, so that even garbage gets a NAK the sender can match.

    Returns None when no MSH segment with a usable field separator can be found.
    """
    start = _find_msh(raw)
    if start < 0:
        return None
    stop = min(len(raw), start + _PEEK_WINDOW)
    for terminator in (b"\r", b"\n"):
        found = raw.find(terminator, start, stop)
        if found >= 0:
            stop = found
    segment = raw[start:stop]
    if len(segment) < 4:
        return None
    separator = chr(segment[3])
    if separator.isalnum() or separator.isspace() or not separator.isprintable():
        return None
    # Latin-1 maps every byte, so MSH-18 can be found before the real charset is known.
    fields = segment.decode("latin-1").split(separator)
    encoding = fields[1][:4] if len(fields) > 1 else ""
    d = Delimiters.from_msh(separator, encoding)
    charset = d.get(_first_repetition(fields, 18, d), 1)
    codec = CHARSETS.get(charset.strip().upper())
    if codec is not None and codec != "latin-1":
        fields = segment.decode(codec, errors="replace").split(separator)

    def text(n: int, c: int = 1) -> str:
        return _clean(d.get(_first_repetition(fields, n, d), c))

    def composite(n: int) -> str:
        return _clean(d.to_standard(_first_repetition(fields, n, d)))

    return MessageHeader(
        field_separator=separator,
        encoding_characters=encoding,
        sending_application=composite(3),
        sending_facility=composite(4),
        receiving_application=composite(5),
        receiving_facility=composite(6),
        timestamp=text(7),
        message_type=text(9, 1),
        trigger_event=text(9, 2),
        message_structure=text(9, 3),
        control_id=_clean(d.unescape(_first_repetition(fields, 10, d))),
        processing_id=text(11),
        version=text(12),
        country=text(17),
        charset=_clean(charset),
    )


def _first_repetition(fields: list[str], n: int, delimiters: Delimiters) -> str:
    """MSH-n (fields[n-1], since MSH-1 is the separator itself), first repetition only."""
    if len(fields) < n:
        return ""
    return delimiters.split(fields[n - 1], delimiters.repetition)[0][:_ECHO_MAX]


def _clean(value: str) -> str:
    return _CONTROL_CHARS.sub(" ", value.strip())


def escape(value: str) -> str:
    """Escape free text for the standard delimiters |^~\\& (HL7 v2 §2.7)."""
    out = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("&", "\\T\\").replace("~", "\\R\\")
    return _CONTROL_CHARS.sub(" ", out)


def new_control_id() -> str:
    """A fresh MSH-10: 20 characters, the v2.5 maximum."""
    return uuid.uuid4().hex[:20].upper()


def build_ack(
    header: MessageHeader | None,
    code: str,
    error: HL7Error | None = None,
    now: datetime | None = None,
) -> bytes:
    """An original-mode ACK (AA) or NAK (AE/AR, with ERR) answering ``header``.

    The ACK always uses the standard delimiters |^~\\&; it echoes MSH-12 and MSH-18 and is encoded
    in that character set (UTF-8 if MSH-18 is empty or unknown, and then MSH-18 is left empty).
    """
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"ACK code must be AA, AE or AR, not {code!r}")
    if code != "AA" and error is None:
        error = HL7Error(code, "207", "the message could not be processed")
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    h = header
    codec = (h.codec if h else None) or "utf-8"
    trigger = h.trigger_event if h else ""
    msh = [
        "MSH",
        "^~\\&",
        h.receiving_application if h else "",
        h.receiving_facility if h else "",
        h.sending_application if h else "",
        h.sending_facility if h else "",
        stamp,
        "",
        f"ACK^{escape(trigger)}^ACK" if trigger else "ACK",
        new_control_id(),
        escape(h.processing_id) if h and h.processing_id else "P",
        escape(h.version) if h and h.version else "2.5",
        "",
        "",
        "",
        "",
        escape(h.country) if h else "",
        escape(h.charset) if h and h.codec else "",
    ]
    segments = ["|".join(msh).rstrip("|"), f"MSA|{code}|{escape(h.control_id) if h else ''}"]
    if code != "AA" and error is not None:
        text = ERROR_TEXTS.get(error.error_code, "")
        err = [
            "ERR",
            "",
            _location(error.location),
            f"{escape(error.error_code)}^{escape(text)}^HL70357",
            escape(error.severity),
            "",
            "",
            "",
            escape(error.text),
        ]
        segments.append("|".join(err).rstrip("|"))
    return "".join(s + "\r" for s in segments).encode(codec, errors="replace")


def _location(location: str) -> str:
    """ERR-2 keeps its ^ as component separators; everything else is escaped."""
    return "^".join(escape(part) for part in location.split("^"))
