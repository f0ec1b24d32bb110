"""What the consumer needs from authentication (drimbox.auth provides it): who is logged in, how to log in."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web


class ProfessionalLike(Protocol):
    """The logged-in professional, as Pro Santé Connect describes them (read-only)."""

    @property
    def id(self) -> str: ...  # national id (RPPS-based): the VIHF Subject/NameID

    @property
    def family(self) -> str | None: ...

    @property
    def given(self) -> str | None: ...

    @property
    def profession_code(self) -> str | None: ...  # e.g. 10 (Médecin), scheme 1.2.250.1.71.1.2.7

    @property
    def specialty_code(self) -> str | None: ...  # e.g. SM26, scheme 1.2.250.1.71.4.2.5

    @property
    def sector_code(self) -> str | None: ...  # the practice situation's activity sector, "SA07^1.2.250.1.71.4.2.4"

    @property
    def structure_id(self) -> str | None: ...  # the practice situation's structure, else [dmp] structure_id

    @property
    def structure_name(self) -> str | None: ...


class ConsumerAuth(Protocol):
    """Login is somebody else's business: the consumer only asks these three things."""

    async def current_professional(self, request: web.Request) -> ProfessionalLike | None: ...

    def login_url(self, next_path: str) -> str: ...  # where to send the browser; back to next_path after

    async def access_token(self, request: web.Request) -> str | None: ...
