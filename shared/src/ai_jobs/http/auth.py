"""Verify Supabase access tokens locally: asymmetric keys from the project's
JWKS (the key set cached for AI_JOBS_JWKS_CACHE_SECONDS, so a key removed from
it stops working within that time) or the legacy HS256 JWT secret. No network
round trip per request; the token's `alg` must match its key, and expiry,
audience, role and (unless allowed) Supabase anonymous sign-ins are checked.
Expiry has no grace: a token is refused from its `exp` second on, as `ai-jobs token
--ttl` promises. Only `nbf` and `iat` may lie up to CLOCK_SKEW_SECONDS in the
future (the issuer's clock ahead of ours).

PyJWT (and the `cryptography` it loads for asymmetric keys) is imported when a
verifier is built, on the first authenticated request, not when the app is."""

from __future__ import annotations

import hmac
import math
import time
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from ai_jobs.http.problems import Problem

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
SYMMETRIC_ALGORITHMS = ("HS256",)
# An unknown `kid` refetches the key set at most this often (and never more often
# than the cache lifetime), so random kids cannot make us hammer the JWKS endpoint.
JWKS_REFETCH_SECONDS = 30.0
# How far in the future a token's `nbf` and `iat` may be (PostgREST's allowedSkewSeconds,
# which PostgREST also grants past `exp`; we do not: a token expires when it says).
# The local Supabase edge uses the same value.
CLOCK_SKEW_SECONDS = 30


class Principal(BaseModel):
    """The authenticated caller: the row owner for everything they do."""

    model_config = ConfigDict(frozen=True)

    user_id: UUID
    role: str
    claims: dict[str, Any]


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="ai-jobs"'})


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise unauthorized("missing Authorization: Bearer <access token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Authorization must be 'Bearer <access token>'")
    return token.strip()


class TokenVerifier:
    def __init__(
        self,
        *,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        audience: str = "authenticated",
        issuer: str | None = None,
        clock_skew_seconds: int = CLOCK_SKEW_SECONDS,
        jwks_cache_seconds: float = 600,
        jwks_timeout_seconds: float = 2.5,
        jwks_refetch_seconds: float = JWKS_REFETCH_SECONDS,
        allow_anonymous: bool = False,
    ) -> None:
        if not jwt_secret and not jwks_url:
            raise ValueError("token verification needs SUPABASE_JWT_SECRET or a JWKS URL")
        import jwt

        self._secret = jwt_secret
        # The key *set* is cached with a lifespan; no per-key cache (cache_keys=True
        # would keep every key ever seen, even after it left the JWKS).
        self._jwks = jwt.PyJWKClient(
            jwks_url,
            cache_keys=False,
            cache_jwk_set=True,
            lifespan=jwks_cache_seconds,
            timeout=jwks_timeout_seconds,
            cooldown_duration=min(jwks_refetch_seconds, jwks_cache_seconds),
        ) if jwks_url else None
        self.audience = audience
        self.issuer = issuer
        self.clock_skew = clock_skew_seconds
        self.allow_anonymous = allow_anonymous

    def _signing_key(self, token: str, alg: str) -> Any:
        """The JWKS key the token names, which must be for the token's own `alg`."""
        assert self._jwks is not None
        import jwt

        try:
            jwk = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            # the token may be fine: we cannot check it now (503, not 401)
            raise Problem(503, "auth_keys_unavailable", f"could not fetch the project's signing keys: {exc}") from None
        except ValueError as exc:  # the endpoint answered something that is not JSON
            raise Problem(503, "auth_keys_unavailable", f"the project's signing keys are unreadable: {exc}") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"no signing key for this token: {exc}") from None
        if jwk.algorithm_name != alg:
            # e.g. an RS256 header naming an EC key: never let the header pick how a key is used
            raise unauthorized(f"token algorithm {alg!r} does not match its key's algorithm {jwk.algorithm_name!r}")
        return jwk

    def verify(self, token: str) -> Principal:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthorized(f"malformed access token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise unauthorized(f"unsupported token algorithm {alg!r}")
        if alg in SYMMETRIC_ALGORITHMS and self._secret:
            key: Any = self._secret
        elif alg in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            key = self._signing_key(token, alg)
        else:
            raise unauthorized(f"unsupported token algorithm {alg!r}")
        try:
            # PyJWT's leeway would apply to exp as well: it covers nbf/iat here, and exp
            # is checked below with none.
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.clock_skew,
                options={"require": ["exp", "sub", "aud"], "verify_exp": False},
            )
        except jwt.ImmatureSignatureError as exc:
            raise unauthorized(f"access token not valid yet: {exc}") from None
        except jwt.InvalidAudienceError:
            raise unauthorized(f"access token audience must be {self.audience!r}") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid access token: {exc}") from None
        except (TypeError, ValueError) as exc:  # a key PyJWT cannot use for this token: still the token's fault
            raise unauthorized(f"invalid access token: {type(exc).__name__}") from None
        check_expiry(claims)
        if claims.get("role") != "authenticated":
            raise unauthorized("access token must belong to a signed-in user (role 'authenticated')")
        if claims.get("is_anonymous") is True and not self.allow_anonymous:
            # Supabase anonymous sign-ins get role 'authenticated' too
            raise Problem(403, "anonymous_not_allowed",
                          "anonymous users may not use this API; sign in (or set AI_JOBS_ALLOW_ANONYMOUS=1)")
        try:
            user_id = UUID(str(claims["sub"]))
        except ValueError:
            raise unauthorized("access token subject is not a user id") from None
        return Principal(user_id=user_id, role=claims["role"], claims=claims)


def check_expiry(claims: dict[str, Any], now: float | None = None) -> None:
    """Refuse a token whose `exp` (a JSON number of seconds) is now or past: no leeway."""
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        raise unauthorized("invalid access token: exp must be a number of seconds")
    if exp <= (time.time() if now is None else now):
        raise unauthorized("access token expired; refresh the session")


def require_secret(authorization: str | None, secret: str | None, name: str) -> None:
    """Constant-time check of `Authorization: Bearer <secret>` for internal endpoints."""
    if not secret:
        raise unauthorized(f"{name} is not configured on this deployment; internal endpoint disabled")
    presented = bearer_token(authorization)
    if not hmac.compare_digest(presented.encode(), secret.encode()):
        raise unauthorized(f"wrong {name}")
