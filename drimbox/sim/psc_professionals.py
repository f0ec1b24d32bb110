"""The simulated Pro Santé Connect's test professionals and the userinfo claims it gives for them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drimbox.config import ConfigError

# PSC's "sub" is Keycloak's federated id "f:<identity provider id>:<national id>"; the simulator is one provider.
SIM_PROVIDER_ID = "3f1c5e0a-2d4b-4c6e-9a8f-0d1e2f3a4b5c"
PROFESSION_OID = "1.2.250.1.213.1.1.5.5"  # TRE_G15 ProfessionSante, in SubjectRole "code^OID"
ACTIVITY_SECTOR_OID = "1.2.250.1.71.4.2.4"  # TRE_R02 SecteurActivite, in Secteur_Activite "code^OID"
# What PSC says of a CPS / e-CPS authentication: "Palier_Authentification" and the OIDC acr.
AUTHENTICATION_LEVEL = "APPPRIP3^1.2.250.1.213.1.5.1.1.1"
ACR = "eidas1"

PROFESSIONS = {"10": "Médecin", "21": "Pharmacien", "40": "Chirurgien-dentiste", "50": "Sage-femme", "60": "Infirmier"}
SPECIALTIES = {"SM26": "Qualifié en médecine générale", "SM44": "Radio-diagnostic", "SM54": "Médecine générale"}


@dataclass(frozen=True)
class PracticeSituation:
    """One place where the professional practises: an "activity" of PSC's SubjectRefPro."""

    structure_id: str  # ancienIdentifiantDeLaStructure: the IdNat_Struct a VIHF names as Identifiant_Structure
    structure_name: str  # raisonSocialeSite
    activity_sector: str  # codeSecteurDactivite (TRE_R02), e.g. "SA07"
    technical_id: str = ""  # identifiantTechniqueDeLaStructure (the directory's "R…" id); empty = structure_id
    mode: str = "S"  # codeModeExercice (TRE_R23): L libéral, S salarié, B bénévole
    finess: str = ""  # numeroFinessSite
    siret: str = ""  # numeroSiretSite
    role: str = ""  # codeRole (TRE_R21)
    postal_code: str = ""
    city: str = ""


@dataclass(frozen=True)
class Professional:
    """A test professional as the Annuaire Santé knows them; profession "" = no RPPS profession."""

    national_id: str  # IdNat_PS: "8" + RPPS for RPPS professionals; SubjectNameID and VIHF NameID
    family_name: str
    given_name: str
    situations: tuple[PracticeSituation, ...]
    civility: str = "M"  # codeCivilite: M, MME
    practice_civility: str = ""  # codeCiviliteDexercice: DR, PR, ...
    profession: str = ""  # codeProfession (TRE_G15): 10 Médecin, 60 Infirmier, ...
    category: str = "C"  # codeCategorieProfessionnelle (TRE_R09): C civil, M militaire, E étudiant
    specialty_type: str = ""  # codeTypeSavoirFaire (TRE_R04): S = spécialité ordinale
    specialty: str = ""  # codeSavoirFaire, e.g. SM44 Radio-diagnostic
    id_origin: str = "RPPS"  # otherIds[].origine

    @property
    def sub(self) -> str:
        return f"f:{SIM_PROVIDER_ID}:{self.national_id}"

    def label(self) -> str:
        """For the login page: "Dr Jacques BIDEAULT — Médecin, Radio-diagnostic"."""
        what = PROFESSIONS.get(self.profession, self.profession) if self.profession else "sans profession RPPS"
        if self.specialty:
            what += ", " + SPECIALTIES.get(self.specialty, self.specialty)
        prefix = "Dr " if self.practice_civility == "DR" else ""
        return f"{prefix}{self.given_name} {self.family_name} — {what}"


_AMBROISE = PracticeSituation(
    structure_id="101235555", structure_name="Centre de radiologie Ambroise", activity_sector="SA25",
    technical_id="R10000101235555", finess="101235555", postal_code="75010", city="PARIS",
)  # fmt: skip

