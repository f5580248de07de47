"""Local development helpers: per-checkout secrets, dev users and their tokens.

Tokens are HS256 Supabase-style access tokens signed with the dev JWT secret
(kept in the data folder), so the local API verifies them exactly as it
verifies a legacy-secret Supabase project's tokens."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path

import jwt
import psycopg
from pydantic import BaseModel


class DevSecrets(BaseModel):
    jwt_secret: str
    worker_secret: str
    cron_secret: str


def dev_secrets(data_dir: Path) -> DevSecrets:
    """Load the checkout's dev secrets, creating them on first use."""
    path = data_dir / "dev-secrets.json"
    if path.exists():
        return DevSecrets.model_validate_json(path.read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    made = DevSecrets(
        jwt_secret=secrets.token_urlsafe(48), worker_secret=secrets.token_urlsafe(32), cron_secret=secrets.token_urlsafe(32)
    )
    path.write_text(made.model_dump_json(indent=2))
    path.chmod(0o600)
    return made


def ensure_user(conninfo: str, who: str) -> uuid.UUID:
    """A row in auth.users for `who` (a UUID or an email), created if missing."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            user_id = uuid.UUID(who)
            email = None
        except ValueError:
            user_id, email = None, who
        if email is not None:
            row = conn.execute("select id from auth.users where email = %s", (email,)).fetchone()
            if row:
                return row[0]
            user_id = uuid.uuid4()
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s) on conflict (id) do nothing", (user_id, email)
        )
        assert user_id is not None
        return user_id


def mint_token(jwt_secret: str, user_id: uuid.UUID, *, email: str | None = None, ttl_seconds: int = 7 * 24 * 3600,
               issuer: str | None = None) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "role": "authenticated",
        "aud": "authenticated",
        "iat": now,
        "exp": now + ttl_seconds,
        "email": email or "",
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


def describe(token: str) -> str:
    return json.dumps(jwt.decode(token, options={"verify_signature": False}), indent=2)
