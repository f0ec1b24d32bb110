"""An emulated WAN link for the perf suite: a network namespace behind a `tbf`-shaped veth pair, and a delay relay.

    with WanLink(PROFILES["office"]) as link:
        link.share(8042)                                   # the namespace's 127.0.0.1:8042 is the host's, across
        subprocess.run(link.inside(["curl", "http://127.0.0.1:8042/dicom-web/studies"]))

The client (curl, Chromium, a consumer box) runs in the namespace; its only way out is the veth pair, shaped by a
`tbf` qdisc at each end (the link's bandwidth, both directions). The servers keep listening on 127.0.0.1: each one
the client needs is shared (`share`: a listener on the namespace's own 127.0.0.1:P, so URLs are the same on both
sides) or exposed (`expose`: the host's end of the veth) through a relay there, which holds every chunk for half
the RTT in each direction, holds the first request bytes of a connection one more RTT (the TCP handshake a real
link costs; the veth's own is instant) and keeps at most twice the bandwidth-delay product in flight (256 KiB at
least), so a server feels back-pressure as on a real line. `netem` is not in this kernel, hence the relay for
latency. Not reproduced: TCP's slow start over the long RTT (the relay's window is open from the first byte, so
short transfers are a little optimistic) and loss (no netem; a drop on the zero-RTT veth would be recovered at once,
which is not what a lossy line does). `python -m perf.wan_check` measures the emulator against its nominal figures.
Everything is removed on exit, failure included; `sweep()` removes what a killed run left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

PREFIX = "dbxwan"  # namespaces and interfaces made here start with it (sweep() finds them by it)
_CHUNK = 64 * 1024
_serial = itertools.count()


@dataclass(frozen=True)
class Profile:
    """A link's nominal figures."""

    name: str
    mbit_s: float
    rtt_ms: float
    loss: float = 0.0  # nominal; not emulated (see the module's docstring)

    @property
    def bytes_per_s(self) -> float:
        return self.mbit_s * 1e6 / 8

    def limit_s(self, nbytes: float, round_trips: float) -> float:
        """The physical limit of moving nbytes: serialisation at the link's rate plus the protocol's round trips."""
        return nbytes / self.bytes_per_s + round_trips * self.rtt_ms / 1000


