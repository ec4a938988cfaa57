"""Who may use the lab and act on its runs: the lab's passwords and login mode, owner names, the
PINs that claim them, and the administrator.

A run belongs to an owner name, and only that owner may stop or delete it. The command line is
the machine's own user: it acts as the administrator (`ADMIN`, any run), and so does the
Instructor page. A dashboard session acts as a name only once it has proven it:

    claim = sign_in(store, "ana", "4711")   # claims "ana" if nobody has; else checks its PIN
    holds(store, claim)                      # still valid? (not once the instructor set a new PIN)
    set_pin(store, "ana", "9090")            # the instructor: a new PIN; the old one stops working
    oidc_owner({"email": "ana@school.edu"})  # behind a login provider its identity is the name

Names are compared casefolded ("Ana" is "ana"); "cli", "admin", "administrator", "instructor"
and every "guest-..." name are reserved (the command line's default owner, the old dashboard's
guest names), so no session can claim them. A PIN is stored only as a salted scrypt hash.
Attempts are counted per name in the store, before the PIN is checked (parallel guesses cannot
slip past the count): after FREE_ATTEMPTS wrong ones in a row the name is locked for LOCK_S
seconds, twice as long after each further wrong one, up to MAX_LOCK_S; a right PIN resets it.

Before any name, a session may need the lab's password (checked by ui_common's access gate):

    ASYMVIZ_PASSWORD                    one password for the whole instance
    ASYMVIZ_INSTRUCTOR_PASSWORD         the Instructor page's password (unset: the page is disabled)
    ASYMVIZ_AUTH=oidc                   log in with Streamlit's st.login instead (README)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from typing import Mapping

from asymviz.errors import AsymvizError, ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,39}$")
LOGIN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,99}$")  # a provider's e-mail or user name
RESERVED = frozenset({"cli", "admin", "administrator", "instructor"})
GUEST_PREFIX = "guest-"
PIN_MIN, PIN_MAX = 4, 32
FREE_ATTEMPTS = 5  # attempts in a row before a name is locked ...
LOCK_S = 30.0  # ... for this long, doubling with each further wrong PIN ...
MAX_LOCK_S = 3600.0  # ... up to an hour: a 4-digit PIN then takes months of guessing
KDF = "scrypt:16384:8:1"  # n, r, p: about 16 MiB and some 50 ms per PIN checked
SALT_BYTES = 16


class Administrator:
    """What an administrator (the command line, the Instructor page) passes as `owner`: it may
    act on any run. ADMIN is its one instance; no typed name or login can equal it."""

    def __repr__(self) -> str:
        return "ADMIN"

    def __str__(self) -> str:
        return "an administrator"


ADMIN = Administrator()


class SignInError(AsymvizError):
    """A name or PIN that cannot sign a session in (the sentence says why and what to do)."""


class NotOwner(AsymvizError):
    """Someone other than a run's owner (or an administrator) tried to act on it."""


# ----------------------------------------------------------------------------- the lab's passwords

def password_token(password: str) -> str:
    """What a session keeps once it has entered `password` (never the password itself)."""
    return hashlib.sha256(b"asymviz-lab\0" + password.encode()).hexdigest()


def password_matches(entered: str, expected: str) -> bool:
    """Constant-time comparison (of digests, so the length does not leak either)."""
    return hmac.compare_digest(password_token(entered or ""), password_token(expected))


def auth_mode() -> str:
    """'oidc' when ASYMVIZ_AUTH=oidc (Streamlit's st.login), else 'password' (maybe none)."""
    mode = os.environ.get("ASYMVIZ_AUTH", "").strip().lower()
    if mode not in ("", "password", "oidc"):
        raise ConfigError(f"ASYMVIZ_AUTH must be 'oidc' or unset, got {mode!r}.")
    return mode or "password"


# ----------------------------------------------------------------------------- owner names

def normalize(name: str) -> str:
    """The name as it is kept: outer spaces dropped, inner runs of spaces made one."""
    return " ".join(str(name or "").split())


def name_key(name: str) -> str:
    """What two spellings of one name share: "Ana " and "ana" are the same name."""
    return normalize(name).casefold()


def reserved(name: str) -> bool:
    """Whether no session may act as this name (the command line's and the guests' names)."""
    key = name_key(name)
    return key in RESERVED or key.startswith(GUEST_PREFIX)


