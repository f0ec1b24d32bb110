"""The patient's side in tests: a Mon Espace Santé login to a box without a browser, and its [patient] settings."""

from __future__ import annotations

import aiohttp

from drimbox.config import Settings

ANS_PATIENT = "279035121518989"  # the ANS test patient, whose exams the samples are
OTHER_PATIENT = "180036912345660"  # another of the simulator's test patients
PATIENT_COOKIE = "drimbox_session_patient"


def enable_patient(settings: Settings, sim_url: str) -> Settings:
    settings.patient.enabled = True
    settings.patient.issuer = f"{sim_url}/mes"
    return settings


async def patient_login(http: aiohttp.ClientSession, box_url: str, ins: str = ANS_PATIENT) -> str:
    """A patient session id at `box_url`, through the simulator's provider (sim_auto: no choice page)."""
    start = await http.get(f"{box_url}/patient/login?next=/patient/", allow_redirects=False)
    assert start.status == 303, await start.text()
    state = start.cookies[PATIENT_COOKIE + "_login"].value
    at_provider = await http.get(start.headers["Location"] + f"&sim_auto=1&login_hint={ins}", allow_redirects=False)
    assert at_provider.status == 303, await at_provider.text()
    back = await http.get(at_provider.headers["Location"], allow_redirects=False,
                          headers={"Cookie": f"{PATIENT_COOKIE}_login={state}"})  # fmt: skip
    assert back.status == 303 and back.headers["Location"] == "/patient/", await back.text()
    return back.cookies[PATIENT_COOKIE].value
