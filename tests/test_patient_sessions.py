"""Patient sessions in the box's session store: their own table, idle and absolute expiry, and no crossing with
professionals' sessions (a patient session id is no professional session, and the reverse)."""

from __future__ import annotations

from pathlib import Path

from drimbox.auth.oidc import TokenSet
from drimbox.auth.professional import Professional
from drimbox.auth.session import SessionStore

PATIENT = {"ins": "279035121518989", "oid": "1.2.250.1.213.1.4.10", "family": "PAT-TROIS", "given": "DOMINIQUE",
           "birth_date": "1979-03-28"}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_patient_session_ends_when_idle_or_old_and_is_never_a_professional_one(tmp_path: Path) -> None:
    clock = Clock()
    store = SessionStore(tmp_path / "auth.sqlite", ttl=8 * 3600, idle=1800, clock=clock)
    try:
        patient = await store.create_patient(PATIENT, ttl=3600)
        found = await store.patient_session(patient, idle=900)
        assert found is not None and found[1] == PATIENT
        # Not a professional session, under any name.
        assert await store.get(patient) is None
        pro = await store.create(Professional(id="810001234567"), TokenSet(access_token="t"))
        assert await store.patient_session(pro, idle=900) is None
        # Idle: each request restarts the clock (written at most every 30 s); 15 min without one ends it.
        clock.now += 600
        assert await store.patient_session(patient, idle=900) is not None
        clock.now += 899
        assert await store.patient_session(patient, idle=900) is not None
        clock.now += 901
        assert await store.patient_session(patient, idle=900) is None
        # Absolute: an active session still ends after its ttl.
        other = await store.create_patient(PATIENT, ttl=3600)
        for _ in range(7):  # 3500 s of activity
            clock.now += 500
            assert await store.patient_session(other, idle=900) is not None
        clock.now += 500
        assert await store.patient_session(other, idle=900) is None
        # Logout ends it at once.
        third = await store.create_patient(PATIENT, ttl=3600)
        await store.end_patient(third)
        assert await store.patient_session(third, idle=900) is None
    finally:
        store.close()
