"""Token verification: asymmetric keys from a JWKS (served on loopback, as
Supabase publishes them) fetched once and cached, and the legacy HS256 secret."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ai_jobs.http.auth import TokenVerifier, require_secret
from ai_jobs.http.problems import Problem

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(public_key, kid: str, alg: str) -> dict:  # type: ignore[no-untyped-def]
    algorithm = ECAlgorithm if alg == "ES256" else RSAAlgorithm
    data = algorithm.to_jwk(public_key, as_dict=True)
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture()
def jwks_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    body = json.dumps({"keys": [jwk(EC_KEY.public_key(), "ec-1", "ES256"), jwk(RSA_KEY.public_key(), "rsa-1", "RS256")]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/auth/v1/.well-known/jwks.json", hits
    server.shutdown()


def claims(**overrides: object) -> dict:
    now = int(time.time())
    base = {"sub": str(uuid.uuid4()), "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 600,
            "iss": "https://proj.supabase.co/auth/v1"}
    base.update(overrides)
    return base


def test_asymmetric_tokens_verified_with_cached_jwks(jwks_server) -> None:
    url, hits = jwks_server
    verifier = TokenVerifier(jwks_url=url, issuer="https://proj.supabase.co/auth/v1")
    for _ in range(20):
        for key, kid, alg in ((EC_KEY, "ec-1", "ES256"), (RSA_KEY, "rsa-1", "RS256")):
            c = claims()
            token = jwt.encode(c, key, algorithm=alg, headers={"kid": kid})
            assert str(verifier.verify(token).user_id) == c["sub"]
    assert hits == ["/auth/v1/.well-known/jwks.json"]  # one fetch for 40 verifications


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: jwt.encode(claims(), OTHER_EC_KEY, algorithm="ES256", headers={"kid": "ec-1"}), id="wrong-key"),
        pytest.param(lambda: jwt.encode(claims(), OTHER_EC_KEY, algorithm="ES256", headers={"kid": "unknown"}), id="unknown-kid"),
        pytest.param(lambda: jwt.encode(claims(iss="https://evil.example/auth/v1"), EC_KEY, algorithm="ES256",
                                        headers={"kid": "ec-1"}), id="wrong-issuer"),
        pytest.param(lambda: jwt.encode(claims(exp=int(time.time()) - 120), EC_KEY, algorithm="ES256",
                                        headers={"kid": "ec-1"}), id="expired"),
        pytest.param(lambda: jwt.encode(claims(), "shared-secret-shared-secret-shared!", algorithm="HS256"),
                     id="hs256-without-secret-configured"),
        pytest.param(lambda: jwt.encode(claims(), None, algorithm="none"), id="alg-none"),
    ],
)
def test_bad_asymmetric_tokens_rejected(jwks_server, make) -> None:
    url, _ = jwks_server
    verifier = TokenVerifier(jwks_url=url, issuer="https://proj.supabase.co/auth/v1")
    with pytest.raises(Problem) as err:
        verifier.verify(make())
    assert err.value.status == 401


def test_legacy_hs256_secret() -> None:
    secret = "legacy-jwt-secret-with-enough-length-000"
    verifier = TokenVerifier(jwt_secret=secret)
    c = claims()
    assert str(verifier.verify(jwt.encode(c, secret, algorithm="HS256")).user_id) == c["sub"]
    with pytest.raises(Problem):
        verifier.verify(jwt.encode(claims(aud="somebody-else"), secret, algorithm="HS256"))
    with pytest.raises(Problem):  # an RS256 token when no JWKS is configured
        verifier.verify(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"}))


def test_expiry_has_no_leeway_but_nbf_and_iat_allow_clock_skew() -> None:
    """`exp` is final to the second (`ai-jobs token --ttl 1` is refused 2 s later);
    only `nbf`/`iat` may be up to CLOCK_SKEW_SECONDS ahead (the issuer's clock)."""
    from ai_jobs.http.auth import CLOCK_SKEW_SECONDS

    secret = "legacy-jwt-secret-with-enough-length-000"
    verifier = TokenVerifier(jwt_secret=secret)
    now = int(time.time())
    for expired in (now - 1, now - CLOCK_SKEW_SECONDS + 1, now):
        with pytest.raises(Problem) as err:
            verifier.verify(jwt.encode(claims(exp=expired), secret, algorithm="HS256"))
        assert err.value.status == 401 and "expired" in err.value.detail
    for ahead in ({"nbf": now + 10}, {"iat": now + 10}, {"nbf": now + 10, "iat": now + 10}):
        c = claims(**ahead)
        assert str(verifier.verify(jwt.encode(c, secret, algorithm="HS256")).user_id) == c["sub"]
    for too_far in ({"nbf": now + CLOCK_SKEW_SECONDS + 30}, {"iat": now + CLOCK_SKEW_SECONDS + 30}):
        with pytest.raises(Problem) as err:
            verifier.verify(jwt.encode(claims(**too_far), secret, algorithm="HS256"))
        assert err.value.status == 401 and "not valid yet" in err.value.detail
    for bad in ("soon", None, True):
        with pytest.raises(Problem) as err:
            verifier.verify(jwt.encode(claims(exp=bad), secret, algorithm="HS256"))
        assert err.value.status == 401


def test_a_dev_token_lasts_its_whole_ttl_and_not_after() -> None:
    """`ai-jobs token --ttl 1`: valid for (at least) 1 s, refused 2 s later. exp used to
    be int(now) + ttl, so a --ttl 1 token minted late in a second lived milliseconds."""
    from ai_jobs.devtools import mint_token

    secret = "legacy-jwt-secret-with-enough-length-000"
    verifier = TokenVerifier(jwt_secret=secret)
    user = uuid.uuid4()
    minted_at = time.time()
    token = mint_token(secret, user, ttl_seconds=1)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert minted_at + 1 <= exp <= minted_at + 2
    assert verifier.verify(token).user_id == user
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(Problem) as err:
        verifier.verify(token)
    assert err.value.status == 401 and "expired" in err.value.detail


def test_require_secret_is_strict() -> None:
    require_secret("Bearer s3cret", "s3cret", "WORKER_SECRET")
    for header in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret"):
        with pytest.raises(Problem):
            require_secret(header, "s3cret", "WORKER_SECRET")
    with pytest.raises(Problem, match="not configured"):
        require_secret("Bearer anything", None, "WORKER_SECRET")
