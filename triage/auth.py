"""Users, password hashes and signed session cookies for the web UI and API.

The worklist shows hospital data, so off loopback every request needs a user: a login form
sets a signed, expiring session cookie (HttpOnly, SameSite=Strict); API clients may send HTTP
Basic credentials instead.  Users live in a TOML file written by ``triage users add``:

    [users.alice]
    role = "radiologist"            # or "admin"
    password = "scrypt$16384$8$1$<salt>$<hash>"

Put TLS in front (a reverse proxy) when the UI is reachable from the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from triage.errors import ConfigError

ROLES = ("radiologist", "admin")
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str


def hash_password(password: str) -> str:
    """scrypt with a random salt, encoded with its parameters."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UserDirectory:
    """The users file, read once at start (restart the web process after changes)."""

    def __init__(self, entries: dict[str, tuple[str, str]]) -> None:
        self._entries = entries  # name -> (role, encoded hash)

    @classmethod
    def load(cls, path: Path | None) -> UserDirectory:
        """Read ``path``; no setting or no file gives an empty directory.

        Raises
        ------
        ConfigError
            Unreadable file, or an entry without a valid role or password hash.
        """
        if path is None:
            return cls({})
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls({})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"users file {path} is not valid TOML: {exc}") from None
        entries: dict[str, tuple[str, str]] = {}
        for name, entry in (data.get("users") or {}).items():
            role, encoded = entry.get("role"), entry.get("password")
            if role not in ROLES or not isinstance(encoded, str) or not encoded.startswith(
                    "scrypt$"):
                raise ConfigError(f"users file {path}: user {name!r} needs role "
                                  f"({' or '.join(ROLES)}) and a scrypt password hash")
            entries[name] = (role, encoded)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, name: str, password: str) -> User | None:
        entry = self._entries.get(name)
        if entry is None:
            verify_password(password, _DUMMY_HASH)  # same time for unknown users
            return None
        return User(name, entry[0]) if verify_password(password, entry[1]) else None

    def get(self, name: str) -> User | None:
        entry = self._entries.get(name)
        return User(name, entry[0]) if entry else None


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Create or replace ``name`` in the users file (written atomically, mode 0600)."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ConfigError("user names use letters, digits, '.', '_' and '-'")
    if len(password) < 10:
        raise ConfigError("passwords need at least 10 characters")
    users: dict[str, dict[str, str]] = {}
    if path.exists():
        users = dict(tomllib.loads(path.read_text()).get("users") or {})
    users[name] = {"role": role, "password": hash_password(password)}
    lines = ["# CT triage users: `triage users add NAME --role radiologist|admin`", ""]
    for user, entry in sorted(users.items()):
        lines += [f"[users.{json.dumps(user)}]", f"role = {json.dumps(entry['role'])}",
                  f"password = {json.dumps(entry['password'])}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    partial.replace(path)


class SessionSigner:
    """HMAC-signed session tokens: ``user|role|expiry|signature``."""

    def __init__(self, secret: bytes, *, max_age_s: float = 12 * 3600) -> None:
        self._secret = secret
        self.max_age_s = max_age_s

    def issue(self, user: User, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.max_age_s)
        payload = f"{_b64(user.name.encode())}|{user.role}|{expires}"
        return f"{payload}|{self._sign(payload)}"

    def verify(self, token: str, now: float | None = None) -> User | None:
        try:
            name, role, expires, signature = token.split("|")
        except ValueError:
            return None
        payload = f"{name}|{role}|{expires}"
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return None
        try:
            return User(_unb64(name).decode(), role)
        except (ValueError, binascii.Error):
            return None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


def load_secret(path: Path) -> bytes:
    """The signing secret in ``path``, created (random, mode 0600) on first use."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race
            return path.read_bytes()
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
        return secret


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
