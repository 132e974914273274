"""API key secrets and their hashes, with the standard library alone (the authorizer imports this)."""

from __future__ import annotations

import hashlib
import re
import secrets

# What the authorizer reads as a key after "Bearer ": new_secret's alphabet (url-safe base64), 16
# to 200 characters. A secret outside it could be stored but never used.
SECRET_PATTERN = r"[A-Za-z0-9_\-]{16,200}"
_SECRET = re.compile(SECRET_PATTERN)


def is_usable_secret(secret: str) -> bool:
    return _SECRET.fullmatch(secret) is not None


def new_secret() -> str:
    # 192 random bits; a prefix makes leaked keys easy to find with secret scanners.
    return "oms_" + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    # Secrets are high-entropy random strings, so a fast hash is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()
