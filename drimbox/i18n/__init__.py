"""The box's words, French first: one message catalogue per language (fr.toml, en.toml), chosen by Accept-Language.

Every page, message and error page a person reads takes its text from here, never from a literal in code:
`text(lang, "consumer.list.title")`, or `Messages.of(request)` in a handler. French is the default and the
fallback: a key missing from en.toml is said in French, a key missing from fr.toml is a bug (tests check that
both catalogues have the same keys and the same placeholders).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

LANGUAGES: Final = ("fr", "en")
DEFAULT: Final = "fr"
_REQUEST_KEY = web.RequestKey[str]("drimbox_i18n_language")


class MissingMessage(KeyError):
    """A key that the French catalogue does not have: a programming error, never shown to a user as such."""


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            raise TypeError(f"i18n: {name} must be a string or a table")
    return flat


@cache
def catalogue(lang: str) -> Mapping[str, str]:
    """Every message of one language, by dotted key ("consumer.list.title")."""
    if lang not in LANGUAGES:
        raise ValueError(f"no catalogue for {lang!r}")
    data = resources.files(__package__).joinpath(f"{lang}.toml").read_text(encoding="utf-8")
    return _flatten(tomllib.loads(data))


def text(lang: str, key: str, /, **params: object) -> str:
    """The message `key` in `lang` (French when that language lacks it), its {placeholders} filled in."""
    template = catalogue(lang).get(key) if lang in LANGUAGES else None
    if template is None:
        template = catalogue(DEFAULT).get(key)
        if template is None:
            raise MissingMessage(key)
    return template.format(**params) if params else template


def negotiate(accept_language: str) -> str:
    """The language a browser prefers among ours (RFC 9110 §12.5.4 weights); French when it names none of them."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            # Equal weights: the one the browser lists first wins.
            ranked.append((q, -position, primary))
    return max(ranked)[2] if ranked else DEFAULT


def language(request: web.Request) -> str:
    """The request's language, decided once per request from its Accept-Language header."""
    if _REQUEST_KEY not in request:
        request[_REQUEST_KEY] = negotiate(request.headers.get("Accept-Language", ""))
    return request[_REQUEST_KEY]


@dataclass(frozen=True)
class Messages:
    """The catalogue of one language, bound for a handler: `m = Messages.of(request); m("auth.login.title")`."""

    lang: str

    @classmethod
    def of(cls, request: web.Request) -> Messages:
        return cls(language(request))

    def __call__(self, key: str, /, **params: object) -> str:
        return text(self.lang, key, **params)

    def date(self, value: dt.date | str) -> str:
        """A date as people write it in this language: 08/01/2021 in French, 2021-01-08 in English (ISO)."""
        day = _date(value)
        if day is None:
            return str(value)
        return day.strftime("%d/%m/%Y") if self.lang == "fr" else day.isoformat()

    def person(self, family: str, given: str, fallback: str = "") -> str:
        """A person's name as French records write it, in every language: family name in capitals, then given."""
        return " ".join(p for p in (family.strip().upper(), given.strip()) if p) or fallback


@web.middleware
async def language_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every HTML answer says its language (Content-Language) and that it depends on Accept-Language (Vary)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _mark(request, exc)
        raise
    _mark(request, response)
    return response


def _mark(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared or not response.content_type.startswith(("text/html", "application/json")):
        return
    response.headers.setdefault("Content-Language", language(request))
    vary = response.headers.get("Vary", "")
    if "accept-language" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Accept-Language" if vary else "Accept-Language"


MIDDLEWARE: Final[Middleware] = language_middleware


def _date(value: dt.date | str) -> dt.date | None:
    if isinstance(value, dt.date):
        return value
    digits = value.strip().replace("-", "")
    if len(digits) != 8 or not digits.isascii() or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
