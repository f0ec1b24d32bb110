"""State shared by the roles: the series cache (Proxy and consumer: series_cache, series_fill) and the SQLite helper (db).

The source's publication outbox lives with the source (drimbox.source.outbox); the consumer's stores with the consumer.
"""
