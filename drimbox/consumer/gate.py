"""ConsumerAuth over drimbox.auth's AuthGate, whose Professional spells profession and specialty differently."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from drimbox.auth import situation
from drimbox.auth.professional import Professional
from drimbox.auth.routes import AuthGate, safe_next


@dataclass(frozen=True)
class GateProfessional:
    """A drimbox.auth Professional seen as a ProfessionalLike ("" becomes None)."""

    professional: Professional

    @property
    def id(self) -> str:
        return self.professional.id

    @property
    def family(self) -> str | None:
        return self.professional.family or None

    @property
    def given(self) -> str | None:
        return self.professional.given or None

    @property
    def profession_code(self) -> str | None:
        return self.professional.profession or None

    @property
    def specialty_code(self) -> str | None:
        return self.professional.specialty or None

    @property
    def sector_code(self) -> str | None:
        return self.professional.sector or None

    @property
    def structure_id(self) -> str | None:
        return self.professional.structure_id or None

    @property
    def structure_name(self) -> str | None:
        return self.professional.structure_name or None


class GateAuth:
    """The consumer's ConsumerAuth, backed by the box's AuthGate (Pro Santé Connect sessions)."""

    def __init__(self, gate: AuthGate) -> None:
        self.gate = gate

    async def current_professional(self, request: web.Request) -> GateProfessional | None:
        professional = await self.gate.current_professional(request)
        return GateProfessional(professional) if professional is not None else None

    def login_url(self, next_path: str) -> str:
        # The gate's own rule for `next` (a local path only): never an open redirect.
        return "/auth/login?" + urlencode({"next": safe_next(next_path) or "/"})

    async def access_token(self, request: web.Request) -> str | None:
        return await self.gate.access_token(request)

    async def must_choose(self, request: web.Request) -> bool:
        professional = await self.gate.current_professional(request)
        return professional is not None and professional.must_choose

    async def use_situation(self, request: web.Request, structure_id: str) -> bool:
        return await situation.choose(self.gate, request, structure_id) is not None

    def situation_url(self, next_path: str, *, unknown: bool = False) -> str:
        url = situation.situation_url(safe_next(next_path) or "/")
        return url + "&unknown=1" if unknown else url
