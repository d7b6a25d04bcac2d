"""Get SMART access tokens from the real oidc-provider over HTTP, the way an app does:
authorization code + PKCE (S256) with a resource indicator, the login and consent interaction
completing by itself for the test user named in ``login_hint``; client_credentials for
backend services; RFC 7009 revocation. Sender-constrained tokens too: the code exchange may carry a DPoP
proof (RFC 9449 §5) or go to the IdP's HTTPS port with a client certificate (RFC 8705 §3)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.dpop import DpopKey

REDIRECT_URI = "http://127.0.0.1:1/callback"  # never contacted: the code is read from the redirect


class AuthFlowError(AssertionError):
    pass


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    scope: str
    expires_in: int
    raw: dict[str, Any]


@dataclass(frozen=True)
class MtlsTokenEndpoint:
    """The IdP's token endpoint on its HTTPS port, called with a client certificate."""

    url: str
    ca: Path  # issued the IdP's server certificate
    certificate: Path
    key: Path

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.certificate), str(self.key))
        return httpx.Client(verify=context, timeout=10)


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorization_code_token(
    issuer: str,
    client_id: str,
    user: str,
    scope: str,
    resource: str,
    *,
    max_redirects: int = 10,
    dpop_key: DpopKey | None = None,
    mtls: MtlsTokenEndpoint | None = None,
) -> TokenResponse:
    """Run authorize → interaction (login, consent) → redirect with code → token. With ``dpop_key`` the token
    request carries a DPoP proof by that key; with ``mtls`` it goes to that endpoint with its certificate."""
    verifier, challenge = _pkce_pair()
    state = secrets.token_urlsafe(16)
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        response = client.get(
            f"{issuer}/auth",
            params={
                "client_id": client_id,
                "response_type": "code",
                "redirect_uri": REDIRECT_URI,
                "scope": scope,
                "resource": resource,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": state,
                "login_hint": user,
            },
        )
        for _ in range(max_redirects):
            if response.status_code not in (302, 303):
                raise AuthFlowError(f"authorization flow stopped at {response.status_code}: {response.text[:500]}")
            location = response.headers["location"]
            if location.startswith(REDIRECT_URI):
                break
            response = client.get(httpx.URL(issuer).join(location))
        else:
            raise AuthFlowError("too many redirects in the authorization flow")
        query = parse_qs(urlsplit(location).query)
        if "error" in query:
            raise AuthFlowError(f"authorization failed: {query}")
        if query.get("state") != [state] or query.get("iss") != [issuer]:
            raise AuthFlowError(f"unexpected authorization response: {query}")
        form = {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        }
        if mtls is not None:
            with mtls.client() as secure:
                return _token_response(secure.post(mtls.url, data=form))
        headers = {"dpop": dpop_key.proof("POST", f"{issuer}/token", None)} if dpop_key is not None else {}
        token = client.post(f"{issuer}/token", data=form, headers=headers)
    return _token_response(token)


def client_credentials_token(issuer: str, client_id: str, secret: str, scope: str, resource: str) -> TokenResponse:
    token = httpx.post(
        f"{issuer}/token",
        auth=(client_id, secret),
        timeout=10,
        data={"grant_type": "client_credentials", "scope": scope, "resource": resource},
    )
    return _token_response(token)


def revoke(issuer: str, client_id: str, token: str) -> None:
    response = httpx.post(
        f"{issuer}/token/revocation",
        timeout=10,
        data={"token": token, "token_type_hint": "access_token", "client_id": client_id},
    )
    if response.status_code != 200:
        raise AuthFlowError(f"revocation failed: {response.status_code} {response.text}")


def _token_response(response: httpx.Response) -> TokenResponse:
    if response.status_code != 200:
        raise AuthFlowError(f"token endpoint answered {response.status_code}: {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return TokenResponse(body["access_token"], body.get("scope", ""), int(body.get("expires_in", 0)), body)
