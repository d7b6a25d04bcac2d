"""DPoP proofs (RFC 9449 section 4.3): every check a resource server makes on the proof, one test per defect."""

from __future__ import annotations

import pytest

from smartgate.config.model import DpopConfig
from smartgate.core.reasons import Reason, Refusal
from smartgate.tokens.dpop import DpopVerifier, ReplayCache, jwk_thumbprint, normalise_http_uri
from tests.support.dpop import DROP, DpopKey, access_token_hash
from tests.unit.token_helpers import ManualClock

NOW = 1_750_000_000.0
SKEW = 60
URL = "https://fhir.example.org/r4/Observation"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJjbmYiOnt9fQ.c2lnbmF0dXJl"


@pytest.fixture
def key() -> DpopKey:
    return DpopKey()


@pytest.fixture
def verifier() -> DpopVerifier:
    return DpopVerifier(DpopConfig(algorithms=("ES256", "PS256")), SKEW, ManualClock(NOW))


def check(
    verifier: DpopVerifier,
    key: DpopKey,
    proof: str | None,
    *,
    method: str = "GET",
    url: str = URL,
    token: str = TOKEN,
    jkt: str | None = None,
) -> Refusal | None:
    return verifier.check(proof, method, url, token, jkt or key.thumbprint)


def reason_of(result: Refusal | None) -> Reason:
    assert isinstance(result, Refusal), "the proof was accepted"
    return result.reason


def proof(key: DpopKey, **kwargs: object) -> str:
    return key.proof("GET", URL, TOKEN, iat=NOW, **kwargs)  # type: ignore[arg-type]


def test_a_valid_proof_is_accepted(verifier: DpopVerifier, key: DpopKey) -> None:
    assert check(verifier, key, proof(key)) is None


def test_no_proof_is_dpop_proof_missing(verifier: DpopVerifier, key: DpopKey) -> None:
    assert reason_of(check(verifier, key, None)) is Reason.DPOP_PROOF_MISSING


@pytest.mark.parametrize("typ", ["jwt", "at+jwt", "JWT", "dpop", DROP, 7], ids=repr)
def test_a_proof_whose_typ_is_not_dpop_jwt_is_invalid(verifier: DpopVerifier, key: DpopKey, typ: object) -> None:
    assert reason_of(check(verifier, key, proof(key, header={"typ": typ}))) is Reason.DPOP_PROOF_INVALID


def test_a_proof_with_alg_none_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    unsigned = proof(key, header={"alg": "none"}, signature=b"")
    assert reason_of(check(verifier, key, unsigned)) is Reason.DPOP_PROOF_INVALID


def test_a_proof_signed_with_hmac_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    """HS256 keyed with the public jwk's x coordinate: the algorithm-confusion attempt."""
    forged = proof(key, header={"alg": "HS256"}, hmac_key=key.public_jwk["x"].encode())
    assert reason_of(check(verifier, key, forged)) is Reason.DPOP_PROOF_INVALID


def test_a_proof_algorithm_outside_the_configured_allowlist_is_invalid(key: DpopKey) -> None:
    only_ps256 = DpopVerifier(DpopConfig(algorithms=("PS256",)), SKEW, ManualClock(NOW))
    assert reason_of(check(only_ps256, key, proof(key))) is Reason.DPOP_PROOF_INVALID


def test_a_proof_whose_alg_does_not_fit_its_jwk_is_invalid(key: DpopKey) -> None:
    verifier = DpopVerifier(DpopConfig(algorithms=("ES256", "ES384")), SKEW, ManualClock(NOW))
    assert reason_of(check(verifier, key, proof(key, header={"alg": "ES384"}))) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "k"])
def test_a_proof_whose_jwk_holds_private_key_material_is_invalid(
    verifier: DpopVerifier, key: DpopKey, member: str
) -> None:
    jwk = {**key.public_jwk, member: key.private_jwk["d"]}
    assert reason_of(check(verifier, key, proof(key, header={"jwk": jwk}))) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize(
    "jwk",
    [DROP, "a string", {"kty": "oct", "kid": "x"}, {"kty": "EC", "crv": "P-256"}],
    ids=["absent", "string", "symmetric", "incomplete"],
)
def test_a_proof_without_a_usable_public_jwk_is_invalid(verifier: DpopVerifier, key: DpopKey, jwk: object) -> None:
    assert reason_of(check(verifier, key, proof(key, header={"jwk": jwk}))) is Reason.DPOP_PROOF_INVALID


