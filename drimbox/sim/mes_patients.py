"""The simulated Mon Espace Santé's test patients: INS (with its OID), names, birth date, sex."""

from __future__ import annotations

from dataclasses import dataclass

# The INS-NIR test OID (the ANS test patients' INS are issued under it; the production OID is 1.2.250.1.213.1.4.8).
INS_TEST_OID = "1.2.250.1.213.1.4.10"


@dataclass(frozen=True)
class Patient:
    ins: str
    family: str
    given: str
    birth_date: str  # ISO 8601, as the OIDC birthdate claim
    gender: str  # "female" / "male", as the OIDC gender claim
    oid: str = INS_TEST_OID

    def label(self) -> str:
        return (
            f"{self.given.title()} {self.family} (née le {self.birth_date})"
            if self.gender == "female"
            else (f"{self.given.title()} {self.family} (né le {self.birth_date})")
        )

    def claims(self) -> dict[str, str]:
        """What the ID token and userinfo say of the patient (beside sub, iss, aud…)."""
        return {"ins": self.ins, "ins_oid": self.oid, "family_name": self.family, "given_name": self.given,
                "birthdate": self.birth_date, "gender": self.gender}  # fmt: skip


# The ANS test patient first (the one the ANS sample exams are about), then two others of the simulator's own.
PATIENTS: tuple[Patient, ...] = (
    Patient("279035121518989", "PAT-TROIS", "DOMINIQUE", "1979-03-28", "female"),
    Patient("180036912345660", "PAT-QUATRE", "CLAUDE", "1980-03-05", "male"),
    Patient("291117512345619", "PAT-CINQ", "CAMILLE", "1991-11-19", "female"),
)


def find(ins: str) -> Patient | None:
    return next((p for p in PATIENTS if p.ins == ins), None)
