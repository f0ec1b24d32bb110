"""The logged-in patient, read from the Mon Espace Santé ID token: INS and its OID, names, birth date."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# An INS (NIR or NIA): 13 characters and a 2-digit key; Corsica's 2A/2B departments are the 6th-7th.
_INS = re.compile(r"^[12378]\d{4}(\d{2}|2A|2B)\d{8}$")
_OID = re.compile(r"^[0-2](\.\d+)+$")


@dataclass(frozen=True)
class PatientIdentity:
    ins: str
    oid: str
    family: str = ""
    given: str = ""
    birth_date: str = ""

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> PatientIdentity:
        """ValueError when the token names no well-formed INS (a patient without one cannot be matched to exams)."""
        ins, oid = str(claims.get("ins") or ""), str(claims.get("ins_oid") or "")
        if not _INS.match(ins) or not _OID.match(oid):
            raise ValueError("the ID token carries no well-formed INS and OID")
        return cls(ins, oid, str(claims.get("family_name") or ""), str(claims.get("given_name") or ""),
                   str(claims.get("birthdate") or ""))  # fmt: skip

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> PatientIdentity:
        return cls(**{k: str(data.get(k, "")) for k in ("ins", "oid", "family", "given", "birth_date")})

    def masked(self) -> str:
        """For ordinary logs: never the whole INS."""
        return self.ins[:1] + "…" + self.ins[-2:]


def acr_level(acr: str) -> int:
    """The eIDAS level of an acr value ("eidas1" low, "eidas2" substantial, "eidas3" high); 0 when none."""
    match = re.fullmatch(r"eidas([1-3])", acr.strip())
    return int(match.group(1)) if match else 0
