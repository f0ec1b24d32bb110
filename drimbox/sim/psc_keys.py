"""The simulated PSC's RS256 signing key: generated once into the simulator's var_dir, published as a JWKS."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import KeySet, RSAKey

from drimbox.state.durable import write_atomic

KEY_FILE = "signing-key.pem"


def load_signing_key(directory: Path) -> RSAKey:
    """The private key in directory/signing-key.pem, made on first use; its kid is its RFC 7638 thumbprint.

    Kept across restarts so that tokens issued before a restart still verify against the JWKS.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    # Two simulators sharing a var_dir must not each write their own key.
    with open(directory / f".{KEY_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_atomic(path, pem, mode=0o600)
        pem = path.read_bytes()
    jwk = RSAKey.import_key(pem, {"use": "sig", "alg": "RS256"})
    jwk.ensure_kid()
    return jwk


def signing_keyset(key: RSAKey) -> KeySet:
    """A one-key set: authlib and joserfc pick the key from it and write its kid into each JWT header."""
    return KeySet([key])


def public_jwks(keyset: KeySet) -> dict[str, Any]:
    """The set without its private parts: what /psc/jwks serves."""
    return dict(keyset.as_dict(private=False))
