"""Where the token comes from: the Authorization header, and nowhere else.

Two schemes carry an access token: ``Bearer`` (RFC 6750) and, when DPoP is on, ``DPoP`` (RFC 9449
section 7.1, the token then comes with a ``DPoP`` proof header). The scheme is kept with the token:
a DPoP-bound token sent as Bearer, or an unbound token sent as DPoP, is refused later
(tokens/sender_constraint.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from smartgate.core.reasons import Reason, Refusal

# RFC 6750 section 2.1 b64token (RFC 9449 section 7.1 uses the same token68 syntax).
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*\Z")
# RFC 9110 section 11.1 auth-scheme (a token), followed by credentials.
_OTHER_SCHEME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S")

Scheme = Literal["bearer", "dpop"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """The access token and the authentication scheme it was sent with (lower-case)."""

    token: str
    scheme: Scheme


def extract_credentials(headers: Mapping[str, str], max_bytes: int, dpop: bool = False) -> Credentials | Refusal | None:
    """The token and its scheme, None when no Authorization header was sent, or a Refusal.

    ``dpop``: the ``DPoP`` scheme is accepted; otherwise it is another scheme like any other.
    """
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    name = scheme.lower()
    if name != "bearer" and not (dpop and name == "dpop"):
        if _OTHER_SCHEME.match(value):
            # RFC 6750 section 3.1: a request with another authentication method gets the bare challenge.
            return Refusal(Reason.AUTHENTICATION_SCHEME_UNSUPPORTED, "the Authorization scheme must be Bearer")
        return Refusal(Reason.AUTHORIZATION_HEADER_MALFORMED, "the Authorization header is not Bearer <token>")
    token = token.strip(" ")
    if not token:
        return Refusal(Reason.AUTHORIZATION_HEADER_MALFORMED, f"the {scheme} credentials are empty")
    if len(token) > max_bytes:
        return Refusal(Reason.TOKEN_MALFORMED, "the token is larger than the configured limit")
    if _TOKEN.match(token) is None:
        # Also catches several Authorization headers, which Envoy joins with a comma.
        return Refusal(Reason.AUTHORIZATION_HEADER_MALFORMED, f"the {scheme} credentials are not a token")
    return Credentials(token, "dpop" if name == "dpop" else "bearer")


def extract_bearer(headers: Mapping[str, str], max_bytes: int) -> str | Refusal | None:
    """Return the bearer token, None when no Authorization header was sent, or a Refusal."""
    credentials = extract_credentials(headers, max_bytes)
    return credentials.token if isinstance(credentials, Credentials) else credentials
