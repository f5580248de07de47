"""Verify Supabase access tokens locally: asymmetric keys from the project's
JWKS (fetched once and cached) or the legacy HS256 JWT secret. No network
round trip per request; expiry, audience and role are checked."""

from __future__ import annotations

import hmac
from typing import Any
from uuid import UUID

import jwt
from pydantic import BaseModel, ConfigDict

from ai_jobs.http.problems import Problem

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
SYMMETRIC_ALGORITHMS = ("HS256",)


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
        leeway_seconds: int = 30,
        jwks_cache_seconds: int = 600,
        jwks_timeout_seconds: float = 2.5,
    ) -> None:
        if not jwt_secret and not jwks_url:
            raise ValueError("token verification needs SUPABASE_JWT_SECRET or a JWKS URL")
        self._secret = jwt_secret
        self._jwks = jwt.PyJWKClient(
            jwks_url, cache_keys=True, lifespan=jwks_cache_seconds, timeout=jwks_timeout_seconds
        ) if jwks_url else None
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway_seconds

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthorized(f"malformed access token: {exc}") from None
        alg = header.get("alg")
        if alg in SYMMETRIC_ALGORITHMS and self._secret:
            key: Any = self._secret
        elif alg in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            try:
                key = self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError as exc:
                # the token may be fine: we cannot check it now (503, not 401)
                raise Problem(503, "auth_keys_unavailable", f"could not fetch the project's signing keys: {exc}") from None
            except jwt.PyJWKClientError as exc:
                raise unauthorized(f"no signing key for this token: {exc}") from None
        else:
            raise unauthorized(f"unsupported token algorithm {alg!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("access token expired; refresh the session") from None
        except jwt.InvalidAudienceError:
            raise unauthorized(f"access token audience must be {self.audience!r}") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid access token: {exc}") from None
        if claims.get("role") != "authenticated":
            raise unauthorized("access token must belong to a signed-in user (role 'authenticated')")
        try:
            user_id = UUID(str(claims["sub"]))
        except ValueError:
            raise unauthorized("access token subject is not a user id") from None
        return Principal(user_id=user_id, role=claims["role"], claims=claims)


def require_secret(authorization: str | None, secret: str | None, name: str) -> None:
    """Constant-time check of `Authorization: Bearer <secret>` for internal endpoints."""
    if not secret:
        raise unauthorized(f"{name} is not configured on this deployment; internal endpoint disabled")
    presented = bearer_token(authorization)
    if not hmac.compare_digest(presented.encode(), secret.encode()):
        raise unauthorized(f"wrong {name}")
