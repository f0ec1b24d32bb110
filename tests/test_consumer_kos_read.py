"""A KOS is parsed once per process: the exam list, opening the exam and its first image share the reading."""

from __future__ import annotations

import asyncio

import pytest

from drimbox.consumer import kos_read
from drimbox.manifest import KosError, KosSummary, parse_kos
from tests.support.consumer import make_kos, study_spec


def test_the_same_kos_bytes_are_parsed_once_and_other_bytes_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = parse_kos

    def counting(data: bytes) -> KosSummary:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(kos_read, "parse_kos", counting)
    monkeypatch.setattr(kos_read, "_read", type(kos_read._read)())
    _, first = make_kos(study_spec())
    _, second = make_kos(study_spec(4))

    async def scenario() -> None:
        kos, patients = await kos_read.read_kos(first)
        again, patients_again = await kos_read.read_kos(bytes(first))  # fresh bytes from the store, same content
        assert again is kos and patients_again == patients and patients
        other, _ = await kos_read.read_kos(second)
        assert other.study_uid != kos.study_uid

    asyncio.run(scenario())
    assert parsed == [first, second]


def test_an_unreadable_kos_is_refused_each_time_and_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kos_read, "_read", type(kos_read._read)())

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(KosError):
                await kos_read.read_kos(b"\0" * 128 + b"DICM" + b"\0" * 40)

    asyncio.run(scenario())
    assert not kos_read._read
