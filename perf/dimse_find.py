"""C-FIND against Orthanc: drimbox's SCU beside dcmtk findscu (TCP_NODELAY=1) and pynetdicom, same run.

    .venv/bin/python -m perf.dimse_find [--runs 30] [--instances 300] [--http]

Two queries, the two the box makes:
- IMAGE: every instance of a 300-instance study with the patient, study and series keys a KOS needs
  (`find_study_instances`, the publication pipeline);
- STUDY: a QIDO-RS `/studies?PatientID=…` turned into a C-FIND with the QIDO default return keys
  (`iter_find`, the Proxy profile's QIDO-RS), one match.
Each is timed cold (a new association per query: drimbox with a pool that keeps nothing, findscu one
process per query, pynetdicom as the box used it before) and warm: drimbox on its pool, one query per
round and per query over a burst of N; findscu `--repeat N` on one association, per query =
(T(N) − T(1)) / (N − 1), a burst too. `--http` also times QIDO-RS through
a running box (Proxy profile) beside Orthanc's own QIDO-RS, with curl. Prints medians in milliseconds.

Measured here (2 cores, shared with other work; Orthanc 1.10, dcmtk 3.6.7), ms, medians:

                                          before (pynetdicom)     after (ul.py + pool)
    IMAGE findscu -q, process / --repeat      88 / 71                 94 / 76
    IMAGE drimbox, new association            212                     82
    IMAGE drimbox, pooled                     208 (no pool)           79
    STUDY findscu -q, process / --repeat      18.5 / 1.0              19.8 / 1.0
    STUDY iter_find, new association          20.7                    2.4
    STUDY iter_find, pooled                   20.9 (no pool)          1.8 (1.5 in a burst)
    QIDO-RS via the box / Orthanc's own       21.6 / 2.3              3.8 / 2.2

pynetdicom 3 alone, a new association per IMAGE query: ≈ 179.
"before" is the same script run on the tree before this change (20 runs), "after" 30 runs; each column is
one run, findscu in the same run. Orthanc is most of the IMAGE time: it reads each instance's stored JSON for
SOP Class UID and the issuers, keys outside its index (SOP Instance UID alone: ≈ 15 ms for 300).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ImplicitVRLittleEndian

from drimbox.config import PacsSettings
from drimbox.demo.samples.orthanc import OrthancServer, nodelay_env, start_orthanc
from drimbox.demo.samples.studies import exam_c_study, write_study
from drimbox.dicomweb.backend import QueryLevel
from drimbox.dicomweb.qido import parse_query
from drimbox.dimse import study_instances as finder
from drimbox.dimse.pool import AssociationPool
from drimbox.dimse.qido_find import iter_find

BOX_AET = "DRIMBOX"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def qido_identifier(patient_id: str) -> Dataset:
    """The identifier the Proxy backend sends for `/studies?PatientID=…` (its `_identifier`, reproduced)."""
    query = parse_query(QueryLevel.STUDY, [("PatientID", patient_id)])
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for tag in sorted(query.return_tags):
        ds.add_new(tag, dictionary_VR(tag).split(" or ")[0], None)
    for match in query.matches:
        ds.add_new(match.tag, match.vr, match.value)
    return ds


def image_identifier(study_uid: str) -> Dataset:
    """The IMAGE-level identifier of find_study_instances, as findscu must send it too."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    for keyword in (*finder.STUDY_KEYS, *finder.INSTANCE_KEYS):
        setattr(ds, keyword, "")
    ds.IssuerOfAccessionNumberSequence = []
    return ds


def write_query(path: Path, ds: Dataset) -> Path:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = UID(STUDY_ROOT_FIND)
    meta.MediaStorageSOPInstanceUID = UID("1.2.3")
    copy = Dataset(ds)
    copy.file_meta = meta
    copy.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return path


