"""Every ANS homologation exam through a real source box, with the ANS HL7 files (../shared/ans-data) where they exist.

The cases and their expected outcomes are tests/support/ans_cases.py, which tests/test_ans_cases.py also runs from
the project's own samples (so a fresh clone without the ANS data tests them too). Here the messages are the ANS
files, their elided CDA rebuilt from the facts of each exam; an exam whose HL7 file was not harvested is sent in the
ANS template (the C ORU, or the I depublication for a withdrawal) around its own CDA, as the ANS files share it (but
for M, whose PID carries the CDA's traits: conformance.ans.M_PID).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conformance.ans import ANS_DATA, M_PID, excerpt_cda_c, fill, message, needs_ans_data, with_pid
from drimbox.demo.samples.reports import ANS_EXAMS, ExamSpec, build_cda
from tests.support.ans_cases import Mesh, Messages, parametrize_cases, start_mesh

pytestmark = [needs_ans_data, pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

W_STUDY = b"1.2.250.1.213.4.5.2.1.124"


class AnsMessages(Messages):
    """The ANS files; each message gets its own MSH-10 (the files share one, and a re-sent MSH-10 is a duplicate)."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)
        self._files = {
            ("C", "publish"): ("C/CR_C-ORU.excerpt.hl7", excerpt_cda_c),
            ("E", "publish"): ("E/CR_E-ORU.excerpt.hl7", lambda: build_cda(ANS_EXAMS["E"])),
            ("G1_MAJ", "publish"): ("G/CR_G1_MAJ-ORU.excerpt.hl7", lambda: build_cda(ANS_EXAMS["G1_MAJ"])),
            ("I", "withdraw"): ("I/CR_I_Depublication-ORU.excerpt.hl7", lambda: build_cda(ANS_EXAMS["I"])),
        }

    def _id(self) -> bytes:
        return b"2024091210%04d" % next(self._ids)  # MSH-7 takes it too in the ANS template

    def oru(self, exam: str, control_id: str, action: str = "publish") -> bytes:
        if (exam, action) == ("M", "publish"):  # CR_M-ORU: the template with M's own PID
            return with_pid(self.report(ANS_EXAMS["M"], control_id), M_PID)
        path, cda = self._files.get((exam, action), (None, None))
        if path is None or cda is None:
            return self.report(ANS_EXAMS[exam], control_id, action)
        return message(path, cda(), self._id())

    def foreign_pid(self, exam: str, control_id: str) -> bytes:
        return self.report(ANS_EXAMS[exam], control_id)  # the template's PID is PAT-TROIS's

    def report(self, exam: ExamSpec, control_id: str, action: str = "publish") -> bytes:
        template = {"publish": "C/CR_C-ORU.excerpt.hl7", "withdraw": "I/CR_I_Depublication-ORU.excerpt.hl7"}[action]
        return message(template, build_cda(exam), self._id())

    def mdm(self, exam: str, control_id: str) -> bytes:
        assert exam == "C", "only exam C's MDM was harvested"
        return message("C/CR_C-MDM.excerpt.hl7", excerpt_cda_c(), self._id())

    def cancel(self, control_id: str, accession: str = "ACN124", study_uid: str = "1.2.250.1.213.4.5.2.1.124") -> bytes:
        raw = fill((ANS_DATA / "hl7" / "W" / "CR_W_Suppression-OMI.hl7").read_bytes())
        assert raw.count(b"|OMI^O23^OMI_O23|001|") == 1 and raw.count(b"IPC|ACN124|") == 1
        raw = raw.replace(b"|OMI^O23^OMI_O23|001|", b"|OMI^O23^OMI_O23|" + self._id() + b"|")
        return raw.replace(b"IPC|ACN124|", b"IPC|" + accession.encode() + b"|").replace(W_STUDY, study_uid.encode())


@pytest.fixture(scope="module")
def mesh(orthanc: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from start_mesh(orthanc, tmp_path_factory.mktemp("ans-suite"), AnsMessages())


@parametrize_cases
def test_ans_exam(mesh: Mesh, case: Callable[[Mesh], None]) -> None:
    case(mesh)