BUILT_IN: tuple[Professional, ...] = (
    # The radiologist who signs the ANS sample reports (CDA author, exam C).
    Professional(
        national_id="801234560801", family_name="BIDEAULT", given_name="Jacques", practice_civility="DR",
        profession="10", specialty_type="S", specialty="SM44", situations=(_AMBROISE,),
    ),
    # The referring physician of the ANS sample studies: a general practitioner in private practice.
    Professional(
        national_id="801234567897", family_name="MEDIONI", given_name="Stéphane", practice_civility="DR",
        profession="10", specialty_type="S", specialty="SM26",
        situations=(
            PracticeSituation(
                structure_id="381234567800018", structure_name="Cabinet du Dr Stéphane MEDIONI", activity_sector="SA07",
                technical_id="R10000381234567", mode="L", siret="81234567800018", postal_code="75011", city="PARIS",
            ),
        ),
    ),
    Professional(
        national_id="810001234566", family_name="LEROY", given_name="Camille", civility="MME", profession="60",
        situations=(
            PracticeSituation(
                structure_id="1990000015", structure_name="Centre hospitalier simulé", activity_sector="SA01",
                technical_id="R10000990000015", finess="990000015", postal_code="75013", city="PARIS",
            ),
            _AMBROISE,
        ),
    ),
    # A radiologist who works both in her own practice and at a hospital: two practice situations, as PSC lists them
    # (ancienIdentifiantDeLaStructure "4" + RPPS + rank for the practice, "1" + FINESS for the hospital, as in the
    # bac à sable's userinfo), so the box has to ask which one she consults in, or take the launch's Situation.
    Professional(
        national_id="810003456789", family_name="DURAND", given_name="Claire", civility="MME", practice_civility="DR",
        profession="10", specialty_type="S", specialty="SM44",
        situations=(
            PracticeSituation(
                structure_id="410003456789001", structure_name="Cabinet d'imagerie du Dr DURAND", activity_sector="SA08",
                technical_id="R10000345678", mode="L", siret="81234567800026", postal_code="69003", city="LYON",
            ),
            PracticeSituation(
                structure_id="1690000019", structure_name="Centre hospitalier simulé de Lyon", activity_sector="SA01",
                technical_id="F690000019", finess="690000019", postal_code="69004", city="LYON",
            ),
        ),
    ),
    # A medical secretary: known to the structure (CPE-style id "3" + FINESS + "/" + local id), no RPPS profession.
    Professional(
        national_id="3101235555/SEC0001", family_name="MARTIN", given_name="Julie", civility="MME", category="",
        id_origin="STRUCTURE", situations=(_AMBROISE,),
    ),
)  # fmt: skip


def _professional_from_json(raw: Any, where: str) -> Professional:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(Professional)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in raw:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing field {name!r}")
            continue
        value = raw[name]
        if name == "situations":
            if not isinstance(value, list):
                raise ConfigError(f"{where}.situations: expected a list, got {value!r}")
            values[name] = tuple(_situation_from_json(s, f"{where}.situations[{i}]") for i, s in enumerate(value))
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{name}: expected a string, got {value!r}")
        else:
            values[name] = value
    if not values["national_id"]:
        raise ConfigError(f"{where}.national_id: must not be empty")
    return Professional(**values)


def _situation_from_json(raw: Any, where: str) -> PracticeSituation:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(PracticeSituation)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for name, f in known.items():
        if name not in raw and f.default is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing field {name!r}")
        if name in raw and not isinstance(raw[name], str):
            raise ConfigError(f"{where}.{name}: expected a string, got {raw[name]!r}")
    return PracticeSituation(**raw)


