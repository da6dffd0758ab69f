#!/usr/bin/env python3
"""Mints demo tokens exactly as the backend issues them (protocol section 3), stdlib only.

  mint-token.py staff [--sub 2] [--tenant 1] [--branches 1] [--roles WAITER] [--ttl 43200]
      HS256 staff access JWT signed with $JWT_SECRET (iss/aud from $JWT_ISSUER/$JWT_AUDIENCE,
      default menu-ops / menu-ops-users).
  mint-token.py table [--tenant 1] [--branch 1] [--table 3] [--session 42] [--ttl 10800]
      HS256 diner table token (JWT form) signed with $TABLE_TOKEN_SECRET.

Prints the token alone on stdout.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_hs256(secret: str, claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def secret_from_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"mint-token: ${name} is not set")
    return value


def int_list(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def staff(args) -> str:
    now = int(time.time())
    claims = {
        "sub": str(args.sub),
        "tenant_id": args.tenant,
        "branch_ids": int_list(args.branches),
        "roles": [r.strip() for r in args.roles.split(",") if r.strip()],
        "email": args.email or f"user{args.sub}@example.test",
        "iss": os.environ.get("JWT_ISSUER", "menu-ops"),
        "aud": os.environ.get("JWT_AUDIENCE", "menu-ops-users"),
        "iat": now,
        "exp": now + args.ttl,
        "jti": secrets.token_hex(16),
        "type": "access",
    }
    return sign_hs256(secret_from_env("JWT_SECRET"), claims)


def table(args) -> str:
    now = int(time.time())
    claims = {
        "iss": "integrador:table",
        "aud": "integrador:diner",
        "type": "table",
        "tenant_id": args.tenant,
        "branch_id": args.branch,
        "table_id": args.table,
        "session_id": args.session,
        "iat": now,
        "exp": now + args.ttl,
    }
    return sign_hs256(secret_from_env("TABLE_TOKEN_SECRET"), claims)


def main() -> None:
    parser = argparse.ArgumentParser(description="Mint demo backend tokens.")
    sub = parser.add_subparsers(dest="kind", required=True)

    s = sub.add_parser("staff", help="staff access JWT (JWT_SECRET)")
    s.add_argument("--sub", type=int, default=2, help="user id (default 2)")
    s.add_argument("--tenant", type=int, default=1)
    s.add_argument("--branches", default="1", help="comma-separated branch ids")
    s.add_argument("--roles", default="WAITER", help="comma-separated roles")
    s.add_argument("--email", default="")
    s.add_argument("--ttl", type=int, default=12 * 3600, help="seconds (default 12 h)")
    s.set_defaults(mint=staff)

    t = sub.add_parser("table", help="diner table token, JWT form (TABLE_TOKEN_SECRET)")
    t.add_argument("--tenant", type=int, default=1)
    t.add_argument("--branch", type=int, default=1)
    t.add_argument("--table", type=int, default=3)
    t.add_argument("--session", type=int, default=42)
    t.add_argument("--ttl", type=int, default=3 * 3600, help="seconds (default 3 h)")
    t.set_defaults(mint=table)

    args = parser.parse_args()
    print(args.mint(args))


if __name__ == "__main__":
    main()
