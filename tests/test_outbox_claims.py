"""Several instances on one outbox: a job is claimed by one of them at a time, taken over when its lease runs out."""

import asyncio
import time
from pathlib import Path

import pytest

from drimbox.demo.samples.postgres import PostgresServer
from drimbox.source.outbox import Outbox


async def _accept(outbox: Outbox, n: int, study: str) -> int:
    accepted = await outbox.accept(sender="RIS", control_id=f"M{n}", raw=b"MSH|...", action="publish",
                                   document_id=f"D{n}", accession=f"A{n}", study_uid=study, report={})  # fmt: skip
    return accepted.publication_id


async def test_two_instances_claiming_at_once_never_get_the_same_job(tmp_path: Path, state_url: str) -> None:
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1")
    b = Outbox(path, url=state_url, instance="host-b/1")
    try:
        ids = [await _accept(a, n, f"1.2.{n}") for n in range(40)]
        claimed: dict[str, list[int]] = {"a": [], "b": []}

        async def drain(name: str, outbox: Outbox) -> None:
            for _ in ids:  # bounded: an outbox handing a job out twice must fail, not loop
                if (job := await outbox.next_due(time.time())) is None:
                    return
                claimed[name].append(job.id)
                await asyncio.sleep(0.002)  # a job runs a while: the other instance claims meanwhile

        await asyncio.gather(drain("a", a), drain("b", b), drain("a", a), drain("b", b))
        assert sorted(claimed["a"] + claimed["b"]) == ids  # every job once, none twice
        assert claimed["a"] and claimed["b"]  # both took part
    finally:
        a.close()
        b.close()


async def test_one_study_runs_one_job_at_a_time_across_instances(tmp_path: Path, state_url: str) -> None:
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1")
    b = Outbox(path, url=state_url, instance="host-b/1")
    try:
        first = await _accept(a, 1, "1.2.3")
        second = await _accept(a, 2, "1.2.3")
        job = await a.next_due(time.time())
        assert job is not None and job.id == first
        assert await b.next_due(time.time()) is None  # the study's next job waits for the one A runs
        await a.update(first, state="published", published_at=time.time())
        job = await b.next_due(time.time())
        assert job is not None and job.id == second
    finally:
        a.close()
        b.close()


async def test_a_claim_whose_lease_ran_out_is_taken_over(tmp_path: Path, state_url: str) -> None:
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1", lease=0.3)
    b = Outbox(path, url=state_url, instance="host-b/1", lease=0.3)
    try:
        pub = await _accept(a, 1, "1.2.3")
        assert (job := await a.next_due(time.time())) is not None and job.id == pub
        assert await b.next_due(time.time()) is None  # A holds it
        assert await a.renew(pub)
        await asyncio.sleep(0.4)  # A died: it renews no more
        job = await b.next_due(time.time())
        assert job is not None and job.id == pub and job.state == "received"
        assert not await a.renew(pub)  # A, were it only slow, learns the job is no longer its own
    finally:
        a.close()
        b.close()


async def test_claims_of_a_dead_process_of_this_host_are_freed_at_start(tmp_path: Path, state_url: str) -> None:
    import socket

    path = tmp_path / "drimbox.sqlite"
    # A pid that no process has (pid_max is at most 2^22).
    dead = Outbox(path, url=state_url, instance=f"{socket.gethostname()}/{2**22 + 7}")
    try:
        pub = await _accept(dead, 1, "1.2.3")
        assert await dead.next_due(time.time()) is not None
    finally:
        dead.close()
    restarted = Outbox(path, url=state_url)  # this process, same host: the box restarted after a kill
    try:
        job = await restarted.next_due(time.time())
        assert job is not None and job.id == pub  # at once, not after the 60 s lease
    finally:
        restarted.close()


