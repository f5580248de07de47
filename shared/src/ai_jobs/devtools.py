"""Local development helpers: per-checkout secrets, dev users and their tokens,
and the record of a running `ai-jobs dev`/`serve` that other commands hand off to.

Tokens are HS256 Supabase-style access tokens signed with the dev JWT secret
(kept in the data folder), so the local API verifies them exactly as it
verifies a legacy-secret Supabase project's tokens."""

from __future__ import annotations

import json
import math
import os
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
    existing = existing_dev_secrets(data_dir)
    if existing is not None:
        return existing
    path = data_dir / "dev-secrets.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    made = DevSecrets(
        jwt_secret=secrets.token_urlsafe(48), worker_secret=secrets.token_urlsafe(32), cron_secret=secrets.token_urlsafe(32)
    )
    path.write_text(made.model_dump_json(indent=2))
    path.chmod(0o600)
    return made


def existing_dev_secrets(data_dir: Path) -> DevSecrets | None:
    """The dev secrets if `ai-jobs dev` (or `token`) has made them; never creates them."""
    path = data_dir / "dev-secrets.json"
    return DevSecrets.model_validate_json(path.read_text()) if path.exists() else None


def find_user(conninfo: str, email: str) -> uuid.UUID | None:
    """The auth.users id for `email`, or None; unlike ensure_user it creates nothing."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("select id from auth.users where email = %s", (email,)).fetchone()
    return row[0] if row else None


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
    """A dev access token valid for at least `ttl_seconds` (exp rounded up to the next
    whole second: expiry has no leeway, so `--ttl 1` must not mean a few milliseconds)."""
    now = time.time()
    claims = {
        "sub": str(user_id),
        "role": "authenticated",
        "aud": "authenticated",
        "iat": int(now),
        "exp": math.ceil(now + ttl_seconds),
        "email": email or "",
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


def describe(token: str) -> str:
    return json.dumps(jwt.decode(token, options={"verify_signature": False}), indent=2)


# -- the running server's record -----------------------------------------------------------

SERVER_RECORD = "server.json"


class ServerRecord(BaseModel):
    """Written by `ai-jobs dev`/`serve` while they run, so `ai-jobs enqueue`
    can ask them for a worker as POST /api/jobs does."""

    url: str
    pid: int
    database: str


def write_server_record(data_dir: Path, url: str, database: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SERVER_RECORD
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(ServerRecord(url=url, pid=os.getpid(), database=database).model_dump_json(indent=2))
    tmp.replace(path)  # readers never see half a file
    return path


def remove_server_record(data_dir: Path) -> None:
    """Remove the record if it is this process's (a newer server may have replaced it)."""
    path = data_dir / SERVER_RECORD
    record = read_server_record(data_dir, check_alive=False)
    if record is not None and record.pid == os.getpid():
        path.unlink(missing_ok=True)


def read_server_record(data_dir: Path, *, check_alive: bool = True) -> ServerRecord | None:
    """The running server's record; None when there is none, it is unreadable,
    or its process is gone (a server killed before it could remove it)."""
    try:
        record = ServerRecord.model_validate_json((data_dir / SERVER_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if check_alive and not _process_alive(record.pid):
        return None
    return record


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
