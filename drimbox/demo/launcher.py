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

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="demo-launcher", daemon=True)

    def start(self) -> LaunchPageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
