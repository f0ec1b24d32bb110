"""The DMP's habilitation matrix for imaging: which professions (and specialties) may read imaging documents."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Professions are TRE_G15 codes (the VIHF's first subject:role, scheme 1.2.250.1.71.1.2.7); specialties are
# TRE_R38 savoir-faire codes (SM26, SM44, ...). The DMP's matrix (arrêté fixing the "matrice d'habilitations"
# of the professionals, by class of document) is public but not in the material here; this default is the
# project's reading of it for the class "imagerie médicale" and is marked [unsure] where it is a reading:
# - 10 Médecin: every specialty reads imaging (certain);
# - 40 Chirurgien-dentiste: reads imaging (dental and head imaging are part of their practice) [unsure];
# - 50 Sage-femme: reads imaging (obstetric ultrasound) [unsure];
# - 60 Infirmier: reads imaging reports and images in the care team [unsure];
# - 21 Pharmacien: not in the default (the matrix gives pharmacists dispensing and treatment documents,
#   not imaging) [unsure];
# - anyone without an RPPS profession (secretaries, reception and other non-medical staff): never.
# `[access] imaging_professions` replaces this list on a consumer box; the simulator keeps this default.
DEFAULT_IMAGING_PROFESSIONS: tuple[str, ...] = ("10", "40", "50", "60")
PROFESSION_NAMES = {
    "10": "médecin",
    "21": "pharmacien",
    "40": "chirurgien-dentiste",
    "50": "sage-femme",
    "60": "infirmier",
    "70": "masseur-kinésithérapeute",
}


def bare_code(code: str | None) -> str:
    """`G15_10`, `10^1.2.250.1.213.1.1.5.5` or `10` → `10` (PSC, the VIHF and the CDA spell codes differently)."""
    value = (code or "").strip().split("^", 1)[0]
    return value.rpartition("_")[2] if value.startswith(("G15_", "R38_", "R01_")) else value


@dataclass(frozen=True)
class ImagingMatrix:
    """Entries are a profession (`10`) or a profession restricted to one specialty (`21/SM98`)."""

    entries: tuple[str, ...] = DEFAULT_IMAGING_PROFESSIONS

    @classmethod
    def of(cls, entries: Iterable[str]) -> ImagingMatrix:
        return cls(tuple(e.strip() for e in entries if e.strip()))

    def may_read(self, profession: str | None, specialties: Iterable[str] = ()) -> bool:
        """Whether this profession (with these specialties) may read imaging documents in the DMP."""
        prof = bare_code(profession)
        if not prof:
            return False  # no RPPS profession: non-medical staff
        specs = {bare_code(s) for s in specialties}
        for entry in self.entries:
            code, _, specialty = entry.partition("/")
            if code == prof and (not specialty or specialty in specs):
                return True
        return False

    def refusal(self, profession: str | None, specialties: Iterable[str] = ()) -> str | None:
        """Why this professional may not read imaging documents, or None when they may."""
        if self.may_read(profession, specialties):
            return None
        prof = bare_code(profession)
        if not prof:
            return ("your identity carries no health profession (RPPS): non-medical staff may not consult "
                    "a patient's DMP")  # fmt: skip
        name = PROFESSION_NAMES.get(prof, f"profession {prof}")
        return f"the DMP's habilitation matrix does not let a {name} read imaging documents"
