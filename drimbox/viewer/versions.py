"""The viewer's files named by their content: versioned URLs, the page's import map and the page that carries them.

A doctor reopens the viewer every day. Revalidating each of its scripts costs a round trip per level of imports
(the page, its modules, the modules they import, the decoding worker): 3 to 4 round trips before the first request
for an image, 150-200 ms on a 50 ms line, paid at every opening. Named by a digest of their bytes, the files are
cached for a year and never asked again until they change; only the page is revalidated, and it names the current
versions. Modules import one another by plain relative names (no build step): an import map in the page sends each
name to its versioned URL, for `import`, dynamic `import()` and `import.meta.resolve` alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

# The files a page refers to by a relative name; vendored codecs have their own versioned folders already.
_VERSIONED = re.compile(r"^[a-z0-9_-]+\.(css|js)$")
# href="viewer.css", src="main.js": a relative name of this folder, nothing else (absolute URLs stay as they are).
_REFERENCE = re.compile(r'\b(href|src)="([a-z0-9_-]+\.(?:css|js))"')
# An import map must come before the first module the page loads or preloads, or it is ignored.
_FIRST_MODULE = re.compile(r"<link rel=\"modulepreload\"|<script\b")
DIGEST_CHARS = 16


@dataclass(frozen=True, slots=True)
class VersionedPage:
    """A page rewritten to name the current versions: its bytes, a validator of them, and the CSP source that
    allows its inline import map (and nothing else inline)."""

    body: bytes
    etag: str
    script_hash: str


class Versions:
    """Digests of the files in `directory` (the viewer's folder), read again when a file's size or time changes."""

    def __init__(self, directory: Traversable, prefix: str = "/viewer/") -> None:
        self.directory = directory
        self.prefix = prefix
        self._digests: dict[str, tuple[tuple[int, int] | None, str]] = {}
        self._pages: dict[str, tuple[tuple[str, ...], VersionedPage]] = {}

    def digest(self, name: str) -> str | None:
        """The version of `name` (a short SHA-256 of its bytes), or None when it is not a versioned file."""
        if not _VERSIONED.match(name):
            return None
        path = self.directory.joinpath(name)
        stamp = _stamp(path)
        known = self._digests.get(name)
        if known is not None and known[0] == stamp:  # both None: a packaged file, which cannot change
            return known[1]
        if not path.is_file():
            return None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:DIGEST_CHARS]
        self._digests[name] = (stamp, digest)
        return digest

    def url(self, name: str) -> str:
        """`name`'s versioned URL below the prefix (the bare URL when it is not versioned)."""
        digest = self.digest(name)
        return f"{self.prefix}{name}" + (f"?v={digest}" if digest else "")

    def is_current(self, name: str, version: str) -> bool:
        return bool(version) and version == self.digest(name)

    def page(self, name: str) -> VersionedPage:
        """The page `name` with its references versioned and the import map of every module placed before them."""
        names = sorted(_names(self.directory))
        key = (*(f"{n}={self.digest(n)}" for n in names), str(_stamp(self.directory.joinpath(name))))
        known = self._pages.get(name)
        if known is not None and known[0] == key:
            return known[1]
        html = self.directory.joinpath(name).read_text(encoding="utf-8")
        imports = {f"{self.prefix}{n}": self.url(n) for n in names if n.endswith(".js")}
        script = json.dumps({"imports": imports}, separators=(",", ":"))
        html = _REFERENCE.sub(lambda m: f'{m[1]}="{m[2]}?v={self.digest(m[2]) or ""}"', html)
        at = _FIRST_MODULE.search(html)
        tag = f'<script type="importmap">{script}</script>\n'
        html = html[: at.start()] + tag + html[at.start() :] if at else html.replace("</head>", tag + "</head>", 1)
        body = html.encode("utf-8")
        page = VersionedPage(
            body=body,
            etag=f'"p{hashlib.sha256(body).hexdigest()[:32]}"',
            script_hash="'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'",
        )
        self._pages[name] = (key, page)
        return page


def _names(directory: Traversable) -> list[str]:
    return [entry.name for entry in directory.iterdir() if _VERSIONED.match(entry.name) and entry.is_file()]


def _stamp(path: Traversable) -> tuple[int, int] | None:
    """(size, modification time) of a file on disk; None for one inside a package that is not a folder."""
    if not isinstance(path, Path):
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)
