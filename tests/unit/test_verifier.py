"""TokenVerifier: one test per way a token can be wrong, each asserting the exact Reason.

Keys are served by a FakeIdp behind httpx.MockTransport. PyJWT checks exp/nbf/iat against
the real wall clock, so tokens are built relative to ``time.time()`` unless a test freezes
PyJWT's clock explicitly (``jwt_time``).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import jwt.api_jwt
import pytest

from smartgate.config.model import ClaimNames, IssuerConfig, JwksPolicy, TokenPolicy
from smartgate.core.reasons import Reason, Refusal
from smartgate.tokens.context import TokenContext
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.verifier import TokenVerifier

from .token_helpers import (
    ALL_ALGORITHMS,
    DROP,
    FakeIdp,
    KeyPair,
    ManualClock,
    b64url,
    b64url_json,
    ec_private_key,
    ed448_private_key,
    key_for,
    make_claims,
    make_jwks,
    make_token,
    sign_raw,
    sign_token,
)

FHIR_BASE = "https://fhir.example.org/r4"
AUDIENCE = FHIR_BASE
ISSUER = "https://idp.example.org/realms/smart"
JWKS_URI = f"{ISSUER}/protocol/openid-connect/certs"
OTHER_ISSUER = "https://other-idp.example.com"
OTHER_JWKS_URI = f"{OTHER_ISSUER}/jwks"
ATTACKER_JWKS_URI = "https://attacker.example.net/jwks.json"
SKEW = 60

# The issuer's keys: one per allowed algorithm (RS*/PS* share one RSA key under distinct kids).
KEYS: dict[str, KeyPair] = {alg: key_for(alg) for alg in ALL_ALGORITHMS}
ED448 = KeyPair("EdDSA", "default-ed448", ed448_private_key())
# A P-256 key published without "alg": only its curve decides what it may verify.
P256_NO_ALG = KeyPair("ES256", "p256-no-alg", ec_private_key("P-256", "no-alg"))
# A key the issuer publishes for encryption only.
ENC_KEY = key_for("RS256", "encryption", kid="enc-rsa")
OTHER_KEY = key_for("ES256", "other-issuer")
ATTACKER = key_for("RS256", "attacker")
ATTACKER_EC = key_for("ES256", "attacker")


def issuer_jwks() -> dict[str, Any]:
    return make_jwks(
        *KEYS.values(),
        ED448,
        P256_NO_ALG.public_jwk(with_alg=False),
        ENC_KEY.public_jwk(use="enc"),
    )


def issuer_config(**overrides: Any) -> IssuerConfig:
    values: dict[str, Any] = {"issuer": ISSUER, "audiences": (AUDIENCE,), "jwks_uri": JWKS_URI}
    values.update(overrides)
    return IssuerConfig(**values)


def other_issuer_config() -> IssuerConfig:
    return IssuerConfig(issuer=OTHER_ISSUER, audiences=(AUDIENCE,), jwks_uri=OTHER_JWKS_URI)


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    fake = FakeIdp(
        {
            JWKS_URI: issuer_jwks(),
            OTHER_JWKS_URI: make_jwks(OTHER_KEY),
            # Served, so that a verifier that ever followed jku would find the attacker's key.
            ATTACKER_JWKS_URI: make_jwks(ATTACKER, ATTACKER_EC),
        }
    )
    yield fake
    await fake.aclose()


def build_verifier(
    idp: FakeIdp,
    *issuers: IssuerConfig,
    policy: TokenPolicy | None = None,
    clock: Callable[[], float] = time.time,
    jwks_clock: Callable[[], float] | None = None,
    fhir_base_url: str = FHIR_BASE,
) -> TokenVerifier:
    configs = issuers or (issuer_config(), other_issuer_config())
    jwks_policy = JwksPolicy(min_refresh_interval_seconds=30.0)
    mapping = {
        config.issuer: (config, JwksCache(config, jwks_policy, idp.client, clock=jwks_clock or ManualClock()))
        for config in configs
    }
    return TokenVerifier(mapping, policy or TokenPolicy(clock_skew_seconds=SKEW), fhir_base_url, clock=clock)


@pytest.fixture
def verifier(idp: FakeIdp) -> TokenVerifier:
    return build_verifier(idp)


def claims(**overrides: Any) -> dict[str, Any]:
    return make_claims(ISSUER, AUDIENCE, **overrides)


def token(alg: str = "ES256", header: dict[str, Any] | None = None, **claim_overrides: Any) -> str:
    return make_token(KEYS[alg], claims(**claim_overrides), **(header or {}))


async def rejected(verifier: TokenVerifier, jwt_text: str) -> Reason:
    result = await verifier.verify(jwt_text)
    assert isinstance(result, Refusal), f"expected a rejection, got {result!r}"
    return result.reason


async def accepted(verifier: TokenVerifier, jwt_text: str) -> TokenContext:
    result = await verifier.verify(jwt_text)
    assert isinstance(result, TokenContext), f"expected acceptance, got {result!r}"
    return result


# --- the positive path -------------------------------------------------------------------


async def test_valid_token_is_accepted_with_its_smart_context(verifier: TokenVerifier) -> None:
    now = int(time.time())
    context = await accepted(
        verifier,
        token(
            scope="launch/patient patient/Observation.rs openid",
            patient="123",
            sub="u-1",
            client_id="growth-chart",
            fhirUser="Practitioner/p-9",
            exp=now + 600,
        ),
    )
    assert context.issuer == ISSUER
    assert context.subject == "u-1"
    assert context.client_id == "growth-chart"
    assert context.scope_text == "launch/patient patient/Observation.rs openid"
    assert context.patient == "123"
    assert context.fhir_user == "Practitioner/p-9"
    assert context.expires_at == now + 600
    assert context.grants.permits("patient", "Observation", "r")
    assert not context.grants.permits("patient", "Observation", "u")


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
async def test_token_signed_with_each_allowed_algorithm_is_accepted(verifier: TokenVerifier, alg: str) -> None:
    context = await accepted(verifier, token(alg))
    assert context.issuer == ISSUER


async def test_token_signed_with_eddsa_ed448_is_accepted(verifier: TokenVerifier) -> None:
    await accepted(verifier, make_token(ED448, claims()))


async def test_token_without_kid_is_verified_against_the_issuer_keys(verifier: TokenVerifier) -> None:
    await accepted(verifier, token("ES384", header={"kid": DROP}))


async def test_jwk_without_alg_verifies_tokens_of_its_curve(verifier: TokenVerifier) -> None:
    await accepted(verifier, make_token(P256_NO_ALG, claims()))


async def test_token_without_kid_is_tried_against_every_matching_key(verifier: TokenVerifier) -> None:
    # Without a kid the issuer's ES256 key comes first and fails; the second P-256 key verifies.
    await accepted(verifier, make_token(P256_NO_ALG, claims(), kid=DROP))


async def test_keys_sharing_a_kid_are_all_tried(idp: FakeIdp) -> None:
    rotated = key_for("ES256", "rotated", kid=KEYS["ES256"].kid)
    idp.documents[JWKS_URI] = make_jwks(KEYS["ES256"], rotated)
    verifier = build_verifier(idp)
    await accepted(verifier, make_token(rotated, claims()))
    await accepted(verifier, make_token(KEYS["ES256"], claims()))


async def test_expired_token_is_reported_expired_when_a_later_key_verifies_it(verifier: TokenVerifier) -> None:
    now = int(time.time())
    text = make_token(P256_NO_ALG, claims(iat=now - 3600, exp=now - 600), kid=DROP)
    assert await rejected(verifier, text) is Reason.TOKEN_EXPIRED


# --- structure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "abc", "abc.def", "a.b.c.d", "..", "...", "eyJhbGciOiJFUzI1NiJ9.e30"],
    ids=["empty", "one", "two", "four", "dots-two", "dots-three", "header-payload"],
)
async def test_token_not_three_segments_is_malformed(verifier: TokenVerifier, text: str) -> None:
    assert await rejected(verifier, text) is Reason.TOKEN_MALFORMED


async def test_valid_token_with_extra_segment_is_malformed(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token() + ".AAAA") is Reason.TOKEN_MALFORMED


async def test_jwe_token_with_five_segments_is_malformed(verifier: TokenVerifier) -> None:
    header = b64url_json({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": KEYS["RS256"].kid, "typ": "at+jwt"})
    jwe = ".".join([header, b64url(b"k" * 256), b64url(b"iv" * 6), b64url(b"ciphertext"), b64url(b"t" * 16)])
    assert await rejected(verifier, jwe) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("segment", [0, 1, 2], ids=["header", "payload", "signature"])
async def test_token_segment_with_bad_base64_is_malformed(verifier: TokenVerifier, segment: int) -> None:
    parts = token().split(".")
    parts[segment] = "!!!*" + parts[segment][4:]
    assert await rejected(verifier, ".".join(parts)) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'"at+jwt"', b"{"], ids=["text", "array", "string", "broken"])
async def test_token_header_not_json_object_is_malformed(verifier: TokenVerifier, raw: bytes) -> None:
    good = token().split(".")
    assert await rejected(verifier, ".".join([b64url(raw), good[1], good[2]])) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'"claims"', b"42", b"null"],
    ids=["text", "array", "string", "number", "null"],
)
async def test_token_payload_not_json_object_is_malformed(verifier: TokenVerifier, payload: bytes) -> None:
    key = KEYS["ES256"]
    # Correctly signed, so the payload is the only thing wrong.
    text = sign_raw({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, payload, key.private_key)
    assert await rejected(verifier, text) is Reason.TOKEN_MALFORMED


# --- algorithms --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_token_with_alg_none_is_rejected(verifier: TokenVerifier, alg: str) -> None:
    text = sign_token({"alg": alg, "typ": "at+jwt"}, claims(), None, sign_alg="none")
    assert text.endswith(".")
    assert await rejected(verifier, text) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


async def test_token_with_alg_none_and_a_kid_is_rejected(verifier: TokenVerifier) -> None:
    text = sign_token({"alg": "none", "typ": "at+jwt", "kid": KEYS["RS256"].kid}, claims(), None)
    assert await rejected(verifier, text) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


@pytest.mark.parametrize("alg", [DROP, "", None, 256, ["RS256"]], ids=["missing", "empty", "null", "number", "list"])
async def test_token_without_a_string_alg_is_rejected(verifier: TokenVerifier, alg: Any) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": KEYS["RS256"].kid}
    header = {name: value for name, value in header.items() if value is not DROP}
    text = sign_token(header, claims(), KEYS["RS256"].private_key, sign_alg="RS256")
    assert await rejected(verifier, text) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_token_signed_with_hmac_is_rejected(verifier: TokenVerifier, alg: str) -> None:
    text = sign_token({"alg": alg, "typ": "at+jwt"}, claims(), b"a shared secret that is long enough!!")
    assert await rejected(verifier, text) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


async def test_token_signed_with_hs256_using_public_key_is_rejected(verifier: TokenVerifier) -> None:
    rsa_key = KEYS["RS256"]
    header = {"alg": "HS256", "typ": "at+jwt", "kid": rsa_key.kid}
    text = sign_token(header, claims(), rsa_key.public_pem())
    assert await rejected(verifier, text) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


async def test_token_signed_with_hs256_using_public_key_is_rejected_even_if_hs256_is_configured(
    idp: FakeIdp,
) -> None:
    # IssuerConfig built directly, bypassing config validation (which refuses HS256):
    # no JWK may ever be used as an HMAC secret.
    verifier = build_verifier(idp, issuer_config(algorithms=("RS256", "HS256")))
    rsa_key = KEYS["RS256"]
    for kid in (rsa_key.kid, DROP):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
        header = {name: value for name, value in header.items() if value is not DROP}
        text = sign_token(header, claims(), rsa_key.public_pem())
        assert await rejected(verifier, text) is Reason.TOKEN_UNKNOWN_KEY


async def test_algorithm_not_in_issuer_allowlist_is_rejected(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, issuer_config(algorithms=("ES256", "EdDSA")))
    await accepted(verifier, token("ES256"))
    for alg in ("RS256", "PS256", "ES384"):
        assert await rejected(verifier, token(alg)) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


@pytest.mark.parametrize("alg", ["ES256K", "RS1", "HS1", "PS256 ", "rs256", "A256GCM", "RSA-OAEP"])
async def test_unknown_or_misspelt_algorithm_is_rejected(verifier: TokenVerifier, alg: str) -> None:
    text = sign_token(
        {"alg": alg, "typ": "at+jwt", "kid": KEYS["RS256"].kid}, claims(), KEYS["RS256"].private_key, sign_alg="RS256"
    )
    assert await rejected(verifier, text) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


async def test_token_alg_not_matching_the_jwk_alg_is_rejected(verifier: TokenVerifier) -> None:
    # The RS256 JWK says alg=RS256: a PS256 signature by the very same RSA key must not use it.
    rs256 = KEYS["RS256"]
    text = make_token(rs256, claims(), alg="PS256", sign_alg="PS256")
    assert await rejected(verifier, text) is Reason.TOKEN_UNKNOWN_KEY


async def test_ec_key_with_wrong_curve_for_es384_is_rejected(verifier: TokenVerifier) -> None:
    # P256_NO_ALG has no "alg" member, so only its curve (P-256) keeps it away from ES384.
    text = make_token(P256_NO_ALG, claims(), alg="ES384", sign_alg="ES384")
    assert await rejected(verifier, text) is Reason.TOKEN_UNKNOWN_KEY


async def test_ec_key_with_wrong_curve_for_es512_without_kid_is_rejected(verifier: TokenVerifier) -> None:
    text = make_token(P256_NO_ALG, claims(), alg="ES512", sign_alg="ES512", kid=DROP)
    assert await rejected(verifier, text) is Reason.TOKEN_BAD_SIGNATURE


async def test_eddsa_token_with_ec_kid_is_rejected(verifier: TokenVerifier) -> None:
    text = make_token(KEYS["EdDSA"], claims(), kid=P256_NO_ALG.kid)
    assert await rejected(verifier, text) is Reason.TOKEN_UNKNOWN_KEY


# --- header parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["b64"], "b64": True},
        {"crit": ["urn:example:policy"], "urn:example:policy": "strict"},
        {"crit": ["exp"], "exp": 1},
        {"crit": []},
        {"crit": "b64"},
    ],
    ids=["b64-understood-by-pyjwt", "private-extension", "registered-name", "empty-list", "not-a-list"],
)
async def test_token_with_crit_header_is_rejected(verifier: TokenVerifier, extra: dict[str, Any]) -> None:
    assert await rejected(verifier, token(header=extra)) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("kid", [7, None, ["default-es256"], {"kid": "x"}], ids=["int", "null", "list", "object"])
async def test_token_with_non_string_kid_is_malformed(verifier: TokenVerifier, kid: Any) -> None:
    assert await rejected(verifier, token(header={"kid": kid})) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    ("kid", "reason"),
    [
        (KEYS["RS256"].kid, Reason.TOKEN_BAD_SIGNATURE),
        (DROP, Reason.TOKEN_BAD_SIGNATURE),
        (ATTACKER.kid, Reason.TOKEN_UNKNOWN_KEY),
    ],
    ids=["legitimate-kid", "no-kid", "attacker-kid"],
)
async def test_token_signed_by_attacker_with_embedded_jwk_is_rejected(
    verifier: TokenVerifier, kid: Any, reason: Reason
) -> None:
    text = make_token(KEYS["RS256"], claims(), signing_key=ATTACKER.private_key, kid=kid, jwk=ATTACKER.public_jwk())
    assert await rejected(verifier, text) is reason


async def test_valid_token_with_embedded_jwk_header_is_verified_against_configured_keys(
    verifier: TokenVerifier,
) -> None:
    # The embedded jwk names the attacker's key; the configured key must be used regardless.
    await accepted(verifier, token("RS256", header={"jwk": ATTACKER.public_jwk()}))


@pytest.mark.parametrize("param", ["jku", "x5u"])
async def test_token_signed_by_attacker_with_key_url_header_is_rejected(
    verifier: TokenVerifier, idp: FakeIdp, param: str
) -> None:
    text = make_token(
        KEYS["RS256"], claims(), signing_key=ATTACKER.private_key, kid=ATTACKER.kid, **{param: ATTACKER_JWKS_URI}
    )
    assert await rejected(verifier, text) is Reason.TOKEN_UNKNOWN_KEY
    assert idp.count(ATTACKER_JWKS_URI) == 0
    assert set(idp.requests) <= {JWKS_URI}


@pytest.mark.parametrize("param", ["jku", "x5u"])
async def test_valid_token_with_key_url_header_is_verified_against_configured_keys_only(
    verifier: TokenVerifier, idp: FakeIdp, param: str
) -> None:
    await accepted(verifier, token("RS256", header={param: ATTACKER_JWKS_URI}))
    assert idp.count(ATTACKER_JWKS_URI) == 0
    assert idp.requests == [JWKS_URI]


# --- keys and issuers --------------------------------------------------------------------


async def test_unknown_kid_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token(header={"kid": "no-such-key"})) is Reason.TOKEN_UNKNOWN_KEY


async def test_token_signed_with_a_key_published_for_encryption_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, make_token(ENC_KEY, claims())) is Reason.TOKEN_UNKNOWN_KEY


async def test_token_of_issuer_a_signed_with_issuer_b_key_is_rejected(verifier: TokenVerifier) -> None:
    # The same key and kid are good for issuer B's own tokens...
    await accepted(verifier, make_token(OTHER_KEY, make_claims(OTHER_ISSUER, AUDIENCE)))
    # ...but issuer A's tokens are checked against issuer A's keys only.
    assert await rejected(verifier, make_token(OTHER_KEY, claims())) is Reason.TOKEN_UNKNOWN_KEY


async def test_token_of_issuer_a_signed_with_issuer_b_key_without_kid_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, make_token(OTHER_KEY, claims(), kid=DROP)) is Reason.TOKEN_BAD_SIGNATURE


async def test_token_of_issuer_b_signed_with_issuer_a_key_is_rejected(verifier: TokenVerifier) -> None:
    text = make_token(KEYS["ES256"], make_claims(OTHER_ISSUER, AUDIENCE))
    assert await rejected(verifier, text) is Reason.TOKEN_UNKNOWN_KEY


async def test_issuer_with_unreachable_jwks_gives_jwks_unavailable(idp: FakeIdp) -> None:
    idp.down = True
    verifier = build_verifier(idp)
    assert await rejected(verifier, token()) is Reason.JWKS_UNAVAILABLE


async def test_jwks_unavailable_is_not_cached_and_recovers(idp: FakeIdp) -> None:
    jwks_clock = ManualClock()
    verifier = build_verifier(idp, jwks_clock=jwks_clock)
    text = token()
    idp.down = True
    assert await rejected(verifier, text) is Reason.JWKS_UNAVAILABLE
    idp.down = False
    jwks_clock.advance(31)
    await accepted(verifier, text)


async def test_token_without_iss_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token(iss=DROP)) is Reason.TOKEN_UNKNOWN_ISSUER


@pytest.mark.parametrize(
    "iss",
    ["https://evil.example.org/realms/smart", "https://idp.example.org/realms", ""],
    ids=["other-host", "prefix", "empty"],
)
async def test_token_with_unconfigured_iss_is_rejected(verifier: TokenVerifier, iss: str) -> None:
    assert await rejected(verifier, token(iss=iss)) is Reason.TOKEN_UNKNOWN_ISSUER


@pytest.mark.parametrize(
    "iss",
    [ISSUER + "/", ISSUER.upper(), ISSUER.replace("https", "http"), ISSUER + " ", " " + ISSUER],
    ids=["trailing-slash", "upper-case", "http", "trailing-space", "leading-space"],
)
async def test_token_iss_not_exactly_the_configured_issuer_is_rejected(verifier: TokenVerifier, iss: str) -> None:
    assert await rejected(verifier, token(iss=iss)) is Reason.TOKEN_UNKNOWN_ISSUER


@pytest.mark.parametrize("iss", [[ISSUER], {"iss": ISSUER}, 1, None], ids=["list", "object", "number", "null"])
async def test_token_with_non_string_iss_is_rejected(verifier: TokenVerifier, iss: Any) -> None:
    assert await rejected(verifier, token(iss=iss)) is Reason.TOKEN_UNKNOWN_ISSUER


# --- audience ----------------------------------------------------------------------------


@pytest.mark.parametrize("aud", [DROP, None, "", []], ids=["missing", "null", "empty-string", "empty-list"])
async def test_token_without_aud_is_rejected(verifier: TokenVerifier, aud: Any) -> None:
    # A missing (or empty) required claim maps to TOKEN_MALFORMED (verifier._check_claims).
    assert await rejected(verifier, token(aud=aud)) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "aud",
    ["https://other-fhir.example.org/r4", AUDIENCE + "/", "https://fhir.example.org", ["https://x.example"]],
    ids=["other-server", "trailing-slash", "base-host", "list-without-ours"],
)
async def test_token_with_wrong_aud_is_rejected(verifier: TokenVerifier, aud: Any) -> None:
    assert await rejected(verifier, token(aud=aud)) is Reason.TOKEN_AUDIENCE_MISMATCH


@pytest.mark.parametrize("aud", [1, {"aud": AUDIENCE}, [AUDIENCE, 1]], ids=["number", "object", "mixed-list"])
async def test_token_with_non_string_aud_is_rejected(verifier: TokenVerifier, aud: Any) -> None:
    assert await rejected(verifier, token(aud=aud)) is Reason.TOKEN_AUDIENCE_MISMATCH


async def test_token_with_our_aud_among_several_is_accepted(verifier: TokenVerifier) -> None:
    await accepted(verifier, token(aud=["https://api.example.org", AUDIENCE, "account"]))


async def test_token_for_any_configured_audience_is_accepted(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, issuer_config(audiences=(AUDIENCE, "urn:smartgate:fhir")))
    await accepted(verifier, token(aud="urn:smartgate:fhir"))
    await accepted(verifier, token(aud=AUDIENCE))
    assert await rejected(verifier, token(aud="urn:smartgate:other")) is Reason.TOKEN_AUDIENCE_MISMATCH


# --- time claims -------------------------------------------------------------------------


async def test_token_without_exp_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token(exp=DROP)) is Reason.TOKEN_MALFORMED


async def test_token_with_null_exp_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token(exp=None)) is Reason.TOKEN_MALFORMED


async def test_token_expired_beyond_clock_skew_is_rejected(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert await rejected(verifier, token(iat=now - 3600, exp=now - SKEW - 5)) is Reason.TOKEN_EXPIRED


async def test_token_expired_within_clock_skew_is_accepted(verifier: TokenVerifier) -> None:
    now = int(time.time())
    context = await accepted(verifier, token(iat=now - 3600, exp=now - SKEW + 20))
    assert context.expires_at == now - SKEW + 20


async def test_token_expired_with_zero_skew_is_rejected(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, policy=TokenPolicy(clock_skew_seconds=0))
    now = int(time.time())
    assert await rejected(verifier, token(iat=now - 3600, exp=now - 2)) is Reason.TOKEN_EXPIRED


@pytest.mark.parametrize("exp", ["9999999999", "tomorrow", "", "1e12"], ids=["numeric", "word", "empty", "float-text"])
async def test_token_with_exp_as_a_string_is_rejected(verifier: TokenVerifier, exp: str) -> None:
    assert await rejected(verifier, token(exp=exp)) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("exp", [[9999999999], {"t": 9999999999}], ids=["list", "object"])
async def test_token_with_exp_not_a_number_is_rejected(verifier: TokenVerifier, exp: Any) -> None:
    assert await rejected(verifier, token(exp=exp)) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=["NaN", "Infinity", "-Infinity"])
async def test_token_with_a_time_claim_that_is_not_a_finite_number_is_rejected(
    verifier: TokenVerifier, claim: str, number: float
) -> None:
    # Python's JSON parser reads NaN and Infinity; a NaN exp never compares as past and would never lapse.
    overrides: dict[str, Any] = {claim: number}
    assert await rejected(verifier, token(**overrides)) is Reason.TOKEN_MALFORMED


async def test_token_with_fractional_exp_is_accepted(verifier: TokenVerifier) -> None:
    exp = time.time() + 600.5
    context = await accepted(verifier, token(exp=exp))
    assert context.expires_at == exp


async def test_token_with_nbf_in_the_future_beyond_skew_is_rejected(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert await rejected(verifier, token(nbf=now + SKEW + 30)) is Reason.TOKEN_NOT_YET_VALID


async def test_token_with_nbf_in_the_future_within_skew_is_accepted(verifier: TokenVerifier) -> None:
    await accepted(verifier, token(nbf=int(time.time()) + SKEW - 20))


async def test_token_with_nbf_not_a_number_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token(nbf="soon")) is Reason.TOKEN_MALFORMED


async def test_token_with_iat_in_the_future_beyond_skew_is_rejected(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert await rejected(verifier, token(iat=now + SKEW + 30, exp=now + 3600)) is Reason.TOKEN_NOT_YET_VALID


async def test_token_with_iat_in_the_future_within_skew_is_accepted(verifier: TokenVerifier) -> None:
    await accepted(verifier, token(iat=int(time.time()) + SKEW - 20))


async def test_token_with_iat_not_a_number_is_rejected(verifier: TokenVerifier) -> None:
    assert await rejected(verifier, token(iat="now")) is Reason.TOKEN_MALFORMED


# --- typ ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    ["id_token+jwt", "dpop+jwt", "logout+jwt", "secevent+jwt", "JOSE", "JOSE+JSON", "at+jwt;v=1", "", "at+jwt "],
)
async def test_token_with_typ_not_allowed_is_rejected(verifier: TokenVerifier, typ: str) -> None:
    assert await rejected(verifier, token(header={"typ": typ})) is Reason.TOKEN_TYPE_NOT_ALLOWED


@pytest.mark.parametrize("typ", [1, True, ["at+jwt"], {"typ": "at+jwt"}], ids=["number", "bool", "list", "object"])
async def test_token_with_non_string_typ_is_rejected(verifier: TokenVerifier, typ: Any) -> None:
    assert await rejected(verifier, token(header={"typ": typ})) is Reason.TOKEN_TYPE_NOT_ALLOWED


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT", "JWT", "jwt"])
async def test_token_with_allowed_typ_in_any_case_is_accepted(verifier: TokenVerifier, typ: str) -> None:
    await accepted(verifier, token(header={"typ": typ}))


async def test_token_without_typ_is_accepted_when_allowed(verifier: TokenVerifier) -> None:
    await accepted(verifier, token(header={"typ": DROP}))


async def test_token_without_typ_is_rejected_when_allow_missing_token_type_is_false(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, issuer_config(allow_missing_token_type=False))
    assert await rejected(verifier, token(header={"typ": DROP})) is Reason.TOKEN_TYPE_NOT_ALLOWED
    assert await rejected(verifier, token(header={"typ": None})) is Reason.TOKEN_TYPE_NOT_ALLOWED
    await accepted(verifier, token(header={"typ": "at+jwt"}))


async def test_issuer_token_types_restrict_typ(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, issuer_config(token_types=("at+jwt",)))
    await accepted(verifier, token(header={"typ": "at+jwt"}))
    assert await rejected(verifier, token(header={"typ": "JWT"})) is Reason.TOKEN_TYPE_NOT_ALLOWED


# --- signatures --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS512", "ES256", "EdDSA"])
async def test_token_with_tampered_payload_is_rejected(verifier: TokenVerifier, alg: str) -> None:
    header, _, sig = token(alg, scope="user/Observation.rs").split(".")
    forged = b64url_json(claims(scope="system/*.cruds"))
    assert await rejected(verifier, f"{header}.{forged}.{sig}") is Reason.TOKEN_BAD_SIGNATURE


async def test_token_with_tampered_header_is_rejected(verifier: TokenVerifier) -> None:
    _, payload, sig = token("ES256").split(".")
    forged = b64url_json({"alg": "ES256", "typ": "application/at+jwt", "kid": KEYS["ES256"].kid})
    assert await rejected(verifier, f"{forged}.{payload}.{sig}") is Reason.TOKEN_BAD_SIGNATURE


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_token_with_tampered_signature_is_rejected(verifier: TokenVerifier, alg: str) -> None:
    header, payload, sig = token(alg).split(".")
    replacement = "A" if sig[10] != "A" else "B"
    tampered = sig[:10] + replacement + sig[11:]
    assert await rejected(verifier, f"{header}.{payload}.{tampered}") is Reason.TOKEN_BAD_SIGNATURE


async def test_token_with_empty_signature_is_rejected(verifier: TokenVerifier) -> None:
    header, payload, _ = token("RS256").split(".")
    assert await rejected(verifier, f"{header}.{payload}.") is Reason.TOKEN_BAD_SIGNATURE


async def test_token_with_signature_of_another_token_is_rejected(verifier: TokenVerifier) -> None:
    _, _, sig = token("ES256", sub="someone-else").split(".")
    header, payload, _ = token("ES256").split(".")
    assert await rejected(verifier, f"{header}.{payload}.{sig}") is Reason.TOKEN_BAD_SIGNATURE


async def test_token_signed_by_attacker_under_a_legitimate_kid_is_rejected(verifier: TokenVerifier) -> None:
    text = make_token(KEYS["ES256"], claims(), signing_key=ATTACKER_EC.private_key)
    assert await rejected(verifier, text) is Reason.TOKEN_BAD_SIGNATURE


async def test_forged_token_reports_bad_signature_before_its_claims(verifier: TokenVerifier) -> None:
    now = int(time.time())
    forged = make_token(KEYS["ES256"], claims(exp=now - 3600, aud="x"), signing_key=ATTACKER_EC.private_key)
    assert await rejected(verifier, forged) is Reason.TOKEN_BAD_SIGNATURE


# --- SMART claims ------------------------------------------------------------------------


async def test_patient_scope_without_patient_claim_is_rejected(verifier: TokenVerifier) -> None:
    text = token(scope="patient/Observation.rs launch/patient")
    assert await rejected(verifier, text) is Reason.PATIENT_CONTEXT_MISSING


async def test_patient_scope_with_patient_claim_is_accepted(verifier: TokenVerifier) -> None:
    context = await accepted(verifier, token(scope="patient/*.rs", patient="Patient/abc-123"))
    assert context.patient == "abc-123"


async def test_user_scope_without_patient_claim_is_accepted(verifier: TokenVerifier) -> None:
    context = await accepted(verifier, token(scope="user/*.rs"))
    assert context.patient is None


@pytest.mark.parametrize(
    "patient",
    [
        "a/b",
        "..",
        ".",
        "",
        "x" * 65,
        "123 456",
        "Patient/",
        "Patient/a/b",
        "Patient/123?x=1",
        "p\u00e9",
        123,
        ["123"],
        {"id": "123"},
        True,
    ],
    ids=[
        "slash",
        "dotdot",
        "dot",
        "empty",
        "too-long",
        "space",
        "prefix-only",
        "prefix-slash",
        "query",
        "non-ascii",
        "number",
        "list",
        "object",
        "bool",
    ],
)
async def test_token_with_invalid_patient_id_is_rejected(verifier: TokenVerifier, patient: Any) -> None:
    assert await rejected(verifier, token(scope="patient/*.rs", patient=patient)) is Reason.TOKEN_CLAIMS_INVALID


@pytest.mark.parametrize("claim", ["patient", "fhirUser", "sub", "client_id", "scope"])
@pytest.mark.parametrize(
    "value",
    ["bad\r\nx-smart-patient: 999", "bad\nx", "bad\rx", "\r\n"],
    ids=["crlf-injection", "lf", "cr", "only-crlf"],
)
async def test_claim_with_cr_or_lf_is_rejected(verifier: TokenVerifier, claim: str, value: str) -> None:
    overrides: dict[str, Any] = {"scope": "user/*.rs", "patient": "123"}
    overrides[claim] = value
    assert await rejected(verifier, token(**overrides)) is Reason.TOKEN_CLAIMS_INVALID


@pytest.mark.parametrize("claim", ["patient", "fhirUser", "sub", "client_id"])
async def test_claim_with_trailing_newline_is_rejected(verifier: TokenVerifier, claim: str) -> None:
    overrides: dict[str, Any] = {"scope": "user/*.rs", "patient": "123", "fhirUser": "Practitioner/9"}
    overrides[claim] = overrides.get(claim, "value") + "\n"
    assert await rejected(verifier, token(**overrides)) is Reason.TOKEN_CLAIMS_INVALID


@pytest.mark.parametrize("claim", ["fhirUser", "sub", "client_id"])
async def test_claim_with_control_or_non_ascii_characters_is_rejected(verifier: TokenVerifier, claim: str) -> None:
    for value in ("a\tb", "a\x00b", "a\x7fb", "caf\u00e9", "x" * 2049):
        overrides: dict[str, Any] = {claim: value}
        assert await rejected(verifier, token(**overrides)) is Reason.TOKEN_CLAIMS_INVALID, value


@pytest.mark.parametrize(
    "scope", [42, ["user/*.rs", 1], {"user": "*.rs"}, True], ids=["number", "mixed", "object", "bool"]
)
async def test_scope_claim_not_string_or_string_list_is_rejected(verifier: TokenVerifier, scope: Any) -> None:
    assert await rejected(verifier, token(scope=scope)) is Reason.TOKEN_CLAIMS_INVALID


async def test_scope_claim_as_okta_scp_list_is_accepted(verifier: TokenVerifier) -> None:
    context = await accepted(
        verifier, token(scope=DROP, scp=["patient/Observation.rs", "launch/patient"], patient="p1")
    )
    assert context.scope_text == "patient/Observation.rs launch/patient"
    assert context.grants.permits("patient", "Observation", "r")
    assert context.patient == "p1"


async def test_scp_list_with_patient_scope_still_needs_patient_claim(verifier: TokenVerifier) -> None:
    text = token(scope=DROP, scp=["patient/Observation.rs"])
    assert await rejected(verifier, text) is Reason.PATIENT_CONTEXT_MISSING


async def test_scope_claim_wins_over_scp_when_both_are_present(verifier: TokenVerifier) -> None:
    context = await accepted(verifier, token(scope="user/Patient.rs", scp=["system/*.cruds"]))
    assert context.scope_text == "user/Patient.rs"
    assert not context.grants.permits("system", "Observation", "d")


async def test_token_without_any_scope_claim_grants_nothing(verifier: TokenVerifier) -> None:
    context = await accepted(verifier, token(scope=DROP))
    assert context.scope_text == ""
    assert not context.grants.permits("user", "Patient", "r")


async def test_configurable_claim_names_are_used(idp: FakeIdp) -> None:
    names = ClaimNames(
        scope=("permissions",),
        patient=("launch_patient",),
        fhir_user=("profile",),
        client_id=("appid",),
        subject=("oid",),
    )
    verifier = build_verifier(idp, issuer_config(claims=names))
    context = await accepted(
        verifier,
        token(
            scope="system/*.cruds",
            permissions="patient/Condition.rs",
            launch_patient="pat-7",
            profile="Practitioner/d-1",
            appid="app-9",
            oid="object-1",
            client_id="ignored",
            sub="ignored",
            patient="ignored",
            fhirUser="Patient/ignored",
        ),
    )
    assert context.scope_text == "patient/Condition.rs"
    assert context.grants.permits("patient", "Condition", "s")
    assert not context.grants.permits("system", "Condition", "s")
    assert (context.patient, context.fhir_user, context.client_id, context.subject) == (
        "pat-7",
        "Practitioner/d-1",
        "app-9",
        "object-1",
    )


async def test_configurable_claim_names_fall_back_in_order(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, issuer_config(claims=ClaimNames(client_id=("client_id", "azp", "cid"))))
    context = await accepted(verifier, token(client_id=DROP, azp="from-azp", cid="from-cid"))
    assert context.client_id == "from-azp"


async def test_configured_patient_claim_name_governs_patient_context(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, issuer_config(claims=ClaimNames(patient=("launch_patient",))))
    text = token(scope="patient/*.rs", patient="123")
    assert await rejected(verifier, text) is Reason.PATIENT_CONTEXT_MISSING


@pytest.mark.parametrize(
    ("fhir_user", "expected"),
    [
        (f"{FHIR_BASE}/Practitioner/123", "Practitioner/123"),
        (f"{FHIR_BASE}/Patient/abc.1", "Patient/abc.1"),
        ("Practitioner/123", "Practitioner/123"),
        ("https://elsewhere.example.org/r4/Practitioner/123", "https://elsewhere.example.org/r4/Practitioner/123"),
        (f"{FHIR_BASE}evil/Practitioner/123", f"{FHIR_BASE}evil/Practitioner/123"),
        (f"{FHIR_BASE}/Observation/1", f"{FHIR_BASE}/Observation/1"),
        (f"{FHIR_BASE}/Practitioner/1/_history/2", f"{FHIR_BASE}/Practitioner/1/_history/2"),
    ],
    ids=["our-base", "our-base-patient", "relative", "other-base", "base-prefix", "not-a-user-type", "history"],
)
async def test_fhir_user_absolute_url_on_our_base_is_normalised_to_relative(
    verifier: TokenVerifier, fhir_user: str, expected: str
) -> None:
    context = await accepted(verifier, token(fhirUser=fhir_user))
    assert context.fhir_user == expected


async def test_fhir_user_is_normalised_when_base_url_has_trailing_slash(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, fhir_base_url=FHIR_BASE + "/")
    context = await accepted(verifier, token(fhirUser=f"{FHIR_BASE}/Practitioner/123"))
    assert context.fhir_user == "Practitioner/123"


# --- the verified-token cache ------------------------------------------------------------


async def test_second_verify_of_the_same_token_is_a_cache_hit(verifier: TokenVerifier, idp: FakeIdp) -> None:
    text = token()
    first = await accepted(verifier, text)
    second = await accepted(verifier, text)
    assert second is first
    assert (verifier.cache_hits, verifier.cache_misses) == (1, 1)
    assert idp.requests == [JWKS_URI]


async def test_rejected_tokens_are_not_cached(verifier: TokenVerifier) -> None:
    text = token(aud="https://elsewhere.example.org")
    for _ in range(3):
        assert await rejected(verifier, text) is Reason.TOKEN_AUDIENCE_MISMATCH
    assert (verifier.cache_hits, verifier.cache_misses) == (0, 3)


async def test_cache_size_zero_disables_the_cache(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, policy=TokenPolicy(clock_skew_seconds=SKEW, cache_size=0))
    text = token()
    await accepted(verifier, text)
    await accepted(verifier, text)
    assert (verifier.cache_hits, verifier.cache_misses) == (0, 2)


async def test_cached_token_lapses_at_exp_plus_skew(idp: FakeIdp) -> None:
    now = time.time()
    clock = ManualClock(now)
    verifier = build_verifier(idp, clock=clock, policy=TokenPolicy(clock_skew_seconds=SKEW, cache_max_ttl_seconds=300))
    exp = int(now) + 100  # exp + skew (≈ now+160) comes before now + cache_max_ttl (now+300)
    text = token(exp=exp)
    await accepted(verifier, text)
    clock.now = exp + SKEW - 0.5
    await accepted(verifier, text)
    assert verifier.cache_hits == 1
    clock.now = exp + SKEW
    await verifier.verify(text)
    assert (verifier.cache_hits, verifier.cache_misses) == (1, 2)


async def test_cached_token_lapses_at_cache_max_ttl(idp: FakeIdp) -> None:
    now = time.time()
    clock = ManualClock(now)
    verifier = build_verifier(idp, clock=clock, policy=TokenPolicy(clock_skew_seconds=SKEW, cache_max_ttl_seconds=30))
    text = token(exp=int(now) + 3600)
    await accepted(verifier, text)
    clock.now = now + 29.9
    await accepted(verifier, text)
    assert verifier.cache_hits == 1
    clock.now = now + 30
    await accepted(verifier, text)  # re-verified from scratch (still valid by its own exp)
    assert (verifier.cache_hits, verifier.cache_misses) == (1, 2)


@pytest.fixture
def jwt_time(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Freeze the clock PyJWT checks exp/nbf/iat against, at a ManualClock's time."""
    clock = ManualClock(time.time())

    class _FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Self:
            return cls.fromtimestamp(clock.now, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", _FrozenDatetime)
    return clock


async def test_expired_cached_token_is_not_returned(idp: FakeIdp, jwt_time: ManualClock) -> None:
    verifier = build_verifier(idp, clock=jwt_time)
    exp = int(jwt_time.now) + 10
    text = token(exp=exp)
    await accepted(verifier, text)
    jwt_time.now = exp + SKEW - 1
    await accepted(verifier, text)
    assert verifier.cache_hits == 1
    jwt_time.now = exp + SKEW + 1
    assert await rejected(verifier, text) is Reason.TOKEN_EXPIRED
    assert (verifier.cache_hits, verifier.cache_misses) == (1, 2)


async def test_token_cache_is_bounded(idp: FakeIdp) -> None:
    verifier = build_verifier(idp, policy=TokenPolicy(clock_skew_seconds=SKEW, cache_size=2))
    tokens = [token(jti=f"t{i}") for i in range(3)]
    for text in tokens:
        await accepted(verifier, text)
    await accepted(verifier, tokens[2])
    await accepted(verifier, tokens[1])
    assert verifier.cache_hits == 2
    await accepted(verifier, tokens[0])  # the least recently used entry was evicted
    assert (verifier.cache_hits, verifier.cache_misses) == (2, 4)


async def test_token_expired_by_the_verifier_clock_is_rejected(idp: FakeIdp) -> None:
    now = time.time()
    verifier = build_verifier(idp, clock=lambda: now + 3600)
    assert await rejected(verifier, token(exp=int(now) + 600)) is Reason.TOKEN_EXPIRED
