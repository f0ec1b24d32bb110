"""The [auth] section and the [whitelist] keys: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from drimbox.auth.professional import Professional
from drimbox.config import ConfigError, load_settings


def test_defaults() -> None:
    s = load_settings(None, env={})
    assert s.auth.session_ttl == 8 * 3600 and s.auth.session_idle == 30 * 60
    assert s.auth.token_check == "introspection" and s.auth.scopes == ["openid", "scope_all"]
    assert (
        s.whitelist.require_signature and s.whitelist.certificate_url == "http://127.0.0.1:8090/whitelist/certificate"
    )
    # No trust on first use unless asked; the signer the ANS names; revocation checked.
    assert not s.whitelist.trust_on_first_use and s.whitelist.trust_roots == ""
    assert (s.whitelist.signer_cn, s.whitelist.signer_ou) == ("Liste Blanche DRIM-M", "318751275100020")
    assert s.whitelist.check_revocation and s.whitelist.check_client_dn


def test_environment_overrides() -> None:
    s = load_settings(
        None,
        env={
            "DRIMBOX_AUTH__TOKEN_CHECK": "jwt",
            "DRIMBOX_AUTH__AUTHORIZE_PARAMS": "sim_auto=1",
            "DRIMBOX_WHITELIST__REQUIRE_SIGNATURE": "false",
        },
    )
    assert s.auth.token_check == "jwt" and s.auth.authorize_params == ["sim_auto=1"]
    assert not s.whitelist.require_signature


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DRIMBOX_AUTH__TOKEN_CHECK": "magic"}, "auth.token_check"),
        ({"DRIMBOX_AUTH__SESSION_TTL": "0"}, "auth.session_ttl"),
        ({"DRIMBOX_AUTH__SESSION_IDLE": "-1"}, "auth.session_idle"),
        ({"DRIMBOX_AUTH__SCOPES": "profile"}, "auth.scopes"),
        ({"DRIMBOX_AUTH__TOKEN_ENDPOINT_AUTH": "private_key_jwt"}, "auth.token_endpoint_auth"),
        ({"DRIMBOX_AUTH__COOKIE_NAME": "a b"}, "auth.cookie_name"),
        ({"DRIMBOX_AUTH__AUTHORIZE_PARAMS": "novalue"}, "auth.authorize_params"),
        ({"DRIMBOX_AUTH__LOGOUT_REDIRECT": "https://evil.example/"}, "auth.logout_redirect"),
        ({"DRIMBOX_AUTH__NOPE": "1"}, "auth.nope"),
        ({"DRIMBOX_WHITELIST__TRUST_ROOTS": "/no/such/file.pem"}, "whitelist.trust_roots"),
        ({"DRIMBOX_WHITELIST__INTERMEDIATES": "/no/such/file.pem"}, "whitelist.intermediates"),
        ({"DRIMBOX_WHITELIST__CRL": "/no/such/file.crl"}, "whitelist.crl"),
        (
            {"DRIMBOX_WHITELIST__CERTIFICATE_URL": "", "DRIMBOX_WHITELIST__TRUST_ON_FIRST_USE": "true"},
            "whitelist.certificate_url",
        ),
        ({"DRIMBOX_WHITELIST__SIGNER_CN": " "}, "whitelist.signer_cn"),
        ({"DRIMBOX_WHITELIST__CERTIFICATE": "/etc/hostname"}, "whitelist.certificate"),  # gone: trust_roots replaces it
        ({"DRIMBOX_SIM__WHITELIST_SIGNER": "nobody"}, "sim.whitelist_signer"),
        ({"DRIMBOX_SIM__WHITELIST_OPERATOR_DNS": "not a dn"}, "sim.whitelist_operator_dns"),
        ({"DRIMBOX_WHITELIST__CERTIFICATE_URL": "file:///etc/passwd"}, "whitelist.certificate_url"),
        ({"DRIMBOX_WHITELIST__REFRESH_INTERVAL": "0"}, "whitelist.refresh_interval"),
        ({"DRIMBOX_AUTH__OPERATOR_TOKEN": "my-plain-token"}, "auth.operator_token"),  # the hash only, never the token
        ({"DRIMBOX_AUTH__REPORT_LINK_KEYS": "short"}, "auth.report_link_keys"),
        ({"DRIMBOX_AUTH__REPORT_LINK_TTL": "0"}, "auth.report_link_ttl"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(None, env=env)


def test_toml_auth_section(tmp_path: Path) -> None:
    cert = tmp_path / "igc-sante-roots.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "box.toml"
    path.write_text(
        f'[auth]\nsession_idle = 600\nscopes = ["openid", "scope_all"]\n[whitelist]\ntrust_roots = "{cert}"\n'
    )
    s = load_settings(path, env={})
    assert s.auth.session_idle == 600.0 and s.whitelist.trust_roots == str(cert)


def test_professional_from_psc_and_plain_claims() -> None:
    psc = {
        "sub": "f:abc", "SubjectNameID": "899700218896", "family_name": "DOC", "given_name": "KIT",
        "SubjectOrganization": "CABINET", "Secteur_Activite": "SA07^1.2.250.1.71.4.2.4",
        "SubjectOrganizationID": "R102671",
        "SubjectRefPro": {"exercices": [{"codeProfession": "10", "codeSavoirFaire": "SM44", "activities": [
            {"numeroFinessSite": "010000024", "identifiantTechniqueDeLaStructure": "R102671",
             "ancienIdentifiantDeLaStructure": "499700218896001", "raisonSocialeSite": "CABINET",
             "codeSecteurDactivite": "SA07"}]}]},
    }  # fmt: skip
    p = Professional.from_claims(psc)
    # The structure the DMP knows is the activity's ancienIdentifiantDeLaStructure, not the technical "R…" id.
    assert (p.id, p.rpps, p.profession, p.specialty, p.structure_id, p.structure_name, p.sector) == (
        "899700218896",
        "99700218896",
        "10",
        "SM44",
        "499700218896001",
        "CABINET",
        "SA07^1.2.250.1.71.4.2.4",
    )
    assert Professional.from_json(p.to_json()) == p
    plain = Professional.from_claims({"sub": "u1", "family_name": "Doe", "SubjectRole": ["40^1.2.250.1.213.1.1.5.5"]})
    assert plain.id == "u1" and plain.profession == "40" and plain.rpps == ""
    with pytest.raises(ValueError):
        Professional.from_claims({"family_name": "Nobody"})
    # Hostile shapes never crash the mapping.
    odd = Professional.from_claims({"sub": "x", "SubjectRefPro": "nope", "family_name": ["a"], "given_name": True})
    assert odd.family == "" and odd.given == ""