@dataclass
class Directory:
    """The professionals the simulated PSC can log in, by national id, in display order."""

    by_id: dict[str, Professional] = field(default_factory=dict)

    @classmethod
    def load(cls, professionals_file: str = "") -> Directory:
        """Built-ins, then the JSON file's entries (a list of Professional objects; same id replaces)."""
        directory = cls({p.national_id: p for p in BUILT_IN})
        if not professionals_file:
            return directory
        key = "sim.professionals_file"
        try:
            raw = json.loads(Path(professionals_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{key}: cannot read {professionals_file!r}: {exc}") from None
        if not isinstance(raw, list):
            raise ConfigError(f"{key}: expected a JSON list of professionals in {professionals_file!r}")
        for i, entry in enumerate(raw):
            pro = _professional_from_json(entry, f"{key}[{i}]")
            directory.by_id[pro.national_id] = pro
        return directory

    def get(self, national_id: str) -> Professional | None:
        return self.by_id.get(national_id)

    def all(self) -> list[Professional]:
        return list(self.by_id.values())


def _activity(s: PracticeSituation) -> dict[str, str]:
    # Every field PSC sends, "" when the directory has no value (PSC sends empty strings, not nulls).
    return {
        "codeModeExercice": s.mode,
        "codeSecteurDactivite": s.activity_sector,
        "codeSectionPharmacien": "",
        "codeRole": s.role,
        "codeGenreActivite": "GENR01",
        "numeroSiretSite": s.siret,
        "numeroSirenSite": s.siret[:9],
        "numeroFinessSite": s.finess,
        "numeroFinessetablissementJuridique": "",
        "identifiantTechniqueDeLaStructure": s.technical_id or s.structure_id,
        "raisonSocialeSite": s.structure_name,
        "enseigneCommercialeSite": "",
        "complementDestinataire": "",
        "complementPointGeographique": "",
        "numeroVoie": "",
        "indiceRepetitionVoie": "",
        "codeTypeDeVoie": "",
        "libelleVoie": "",
        "mentionDistribution": "",
        "bureauCedex": f"{s.postal_code} {s.city}".strip(),
        "codePostal": s.postal_code,
        "codeCommune": "",
        "codePays": "99000",
        "telephone": "",
        "telephone2": "",
        "telecopie": "",
        "adresseEMail": "",
        "codeDepartement": s.postal_code[:2],
        "ancienIdentifiantDeLaStructure": s.structure_id,
        "autoriteDenregistrement": "",
    }


def identity_claims(pro: Professional) -> dict[str, str]:
    """The claims every token carries (ID token and access token): who, without the directory detail."""
    return {
        "sub": pro.sub,
        "SubjectNameID": pro.national_id,
        "preferred_username": pro.national_id,
        "given_name": pro.given_name,
        "family_name": pro.family_name,
    }


def userinfo_claims(pro: Professional) -> dict[str, Any]:
    """The userinfo document PSC returns for scope "openid scope_all" (shape of PSC's bac à sable)."""
    first = pro.situations[0] if pro.situations else None
    exercice = {
        "codeProfession": pro.profession,
        "codeCategorieProfessionnelle": pro.category,
        "codeCiviliteDexercice": pro.practice_civility,
        "nomDexercice": pro.family_name,
        "prenomDexercice": pro.given_name,
        "codeTypeSavoirFaire": pro.specialty_type,
        "codeSavoirFaire": pro.specialty,
        "activities": [_activity(s) for s in pro.situations],
    }
    return {
        **identity_claims(pro),
        "codeCivilite": pro.civility,
        "SubjectOrganization": first.structure_name if first else "",
        "SubjectOrganizationID": (first.technical_id or first.structure_id) if first else "",
        "SubjectRole": [f"{pro.profession}^{PROFESSION_OID}"] if pro.profession else [],
        "Secteur_Activite": f"{first.activity_sector}^{ACTIVITY_SECTOR_OID}" if first else "",
        "codeGenreActivite": "GENR01",
        "Mode_Acces_Raison": "",
        "Acces_Regulation_Medicale": "FAUX",
        "UITVersion": "1.0",
        "Palier_Authentification": AUTHENTICATION_LEVEL,
        "PSI_Locale": "1.2.250.1.213.1.3.1.1",
        "otherIds": [{"identifiant": pro.national_id, "origine": pro.id_origin, "qualite": 1}],
        "SubjectRefPro": {"codeCivilite": pro.civility, "exercices": [exercice]},
    }
