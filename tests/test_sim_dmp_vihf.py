"""VIHF checks of the simulated DMP: signature, certificate trust, issuer and required attributes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from drimbox.sim import DmpOptions, VihfPolicy
from drimbox.xds import namespaces as ns
from tests.test_sim_dmp_support import (
    INS,
    OTHER_PATIENT,
    PATIENT,
    build_vihf,
    make_credentials,
    running_sim,
    submission,
    with_vihf,
)

RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
SAML = f"{{{ns.SAML2}}}"


def _set_resource_id(assertion: etree._Element) -> None:
    for attr in assertion.iter(f"{SAML}Attribute"):
        if attr.get("Name") == RESOURCE_ID:
            attr[0].text = OTHER_PATIENT


def _break_signature_value(assertion: etree._Element) -> None:
    value = assertion.find(f".//{{{ns.DSIG}}}SignatureValue")
    assert value is not None and value.text
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]


def _unsign(assertion: etree._Element) -> None:
    signature = assertion.find(f"{{{ns.DSIG}}}Signature")
    assert signature is not None
    assertion.remove(signature)


def _sign_a_part_only(assertion: etree._Element) -> None:
    reference = assertion.find(f".//{{{ns.DSIG}}}Reference")
    assert reference is not None
    reference.set("URI", "#elsewhere")


def _garbage_certificate(assertion: etree._Element) -> None:
    cert = assertion.find(f".//{{{ns.DSIG}}}X509Certificate")
    assert cert is not None
    cert.text = "XXXXXXX"  # as in the ANS sample


NOW = dt.datetime.now(dt.UTC)
CASES: list[tuple[str, Callable[[], etree._Element | None], str, str]] = [
    ("no wsse:Security", lambda: None, "InvalidSecurity", "no wsse:Security"),
    ("attribute changed after signing", lambda: build_vihf(tamper=_set_resource_id), "FailedCheck", "does not verify"),
    ("signature value altered", lambda: build_vihf(tamper=_break_signature_value), "FailedCheck", "does not verify"),
    ("not signed", lambda: build_vihf(tamper=_unsign), "FailedCheck", "not signed"),
    ("reference to something else", lambda: build_vihf(tamper=_sign_a_part_only), "FailedCheck", "does not verify"),
    (
        "placeholder certificate",
        lambda: build_vihf(tamper=_garbage_certificate),
        "InvalidSecurityToken",
        "not a base64 DER X.509 certificate",
    ),
    (
        "expired certificate",
        lambda: build_vihf(credentials=make_credentials(expired=True)),
        "FailedCheck",
        "validity period",
    ),
    (
        "expired assertion",
        lambda: build_vihf(conditions=(NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=1))),
        "FailedCheck",
        "expired",
    ),
    (
        "issuer is not the certificate",
        lambda: build_vihf(issuer="CN=Someone else, O=Elsewhere, C=FR"),
        "InvalidSecurityToken",
        "Issuer",
    ),
    (
        "missing Authentification_Mode",
        lambda: build_vihf(attributes={"Authentification_Mode": None}),
        "InvalidSecurityToken",
        "Authentification_Mode",
    ),
    (
        "unknown Authentification_Mode",
        lambda: build_vihf(attributes={"Authentification_Mode": "TELEPATHIE"}),
        "InvalidSecurityToken",
        "Authentification_Mode",
    ),
    (
        "missing LPS_ID_HOMOLOGATION_DMP",
        lambda: build_vihf(attributes={"LPS_ID_HOMOLOGATION_DMP": None}),
        "InvalidSecurityToken",
        "LPS_ID_HOMOLOGATION_DMP",
    ),
    (
        "missing role",
        lambda: build_vihf(attributes={"urn:oasis:names:tc:xacml:2.0:subject:role": None}),
        "InvalidSecurityToken",
        "subject:role",
    ),
    (
        "wrong Ressource_URN",
        lambda: build_vihf(attributes={"Ressource_URN": "urn:dp"}),
        "InvalidSecurityToken",
        "Ressource_URN",
    ),
    ("missing resource-id", lambda: build_vihf(None), "InvalidSecurityToken", "resource-id"),
    ("resource-id not a CX", lambda: build_vihf(INS), "InvalidSecurityToken", "resource-id"),
    ("resource-id of another patient", lambda: build_vihf(OTHER_PATIENT), "FailedAuthentication", "resource-id"),
]


@pytest.mark.parametrize(("make", "subcode", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_refused_vihf(
    tmp_path: Path, make: Callable[[], etree._Element | None], subcode: str, reason: str
) -> None:
    sub = submission(vihf=False)
    with_vihf(sub.envelope, make())
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
        assert reply.status == 400
        assert reply.fault is not None, reply.errors()
        code, got_subcode, got_reason = reply.fault
        assert (code, got_subcode) == ("Sender", subcode)
        assert reason in got_reason
        assert await sim.documents() == []


async def test_two_assertions_are_refused(tmp_path: Path) -> None:
    sub = submission()
    security = sub.envelope.find(f".//{{{ns.WSSE}}}Security")
    assert security is not None
    security.append(build_vihf())
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
    assert reply.fault is not None and reply.fault[1] == "InvalidSecurity"


async def test_sha1_signature_as_in_the_ans_samples_is_accepted(tmp_path: Path) -> None:
    sub = submission(vihf=False)
    with_vihf(sub.envelope, build_vihf(algorithm="rsa-sha1"))
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
    assert reply.status_type == "Success", (reply.fault, reply.errors())


async def test_trusted_authority_mode(tmp_path: Path) -> None:
    authority = make_credentials("IGC-Sante TEST")
    structure = make_credentials("DRIMbox", issuer=authority)
    options = DmpOptions(vihf_policy=VihfPolicy(trusted=(authority.cert,)))
    async with running_sim(tmp_path, options=options) as sim:
        issued = submission(vihf=False)
        with_vihf(issued.envelope, build_vihf(credentials=structure))
        reply = await sim.submit(issued)
        assert reply.status_type == "Success", (reply.fault, reply.errors())
        self_signed = submission("1.2.250.1.999.1.1.2.103.2")  # signed with the default self-signed test key
        reply = await sim.submit(self_signed)
        assert reply.fault is not None and reply.fault[1] == "FailedCheck"
        assert "trusted authority" in reply.fault[2]


async def test_vihf_can_be_switched_off(tmp_path: Path) -> None:
    sub = submission(vihf=False)
    async with running_sim(tmp_path, options=DmpOptions(require_vihf=False)) as sim:
        reply = await sim.submit(sub)
    assert reply.status_type == "Success", (reply.fault, reply.errors())
    assert PATIENT  # the patient of the submission needs no VIHF in this mode


async def test_trusted_certs_setting_refuses_other_signers(tmp_path: Path) -> None:
    """With [sim] trusted_certs set, a VIHF signed by any other certificate is refused."""
    from drimbox.config import load_settings
    from drimbox.sim.dmp_routes import options_from_settings
    from drimbox.state.credentials import generate_test_credentials

    _, cert = generate_test_credentials(tmp_path / "ca", "some other structure")
    settings = load_settings(None, env={"DRIMBOX_SIM__TRUSTED_CERTS": str(cert)})
    options = options_from_settings(settings)
    assert len(options.vihf_policy.trusted) == 1
    async with running_sim(tmp_path / "sim", options=options) as sim:
        reply = await sim.submit(submission())
    assert reply.fault is not None and reply.fault[1] == "FailedCheck"