def test_a_proof_with_a_bad_signature_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    assert reason_of(check(verifier, key, proof(key, signature=bytes(64)))) is Reason.DPOP_PROOF_INVALID


def test_a_proof_signed_by_another_key_than_its_jwk_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    thief = DpopKey()
    forged = thief.proof("GET", URL, TOKEN, iat=NOW, header={"jwk": key.public_jwk})
    assert reason_of(check(verifier, key, forged)) is Reason.DPOP_PROOF_INVALID


def test_a_proof_whose_jwk_is_not_the_tokens_cnf_jkt_is_a_binding_mismatch(
    verifier: DpopVerifier, key: DpopKey
) -> None:
    """A thief with the token but not the key signs a valid proof with a key of its own."""
    thief = DpopKey()
    result = check(verifier, key, thief.proof("GET", URL, TOKEN, iat=NOW), jkt=key.thumbprint)
    assert reason_of(result) is Reason.DPOP_BINDING_MISMATCH


@pytest.mark.parametrize("htm", ["POST", "get", "DELETE", DROP])
def test_a_proof_for_another_method_is_invalid(verifier: DpopVerifier, key: DpopKey, htm: object) -> None:
    assert reason_of(check(verifier, key, proof(key, claims={"htm": htm}))) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize(
    "htu",
    [
        "https://evil.example.org/r4/Observation",
        "https://fhir.example.org/r4/Patient",
        "https://fhir.example.org/r4/Observation/123",
        "https://fhir.example.org/Observation",
        "https://fhir.example.org/r4/Observation?patient=123",
        "https://fhir.example.org/r4/Observation#top",
        "http://fhir.example.org/r4/Observation",
        "https://fhir.example.org:8443/r4/Observation",
        "https://user@fhir.example.org/r4/Observation",
        "/r4/Observation",
        DROP,
    ],
    ids=[
        "other-host",
        "other-type",
        "other-path",
        "no-base-path",
        "query-included",
        "fragment",
        "other-scheme",
        "other-port",
        "user-info",
        "relative",
        "absent",
    ],
)
def test_a_proof_for_another_url_is_invalid(verifier: DpopVerifier, key: DpopKey, htu: object) -> None:
    assert reason_of(check(verifier, key, proof(key, claims={"htu": htu}))) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize(
    "htu",
    [
        "HTTPS://FHIR.Example.ORG/r4/Observation",
        "https://fhir.example.org:443/r4/Observation",
        "https://fhir.example.org/r4/%4Fbservation",
        "https://fhir.example.org/r4/x/../Observation",
        "https://fhir.example.org/r4/./Observation",
    ],
)
def test_htu_is_compared_after_rfc_3986_normalisation(verifier: DpopVerifier, key: DpopKey, htu: str) -> None:
    assert check(verifier, key, proof(key, claims={"htu": htu})) is None


def test_the_request_url_is_normalised_too(verifier: DpopVerifier, key: DpopKey) -> None:
    assert check(verifier, key, proof(key), url="https://fhir.example.org:443/r4/%4Fbservation") is None


def test_percent_encodings_of_reserved_characters_are_not_decoded() -> None:
    assert normalise_http_uri("https://h/a%2fb") == "https://h/a%2Fb"
    assert normalise_http_uri("https://h/a%2fb") != normalise_http_uri("https://h/a/b")
    assert normalise_http_uri("https://h/a%zz") is None


@pytest.mark.parametrize("offset", [-(60 + SKEW) - 1, -3600, SKEW + 1, 3600])
def test_a_stale_or_future_proof_is_invalid(verifier: DpopVerifier, key: DpopKey, offset: int) -> None:
    stale = key.proof("GET", URL, TOKEN, iat=NOW + offset)
    assert reason_of(check(verifier, key, stale)) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize("offset", [-(60 + SKEW), -30, 0, SKEW])
def test_a_proof_within_the_iat_window_and_skew_is_accepted(verifier: DpopVerifier, key: DpopKey, offset: int) -> None:
    assert check(verifier, key, key.proof("GET", URL, TOKEN, iat=NOW + offset)) is None


@pytest.mark.parametrize("iat", ["1750000000", True, None], ids=["string", "bool", "null"])
def test_a_proof_whose_iat_is_not_a_number_is_invalid(verifier: DpopVerifier, key: DpopKey, iat: object) -> None:
    assert reason_of(check(verifier, key, proof(key, claims={"iat": iat}))) is Reason.DPOP_PROOF_INVALID


def test_a_proof_without_ath_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    assert reason_of(check(verifier, key, proof(key, claims={"ath": DROP}))) is Reason.DPOP_PROOF_INVALID


