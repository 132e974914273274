"""Requests the test process sends to moto carry SigV4's Authorization header without its HMAC.

botocore signs every request (SigV4: the canonical request, its headers sorted and its body
hashed, then five HMACs), and moto, in process or as a local stack's server, never checks the
signature: it reads the header's Credential (the access key its account comes from, the region
when the URL names none) and nothing else, unless its IAM authentication is switched on
(moto.settings.INITIAL_NO_AUTH_ACTION_COUNT, which `set_initial_no_auth_action_count` sets).
Signing was 5.8 % of the CPU of eight moto-heavy test files (py-spy) and 9 % of a GetItem's.

So a header-signed request (SigV4Auth, S3SigV4Auth) gets what botocore's add_auth gives it (its
X-Amz-Date, its security token, S3's X-Amz-Content-SHA256, the Authorization header's Credential
and SignedHeaders) with UNCOMPUTED in place of the signature. Everything else is signed as botocore
signs it: presigned URLs (the query signers: a label link's X-Amz-Signature), other signers, and
every request while moto's IAM authentication is on. The suite sends no request anywhere but
moto and its own servers. tests/integration/test_request_signing.py compares the header with
botocore's own.
"""

from __future__ import annotations

import math
from typing import Any

import botocore.auth
import moto.settings

# The form of a signature (64 hex digits), which no HMAC-SHA256 of a real request gives in practice.
UNCOMPUTED = "0" * 64

_HEADER_SIGNERS = (botocore.auth.SigV4Auth, botocore.auth.S3SigV4Auth)
signed_add_auth = botocore.auth.SigV4Auth.add_auth


def _add_auth_unhashed(self: Any, request: Any) -> None:
    if type(self) not in _HEADER_SIGNERS or not math.isinf(moto.settings.INITIAL_NO_AUTH_ACTION_COUNT):
        signed_add_auth(self, request)
        return
    if self.credentials is None:
        raise botocore.auth.NoCredentialsError()
    # As SigV4Auth.add_auth, without the canonical request, the string to sign and the signature.
    request.context["timestamp"] = botocore.auth.get_current_datetime().strftime(botocore.auth.SIGV4_TIMESTAMP)
    self._modify_request_before_signing(request)
    self._inject_signature_to_request(request, UNCOMPUTED)


def install() -> None:
    """For the whole test process (tests/conftest.py, once)."""
    botocore.auth.SigV4Auth.add_auth = _add_auth_unhashed  # type: ignore[method-assign]
