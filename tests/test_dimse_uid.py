"""The one UID rule (PS3.5 §9.1) and its lenient form for UIDs read from other systems."""

import pytest

from drimbox.dimse.uid import MAX_UID_LENGTH, is_lenient_uid, is_uid


@pytest.mark.parametrize("value", ["0", "1", "1.2.840.10008.1.1", "1.0.3", "2.25." + "1" * 59, "10.20"])
def test_valid_uids(value: str) -> None:
    assert len(value) <= MAX_UID_LENGTH
    assert is_uid(value)
    assert is_lenient_uid(value)


@pytest.mark.parametrize(
    "value",
    ["", ".", "1.", ".1", "1..2", "1.2.3\n", "1.2 ", " 1.2", "1.²", "1.٣", "1.2a", "1.*", "1\\2", "2.25." + "1" * 60],
)
def test_refused_by_both(value: str) -> None:
    assert not is_uid(value)
    assert not is_lenient_uid(value)


@pytest.mark.parametrize("value", ["01", "1.02", "1.2.00", "1.2.3.0004"])
def test_leading_zero_refused_strictly_accepted_leniently(value: str) -> None:
    assert not is_uid(value)
    assert is_lenient_uid(value)


def test_length_limit() -> None:
    assert is_uid("1." + "2" * 62)
    assert not is_uid("1." + "2" * 63)
    assert not is_lenient_uid("1." + "2" * 63)