def test_a_proof_for_another_access_token_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    other = proof(key, claims={"ath": access_token_hash(TOKEN + "x")})
    assert reason_of(check(verifier, key, other)) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize("jti", [DROP, "", 42, "x" * 257], ids=["absent", "empty", "number", "too-long"])
def test_a_proof_without_a_usable_jti_is_invalid(verifier: DpopVerifier, key: DpopKey, jti: object) -> None:
    assert reason_of(check(verifier, key, proof(key, claims={"jti": jti}))) is Reason.DPOP_PROOF_INVALID


def test_a_replayed_proof_is_refused(verifier: DpopVerifier, key: DpopKey) -> None:
    once = proof(key)
    assert check(verifier, key, once) is None
    assert reason_of(check(verifier, key, once)) is Reason.DPOP_PROOF_REPLAYED


def test_a_new_proof_reusing_a_jti_is_a_replay(verifier: DpopVerifier, key: DpopKey) -> None:
    assert check(verifier, key, proof(key, claims={"jti": "j-1"})) is None
    again = key.proof("GET", URL, TOKEN, iat=NOW + 1, claims={"jti": "j-1"})
    assert reason_of(check(verifier, key, again)) is Reason.DPOP_PROOF_REPLAYED


def test_two_dpop_headers_joined_by_envoy_are_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    """Envoy hands repeated headers over joined with a comma; RFC 9449 section 4.3 allows one proof."""
    both = f"{proof(key)},{proof(key)}"
    assert reason_of(check(verifier, key, both)) is Reason.DPOP_PROOF_INVALID


@pytest.mark.parametrize("text", ["not a jws", "a.b", "a.b.c.d.e", "x" * 9000], ids=["text", "two", "jwe", "huge"])
def test_a_proof_that_is_not_one_compact_jws_is_invalid(verifier: DpopVerifier, key: DpopKey, text: str) -> None:
    assert reason_of(check(verifier, key, text)) is Reason.DPOP_PROOF_INVALID


def test_a_proof_with_a_crit_header_is_invalid(verifier: DpopVerifier, key: DpopKey) -> None:
    assert reason_of(check(verifier, key, proof(key, header={"crit": ["exp"]}))) is Reason.DPOP_PROOF_INVALID


def test_an_invalid_proof_takes_no_place_in_the_replay_cache(verifier: DpopVerifier, key: DpopKey) -> None:
    check(verifier, key, proof(key, claims={"htm": "POST"}))
    check(verifier, key, DpopKey().proof("GET", URL, TOKEN, iat=NOW))  # binding mismatch
    assert len(verifier.replay_cache) == 0


def test_a_full_replay_cache_refuses_new_proofs_rather_than_forget_one(key: DpopKey) -> None:
    small = DpopVerifier(DpopConfig(replay_cache_size=2), SKEW, ManualClock(NOW))
    assert check(small, key, proof(key)) is None
    assert check(small, key, proof(key)) is None
    full = check(small, key, proof(key))
    assert reason_of(full) is Reason.DPOP_REPLAY_CACHE_FULL and Reason.DPOP_REPLAY_CACHE_FULL.http_status == 503


def test_a_remembered_jti_is_forgotten_once_no_proof_with_it_could_be_accepted() -> None:
    cache = ReplayCache(max_entries=10, lifetime_seconds=180)
    assert cache.remember(b"k", NOW) is True
    assert cache.remember(b"k", NOW + 179) is False
    assert cache.remember(b"other", NOW + 180) is True
    assert len(cache) == 1  # b"k" expired at NOW + 180


def test_the_replay_cache_outlives_the_whole_acceptance_window_of_a_proof(key: DpopKey) -> None:
    """A proof dated skew ahead stays acceptable until iat + window + skew: the jti is kept that long."""
    clock = ManualClock(NOW)
    verifier = DpopVerifier(DpopConfig(iat_window_seconds=60), SKEW, clock)
    early = key.proof("GET", URL, TOKEN, iat=NOW + SKEW)
    assert verifier.check(early, "GET", URL, TOKEN, key.thumbprint) is None
    clock.advance(60 + 2 * SKEW - 1)
    result = verifier.check(early, "GET", URL, TOKEN, key.thumbprint)
    assert reason_of(result) is Reason.DPOP_PROOF_REPLAYED


def test_the_jwk_thumbprint_is_rfc_7638s(key: DpopKey) -> None:
    assert jwk_thumbprint({**key.public_jwk, "kid": "ignored", "use": "sig"}) == key.thumbprint
    assert jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "a"}) is None
