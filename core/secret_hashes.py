"""API key secrets and their hashes, with the standard library alone (the authorizer imports this)."""

from __future__ import annotations

import hashlib
import secrets


def new_secret() -> str:
    # 192 random bits; a prefix makes leaked keys easy to find with secret scanners.
    return "oms_" + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    # Secrets are high-entropy random strings, so a fast hash is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()
