"""Which practice situation the consumer acts in: the launch's `Situation`, else the professional's own choice.

The ANS launch form's `Situation` names the structure (PSC activity's ancienIdentifiantDeLaStructure) the
doctor's software runs in, as the ANS reference DRIMbox reads it; when it names none of the professional's, or
the launch carries none, a professional with several situations chooses on the box's page before any DMP call.
An auth without situations (a plain OIDC provider, test doubles) is left alone.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aiohttp import web


@runtime_checkable
class SituationChooser(Protocol):
    """What a ConsumerAuth that knows practice situations offers besides (consumer.gate.GateAuth does)."""

    async def must_choose(self, request: web.Request) -> bool: ...  # several situations, none in use

    async def use_situation(self, request: web.Request, structure_id: str) -> bool: ...  # False: not theirs

    def situation_url(self, next_path: str, *, unknown: bool = False) -> str: ...


async def apply_launch(request: web.Request, auth: object, situation: str) -> bool:
    """At a launch: the situation it names put in use; False when it names one the professional does not have."""
    if not situation or not isinstance(auth, SituationChooser):
        return True
    return await auth.use_situation(request, situation)


async def choice_needed(request: web.Request, auth: object, next_path: str, *, unknown: bool = False) -> str | None:
    """The choice page's URL when the professional must choose before acting; None when they may act."""
    if isinstance(auth, SituationChooser) and await auth.must_choose(request):
        return auth.situation_url(next_path, unknown=unknown)
    return None


def change_url(auth: object, pro: object, next_path: str) -> str:
    """The page where a professional with several practice situations picks another one; "" for one situation."""
    situations = getattr(getattr(pro, "professional", None), "situations", ())
    if not isinstance(auth, SituationChooser) or len(situations) < 2:
        return ""
    return auth.situation_url(next_path)
