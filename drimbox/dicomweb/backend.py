"""The one interface the DICOMweb routes talk to, whatever holds the images (PACS over DIMSE, archive, folder)."""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

# Where a file cannot go zero-copy (TLS), it is read in chunks of this size: large enough that the thread hop
# per chunk costs nothing, small enough that many concurrent responses stay within a bounded memory.
FILE_CHUNK = 1024 * 1024
_FADVISE = hasattr(os, "posix_fadvise")


class DicomwebError(Exception):
    """Base of the errors a backend raises; the message must not contain patient identity."""


class NotFound(DicomwebError):
    """The named study, series or instance does not exist here (HTTP 404)."""


class Unavailable(DicomwebError):
    """The backend cannot answer now: PACS down, association refused, time-out (HTTP 503)."""


class IncompleteRetrieve(DicomwebError):
    """Raised at the end of an iteration when some instances could not be delivered (C-GET failed sub-operations).

    Everything that could be delivered has been yielded before. The routes answer 206 when they can still
    say so, and otherwise end the response abnormally (see routes.py).
    """

    def __init__(self, message: str, *, completed: int, failed: int) -> None:
        super().__init__(message)
        self.completed = completed
        self.failed = failed


class InstanceBody(Protocol):
    """The Part-10 bytes of one instance (preamble, file meta, data set), readable without holding a study."""

    @property
    def size(self) -> int | None:
        """Length in bytes when known before reading (sent as the part's Content-Length)."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in order, in chunks of any size."""

    async def read(self) -> bytes:
        """All the bytes at once (one instance in memory: for transcoding, frames, rendering)."""


class BytesBody:
    """An instance already in memory (received by C-GET/C-MOVE, or small)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.data

    async def read(self) -> bytes:
        return self.data


class OpenFile:
    """A Part-10 file opened for sending: its descriptor and its size when it was opened.

    The size comes from fstat on this descriptor, so it stays exact for what the descriptor reads even when
    the archive or the cache replaces the file meanwhile (a rename leaves this inode alone); an index's size
    may be stale, this one is what will be sent. Only a file truncated in place can end early: senders check.
    """

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def close(self) -> None:
        """Idempotent: every path that gave up the file may call it."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def read_chunk(self, offset: int) -> bytes:
        """FILE_CHUNK bytes from `offset` (blocking: call in a thread)."""
        return os.pread(self.fd, min(FILE_CHUNK, self.size - offset), offset)


