"""The authenticated health professional, built from Pro Santé Connect (or plain OIDC) claims."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# TRE_R02 SecteurActivite: PSC gives the bare code in each activity, the VIHF wants "code^OID".
SECTOR_SCHEME = "1.2.250.1.71.4.2.4"


@dataclass(frozen=True)
class PracticeSituation:
    """One practice situation: an activity of PSC's SubjectRefPro.exercices[], with its exercice's profession."""

    # ancienIdentifiantDeLaStructure: the IdNat_Struct the VIHF names as Identifiant_Structure (as the ANS reference
    # DRIMbox does) and the value the launch's `Situation` field names.
    structure_id: str
    structure_name: str = ""  # raisonSocialeSite
    sector: str = ""  # codeSecteurDactivite with its scheme, "SA07^1.2.250.1.71.4.2.4"
    profession: str = ""  # codeProfession of the exercice (TRE_G15)
    specialty: str = ""  # codeSavoirFaire of the exercice (TRE_R38)
    technical_id: str = ""  # identifiantTechniqueDeLaStructure (the directory's "R…"/"F…" id): shown, never sent
    place: str = ""  # bureauCedex or codePostal: tells two sites of the same name apart on the choice page

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PracticeSituation:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: str(v) for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Professional:
    """Who is acting: enough for the VIHF, the access policy and the audit trail (no tokens here).

    profession, specialty, sector and structure are those of the practice situation in use; with several
    situations and none chosen yet, sector and structure are empty and `must_choose` is true.
    """

    # National id of the professional: "8" + RPPS for PSC users (SubjectNameID), the VIHF subject id.
    id: str
    family: str = ""
    given: str = ""
    # Profession code (TRE_G15, e.g. "10" médecin) and specialty / savoir-faire code (TRE_R38, e.g. "SM26").
    profession: str = ""
    specialty: str = ""
    # Activity sector of the practice situation, "code^OID" as the VIHF carries it (e.g. "SA07^1.2.250.1.71.4.2.4").
    sector: str = ""
    structure_id: str = ""
    structure_name: str = ""
    # The provider's subject: stable per provider, not a national id.
    sub: str = ""
    # Every practice situation PSC listed, in its order.
    situations: tuple[PracticeSituation, ...] = ()

    @property
    def rpps(self) -> str:
        """The 11-digit RPPS number when the national id is an RPPS one, else ""."""
        if len(self.id) == 12 and self.id.startswith("8") and self.id.isdigit():
            return self.id[1:]
        return ""

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.given, self.family) if p) or self.id

    @property
    def must_choose(self) -> bool:
        """Several practice situations and none chosen: the VIHF would not know which structure acts."""
        return len(self.situations) > 1 and not self.structure_id

    def situation(self, structure_id: str) -> PracticeSituation | None:
        """The practice situation whose structure is `structure_id` (ancienIdentifiantDeLaStructure), or None."""
        return next((s for s in self.situations if structure_id and s.structure_id == structure_id), None)

    def in_situation(self, situation: PracticeSituation) -> Professional:
        """This professional acting in `situation` (one of theirs): what the VIHF then names."""
        return dataclasses.replace(
            self, profession=situation.profession or self.profession, specialty=situation.specialty or self.specialty,
            sector=situation.sector, structure_id=situation.structure_id, structure_name=situation.structure_name,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Professional:
        names = {f.name for f in dataclasses.fields(cls)} - {"situations"}
        raw = data.get("situations")
        situations = tuple(
            PracticeSituation.from_json(s)
            for s in (raw if isinstance(raw, list | tuple) else ())
            if isinstance(s, Mapping)
        )
        return cls(**{k: str(v) for k, v in data.items() if k in names}, situations=situations)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Professional:
        """Map id_token / userinfo / introspection claims; PSC's own names first, standard OIDC ones after.

        PSC puts the national id in SubjectNameID (also preferred_username) and the practice situations in
        SubjectRefPro.exercices[].activities[]. One situation is used at once; several leave the choice to the
        professional (`must_choose`). Its top-level SubjectOrganizationID is the directory's technical id of the
        first activity, not the structure id the DMP knows: the structure comes from the activity's
        ancienIdentifiantDeLaStructure, as in the ANS reference DRIMbox. Raises ValueError when no identifier at
        all can be found.
        """
        national_id = _text(claims, "SubjectNameID", "preferred_username", "rpps", "sub")
        if not national_id:
            raise ValueError("claims carry no professional identifier (SubjectNameID, preferred_username, sub)")
        exercises = list(_mappings(_get(claims, "SubjectRefPro", "exercices")))
        first = exercises[0] if exercises else {}
        situations = tuple(situations_from_claims(claims))
        role = _first_text(claims.get("SubjectRole"))
        professional = cls(
            id=national_id,
            family=_text(claims, "family_name") or _text(first, "nomDexercice"),
            given=_text(claims, "given_name") or _text(first, "prenomDexercice"),
            profession=_text(first, "codeProfession") or _text(claims, "profession") or role.split("^")[0],
            specialty=_text(first, "codeSavoirFaire") or _text(claims, "specialty"),
            sub=_text(claims, "sub"),
            situations=situations,
        )
        if len(situations) == 1:
            return professional.in_situation(situations[0])
        if situations:
            return professional
        # Plain OIDC (no SubjectRefPro): what the provider says at the top level, if anything.
        return dataclasses.replace(
            professional, sector=_text(claims, "Secteur_Activite"),
            structure_id=_text(claims, "structure_id", "SubjectOrganizationID"),
            structure_name=_text(claims, "structure_name", "SubjectOrganization"),
        )  # fmt: skip


def situations_from_claims(claims: Mapping[str, Any]) -> Iterator[PracticeSituation]:
    """Every activity of every exercice that names a structure, with its exercice's profession and specialty.

    An activity without ancienIdentifiantDeLaStructure (PSC sends "" for some) cannot be named in a VIHF: left out.
    """
    seen: set[str] = set()
    for exercise in _mappings(_get(claims, "SubjectRefPro", "exercices")):
        for activity in _mappings(exercise.get("activities")):
            structure = _text(activity, "ancienIdentifiantDeLaStructure")
            if not structure or structure in seen:
                continue
            seen.add(structure)
            sector = _text(activity, "codeSecteurDactivite")
            yield PracticeSituation(
                structure_id=structure,
                structure_name=_text(activity, "raisonSocialeSite", "enseigneCommercialeSite"),
                sector=f"{sector}^{SECTOR_SCHEME}" if sector and "^" not in sector else sector,
                profession=_text(exercise, "codeProfession"),
                specialty=_text(exercise, "codeSavoirFaire"),
                technical_id=_text(activity, "identifiantTechniqueDeLaStructure"),
                place=_text(activity, "bureauCedex", "codePostal"),
            )


def _get(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _mappings(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, Mapping))


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
