"""State shared by the roles: the series cache (series_cache, series_fill), the SQLite helper (db), atomic writes
(durable), the structure's signing credentials (credentials) and the fault suite's kill points (faults).

The source's publication outbox lives with the source (drimbox.source.outbox); the consumer's stores with the consumer.
"""