def check_name(name: str) -> str:
    """The normalized name, or SignInError with the rule it breaks."""
    name = normalize(name)
    if not NAME_PATTERN.match(name):
        raise SignInError("A name must be 1 to 40 letters, digits, spaces or . _ @ -, starting with a letter "
                          "or digit.")
    if reserved(name):
        raise SignInError(f"The name {name!r} is reserved; choose another (names starting with 'guest-', and "
                          f"{', '.join(sorted(RESERVED))}, are not available).")
    return name


def check_pin(pin: str) -> str:
    """The PIN, or SignInError if it is too short or too long."""
    if not isinstance(pin, str) or not PIN_MIN <= len(pin) <= PIN_MAX or not pin.strip():
        raise SignInError(f"A PIN must be {PIN_MIN} to {PIN_MAX} characters (digits are fine); it is what "
                          "proves the name is yours.")
    return pin


def derive(pin: str, salt: bytes, kdf: str = KDF) -> bytes:
    """The stored form of a PIN: scrypt(PIN, salt) with the parameters `kdf` names."""
    algorithm, *params = kdf.split(":")
    if algorithm != "scrypt" or len(params) != 3:
        raise AsymvizError(f"This PIN was stored with an unknown method ({kdf}); ask your instructor to set a "
                           "new one.")
    n, r, p = map(int, params)
    return hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n + (1 << 20),
                          dklen=32)


def locked_for(attempts: int) -> float:
    """Seconds a name is locked after this many PIN attempts in a row without a right one."""
    if attempts < FREE_ATTEMPTS:
        return 0.0
    return min(MAX_LOCK_S, LOCK_S * 2.0 ** min(attempts - FREE_ATTEMPTS, 20))


def sign_in(store, name: str, pin: str) -> dict:
    """Prove a name: claim it with this PIN if nobody has, else check the PIN (one counted
    attempt). {"name" (as claimed), "stamp" (which PIN was proven, for holds), "claimed" (new)};
    SignInError with one sentence for a bad name or PIN, a wrong PIN or a locked name."""
    name, pin = check_name(name), check_pin(pin)
    key = name_key(name)
    if store.owner_claim(key) is None:
        salt = secrets.token_bytes(SALT_BYTES)
        if store.add_owner_claim(key, name, KDF, salt, derive(pin, salt)):
            return {"name": name, "stamp": salt.hex(), "claimed": True}
    wait, claim = store.count_pin_attempt(key, locked_for)
    if wait > 0:
        raise SignInError(f"Too many wrong PINs for {name}: try again in {_duration(wait)}, or ask your "
                          "instructor to set a new PIN.")
    if claim is None:  # the claim went away between the two reads
        raise SignInError(f"The name {name} changed while you signed in; please try again.")
    if not hmac.compare_digest(derive(pin, claim["salt"], claim["kdf"]), claim["pin_hash"]):
        left = FREE_ATTEMPTS - claim["failures"]
        pause = (f" ({left} more tries before a pause)" if left > 0
                 else f" (no more tries for {_duration(locked_for(claim['failures']))})")
        raise SignInError(f"Wrong PIN for {claim['name']}{pause}: if the name is not yours, choose another; if you "
                          "forgot its PIN, ask your instructor to set a new one.")
    store.clear_pin_failures(key, claim["salt"])
    return {"name": claim["name"], "stamp": claim["salt"].hex(), "claimed": False}


def holds(store, claim: Mapping) -> bool:
    """Whether a session's proof (sign_in's answer) still stands: its name has the PIN it proved."""
    row = store.owner_claim(name_key(claim.get("name", "")))
    return row is not None and hmac.compare_digest(row["salt"].hex(), str(claim.get("stamp", "")))


def set_pin(store, name: str, pin: str) -> str:
    """Give a name a new PIN (the instructor); claims the name if nobody has. Sessions signed in
    with the old PIN stop acting as it. The name as stored."""
    name, pin = check_name(name), check_pin(pin)
    salt = secrets.token_bytes(SALT_BYTES)
    key = name_key(name)
    store.set_owner_pin(key, name, KDF, salt, derive(pin, salt))
    return store.owner_claim(key)["name"]


def claims(store) -> list[dict]:
    """The claimed names for display: {name, claimed_at, pin_set_at, failures, locked_until}."""
    keep = ("name", "claimed_at", "pin_set_at", "failures", "locked_until")
    return [{k: row[k] for k in keep} for row in store.owner_claims()]


def oidc_owner(user: Mapping) -> str | None:
    """The owner name of a logged-in provider user: their e-mail, else their user name (one a
    provider keeps unique); None if neither is usable (such a session may only look)."""
    for field in ("email", "preferred_username"):
        name = str(user.get(field) or "").strip()
        if LOGIN_PATTERN.match(name) and not reserved(name):
            return name
    return None


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"
