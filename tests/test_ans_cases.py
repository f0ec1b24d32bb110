"""Every ANS homologation exam, rebuilt from the project's samples, through a real source box: the outcomes expected."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.ans_cases import Mesh, Messages, parametrize_cases, start_mesh

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


@pytest.fixture(scope="module")
def mesh(orthanc: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # One PACS content, one simulator, one box for every case: the cases use distinct studies.
    yield from start_mesh(orthanc, tmp_path_factory.mktemp("ans-cases"), Messages())


@parametrize_cases
def test_ans_exam(mesh: Mesh, case: Callable[[Mesh], None]) -> None:
    case(mesh)
