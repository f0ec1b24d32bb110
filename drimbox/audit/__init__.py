"""The audit trail: who accessed which patient data, when, from where, with what outcome."""

from drimbox.audit.events import AUDIT, AuditEvent, AuditSink, MemoryAudit, client_address

__all__ = ["AUDIT", "AuditEvent", "AuditSink", "MemoryAudit", "client_address"]
