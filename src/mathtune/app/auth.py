"""Who may use the app: users from a file, checked by Gradio's own login page (`launch(auth=...)`).

The users file (`mathtune app --auth FILE`), UTF-8, one user a line:

    # comments and blank lines are ignored
    ann:pbkdf2_sha256$200000$<salt hex>$<hash hex>     <- a hashed password (recommended)
    bob:correct horse battery staple                  <- or a plain one

The user name ends at the first `:` and may not be empty or contain spaces; everything after it is
the password (or its hash). Make a hashed line with `python -m mathtune.app.auth USER` (asks for the
password twice). A missing, unreadable or malformed file is refused before anything starts.

Served beyond loopback without a login, anyone on the network could rate as anyone and download
every rating; `check_exposure` refuses that unless `--insecure` is given.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import ipaddress
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from mathtune.errors import MathtuneError

HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 200_000  # ~0.1-0.2 s a login on one CPU core: once per session, not per request
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def hash_password(password: str, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def password_matches(secret: str, password: str) -> bool:
    """`secret` is a line's part after the user name: a `pbkdf2_sha256$...` hash or a plain password."""
    if not secret.startswith(HASH_SCHEME + "$"):
        return hmac.compare_digest(secret.encode(), password.encode())
    _, iterations, salt, digest = secret.split("$")
    computed = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(computed.hex(), digest)


def load_users(path: Path) -> dict[str, str]:
    """user -> secret from a users file; a MathtuneError naming the file (and line) for anything wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MathtuneError(f"the users file {path} does not exist (format: one 'user:password' a line)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MathtuneError(f"cannot read the users file {path}: {exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, secret = line.partition(":")
        where = f"the users file {path}, line {number}"
        if not colon or not name or not secret:
            raise MathtuneError(f"{where}: expected 'user:password' (or 'user:{HASH_SCHEME}$...')")
        if name != name.strip() or any(c.isspace() for c in name):
            raise MathtuneError(f"{where}: a user name may not contain spaces")
        if secret.startswith(HASH_SCHEME + "$") and not _well_formed_hash(secret):
            raise MathtuneError(f"{where}: a malformed {HASH_SCHEME} hash (make one with python -m mathtune.app.auth)")
        if name in users:
            raise MathtuneError(f"{where}: user '{name}' is listed twice")
        users[name] = secret
    if not users:
        raise MathtuneError(f"the users file {path} lists no users (format: one 'user:password' a line)")
    return users


def _well_formed_hash(secret: str) -> bool:
    parts = secret.split("$")
    if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
        return False
    try:
        return bool(bytes.fromhex(parts[2])) and len(bytes.fromhex(parts[3])) == 32
    except ValueError:
        return False


def login_checker(users: dict[str, str]) -> Callable[[str, str], bool]:
    """The `auth` callable for Gradio's `launch`: True when the user exists and the password matches."""

    def check(username: str, password: str) -> bool:
        secret = users.get(username)
        return secret is not None and password_matches(secret, password)

    return check


def is_loopback(host: str) -> bool:
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to any interface
        return False


def check_exposure(host: str, auth: Path | None, insecure: bool) -> None:
    if auth is None and not insecure and not is_loopback(host):
        raise MathtuneError(
            f"refusing to serve on {host} without a login: anyone who can reach it could rate as anyone and "
            "download every rating. Pass --auth USERS_FILE (see `mathtune app --help`), or --insecure to serve anyway"
        )


def main(argv: list[str]) -> int:
    """`python -m mathtune.app.auth USER`: print a users-file line with the password hashed."""
    if len(argv) != 1 or ":" in argv[0] or not argv[0].strip() or any(c.isspace() for c in argv[0]):
        print("usage: python -m mathtune.app.auth USER  (a user name without ':' or spaces)", file=sys.stderr)
        return 2
    password = getpass.getpass(f"password for {argv[0]}: ")
    if not password or password != getpass.getpass("again: "):
        print("mathtune: error: the passwords are empty or differ", file=sys.stderr)
        return 2
    print(f"{argv[0]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
