"""Pseudonymisation: patient identifiers become salted hashes before they reach any output.

The salt lives in its own file outside `results/` (default `.mnemo-salt`, mode 0600) and is never
copied next to the hashes, so a leaked cache or table cannot be joined back to patient ids by
hashing candidate ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SALT_BYTES = 32


def load_salt(path: str | Path, create: bool = True) -> bytes:
    """Read the salt, creating a random one (0600) on first use when `create` is set.

    Creation is atomic (a complete temporary file hard-linked into place), so jobs that start
    together all read the one salt that won, never a half-written file.
    """
    salt_path = Path(path)
    if not salt_path.exists():
        if not create:
            raise FileNotFoundError(f"salt file {salt_path} does not exist")
        salt_path.parent.mkdir(parents=True, exist_ok=True)
        draft = salt_path.with_name(f".{salt_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(SALT_BYTES) + "\n")
        try:
            os.link(draft, salt_path)
        except FileExistsError:
            pass  # another job created it first: use theirs
        finally:
            draft.unlink()
    text = salt_path.read_text().strip()
    if len(text) < 16:
        raise ValueError(f"salt file {salt_path} holds fewer than 16 characters")
    return text.encode()


def pseudonym(value: str, salt: bytes, prefix: str = "") -> str:
    """Keyed hash (HMAC-SHA256, 16 hex digits) of an identifier; stable for one salt."""
    digest = hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:16]
    return f"{prefix}{digest}"


def content_hash(data: bytes) -> str:
    """Unkeyed hash of pixel content: equal images (planted duplicates) share it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class IdentifyingError(ValueError):
    """An error whose message may name a patient's file, with a `public` twin that does not.

    The full message is for the person at the terminal, who must find the file to fix it; logs and
    files under `results/` get `public`, where patient folder names are replaced by pseudonyms.
    """

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = message if public is None else public


def public_path(path: str, patient: str, salt: bytes) -> str:
    """A CSV Path with its patient folder replaced by the patient's pseudonym (safe to log)."""
    alias = pseudonym(patient, salt, "pat-")
    return "/".join(alias if part == patient else part for part in Path(path).parts)


def scrub(text: str, replacements: dict[str, str]) -> str:
    """Replace every identifying string (longest first) by its public form."""
    for secret in sorted(replacements, key=len, reverse=True):
        if secret:
            text = text.replace(secret, replacements[secret])
    return text