PROFILES = {
    "hospital": Profile("hospital", 100, 20),
    "office": Profile("office", 20, 50),
    "mobile": Profile("mobile", 10, 80, loss=0.001),
}


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _tbf(dev: str, profile: Profile, netns: str | None = None, verb: str = "add") -> None:
    # burst must hold a whole GSO packet (64 KiB on a veth) or tbf would split every one; the queue holds 50 ms.
    rate = int(profile.bytes_per_s)
    burst = max(64 * 1024, rate // 200)
    limit = max(2 * burst, rate // 20)
    cmd = ["tc", *(["-n", netns] if netns else []), "qdisc", verb, "dev", dev, "root", "tbf",
           "rate", f"{rate * 8}bit", "burst", str(burst), "limit", str(limit)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def namespaces_work() -> str | None:
    """None when this machine lets us make a namespace with a shaped veth; else why not (for a skip reason)."""
    try:
        with WanLink(PROFILES["hospital"]):
            return None
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"network namespaces or tc tbf unavailable here: {detail.strip()}"


def sweep() -> None:
    """Remove the namespaces and veths a killed run left (both start with PREFIX)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split("\n")
    for line in names:
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout.split("\n")
    for line in links:
        parts = line.split(": ")
        if len(parts) > 1 and parts[1].startswith(PREFIX):
            subprocess.run(["ip", "link", "del", parts[1].split("@")[0]], capture_output=True, check=False)


_CLONE_NEWNET = 0x40000000


def _in_netns(netns: str, make: Callable[[], socket.socket]) -> socket.socket:
    """make() run with this thread in the namespace: the socket it makes lives there (setns is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        if libc.setns(there.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            return make()
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


class _Relay:
    """A listening socket forwarding each connection to a target, with the link's delays when `delayed`.

    Delayed: on the host's end of the veth, to 127.0.0.1:target_port. Not delayed (`netns` given): on the
    namespace's own 127.0.0.1:target_port, to the delayed relay across the veth, so that a client in the namespace
    uses the very URLs of the host (http://127.0.0.1:P: the same cookies, redirects, OAuth's loopback exception).
    """

    def __init__(self, link: WanLink, target_port: int, via: int | None = None) -> None:
        self.link, self.target_port, self.via = link, target_port, via
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        if self.via is None:
            self.server = await asyncio.start_server(self._serve, self.link.host_ip, 0)
        else:

            def listener() -> socket.socket:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", self.target_port))
                sock.listen(128)
                return sock

            self.server = await asyncio.start_server(self._serve, sock=_in_netns(self.link.netns, listener))
        self.port = self.server.sockets[0].getsockname()[1]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.via is None:
            return await asyncio.open_connection("127.0.0.1", self.target_port)
        sock = _in_netns(self.link.netns, socket.socket)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (self.link.host_ip, self.via))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        accepted = time.monotonic()
        try:
            server_r, server_w = await self._connect()
        except OSError:
            client_w.close()
            return
        profile = self.link.profile
        rtt, half = (profile.rtt_ms / 1000, profile.rtt_ms / 2000) if self.via is None else (0.0, 0.0)
        window = max(256 * 1024, int(profile.bytes_per_s * profile.rtt_ms / 1000 * 2))
        up = self._pump(client_r, server_w, half, not_before=accepted + rtt, window=window)
        down = self._pump(server_r, client_w, half, not_before=0.0, window=window)
        try:
            await asyncio.gather(up, down)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, server_w):
                w.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, half: float, not_before: float, window: int
    ) -> None:
        """Copy src to dst, each chunk held `half` s (the first ones also until not_before), ≤ window in flight."""
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        room = asyncio.Condition()
        in_flight = 0

        async def reader() -> None:
            nonlocal in_flight
            try:
                while data := await src.read(_CHUNK):
                    async with room:
                        while in_flight >= window:
                            await room.wait()
                        in_flight += len(data)
                    line.put_nowait((max(time.monotonic(), not_before) + half, data))
            except OSError:
                pass
            line.put_nowait((0.0, b""))

        async def writer() -> None:
            nonlocal in_flight
            while True:
                due, data = await line.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
                async with room:
                    in_flight -= len(data)
                    room.notify_all()
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

        read_task = asyncio.ensure_future(reader())
        try:
            await writer()
        finally:
            read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await read_task


class WanLink:
    """A namespace reaching the host only through a shaped veth pair and delay relays; a context manager."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        n = (os.getpid() * 8 + next(_serial)) % 16000
        self.netns = f"{PREFIX}{n}"
        self.host_dev, self.ns_dev = f"{PREFIX}{n}h", f"{PREFIX}{n}n"
        self.host_ip = f"10.{213 + n // 4000}.{(n % 4000) // 16}.{(n % 16) * 16 + 1}"
        self.ns_ip = self.host_ip.rsplit(".", 1)[0] + f".{(n % 16) * 16 + 2}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._relays: dict[int, _Relay] = {}
        self._shared: dict[int, _Relay] = {}

    def __enter__(self) -> WanLink:
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "set", "lo", "up", netns=self.netns)
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
            _ip("link", "set", self.ns_dev, "netns", self.netns)
            _ip("addr", "add", f"{self.host_ip}/28", "dev", self.host_dev)
            _ip("addr", "add", f"{self.ns_ip}/28", "dev", self.ns_dev, netns=self.netns)
            _ip("link", "set", self.host_dev, "up")
            _ip("link", "set", self.ns_dev, "up", netns=self.netns)
            _tbf(self.host_dev, self.profile)  # towards the client
            _tbf(self.ns_dev, self.profile, netns=self.netns)  # towards the servers
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name=f"wan-{self.netns}", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None:
            loop = self._loop

            async def stop() -> None:
                for relay in [*self._relays.values(), *self._shared.values()]:
                    if relay.server is not None:
                        relay.server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop = None
        subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def reshape(self, profile: Profile) -> None:
        """Give the link another profile (the next connections through the relays take its delays)."""
        self.profile = profile
        _tbf(self.host_dev, profile, verb="replace")
        _tbf(self.ns_dev, profile, netns=self.netns, verb="replace")

    def bytes_to_client(self) -> int:
        """Bytes the link has carried towards the namespace (the veth's counter: IP and TCP headers included)."""
        return int(Path(f"/sys/class/net/{self.host_dev}/statistics/tx_bytes").read_text())

    def port(self, target_port: int) -> int:
        """The port, on host_ip, that reaches 127.0.0.1:target_port across the link (a relay, made once)."""
        if target_port not in self._relays:
            assert self._loop is not None, "the link is not up"
            relay = _Relay(self, target_port)
            asyncio.run_coroutine_threadsafe(relay.start(), self._loop).result(5)
            self._relays[target_port] = relay
        return self._relays[target_port].port

    def share(self, *target_ports: int) -> None:
        """Make http://127.0.0.1:P in the namespace reach 127.0.0.1:P of the host, across the link, for each P."""
        assert self._loop is not None, "the link is not up"
        for target in target_ports:
            if target not in self._shared:
                relay = _Relay(self, target, via=self.port(target))
                asyncio.run_coroutine_threadsafe(relay.start(), self._loop).result(5)
                self._shared[target] = relay

    def expose(self, url: str) -> str:
        """The same URL as the client in the namespace must write it: http://127.0.0.1:P/x → http://host_ip:R/x."""
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost") and parts.port, url
        return urlunsplit(parts._replace(netloc=f"{self.host_ip}:{self.port(parts.port)}"))

    def inside(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs argv in the namespace, where the link is the only way out."""
        return ["ip", "netns", "exec", self.netns, *argv]
