"""Where the token comes from: the Authorization header, and nowhere else."""

from __future__ import annotations

import re
from collections.abc import Mapping

from smartgate.core.reasons import Reason, Refusal

# RFC 6750 section 2.1 b64token.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*\Z")
# RFC 9110 section 11.1 auth-scheme (a token), followed by credentials.
_OTHER_SCHEME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S")


def extract_bearer(headers: Mapping[str, str], max_bytes: int) -> str | Refusal | None:
    """Return the bearer token, None when no Authorization header was sent, or a Refusal."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        if _OTHER_SCHEME.match(value):
            # RFC 6750 section 3.1: a request with another authentication method gets the bare challenge.
            return Refusal(Reason.AUTHENTICATION_SCHEME_UNSUPPORTED, "the Authorization scheme must be Bearer")
        return Refusal(Reason.AUTHORIZATION_HEADER_MALFORMED, "the Authorization header is not Bearer <token>")
    token = token.strip(" ")
    if not token:
        return Refusal(Reason.AUTHORIZATION_HEADER_MALFORMED, "the Bearer credentials are empty")
    if len(token) > max_bytes:
        return Refusal(Reason.TOKEN_MALFORMED, "the token is larger than the configured limit")
    if _TOKEN.match(token) is None:
        # Also catches several Authorization headers, which Envoy joins with a comma.
        return Refusal(Reason.AUTHORIZATION_HEADER_MALFORMED, "the Bearer credentials are not a token")
    return token
