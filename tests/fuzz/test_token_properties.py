"""Properties of bearer extraction and token verification, through the real Check path:
no token that did not verify is ever allowed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fuzz.check_target import CheckTarget
from fuzz.check_world import BASE_PATH, KID, PUBLIC_KEY, CheckWorld, check_request, claims_for, sign
from fuzz.decision_oracle import issued_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartgate.core.reasons import Refusal
from smartgate.tokens.bearer import extract_bearer

pytestmark = pytest.mark.fuzz

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
TOKEN_CHARS = B64URL + ".~+/="
SEARCH = f"{BASE_PATH}/Observation?patient=alice7"
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _allowed(target: CheckTarget, token: str, path: str = SEARCH) -> bool:
    response = target.judge(check_request(path, "GET", {"authorization": f"Bearer {token}"}))
    kind: str | None = response.WhichOneof("http_response")  # the protobuf modules ship no stubs
    return kind == "ok_response"


def test_the_genuine_token_is_allowed(target: CheckTarget, world: CheckWorld) -> None:
    """The baseline the other properties perturb: without it they could not fail."""
    assert _allowed(target, world.tokens["alice-all"])


@PROPERTY
@given(data=st.data())
def test_a_tampered_token_is_never_allowed(target: CheckTarget, world: CheckWorld, data: st.DataObject) -> None:
    token = world.tokens["alice-all"]
    where = data.draw(st.integers(0, len(token) - 1), label="where")
    replacement = data.draw(st.sampled_from(TOKEN_CHARS).filter(lambda char: char != token[where]), label="char")
    tampered = token[:where] + replacement + token[where + 1 :]
    if _allowed(target, tampered):
        # Only a change the decoder cannot see (the signature's spare bits, '-' for '+') may pass,
        # and the oracle has already proven the signed content and signature are the issuer's.
        assert issued_spec(tampered) is not None
        assert tampered.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]


@PROPERTY
@given(token=st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=400))
def test_a_random_token_is_never_allowed(target: CheckTarget, token: str) -> None:
    assert not _allowed(target, token)


@PROPERTY
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "jku", "jwk", "x5u", "cty"]),
        st.one_of(st.text(max_size=12), st.integers(), st.none(), st.lists(st.text(max_size=4))),
        max_size=5,
    ),
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "patient", "scope", "sub"]),
        st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans()),
        max_size=8,
    ),
    signature=st.binary(max_size=80),
)
def test_a_forged_token_is_never_allowed(
    target: CheckTarget, header: dict[str, object], claims: dict[str, object], signature: bytes
) -> None:
    token = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"
    assert not _allowed(target, token)


def _public_pem() -> bytes:
    return PUBLIC_KEY.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@PROPERTY
@given(
    alg=st.sampled_from(
        ["none", "None", "NONE", "HS256", "HS384", "HS512", "ES384", "ES512", "RS256", "PS256", "EdDSA", "ES256K", ""]
    ),
    secret=st.sampled_from(["pem", "jwk", "empty"]),
    typ=st.sampled_from(["at+jwt", "JWT", None]),
)
def test_algorithm_confusion_is_never_allowed(target: CheckTarget, alg: str, secret: str, typ: str | None) -> None:
    """alg none, and HMAC keyed with the issuer's public key (PEM or JWK), over valid claims."""
    header: dict[str, object] = {"alg": alg, "kid": KID}
    if typ is not None:
        header["typ"] = typ
    claims = claims_for("alice7", "patient/*.rs")
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    key = {"pem": _public_pem(), "jwk": json.dumps({"kty": "EC", "kid": KID}).encode(), "empty": b""}[secret]
    if alg.startswith("HS"):
        digest = getattr(hashlib, f"sha{alg[2:]}")
        signature = _b64(hmac.new(key, signing_input.encode(), digest).digest())
    else:
        signature = ""
    assert not _allowed(target, f"{signing_input}.{signature}")


@PROPERTY
@given(
    change=st.sampled_from(
        [
            {"exp": 1_000},
            {"exp": None},
            {"nbf": 1_750_000_000 + 3_600},
            {"iat": 1_750_000_000 + 3_600},
            {"aud": "https://other.example.org/r4"},
            {"iss": "https://evil.example.org"},
            {"exp": "later"},
            {"patient": "../alice7"},
            {"patient": 7},
            {"scope": 42},
            {"aud": None},
            {"iss": None},
        ]
    ),
    header_change=st.sampled_from([{}, {"crit": ["exp"]}, {"typ": "id+jwt"}, {"kid": 5}, {"alg": "ES384"}]),
)
def test_a_token_with_invalid_claims_or_header_is_never_allowed(
    target: CheckTarget, change: dict[str, object], header_change: dict[str, object]
) -> None:
    """Signed by the issuer's own key, so only the claim and header rules can refuse it."""
    header: dict[str, object] = {"alg": "ES256", "typ": "at+jwt", "kid": KID, **header_change}
    claims = claims_for("alice7", "patient/*.rs")
    claims.update(change)
    assert not _allowed(target, sign({name: value for name, value in claims.items() if value is not None}, header))


def test_a_token_signed_by_another_key_is_never_allowed(target: CheckTarget) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert not _allowed(target, sign(claims_for("alice7", "patient/*.rs"), key=stranger))


@PROPERTY
@given(
    headers=st.dictionaries(
        st.sampled_from(["authorization", "Authorization", "x-other"]), st.text(max_size=300), max_size=3
    ),
    max_bytes=st.integers(1, 512),
)
def test_bearer_extraction_never_raises_and_returns_only_b64tokens(headers: dict[str, str], max_bytes: int) -> None:
    token = extract_bearer(headers, max_bytes)
    if isinstance(token, str):
        assert 0 < len(token) <= max_bytes
        assert set(token.rstrip("=")) <= set(B64URL + ".~+/")
        assert headers["authorization"].split(" ", 1)[0].lower() == "bearer"
    else:
        assert token is None or isinstance(token, Refusal)
        assert token is not None or "authorization" not in headers