class FileBody:
    """An instance stored as a Part-10 file: sent from disk zero-copy when possible, else read in chunks."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = path
        self._size = size

    @property
    def size(self) -> int | None:
        return self._size

    def open_now(self) -> OpenFile:
        """Open and stat the file (blocking: call in a thread; `open_files` opens many per thread hop)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # File names can carry patient names in some archives: never in messages.
            raise NotFound("the instance's file is gone") from None
        except OSError as exc:
            raise Unavailable(f"cannot read the instance's file: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if _FADVISE:
                # Start reading a cold file into the page cache now, from this thread, so that sendfile on the loop
                # thread finds it there instead of waiting for the disk (the routes open a batch of files ahead
                # of the one being sent). Cost when already cached: ~11 µs a file, 3 ms CPU a 300-image study.
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        except OSError as exc:
            os.close(fd)
            raise Unavailable(f"cannot read the instance's file: {exc.strerror}") from None
        return OpenFile(fd, size)

    async def open(self) -> OpenFile:
        [opened] = await open_files([self])
        if isinstance(opened, DicomwebError):
            raise opened
        return opened

    async def chunks(self) -> AsyncIterator[bytes]:
        opened = await self.open()
        try:
            offset = 0
            while offset < opened.size and (chunk := await asyncio.to_thread(opened.read_chunk, offset)):
                yield chunk
                offset += len(chunk)
        finally:
            opened.close()  # closing a read-only descriptor does no I/O: no thread needed

    async def read(self) -> bytes:
        def read_all() -> bytes:
            opened = self.open_now()
            try:
                with open(opened.fd, "rb", closefd=False) as f:
                    return f.read()
            finally:
                opened.close()

        return await asyncio.to_thread(read_all)


async def open_files(bodies: list[FileBody]) -> list[OpenFile | DicomwebError]:
    """Open many files in one thread hop: each its OpenFile, or the error that opening it raised.

    A caller cancelled meanwhile (the client left) leaks nothing: the thread cannot be stopped, so the files it
    opens are closed when it ends.
    """
    work = asyncio.ensure_future(asyncio.to_thread(_open_all, bodies))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        work.add_done_callback(_close_abandoned)
        raise


def _open_all(bodies: list[FileBody]) -> list[OpenFile | DicomwebError]:
    opened: list[OpenFile | DicomwebError] = []
    for body in bodies:
        try:
            opened.append(body.open_now())
        except DicomwebError as exc:
            opened.append(exc)
    return opened


def _close_abandoned(work: asyncio.Future[list[OpenFile | DicomwebError]]) -> None:
    if work.cancelled() or work.exception() is not None:
        return
    for opened in work.result():
        if isinstance(opened, OpenFile):
            opened.close()


class ChunkBody:
    """An instance arriving as a stream (e.g. P-DATA fragments of a C-STORE sub-operation); readable once."""

    def __init__(self, source: Callable[[], AsyncIterator[bytes]], size: int | None = None) -> None:
        self._source: Callable[[], AsyncIterator[bytes]] | None = source
        self._size = size

    @property
    def size(self) -> int | None:
        return self._size

    def chunks(self) -> AsyncIterator[bytes]:
        if self._source is None:
            raise RuntimeError("a streamed instance body can be read only once")
        source, self._source = self._source, None
        return source()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One instance as a backend holds it: its identity, its stored transfer syntax, and its bytes."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    body: InstanceBody


class QueryLevel(enum.StrEnum):
    """Query/Retrieve Level (0008,0052) values, named as C-FIND names them."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True, slots=True)
class TagMatch:
    """One matching key in DICOM matching syntax (PS3.4 C.2.2.2): the value as a C-FIND identifier holds it.

    Wildcards `*`/`?`, ranges `a-b`, UID lists joined with a backslash, "" for universal matching.
    """

    tag: int
    vr: str
    value: str

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag) or f"{self.tag:08X}"


@dataclass(frozen=True, slots=True)
class QidoQuery:
    """A QIDO-RS search, checked and resolved: what a backend needs to run it (as a C-FIND or a SQL query)."""

    level: QueryLevel
    # Path UIDs come first, as single-value matches on StudyInstanceUID / SeriesInstanceUID.
    matches: tuple[TagMatch, ...]
    # Attributes the answer should carry (level defaults, includefield, matching keys); the routes filter to them.
    return_tags: frozenset[int]
    include_all: bool = False
    fuzzy: bool = False
    offset: int = 0
    limit: int = 1000

    def value(self, tag: int) -> str | None:
        """The matching value given for `tag`, if any."""
        for match in self.matches:
            if match.tag == tag:
                return match.value
        return None


class DicomwebBackend(Protocol):
    """What the DICOMweb routes need from a store. Every method is an async iterator, so nothing is buffered.

    When the routes stop early (client gone, `limit` reached) they call `aclose()` on the iterator if it has
    one: an async generator gets GeneratorExit there and can cancel its work (C-CANCEL, close files).
    Errors: `NotFound`, `Unavailable`, `IncompleteRetrieve` (see each); messages must not name the patient.
    """

    def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        """QIDO-RS: one data set per match at `query.level`, in a stable order, starting at `query.offset`.

        A data set holds at least the `return_tags` the backend knows (more is fine: the routes filter).
        The routes read at most `query.limit + 1` (the extra one tells them more exist), then close.
        No match is no item, not an error; `Unavailable` when the search cannot run.
        """

    def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        """WADO-RS: every instance of the study / series / the one instance, each as soon as it is available.

        `NotFound` (or no item) when the resource does not exist. The caller reads each body before asking
        for the next instance, so a backend may reuse or release a body's resources when the next is asked.
        Not so for `FileBody` bodies, which hold nothing but a path: the routes ask for up to a few more
        instances before opening their files, to open several per thread hop (wado.READ_AHEAD).
        """

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        """WADO-RS metadata: one DICOM JSON object (UTF-8 bytes, no pixel data) per instance.

        `base` is the routes' base path, for the BulkDataURIs (`json_model.instance_json`); a backend may
        cache the bytes per base. `json_model.metadata_from_instances` implements it from `iter_instances`.
        """
