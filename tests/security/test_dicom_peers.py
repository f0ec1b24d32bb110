"""Security findings 2, 4 (DICOM half) and 9: DICOM peers that may not write, rewrite or withdraw publications.

The attacks are the outside tester's: dcmtk storescu from an unknown AE title, and pynetdicom with the right AE
title from another loopback address (127.0.0.2), against real box processes (Proxy in front of a real Orthanc,
and Native), with the simulator's DMP; what counts is what the DMP, the archive and the audit trail show after.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drimbox.config import load_settings
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.dimse.peers import Caller, PeerList, iocm_senders, store_peers
from tests.security._peers_support import (
    OTHER_LOOPBACK,
    injected_series,
    pynetdicom_store,
    records,
    rejected_at_association,
    served_instances,
    storescu,
)
from tests.test_iocm import kos_instances, rejection_note, write
from tests.test_source_e2e import INS, load_exam, send

REFUSED_NOT_AUTHORIZED = 0x0124


def dmp_state(sim: Any) -> dict[str, str]:
    return {d["uniqueId"]: d["status"] for d in sim.documents(INS)}


# --- the configuration: secure by default ---------------------------------------------------------------------


def test_defaults_trust_no_one_in_native_and_only_the_pacs_in_proxy(tmp_path: Path) -> None:
    native = load_settings(env={"DRIMBOX_BOX__PROFILE": "native"})
    assert not store_peers(native) and not iocm_senders(native)
    proxy = load_settings(env={"DRIMBOX_PACS__AE_TITLE": "PACS", "DRIMBOX_PACS__HOST": "127.0.0.1"})
    senders = iocm_senders(proxy)
    assert senders.allows(Caller("PACS", "127.0.0.1"))
    assert not senders.allows(Caller("PACS", "127.0.0.2")) and not senders.allows(Caller("EVIL", "127.0.0.1"))
    # An IPv4 peer on a dual-stack socket is the same peer.
    assert senders.allows(Caller("PACS", "::ffff:127.0.0.1"))
    configured = load_settings(env={"DRIMBOX_DICOM__STORE_PEERS": "CT01@127.0.0.1, MR01@localhost"})
    assert store_peers(configured).allows(Caller("MR01", "127.0.0.1"))
    with pytest.raises(ValueError, match=r"dicom\.store_peers"):
        load_settings(env={"DRIMBOX_DICOM__STORE_PEERS": "no-host-here"})
    assert not PeerList().allows(Caller("DRIMBOX", "127.0.0.1"))


# --- Proxy: IOCM notes from anyone (finding 2) ----------------------------------------------------------------


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
def test_proxy_refuses_iocm_notes_from_unknown_peers(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=4)
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")) == "AA"
    first = box.wait_state("ACN103", ("published",))
    published = kos_instances(sim, first["kos_uid"])
    study_uid = first["study_uid"]
    before = dmp_state(sim)

    # The attack: a note withdrawing every instance, from an unknown AE title, then from the PACS's AE title on
    # another address. Both are refused at association; the DMP entry and the publications stay as they were.
    withdraw_all = write(rejection_note(study_uid, published), tmp_path / "all.dcm")
    assert rejected_at_association(storescu(box.dicom_port, [withdraw_all], "EVIL"))
    assert pynetdicom_store(box.dicom_port, [withdraw_all], orthanc.aet, OTHER_LOOPBACK) is None
    assert dmp_state(sim) == before
    assert [p["state"] for p in box.publications("ACN103")] == ["published"]
    refused = records(box.config, "dicom.associate")
    assert {r["source"] for r in refused} >= {"EVIL@127.0.0.1", f"{orthanc.aet}@{OTHER_LOOPBACK}"}
    assert all(r["outcome"] == "refused" and r["professional"] is None for r in refused)


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
def test_proxy_revision_never_adds_an_injected_series_and_is_audited_as_the_peer(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=4)
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")) == "AA"
    first = box.wait_state("ACN103", ("published",))
    published = kos_instances(sim, first["kos_uid"])
    study_uid = first["study_uid"]
    series_uid, sops = next(iter(published.items()))
    everything = {uid for refs in published.values() for _, uid in refs}

    # Someone slips a new series into the PACS; then the genuine PACS rejects one instance. The revision names
    # the live KOS's instances less the rejected one: never the injected series.
    injected = injected_series(next((tmp_path / "study-C").rglob("*.dcm")), tmp_path)
    orthanc.store_files(injected)
    note = write(rejection_note(study_uid, {series_uid: sops[:1]}), tmp_path / "one.dcm")
    done = storescu(box.dicom_port, [note], orthanc.aet)
    assert done.returncode == 0, done.stdout + done.stderr
    second = box.wait_state("ACN103", ("published", "unchanged", "failed", "rejected"))
    assert second["state"] == "published" and second["action"] == "revise", second
    remaining = {uid for refs in kos_instances(sim, second["kos_uid"]).values() for _, uid in refs}
    assert remaining == everything - {sops[0][1]}

    # The trail names the peer for the note and for the replacement it caused, not the report's author.
    [accepted] = records(box.config, "dicom.iocm", f"{orthanc.aet}@127.0.0.1")
    assert accepted["outcome"] == "success" and accepted["study"] == study_uid
    assert accepted["detail"]["revision"].startswith("queued")
    [replace] = [r for r in records(box.config, "dmp.replace") if r["kos"] == second["kos_uid"]]
    assert replace["professional"] is None and replace["source"] == f"{orthanc.aet}@127.0.0.1"
    assert replace["detail"]["iocm_note"] == accepted["detail"]["note"]


# --- Native: C-STOREs and notes from unknown peers (findings 4 and 2), audited (finding 9) ------------------


def native_box(source_box: Any) -> Any:
    # No Orthanc: the Native box is the archive; [pacs] only names the test "PACS" peer's AE title.
    pacs = SimpleNamespace(aet="ORTHANC", dicom_port=free_port())
    return source_box(pacs, box={"profile": "native"})


def publish_native(box: Any, tmp_path: Path, instances: int = 3) -> tuple[dict[str, Any], list[Path]]:
    files = write_study(tmp_path / "study", study_for_exam(ANS_EXAMS["C"], instances=instances))
    done = storescu(box.dicom_port, files, "STORESCU")
    assert done.returncode == 0, done.stdout + done.stderr
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")) == "AA"
    return box.wait_state("ACN103", ("published",)), files


@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
def test_native_archive_takes_c_stores_from_configured_peers_only(source_box: Any, sim: Any, tmp_path: Path) -> None:
    box = native_box(source_box)
    # The box's own C-FIND (its pipeline) still works: the report is published from the archive.
    first, files = publish_native(box, tmp_path)
    study_uid = first["study_uid"]
    genuine = served_instances(box, study_uid)
    assert len(genuine) == 3

    # The attack: a series pushed into the published study from an unknown AE, from a store peer's AE title on
    # another address, and as the box's own AE title (associated for its C-FIND, but it may not store).
    injected = injected_series(files[0], tmp_path)
    assert rejected_at_association(storescu(box.dicom_port, injected, "EVIL"))
    assert pynetdicom_store(box.dicom_port, injected, "STORESCU", OTHER_LOOPBACK) is None
    assert pynetdicom_store(box.dicom_port, injected, "DRIMBOX", "127.0.0.1") == [REFUSED_NOT_AUTHORIZED] * 2
    assert served_instances(box, study_uid) == genuine

    # One record per association and study, with the peer: the genuine push, the refusals.
    [stored] = records(box.config, "dicom.store", "STORESCU@127.0.0.1")
    assert (stored["outcome"], stored["study"], stored["detail"]["stored"]) == ("success", study_uid, "3")
    assert stored["patient"] == INS and stored["professional"] is None
    [own] = records(box.config, "dicom.store", "DRIMBOX@127.0.0.1")
    assert own["outcome"] == "refused" and own["detail"]["refused"] == "2"
    refused = {r["source"] for r in records(box.config, "dicom.associate") if r["outcome"] == "refused"}
    assert refused >= {"EVIL@127.0.0.1", f"STORESCU@{OTHER_LOOPBACK}"}


@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
def test_native_note_from_an_unknown_peer_deletes_nothing(source_box: Any, sim: Any, tmp_path: Path) -> None:
    box = native_box(source_box)
    first, _ = publish_native(box, tmp_path)
    study_uid = first["study_uid"]
    published = kos_instances(sim, first["kos_uid"])
    series_uid, sops = next(iter(published.items()))
    genuine = served_instances(box, study_uid)
    before = dmp_state(sim)

    # The attack: a note rejecting every instance, from an unknown AE, from the IOCM sender's AE title on another
    # address, and from a modality that may store but not reject (refused per C-STORE, 0x0124).
    note = write(rejection_note(study_uid, published), tmp_path / "all.dcm")
    assert rejected_at_association(storescu(box.dicom_port, [note], "EVIL"))
    assert pynetdicom_store(box.dicom_port, [note], "ORTHANC", OTHER_LOOPBACK) is None
    assert pynetdicom_store(box.dicom_port, [note], "STORESCU", "127.0.0.1") == [REFUSED_NOT_AUTHORIZED]
    assert served_instances(box, study_uid) == genuine
    assert dmp_state(sim) == before
    [refused] = records(box.config, "dicom.iocm", "STORESCU@127.0.0.1")
    assert refused["outcome"] == "refused" and refused["study"] == study_uid

    # The configured IOCM sender's note still works: one instance leaves the archive and the KOS.
    one = write(rejection_note(study_uid, {series_uid: sops[:1]}), tmp_path / "one.dcm")
    assert pynetdicom_store(box.dicom_port, [one], "ORTHANC", "127.0.0.1") == [0]
    second = box.wait_state("ACN103", ("published", "unchanged", "failed", "rejected"))
    assert second["state"] == "published" and second["action"] == "revise", second
    assert served_instances(box, study_uid) == genuine - {sops[0][1]}
    [accepted] = records(box.config, "dicom.iocm", "ORTHANC@127.0.0.1")
    assert accepted["outcome"] == "success" and accepted["detail"]["archive_removed"] == "1"
