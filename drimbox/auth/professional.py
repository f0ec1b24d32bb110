"""The authenticated health professional, built from Pro Santé Connect (or plain OIDC) claims."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Professional:
    """Who is acting: enough for the VIHF, the access policy and the audit trail (no tokens here)."""

    # National id of the professional: "8" + RPPS for PSC users (SubjectNameID), the VIHF subject id.
    id: str
    family: str = ""
    given: str = ""
    # Profession code (TRE_G15, e.g. "10" médecin) and specialty / savoir-faire code (TRE_R38, e.g. "SM26").
    profession: str = ""
    specialty: str = ""
    # Activity sector of the practice situation, as PSC gives it (e.g. "SA07^1.2.250.1.71.4.2.4").
    sector: str = ""
    structure_id: str = ""
    structure_name: str = ""
    # The provider's subject: stable per provider, not a national id.
    sub: str = ""

    @property
    def rpps(self) -> str:
        """The 11-digit RPPS number when the national id is an RPPS one, else ""."""
        if len(self.id) == 12 and self.id.startswith("8") and self.id.isdigit():
            return self.id[1:]
        return ""

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.given, self.family) if p) or self.id

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Professional:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: str(v) for k, v in data.items() if k in names})

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Professional:
        """Map id_token / userinfo / introspection claims; PSC's own names first, standard OIDC ones after.

        PSC puts the national id in SubjectNameID (also preferred_username) and the practice situations in
        SubjectRefPro.exercices[].activities[]; the first situation is the one used (PSC lists the one the
        professional chose first). Raises ValueError when no identifier at all can be found.
        """
        exercise = _first(_get(claims, "SubjectRefPro", "exercices"))
        activity = _first(exercise.get("activities")) if exercise else {}
        national_id = _text(claims, "SubjectNameID", "preferred_username", "rpps", "sub")
        if not national_id:
            raise ValueError("claims carry no professional identifier (SubjectNameID, preferred_username, sub)")
        role = _first_text(claims.get("SubjectRole"))
        return cls(
            id=national_id,
            family=_text(claims, "family_name") or _text(exercise, "nomDexercice"),
            given=_text(claims, "given_name") or _text(exercise, "prenomDexercice"),
            profession=_text(exercise, "codeProfession") or _text(claims, "profession") or role.split("^")[0],
            specialty=_text(exercise, "codeSavoirFaire") or _text(claims, "specialty"),
            sector=_text(claims, "Secteur_Activite") or _text(activity, "codeSecteurDActivite"),
            structure_id=_text(claims, "SubjectOrganizationID", "structure_id")
            or _text(activity, "numeroFinessSite", "numeroSiretSite", "identifiantTechniqueDeLaStructure"),
            structure_name=_text(claims, "SubjectOrganization", "structure_name") or _text(activity, "raisonSocialeSite"),
            sub=_text(claims, "sub"),
        )


def _get(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _first(value: Any) -> Mapping[str, Any]:
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return value[0]
    return {}


def _first_text(value: Any) -> str:
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else ""


def _text(data: Mapping[str, Any], *keys: str) -> str:
    """The first non-empty string (or number) among the keys; claims from outside are never trusted to be str."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, str | int) and str(value).strip():
            return str(value).strip()
    return ""
