"""Who is asking: console sessions, API bearer tokens, a trusted SSO header, or nobody.

How this works: with `http.auth`, a browser logs in with a username and password (a plain
`password` or an argon2 `password_hash`) and gets a random session cookie; the store keeps
only its SHA-256 with the user and the session's CSRF token. An API client sends
`Authorization: Bearer <token>`. Behind an SSO proxy, `trusted_user_header` names the user.
Without `http.auth`, a loopback listener serves everyone read-only; any other listener
serves no one (the console and API answer 401). Every form carries a CSRF token: the
session's, or for header and anonymous users a random token also set as a cookie
(double submit). Bearer requests carry no cookie and need none.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from alerter.config import AuthConfig
from alerter.store.console import ConsoleStore

SESSION_COOKIE = "alerter_session"
CSRF_COOKIE = "alerter_csrf"
SESSION_TTL = timedelta(hours=12)
Mode = Literal["auth", "loopback", "closed"]
Via = Literal["session", "token", "header", "anonymous"]

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's defaults) for `password_hash`."""
    return _HASHER.hash(password)


def hash_password_command() -> int:
    """`alerter hash-password`: one password on stdin (or typed, unechoed) -> its hash on stdout."""
    import getpass
    import sys

    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("alerter: no password on stdin (e.g. `alerter hash-password < password.txt`)", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def verify_hash(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _to_loopback(host: str) -> bool:
    """Whether a Host header names this machine (`localhost`, `127.0.0.1:8080`, `[::1]:8080`)."""
    return _names_loopback(host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0])


def is_loopback(listen: str) -> bool:
    return _names_loopback(listen.rpartition(":")[0].strip("[]"))


def _names_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    actor: str
    """Who, as the audit log records it."""
    via: Via
    csrf: str | None
    """The token forms must carry (None for bearer requests)."""
    can_write: bool
    new_csrf_cookie: bool = False
    """The CSRF cookie was just made: the response must set it."""


class Access:
    """Decides who a request comes from, from `http.auth` and the listen address."""

    def __init__(self, auth: AuthConfig | None, listen: str, store: ConsoleStore) -> None:
        self.auth = auth
        self.store = store
        self.mode: Mode = "auth" if auth is not None else ("loopback" if is_loopback(listen) else "closed")
        self._tokens = [t.get_secret_value().encode() for t in (auth.api_tokens if auth else [])]
        self._users = {u.username: u for u in (auth.users if auth else [])}

    @property
    def has_logins(self) -> bool:
        return bool(self._users)

    async def identify(self, headers: dict[str, str], cookies: dict[str, str], now: datetime) -> Identity | None:
        """The caller, or None when no valid credential came (401)."""
        if self.mode == "closed":
            return None
        bearer = headers.get("authorization", "")
        if bearer[:7].lower() == "bearer ":
            return self._bearer(bearer[7:].strip())
        if self.mode == "loopback":
            # a page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) reaches this
            # listener with its name in Host: only a request addressed to this machine is served
            if not _to_loopback(headers.get("host", "")):
                return None
            return _anonymous(cookies, "anonymous", can_write=False)
        assert self.auth is not None
        session_id = cookies.get(SESSION_COOKIE)
        if session_id:
            session = await self.store.session(token_hash(session_id), now)
            if session is not None and session.username in self._users:
                return Identity(session.username, "session", session.csrf, can_write=True)
        header = self.auth.trusted_user_header
        if header:
            user = headers.get(header.lower(), "").strip()
            if user:
                return _anonymous(cookies, user, can_write=True, via="header")
        return None

    def _bearer(self, given: str) -> Identity | None:
        raw = given.encode()
        found = None
        for i, token in enumerate(self._tokens):
            if hmac.compare_digest(raw, token):
                found = i
        if found is None:
            return None
        return Identity(f"api-token-{found + 1}", "token", None, can_write=self.mode == "auth")

    async def check_password(self, username: str, password: str) -> bool:
        """Constant work whether or not the user exists, and whichever way its password is kept
        (a plain one is checked after an argon2 check of the dummy hash, as an unknown user is:
        otherwise its fast answer would tell which usernames exist); argon2 runs off the event loop."""
        user = self._users.get(username)
        stored = user.password_hash.get_secret_value() if user and user.password_hash else _DUMMY_HASH
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_hash, stored, password)
        if user is not None and user.password is not None:
            return hmac.compare_digest(password.encode(), user.password.get_secret_value().encode())
        return ok and user is not None

    def knows(self, username: str) -> bool:
        """Whether `username` is a configured user's (a refused login logs no other: a password
        typed into the username box would be written in the log)."""
        return username in self._users

    async def open_session(self, username: str, now: datetime) -> str:
        """A new session for `username`; returns the cookie value."""
        session_id = secrets.token_urlsafe(32)
        await self.store.create_session(token_hash(session_id), username, secrets.token_urlsafe(24), now, SESSION_TTL)
        return session_id

    async def close_session(self, cookies: dict[str, str]) -> None:
        session_id = cookies.get(SESSION_COOKIE)
        if session_id:
            await self.store.end_session(token_hash(session_id))


def _anonymous(cookies: dict[str, str], actor: str, *, can_write: bool, via: Via = "anonymous") -> Identity:
    token = cookies.get(CSRF_COOKIE, "")
    if len(token) >= 20:
        return Identity(actor, via, token, can_write)
    return Identity(actor, via, secrets.token_urlsafe(24), can_write, new_csrf_cookie=True)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected).encode(), str(given).encode())
