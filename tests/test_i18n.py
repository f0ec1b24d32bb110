"""The message catalogues: same keys and placeholders in every language, French first, Accept-Language honoured."""

from __future__ import annotations

import datetime as dt
import string

import pytest

from drimbox.i18n import DEFAULT, LANGUAGES, Messages, MissingMessage, catalogue, negotiate, text


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_language_has_the_same_keys_and_placeholders() -> None:
    french = catalogue("fr")
    assert french, "the French catalogue is empty"
    for lang in LANGUAGES:
        other = catalogue(lang)
        assert set(other) == set(french), (lang, set(other) ^ set(french))
        for key, template in french.items():
            assert _placeholders(other[key]) == _placeholders(template), (lang, key)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "fr"),
        ("fr-FR,fr;q=0.9,en;q=0.8", "fr"),
        ("en-GB,en;q=0.9,fr;q=0.8", "en"),
        ("de-DE,de;q=0.9", "fr"),  # none of ours: French
        ("de;q=1, en;q=0.5", "en"),
        ("en;q=0.5, fr;q=0.5", "en"),  # equal weights: the first listed
        ("en;q=0, fr;q=0.1", "fr"),  # q=0 means "not this one"
        ("en;q=zero", "fr"),
        ("*", "fr"),
    ],
)
def test_the_browser_preference_picks_the_language(header: str, expected: str) -> None:
    assert negotiate(header) == expected


def test_french_is_the_default_and_the_fallback() -> None:
    assert DEFAULT == "fr"
    assert text("fr", "common.born", date="08/01/2021") == "né(e) le 08/01/2021"
    assert text("en", "common.born", date="2021-01-08") == "born 2021-01-08"
    assert text("xx", "common.non_diagnostic") == text("fr", "common.non_diagnostic")
    with pytest.raises(MissingMessage):
        text("fr", "no.such.key")


def test_dates_are_written_as_each_language_writes_them() -> None:
    assert Messages("fr").date("20210108") == "08/01/2021"
    assert Messages("fr").date(dt.date(2021, 1, 8)) == "08/01/2021"
    assert Messages("en").date("2021-01-08") == "2021-01-08"
    assert Messages("fr").date("2021") == "2021"  # partial or odd values are shown as they are


def test_names_are_written_as_french_records_write_them() -> None:
    assert Messages("fr").person("Durand", "Jeanne") == "DURAND Jeanne"
    assert Messages("en").person("de la Tour", " Anne ") == "DE LA TOUR Anne"
    assert Messages("fr").person("", "", "899700000001") == "899700000001"
