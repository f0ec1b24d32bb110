"""Server-side browser sessions, what each was granted, and pending logins, in SQLite under var_dir, with expiry."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drimbox.auth.oidc import TokenSet
from drimbox.auth.professional import Professional
from drimbox.state.db import Database
from drimbox.state.migrations import Step
from drimbox.state.sql import Connection, is_postgres

# A login not finished within this time is forgotten (the user is back at the provider's page for longer).
PENDING_TTL = 600.0
# last_seen is written at most this often: a viewer loading hundreds of frames must not write per request.
TOUCH_INTERVAL = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    professional TEXT NOT NULL,
    tokens TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL
);
-- The studies a session may read on this source box: those of the report links it opened (one row a study).
CREATE TABLE IF NOT EXISTS grants (
    id_hash TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    kos_uid TEXT NOT NULL,
    granted_at REAL NOT NULL,
    PRIMARY KEY (id_hash, study_uid)
);
-- The operator page's sessions (drimbox/ops/login.py): the operator token's holder, no professional behind them;
-- a table of their own so that neither kind of cookie ever opens the other kind of session.
CREATE TABLE IF NOT EXISTS operator_sessions (
    id_hash TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL
);
-- Failed operator logins by client address: shared by every process of the box, they slow guessing down.
CREATE TABLE IF NOT EXISTS operator_login_failures (
    remote TEXT NOT NULL,
    at REAL NOT NULL
);
-- Patients' sessions (drimbox/patient: Mon Espace Santé login): who (INS and names, JSON), never a professional;
-- a table of their own so that no professional route ever finds a patient session, nor the reverse.
CREATE TABLE IF NOT EXISTS patient_sessions (
    id_hash TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_logins (
    state_hash TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    next TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[Step] = [SCHEMA]


@dataclass(frozen=True)
class Session:
    id_hash: str
    professional: Professional
    tokens: TokenSet
    created_at: float
    last_seen: float
    expires_at: float


@dataclass(frozen=True)
class PendingLogin:
    """What the callback needs to finish a login: kept here, never in the browser."""

    state: str
    nonce: str
    code_verifier: str
    next: str
    created_at: float


def _hash(secret: str) -> str:
    # Only hashes are stored: a copy of the database does not hand out live session cookies.
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionStore:
    """Sessions keyed by a random opaque id (the cookie value); expired ones are refused and purged."""

    def __init__(
        self, path: Path, *, ttl: float, idle: float, clock: Callable[[], float] = time.time, url: str = ""
    ) -> None:
        self.ttl = ttl
        self.idle = idle
        self._clock = clock
        self._db = Database(path, MIGRATIONS, url=url, store="auth")
        if not url:
            # Tokens live in this file: readable by the box's user only.
            os.chmod(path, 0o600)

        def _relax(conn: Connection) -> None:
            # A session lost in a crash only means logging in again: no fsync per write here.
            if is_postgres(conn):
                conn.execute("SET synchronous_commit = off")
            else:
                conn.execute("PRAGMA synchronous=NORMAL")

        self._db.call(_relax)

    def close(self) -> None:
        self._db.close()

    async def create(self, professional: Professional, tokens: TokenSet, *, not_after: float = 0.0) -> str:
        """A new session; returns its id (goes in the cookie, nowhere else). `not_after` (epoch) caps its life."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        expires_at = min(now + self.ttl, not_after) if not_after else now + self.ttl
        row = (
            _hash(session_id),
            json.dumps(professional.to_json()),
            json.dumps(tokens.to_json()),
            now,
            now,
            expires_at,
        )

        def _insert(conn: Connection) -> None:
            self._purge(conn, now)
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)", row)

        await self._db.acall(_insert)
        return session_id

    async def get(self, session_id: str) -> Session | None:
        """The live session for this id, its idle clock restarted; None when unknown, expired or idle too long."""
        if not session_id or len(session_id) > 128:
            return None
        key, now = _hash(session_id), self._clock()

        def _get(conn: Connection) -> Session | None:
            row = conn.execute("SELECT * FROM sessions WHERE id_hash = ?", (key,)).fetchone()
            if row is None:
                return None
            if now >= row["expires_at"] or now - row["last_seen"] >= self.idle:
                conn.execute("DELETE FROM sessions WHERE id_hash = ?", (key,))
                return None
            last_seen = row["last_seen"]
            if now - last_seen >= TOUCH_INTERVAL:
                conn.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
                last_seen = now
            return Session(
                id_hash=key,
                professional=Professional.from_json(json.loads(row["professional"])),
                tokens=TokenSet.from_json(json.loads(row["tokens"])),
                created_at=row["created_at"],
                last_seen=last_seen,
                expires_at=row["expires_at"],
            )

        return await self._db.acall(_get)

    async def update_tokens(self, session_id: str, tokens: TokenSet) -> None:
        key = _hash(session_id)

        def _update(conn: Connection) -> None:
            conn.execute("UPDATE sessions SET tokens = ? WHERE id_hash = ?", (json.dumps(tokens.to_json()), key))

        await self._db.acall(_update)

    async def update_professional(self, session_id: str, professional: Professional) -> None:
        """The session's professional replaced (the same person, in the practice situation they chose)."""
        key = _hash(session_id)

        def _update(conn: Connection) -> None:
            conn.execute("UPDATE sessions SET professional = ? WHERE id_hash = ?",
                         (json.dumps(professional.to_json()), key))  # fmt: skip

        await self._db.acall(_update)

    async def delete(self, session_id: str) -> Session | None:
        """End a session (logout); returns it so its tokens can be revoked, or None if there was none."""
        session = await self.get(session_id)
        key = _hash(session_id)

        def _delete(conn: Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE id_hash = ?", (key,))
            conn.execute("DELETE FROM grants WHERE id_hash = ?", (key,))

        await self._db.acall(_delete)
        return session

    async def grant(self, id_hash: str, study_uid: str, kos_uid: str) -> None:
        """Let this session read this study (as far as the study's live KOS goes): it opened a report link to it."""
        row = (id_hash, study_uid, kos_uid, self._clock())

        def _insert(conn: Connection) -> None:
            conn.execute("INSERT INTO grants VALUES (?, ?, ?, ?) ON CONFLICT (id_hash, study_uid) DO UPDATE"
                         " SET kos_uid = excluded.kos_uid, granted_at = excluded.granted_at", row)  # fmt: skip

        await self._db.acall(_insert)

    async def granted(self, id_hash: str, study_uid: str) -> bool:
        """Whether this (live) session was granted this study."""

        def _get(conn: Connection) -> bool:
            found = conn.execute("SELECT 1 FROM grants g JOIN sessions s ON s.id_hash = g.id_hash"
                                 " WHERE g.id_hash = ? AND g.study_uid = ?", (id_hash, study_uid)).fetchone()  # fmt: skip
            return found is not None

        return await self._db.acall(_get)

    async def save_pending(self, pending: PendingLogin) -> None:
        row = (_hash(pending.state), pending.nonce, pending.code_verifier, pending.next, pending.created_at)

        def _insert(conn: Connection) -> None:
            conn.execute("DELETE FROM pending_logins WHERE created_at < ?", (self._clock() - PENDING_TTL,))
            conn.execute("INSERT INTO pending_logins VALUES (?, ?, ?, ?, ?) ON CONFLICT (state_hash) DO UPDATE"
                         " SET nonce = excluded.nonce, code_verifier = excluded.code_verifier, next = excluded.next,"
                         " created_at = excluded.created_at", row)  # fmt: skip

        await self._db.acall(_insert)

    async def pop_pending(self, state: str) -> PendingLogin | None:
        """The pending login for this state, removed at once (a state is good for one callback only)."""
        if not state or len(state) > 256:
            return None
        key, now = _hash(state), self._clock()

        def _pop(conn: Connection) -> PendingLogin | None:
            row = conn.execute("DELETE FROM pending_logins WHERE state_hash = ? RETURNING *", (key,)).fetchone()
            if row is None or now - row["created_at"] > PENDING_TTL:
                return None
            return PendingLogin(state, row["nonce"], row["code_verifier"], row["next"], row["created_at"])

        return await self._db.acall(_pop)

    # --- the operator page's sessions ---------------------------------------------------------------------

    async def create_operator(self, *, ttl: float) -> str:
        """A new operator session; returns its id (the operator cookie's value)."""
        session_id, now = secrets.token_urlsafe(32), self._clock()

        def _insert(conn: Connection) -> None:
            conn.execute("DELETE FROM operator_sessions WHERE expires_at <= ?", (now,))
            conn.execute("INSERT INTO operator_sessions VALUES (?, ?, ?, ?)", (_hash(session_id), now, now, now + ttl))

        await self._db.acall(_insert)
        return session_id

    async def operator_session(self, session_id: str, *, idle: float) -> bool:
        """Whether this id is a live operator session (its idle clock restarted); ended when idle too long."""
        if not session_id or len(session_id) > 128:
            return False
        key, now = _hash(session_id), self._clock()

        def _get(conn: Connection) -> bool:
            row = conn.execute("SELECT * FROM operator_sessions WHERE id_hash = ?", (key,)).fetchone()
            if row is None:
                return False
            if now >= row["expires_at"] or now - row["last_seen"] >= idle:
                conn.execute("DELETE FROM operator_sessions WHERE id_hash = ?", (key,))
                return False
            conn.execute("UPDATE operator_sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
            return True

        return await self._db.acall(_get)

    async def end_operator(self, session_id: str) -> None:
        key = _hash(session_id)
        await self._db.acall(lambda conn: conn.execute("DELETE FROM operator_sessions WHERE id_hash = ?", (key,)))

    async def operator_failures(self, remote: str, *, window: float, add: bool = False) -> int:
        """Failed operator logins from `remote` within `window` seconds (after recording one more when `add`)."""
        now = self._clock()

        def _count(conn: Connection) -> int:
            conn.execute("DELETE FROM operator_login_failures WHERE at < ?", (now - window,))
            if add:
                conn.execute("INSERT INTO operator_login_failures VALUES (?, ?)", (remote, now))
            row = conn.execute("SELECT COUNT(*) FROM operator_login_failures WHERE remote = ?", (remote,)).fetchone()
            return int(row[0])

        return await self._db.acall(_count)

    # --- patients' sessions (drimbox/patient) ---------------------------------------------------------------

    async def create_patient(self, patient: dict[str, str], *, ttl: float) -> str:
        """A new patient session holding `patient` (INS, OID, names); returns its id (the patient cookie's value)."""
        session_id, now = secrets.token_urlsafe(32), self._clock()
        row = (_hash(session_id), json.dumps(patient), now, now, now + ttl)

        def _insert(conn: Connection) -> None:
            conn.execute("DELETE FROM patient_sessions WHERE expires_at <= ?", (now,))
            conn.execute("INSERT INTO patient_sessions VALUES (?, ?, ?, ?, ?)", row)

        await self._db.acall(_insert)
        return session_id

    async def patient_session(self, session_id: str, *, idle: float) -> tuple[str, dict[str, str]] | None:
        """(id_hash, patient) of a live patient session, its idle clock restarted; None when unknown or ended."""
        if not session_id or len(session_id) > 128:
            return None
        key, now = _hash(session_id), self._clock()

        def _get(conn: Connection) -> tuple[str, dict[str, str]] | None:
            row = conn.execute("SELECT * FROM patient_sessions WHERE id_hash = ?", (key,)).fetchone()
            if row is None:
                return None
            if now >= row["expires_at"] or now - row["last_seen"] >= idle:
                conn.execute("DELETE FROM patient_sessions WHERE id_hash = ?", (key,))
                return None
            if now - row["last_seen"] >= TOUCH_INTERVAL:
                conn.execute("UPDATE patient_sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
            patient: dict[str, str] = json.loads(row["patient"])
            return key, patient

        return await self._db.acall(_get)

    async def end_patient(self, session_id: str) -> None:
        key = _hash(session_id)
        await self._db.acall(lambda conn: conn.execute("DELETE FROM patient_sessions WHERE id_hash = ?", (key,)))

    def _purge(self, conn: Connection, now: float) -> None:
        conn.execute("DELETE FROM sessions WHERE expires_at <= ? OR last_seen <= ?", (now, now - self.idle))
        conn.execute("DELETE FROM grants WHERE id_hash NOT IN (SELECT id_hash FROM sessions)")
