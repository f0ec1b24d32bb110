"""Why the archive refused an instance, each reason carrying the DICOM C-STORE status the SCP answers with."""

from __future__ import annotations

# Statuses, chosen from PS3.4 B.2.3 (Storage) and PS3.7 C (general DIMSE statuses):
#   0xA700  Refused: Out of Resources      the disk (or its quota) is full
#   0x0110  Processing failure             the archive cannot write (read-only, I/O error, index error)
#   0xA900  Data Set does not match SOP Class   SOP Class UID of the data set differs from the command's
#   0xC000  Cannot understand              the data set cannot be parsed at all
#   0xC001  Cannot understand              Study, Series or SOP Instance UID missing or not a valid UID
#   0xC002  Cannot understand              SOP Instance UID of the data set differs from the command's
#   0xC003  Cannot understand              transfer syntax the archive does not know how to read
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
SOP_CLASS_MISMATCH = 0xA900
UNREADABLE_DATASET = 0xC000
BAD_IDENTIFIERS = 0xC001
SOP_INSTANCE_MISMATCH = 0xC002
UNKNOWN_TRANSFER_SYNTAX = 0xC003


class ArchiveError(Exception):
    """The instance was not stored; `status` is the C-STORE failure status, the message never holds patient data."""

    status = PROCESSING_FAILURE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UnreadableDataset(ArchiveError):
    """The data set cannot be parsed, or lacks the identifiers the archive files it under."""

    status = UNREADABLE_DATASET


class ArchiveFull(ArchiveError):
    """No space left for the file or the index."""

    status = OUT_OF_RESOURCES


class ArchiveUnavailable(ArchiveError):
    """The archive cannot write right now (read-only directory, I/O error, index failure)."""

    status = PROCESSING_FAILURE


class QueryError(ValueError):
    """A query names an attribute the index cannot match on, or a value of the wrong form; the message names it."""
