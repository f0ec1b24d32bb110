"""HL7 intake: parse a report or order cancel, store it durably in the outbox, then (and only then) acknowledge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from drimbox.hl7.ack import HL7Error, build_ack, peek_header
from drimbox.hl7.order import OrderCancel, parse_inbound
from drimbox.source.outbox import OrderMismatch, Outbox
from drimbox.state import faults

log = logging.getLogger(__name__)


class ReportIntake:
    """The MLLP handler of the source role: one call per HL7 message, returns the ACK to send."""

    def __init__(self, outbox: Outbox, on_accepted: Callable[[], None] | None = None) -> None:
        self.outbox = outbox
        self.on_accepted = on_accepted

    async def __call__(self, raw: bytes) -> bytes:
        header = peek_header(raw)
        loop = asyncio.get_running_loop()
        try:
            # Base64 and XML work on a 300 kB report: off the loop so other clients are not held up.
            message = await loop.run_in_executor(None, parse_inbound, raw)
        except HL7Error as exc:
            log.info("HL7 message refused: %s %s at %s: %s", exc.ack_code, exc.error_code, exc.location, exc.text)
            return build_ack(header, exc.ack_code, exc)
        sender = "|".join((message.header.sending_application or "", message.header.sending_facility or ""))
        if isinstance(message, OrderCancel):
            return await self._cancel(message, sender, raw)
        report = message.report
        try:
            accepted = await self.outbox.accept(
                sender=sender,
                control_id=message.header.control_id,
                raw=raw,
                action=message.action,
                document_id=report.document_id,
                accession=report.accession,
                study_uid=report.study_uid,
                report={"trigger": message.trigger, "flags": dict(message.flags)},
                other_studies=report.exams()[1:],
            )
        except Exception:
            # The message is not stored: the sender must keep it and retry, so never answer AA here.
            log.exception("could not store HL7 message %s", message.header.control_id)
            return build_ack(header, "AE", _NOT_STORED)
        faults.checkpoint("intake.stored")
        log.info(
            "report %s accepted (action %s, publication %d%s)",
            message.header.control_id,
            message.action,
            accepted.publication_id,
            ", duplicate" if accepted.duplicate else "",
        )
        if not accepted.duplicate and self.on_accepted is not None:
            self.on_accepted()
        return build_ack(message.header, "AA")

    async def _cancel(self, message: OrderCancel, sender: str, raw: bytes) -> bytes:
        """ANS exam W: the order is cancelled, so its study must not be (or stay) in the DMP."""
        studies = [(s.study_uid, s.accession) for s in message.studies]
        try:
            done = await self.outbox.accept_cancel(
                sender=sender, control_id=message.header.control_id, raw=raw, studies=studies
            )
        except OrderMismatch:
            error = HL7Error(
                "AE", "207", "this box knows the study of IPC-3 under another accession (IPC-1)", "IPC^1^1"
            )
            return build_ack(message.header, "AE", error)
        except Exception:
            log.exception("could not store HL7 message %s", message.header.control_id)
            return build_ack(message.header, "AE", _NOT_STORED)
        faults.checkpoint("intake.stored")
        for c in done:
            log.info(
                "order cancel %s: publication %d, %d pending dropped, %s%s",
                message.header.control_id, c.publication_id, c.dropped,
                "withdrawing the live KOS" if c.withdrawing else "nothing live",
                "" if c.known else " (unknown study, recorded)",
            )  # fmt: skip
        if any(c.withdrawing and not c.duplicate for c in done) and self.on_accepted is not None:
            self.on_accepted()
        return build_ack(message.header, "AA")


_NOT_STORED = HL7Error(
    ack_code="AE",
    error_code="207",
    severity="E",
    location="",
    text="the message could not be stored; send it again later",
)
