"""State shared by the roles: the series cache (series_cache, series_fill), the SQLite helper (db), atomic writes
(durable) and the structure's signing credentials (credentials).

The source's publication outbox lives with the source (drimbox.source.outbox); the consumer's stores with the consumer.
"""
