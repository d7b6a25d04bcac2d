"""The strict JWS compact reader the verifier parses every token with, once."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smartgate.tokens.jws import JwsError, read_compact, verify_signature

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header: object = None, claims: object = None) -> str:
    header = {"alg": "ES256", "typ": "at+jwt"} if header is None else header
    claims = {"iss": "https://issuer.example.org", "exp": 2_000_000_000} if claims is None else claims
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(b'sig')}"


def test_a_signed_token_is_read_and_verifies_with_its_key() -> None:
    signed = jwt.encode({"sub": "x"}, EC_KEY, algorithm="ES256", headers={"kid": "k"})
    jws = read_compact(signed)
    assert jws.header == {"alg": "ES256", "kid": "k", "typ": "JWT"} and jws.claims == {"sub": "x"}
    assert jws.signing_input == signed.rsplit(".", 1)[0].encode()
    assert verify_signature(jws, "ES256", EC_KEY.public_key())


def test_an_rsa_token_verifies_with_its_key_only() -> None:
    signed = read_compact(jwt.encode({"sub": "x"}, RSA_KEY, algorithm="RS256"))
    assert verify_signature(signed, "RS256", RSA_KEY.public_key())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not verify_signature(signed, "RS256", other.public_key())


def test_a_tampered_payload_does_not_verify() -> None:
    header, _, signature = jwt.encode({"sub": "x"}, EC_KEY, algorithm="ES256").split(".")
    forged = read_compact(f"{header}.{b64(json.dumps({'sub': 'y'}).encode())}.{signature}")
    assert not verify_signature(forged, "ES256", EC_KEY.public_key())


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "unknown"])
def test_symmetric_and_unknown_algorithms_never_verify(alg: str) -> None:
    secret_signed = read_compact(jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256"))
    assert not verify_signature(secret_signed, alg, b"k" * 32)


def test_a_key_of_the_wrong_type_does_not_verify() -> None:
    signed = read_compact(jwt.encode({"sub": "x"}, EC_KEY, algorithm="ES256"))
    assert not verify_signature(signed, "RS256", EC_KEY.public_key())
    assert not verify_signature(signed, "ES256", "not a key")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "a..c",
        "é.b.c",
        token() + "=",  # padding
        token().replace(".", "+", 1),  # a standard-base64 character
        token()[:-1] + "/",
        "e30.e30.a",  # a segment of impossible length (4n+1)
    ],
)
def test_anything_but_three_base64url_segments_is_malformed(text: str) -> None:
    with pytest.raises(JwsError):
        read_compact(text)


def test_a_non_canonical_encoding_is_malformed() -> None:
    # "e30" is "{}"; "e31" decodes to the same bytes with non-zero padding bits.
    assert read_compact(f"e30.e30.{b64(b'x')}").claims == {}
    with pytest.raises(JwsError):
        read_compact(f"e31.e30.{b64(b'x')}")


@pytest.mark.parametrize(("header", "claims"), [([], None), (None, []), ("x", None), (None, 3), (None, "claims")])
def test_a_header_or_payload_that_is_not_a_json_object_is_malformed(header: object, claims: object) -> None:
    with pytest.raises(JwsError):
        read_compact(token(header, claims))


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(number: float) -> None:
    with pytest.raises(JwsError):
        read_compact(token(claims={"iss": "https://issuer.example.org", "exp": number}))


def test_bytes_that_are_not_json_are_malformed() -> None:
    with pytest.raises(JwsError):
        read_compact(f"{b64(b'not json')}.e30.{b64(b'x')}")
    with pytest.raises(JwsError):
        read_compact(f"e30.{b64(bytes([0xFF, 0xFE]))}.{b64(b'x')}")


def test_deeply_nested_claims_are_malformed_not_an_exception() -> None:
    with pytest.raises(JwsError):
        read_compact(f"e30.{b64(b'[' * 100_000 + b']' * 100_000)}.{b64(b'x')}")


def test_an_empty_signature_is_read_and_never_verifies() -> None:
    jws = read_compact(token({"alg": "none"}).rsplit(".", 1)[0] + ".")
    assert jws.signature == b""
    assert not verify_signature(jws, "ES256", EC_KEY.public_key())
