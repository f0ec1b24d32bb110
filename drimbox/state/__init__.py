"""Durable state in SQLite: the publication outbox (later: published manifests, audit trail, cache index)."""
