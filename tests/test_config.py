"""Configuration: TOML and DRIMBOX_* variables, validated, errors naming the key."""

from pathlib import Path

import pytest

from drimbox.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "box.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_documented_contract() -> None:
    s = load_settings(None, env={})
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)
    assert (s.mllp.host, s.mllp.port) == ("127.0.0.1", 2575)
    assert (s.dicom.ae_title, s.dicom.port) == ("DRIMBOX", 11112)
    assert s.dmp.url == "http://127.0.0.1:8090/dmp"
    assert s.box.roles == ["source"] and s.box.profile == "proxy"


def test_toml_then_environment_override(tmp_path: Path) -> None:
    path = write(tmp_path, '[pacs]\nport = 4343\nae_title = "PACS1"\n[box]\nroles = ["source", "consumer"]\n')
    s = load_settings(path, env={"DRIMBOX_PACS__PORT": "5000", "DRIMBOX_BOX__ROLES": "consumer"})
    assert s.pacs.port == 5000 and s.pacs.ae_title == "PACS1"
    assert s.box.roles == ["consumer"]


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("[pacs]\nprot = 1\n", {}, "pacs.prot"),
        ("[nope]\nx = 1\n", {}, "nope"),
        ('[pacs]\nport = "abc"\n', {}, "pacs.port"),
        ('[pacs]\nretrieve = "c-store"\n', {}, "pacs.retrieve"),
        ('[box]\nprofile = "cloud"\n', {}, "box.profile"),
        ('[dicom]\nae_title = "THIS_AE_TITLE_IS_TOO_LONG"\n', {}, "dicom.ae_title"),
        ("", {"DRIMBOX_HTTP__PORT": "99999"}, "http.port"),
        ("", {"DRIMBOX_HTTP__NOPE": "1"}, "http.nope"),
        ('[box]\npublic_url = "ftp://x"\n', {}, "box.public_url"),
    ],
)
def test_bad_values_stop_the_start_naming_the_key(tmp_path: Path, text: str, env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(write(tmp_path, text), env=env)


def test_missing_file_and_bad_toml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[pacs\n"), env={})


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, "auto"),  # the default: encode only for a client that prefers it (the viewer on a slow link)
        ("[http]\ncompress_on_the_fly = true\n", {}, True),
        ("[http]\ncompress_on_the_fly = false\n", {}, False),
        ("", {"DRIMBOX_HTTP__COMPRESS_ON_THE_FLY": "off"}, False),
        ("", {"DRIMBOX_HTTP__COMPRESS_ON_THE_FLY": "auto"}, "auto"),
    ],
)
def test_compress_on_the_fly_is_true_false_or_auto(
    tmp_path: Path, text: str, env: dict[str, str], expected: object
) -> None:
    path = tmp_path / "box.toml"
    path.write_text(text)
    assert load_settings(path, env=env).http.compress_on_the_fly == expected


def test_compress_on_the_fly_refuses_another_word(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text('[http]\ncompress_on_the_fly = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"http\.compress_on_the_fly"):
        load_settings(path, env={})
