"""The demo's stand-in for the doctor's software: a page on loopback that posts the ANS launch form to the consumer.

Why a page of the demo's own rather than a route on the consumer box: in real life the contextual call comes from
another application (the DPI, RIS or LGC) on another origin, so the launch crosses origins here as it will there, and
the box gains no demo-only route that could be left switched on in production.
"""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from drimbox.demo.samples.reports import ExamSpec


def launch_fields(exam: ExamSpec) -> dict[str, str]:
    """The ANS contextual-call fields for the patient of a synthetic report (the form a DPI posts), named exactly
    as the ANS test server expects them (ansforge/DRIM-M_DRIMbox TestServer-AppelContextuel)."""
    birth = exam.birth_date
    return {
        "Patient.identifier.value": exam.ins,
        "Patient.identifier.system": f"urn:oid:{exam.ins_oid}",
        "Patient.name.family": exam.family,
        "Patient.name.given": exam.given,
        "Patient.gender": {"F": "female", "M": "male"}.get(exam.sex, "unknown"),
        "Patient.birthDate": f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}",
        # The INS birth place: the NIR's department and commune (characters 6 to 10).
        "Address.district": exam.ins[5:10],
        "InformationEtConsentement": "true",
        "PatientID": exam.ipp,
        "PatientIDIssuer": exam.ipp_oid,
    }


def launch_page(consumer_url: str, fields: dict[str, str]) -> str:
    """An HTML page whose form posts `fields` to the consumer's /conso/launch, submitted at once by script."""
    inputs = "\n".join(
        f'    <input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    action = html.escape(f"{consumer_url}/conso/launch")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Doctor's software (drimbox demo)</title></head>
<body>
  <h1>Doctor's software — open the patient's images</h1>
  <p>Patient {html.escape(fields["Patient.name.family"])}: this page posts the contextual launch to the consumer box.</p>
  <form method="post" action="{action}">
{inputs}
    <button type="submit">Open the images in the consumer box</button>
  </form>
  <script>document.forms[0].submit();</script>
</body></html>
"""


class LaunchPageServer:
    """Serves the launch page at / on 127.0.0.1:`port` from a background thread until stop()."""

    def __init__(self, port: int, page: str) -> None:
        body = page.encode()

        class Handler(BaseHTTPRequestHandler):
            # A connection that never sends its request (a browser's speculative preconnect, a stale keep-alive of an
            # earlier run on the same port) gives up after this, rather than hold the demo's stop for ever.
            timeout = 5

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/":
                    self.send_error(404, "the launch page is at /")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the demo's terminal is for the links

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:
                    pass  # a client gone (reset, timed out): nothing to answer, nothing for the terminal

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        # server_close() would otherwise wait for every connection's thread: stopping must not depend on a client.
        self.server.block_on_close = False
        # A connection reset between select() and accept() would block a blocking accept(), and with it the loop
        # that shutdown() waits for: non-blocking, accept() fails instead and the loop goes on.
        self.server.socket.setblocking(False)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="demo-launcher", daemon=True)

    def start(self) -> LaunchPageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever(): for ever if it never ran
            self.server.shutdown()
        self.server.server_close()
