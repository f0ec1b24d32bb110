"""DICOMweb (PS3.18) HTTP side; the backend vocabulary is re-exported here, the routes are in `routes`."""

from drimbox.dicomweb.backend import (
    BytesBody,
    ChunkBody,
    DicomwebBackend,
    FileBody,
    IncompleteRetrieve,
    InstanceBody,
    NotFound,
    QidoQuery,
    QueryLevel,
    StoredInstance,
    TagMatch,
    Unavailable,
)

__all__ = [
    "BytesBody",
    "ChunkBody",
    "DicomwebBackend",
    "FileBody",
    "IncompleteRetrieve",
    "InstanceBody",
    "NotFound",
    "QidoQuery",
    "QueryLevel",
    "StoredInstance",
    "TagMatch",
    "Unavailable",
]
