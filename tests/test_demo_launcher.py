"""The demo's launch page: it serves the ANS form, and stopping it never waits on a client."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from drimbox.demo.launcher import LaunchPageServer, launch_page


def test_the_page_posts_the_launch_form_to_the_consumer() -> None:
    server = LaunchPageServer(0, launch_page("http://127.0.0.1:9", {"Patient.name.family": "PAT-TROIS"})).start()
    try:
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            page = resp.read().decode()
        assert 'action="http://127.0.0.1:9/conso/launch"' in page and 'value="PAT-TROIS"' in page
    finally:
        server.stop()


def _stopping(server: LaunchPageServer) -> threading.Event:
    """stop() run in a thread: the event is set when it has returned."""
    done = threading.Event()

    def stop() -> None:
        server.stop()
        done.set()

    threading.Thread(target=stop, daemon=True).start()
    return done


def test_stop_returns_though_a_client_connected_and_never_asked() -> None:
    """A connection that sends no request (a browser's preconnect, a stale keep-alive) held the demo's Ctrl-C."""
    server = LaunchPageServer(0, launch_page("http://127.0.0.1:9", {"Patient.name.family": "X"})).start()
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    idle = socket.create_connection((host, int(port)))
    time.sleep(0.3)  # accepted, its thread waiting for a request line
    started = time.monotonic()
    stopped = _stopping(server)
    try:
        assert stopped.wait(10), "stop() still waiting on the idle connection after 10 s"
        assert time.monotonic() - started < 8
    finally:
        idle.close()


def test_stop_before_start_returns() -> None:
    server = LaunchPageServer(0, launch_page("http://127.0.0.1:9", {"Patient.name.family": "X"}))
    assert _stopping(server).wait(5)