async def test_the_kos_bytes_are_kept_for_whichever_instance_replays(tmp_path: Path, state_url: str) -> None:
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1")
    b = Outbox(path, url=state_url, instance="host-b/1")
    try:
        pub = await _accept(a, 1, "1.2.3")
        await a.save_kos(pub, "1.2.9", b"DICM\x00\x01")
        assert await b.kos_bytes("1.2.9") == b"DICM\x00\x01"
        job = await b.get(pub)
        assert job is not None and job.kos_uid == "1.2.9"
        assert await b.kos_bytes("1.2.10") is None
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
async def test_the_outbox_reconnects_after_the_server_restarts(tmp_path: Path, postgres_url: str,
                                                               postgres_server: PostgresServer) -> None:  # fmt: skip
    outbox = Outbox(tmp_path / "drimbox.sqlite", url=postgres_url)
    try:
        await _accept(outbox, 1, "1.2.3")
        postgres_server.restart()
        await _accept(outbox, 2, "1.2.4")  # a new connection, transparently
        assert len(await outbox.search()) == 2
    finally:
        outbox.close()


async def test_a_job_held_elsewhere_wakes_the_worker_at_its_lease_end(tmp_path: Path, state_url: str) -> None:
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1", lease=30.0)
    b = Outbox(path, url=state_url, instance="host-b/1", lease=30.0)
    try:
        await _accept(a, 1, "1.2.3")
        due = await b.next_wakeup()
        assert due is not None and due <= time.time()  # due now
        assert await a.next_due(time.time()) is not None
        held = await b.next_wakeup()
        assert held is not None and held > time.time() + 20  # A runs it: B waits for the lease, not a poll
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
async def test_the_state_url_may_name_a_unix_socket_directory(tmp_path: Path, postgres_server: PostgresServer) -> None:
    name = postgres_server.create_database()
    try:
        outbox = Outbox(tmp_path / "drimbox.sqlite", url=postgres_server.socket_url(name))
        try:
            await _accept(outbox, 1, "1.2.3")
            assert len(await outbox.search()) == 1
        finally:
            outbox.close()
    finally:
        postgres_server.drop_database(name)


async def test_a_job_running_longer_than_its_lease_stays_with_its_worker(tmp_path: Path, state_url: str) -> None:
    import dataclasses
    from typing import Any, cast

    from drimbox.config import load_settings
    from drimbox.source.publish import Outcome
    from drimbox.source.worker import PublicationWorker

    settings = load_settings(env={"DRIMBOX_BOX__VAR_DIR": str(tmp_path / "var")})
    settings = dataclasses.replace(settings, publish=dataclasses.replace(settings.publish, lease_seconds=0.3,
                                                                          workers=1))  # fmt: skip
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1", lease=0.3)
    b = Outbox(path, url=state_url, instance="host-b/1", lease=0.3)
    started = asyncio.Event()

    class SlowPublisher:  # a DMP call that outlasts the lease several times over
        audit = None

        async def run(self, job: Any) -> Outcome:
            started.set()
            await asyncio.sleep(1.2)
            return Outcome("published")

    worker = PublicationWorker(settings, a, cast(Any, SlowPublisher()))
    try:
        pub = await _accept(a, 1, "1.2.3")
        worker.start()
        await asyncio.wait_for(started.wait(), 5)
        for _ in range(8):  # 1 s: three leases' worth
            assert await b.next_due(time.time()) is None  # renewed: never taken over while it runs
            await asyncio.sleep(0.125)
        for _ in range(40):
            if (job := await b.get(pub)) is not None and job.state == "published":
                break
            await asyncio.sleep(0.1)
        assert job is not None and job.state == "published"
    finally:
        await worker.stop()
        a.close()
        b.close()


async def test_an_instance_that_lost_its_claim_does_not_write_over_the_new_holder(
    tmp_path: Path, state_url: str
) -> None:
    path = tmp_path / "drimbox.sqlite"
    a = Outbox(path, url=state_url, instance="host-a/1", lease=0.2)
    b = Outbox(path, url=state_url, instance="host-b/1", lease=30.0)
    try:
        pub = await _accept(a, 1, "1.2.3")
        assert await a.next_due(time.time()) is not None
        await asyncio.sleep(0.3)  # A cut off from the database: its lease runs out, B takes the job over
        assert await b.next_due(time.time()) is not None
        await a.update(pub, state="failed", last_error="A's late outcome")
        job = await b.get(pub)
        assert job is not None and job.state == "received"  # B's to decide
        await b.update(pub, state="published", published_at=time.time())
        job = await a.get(pub)
        assert job is not None and job.state == "published"
    finally:
        a.close()
        b.close()
