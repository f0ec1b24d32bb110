"""Native profile archive: durable instance files, their SQLite index, and the C-STORE / C-FIND SCP that feeds and queries them."""

from drimbox.archive.archive import Archive, StoredInstance
from drimbox.archive.errors import ArchiveError, ArchiveFull, ArchiveUnavailable, QueryError, UnreadableDataset
from drimbox.archive.index import InstanceFile
from drimbox.archive.query import DEFAULT_FIELDS, FIELDS, Level, Match, Value, fields_at
from drimbox.archive.scp import ArchiveScp, start

__all__ = [
    "DEFAULT_FIELDS",
    "FIELDS",
    "Archive",
    "ArchiveError",
    "ArchiveFull",
    "ArchiveScp",
    "ArchiveUnavailable",
    "InstanceFile",
    "Level",
    "Match",
    "QueryError",
    "StoredInstance",
    "UnreadableDataset",
    "Value",
    "fields_at",
    "start",
]
