"""Sender-constrained tokens: the proof of possession a bound token needs on every request.

Run after the token is verified (or found in the verified-token cache), before any policy:

- a token bound to a key (``cnf.jkt``) needs the ``DPoP`` scheme and a valid DPoP proof for this very
  request (RFC 9449 section 7.1); sent as ``Bearer`` it is refused (section 7.2, no downgrade);
- a token bound to a certificate (``cnf.x5t#S256``) needs the TLS client certificate Envoy saw on the
  connection, with that SHA-256 thumbprint (RFC 8705 section 3);
- an unbound token sent with the ``DPoP`` scheme is refused (section 7.1), and from an issuer with
  ``sender_constraint: required`` an unbound token is refused whatever the scheme.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason, Refusal
from smartgate.tokens.bearer import Credentials
from smartgate.tokens.binding import Confirmation, certificate_thumbprint
from smartgate.tokens.context import TokenContext
from smartgate.tokens.dpop import DpopVerifier

DPOP_HEADER = "dpop"


class SenderConstraints:
    """The binding rules for every verified token; ``dpop`` None means DPoP is off (``cnf.jkt`` refused)."""

    def __init__(
        self, fhir_base_url: str, required_issuers: frozenset[str] = frozenset(), dpop: DpopVerifier | None = None
    ) -> None:
        base = urlsplit(fhir_base_url)
        self._origin = f"{base.scheme}://{base.netloc}"
        self._required_issuers = required_issuers
        self.dpop = dpop

    @property
    def dpop_enabled(self) -> bool:
        return self.dpop is not None

    def public_url(self, path: str) -> str:
        """The URL the client called: the public base's scheme and authority, and the request path
        (which already starts with the base path) without query or fragment."""
        return self._origin + path.partition("?")[0].partition("#")[0]

    def check(self, context: TokenContext, credentials: Credentials, http: HttpRequest) -> Refusal | None:
        """None when the request proves possession of whatever the token is bound to."""
        confirmation = context.confirmation
        if confirmation is None:
            return self._unbound(context, credentials)
        if confirmation.x5t_s256 is not None:
            refusal = self._certificate(confirmation.x5t_s256, http.peer_certificate)
            if refusal is not None:
                return refusal
        if confirmation.jkt is None:
            if credentials.scheme == "dpop":
                return Refusal(Reason.DPOP_TOKEN_UNBOUND, "the DPoP scheme needs a DPoP-bound token")
            return None
        return self._dpop(confirmation, credentials, http)

    def _unbound(self, context: TokenContext, credentials: Credentials) -> Refusal | None:
        if credentials.scheme == "dpop":
            return Refusal(Reason.DPOP_TOKEN_UNBOUND, "the DPoP scheme needs a DPoP-bound token")
        if context.issuer in self._required_issuers:
            return Refusal(Reason.BEARER_TOKEN_NOT_ALLOWED, "this issuer's tokens must be sender-constrained")
        return None

    @staticmethod
    def _certificate(expected: str, peer_certificate: str | None) -> Refusal | None:
        if not peer_certificate:
            return Refusal(
                Reason.CERTIFICATE_BINDING_MISSING,
                "the token is certificate-bound: a TLS client certificate is required",
            )
        thumbprint = certificate_thumbprint(peer_certificate)
        if thumbprint is None or not hmac.compare_digest(thumbprint.encode(), expected.encode()):
            return Refusal(
                Reason.CERTIFICATE_BINDING_MISMATCH, "the TLS client certificate is not the one the token is bound to"
            )
        return None

    def _dpop(self, confirmation: Confirmation, credentials: Credentials, http: HttpRequest) -> Refusal | None:
        assert confirmation.jkt is not None
        if self.dpop is None:
            return Refusal(Reason.TOKEN_BINDING_UNSUPPORTED, "the token is DPoP-bound and DPoP is not enabled")
        if credentials.scheme != "dpop":
            return Refusal(Reason.DPOP_TOKEN_AS_BEARER, "a DPoP-bound token must be sent with the DPoP scheme")
        return self.dpop.check(
            http.headers.get(DPOP_HEADER), http.method, self.public_url(http.path), credentials.token, confirmation.jkt
        )