def findscu(orthanc: OrthancServer, query: Path, answers: int, repeat: int = 1, check: bool = False) -> float:
    """Wall time of one findscu process running the query `repeat` times on one association.

    findscu prints every answer at its default log level (42 000 unbuffered writes for 300 answers, +40 %
    of its time): timed runs are quiet (-q); a `check` run is verbose and counts the answers.
    """
    exe = shutil.which("findscu")
    if exe is None:
        raise SystemExit("findscu not found: apt-get install dcmtk")
    args = [exe, "-S", "-aet", BOX_AET, "-aec", orthanc.aet, "-v" if check else "-q", "--repeat", str(repeat)]
    started = time.perf_counter()
    proc = subprocess.run(
        [*args, orthanc.host, str(orthanc.dicom_port), str(query)],
        capture_output=True,
        text=True,
        env=nodelay_env(),
        check=False,
    )
    elapsed = time.perf_counter() - started
    got = (proc.stdout + proc.stderr).count("Find Response:")  # pending ones ("Final Find Response (…)")
    if proc.returncode != 0 or (check and got != answers * repeat):
        raise SystemExit(f"findscu: {got} answers, exit {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def pynetdicom_find(pacs: PacsSettings, query: Dataset, answers: int, keywords: tuple[str, ...]) -> float:
    """The box's C-FIND before drimbox's own upper layer: pynetdicom, one association per query."""
    from pynetdicom.presentation import build_context

    from drimbox.dimse.network import associate

    started = time.perf_counter()
    got = []
    with associate(pacs, BOX_AET, [build_context(STUDY_ROOT_FIND)]) as assoc:
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                # As find.py read them: each value the KOS needs, or every value QIDO turns into JSON.
                got.append([str(identifier.get(k, "")) for k in keywords or identifier.dir()])
    elapsed = time.perf_counter() - started
    if len(got) != answers:
        raise SystemExit(f"pynetdicom: {len(got)} answers, expected {answers}")
    return elapsed


def ours_image(pacs: PacsSettings, study_uid: str, answers: int, pool: AssociationPool, repeat: int = 1) -> float:
    """Per query, over `repeat` queries in a row (as findscu --repeat: the pooled association stays warm)."""
    started = time.perf_counter()
    for _ in range(repeat):
        found = finder.find_study_instances(pacs, BOX_AET, study_uid, pool=pool)
        if found is None or len(found.instances) != answers:
            raise SystemExit(f"find_study_instances: {found and len(found.instances)} instances, expected {answers}")
    return (time.perf_counter() - started) / repeat


def ours_study(
    loop: asyncio.AbstractEventLoop,
    pacs: PacsSettings,
    query: Dataset,
    answers: int,
    pool: AssociationPool,
    repeat: int = 1,
) -> float:
    """iter_find on `loop` (one event loop for every run, as in the server), per query over `repeat` in a row."""

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(repeat):
            got = [ds.PatientID async for ds in iter_find(pacs, BOX_AET, query, pool=pool)]
            if len(got) != answers:
                raise SystemExit(f"iter_find: {len(got)} answers, expected {answers}")
        return (time.perf_counter() - started) / repeat

    return loop.run_until_complete(run())


def http_candidates(
    work: Path, orthanc: OrthancServer, patient_id: str
) -> tuple[dict[str, Callable[[], float]], Callable[[], None]]:
    """QIDO-RS through a box in the Proxy profile, and Orthanc's own, timed by curl."""
    from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
    from perf.measure import fetch

    http, mllp, dicom = free_port(), free_port(), free_port()
    orthanc.add_modality(BOX_AET, "127.0.0.1", dicom)
    cfg = write_config(
        work / "box.toml",
        {
            "box": {"var_dir": str(work / "box"), "profile": "proxy", "public_url": f"http://127.0.0.1:{http}"},
            "http": {"port": http},
            "mllp": {"port": mllp},
            "dicom": {"port": dicom},
            "pacs": {"ae_title": orthanc.aet, "port": orthanc.dicom_port},
        },
    )
    box = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{http}/health", work / "box.log").start()
    accept = "application/dicom+json"

    def timed(url: str) -> Callable[[], float]:
        def run() -> float:
            got = fetch(url, accept)
            if got.status != 200:
                raise SystemExit(f"{url}: HTTP {got.status}")
            return got.total_s

        return run

    return {
        "QIDO-RS via drimbox (curl)": timed(f"http://127.0.0.1:{http}/dicom-web/studies?PatientID={patient_id}"),
        "QIDO-RS Orthanc (curl)": timed(f"{orthanc.dicomweb_url}/studies?PatientID={patient_id}"),
    }, box.stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=20, help="findscu --repeat for the warm figure")
    parser.add_argument("--http", action="store_true", help="also QIDO-RS through a box vs Orthanc's (curl)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-find-") as tmp:
        work = Path(tmp)
        spec = exam_c_study(instances=args.instances, rows=16, columns=16)
        print(f"writing {args.instances} instances ...", flush=True)
        paths = write_study(work / "study", spec)
        orthanc = start_orthanc(work / "orthanc", box_aet=BOX_AET)
        stop_box: Callable[[], None] = lambda: None  # noqa: E731
        try:
            orthanc.store_files(paths)
            pacs = orthanc.pacs_settings(timeout=30)
            n, uid = args.instances, spec.study_uid
            image, study = image_identifier(uid), qido_identifier(spec.patient_id)
            image_file, study_file = write_query(work / "image.dcm", image), write_query(work / "study.dcm", study)
            cold, warm = AssociationPool(idle_seconds=0), AssociationPool(idle_seconds=60)
            loop = asyncio.new_event_loop()
            reps: int = args.repeat

            def findscu_warm(query: Path, answers: int) -> float:
                return (findscu(orthanc, query, answers, reps) - findscu(orthanc, query, answers)) / (reps - 1)

            candidates: dict[str, Callable[[], float]] = {
                "IMAGE findscu, process": lambda: findscu(orthanc, image_file, n),
                "IMAGE findscu --repeat, per query": lambda: findscu_warm(image_file, n),
                "IMAGE pynetdicom (before), cold": lambda: pynetdicom_find(pacs, image, n, finder.INSTANCE_KEYS),
                "IMAGE drimbox, cold": lambda: ours_image(pacs, uid, n, cold),
                "IMAGE drimbox, pooled": lambda: ours_image(pacs, uid, n, warm),
                "IMAGE drimbox, pooled, per query of a burst": lambda: ours_image(pacs, uid, n, warm, reps),
                "STUDY findscu, process": lambda: findscu(orthanc, study_file, 1),
                "STUDY findscu --repeat, per query": lambda: findscu_warm(study_file, 1),
                "STUDY pynetdicom (before), cold": lambda: pynetdicom_find(pacs, study, 1, ()),
                "STUDY drimbox iter_find, cold": lambda: ours_study(loop, pacs, study, 1, cold),
                "STUDY drimbox iter_find, pooled": lambda: ours_study(loop, pacs, study, 1, warm),
                "STUDY drimbox iter_find, pooled, per query of a burst": lambda: ours_study(
                    loop, pacs, study, 1, warm, reps
                ),
            }
            if args.http:
                more, stop_box = http_candidates(work, orthanc, spec.patient_id)
                candidates.update(more)
            findscu(orthanc, image_file, n, check=True)
            findscu(orthanc, study_file, 1, check=True)
            # One untimed round: Orthanc's database in the page cache, every code path imported.
            for run in candidates.values():
                run()
            times: dict[str, list[float]] = {name: [] for name in candidates}
            # Interleaved rounds, so a noisy moment of the machine hits every candidate alike.
            for _ in range(args.runs):
                for name, run in candidates.items():
                    times[name].append(run() * 1000)
            warm.close()
            loop.close()
        finally:
            stop_box()
            orthanc.stop()
    print(f"\nC-FIND against Orthanc, {args.runs} runs each (ms): IMAGE = {n} answers, STUDY = 1 answer")
    for name, values in times.items():
        print(f"  {name:52} median {statistics.median(values):7.2f}   best {min(values):7.2f}")


if __name__ == "__main__":
    main()
