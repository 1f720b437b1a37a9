"""A terminal's PANs at rest: enciphered under a key kept beside its state files.

A POS that must send a reversal again after a power cut needs the card number it reversed
(DE2), so its store-and-forward queue and its last-transaction memory keep the PAN; PCI DSS
(requirement 3.5) says a stored PAN is unreadable. So the simulated terminal does what a
POS does with its SAF flash: every PAN written to a state file (`<TID>.json`,
`<TID>.saf.jsonl`, the fleet's `cards.json`) is sealed with AES-256-GCM under a key in
`<state-dir>/.pan.key`, created on first use with mode 0600. A file is as safe as that key:
the point is that a state directory copied into a bug report, a backup or a log bundle
does not carry card numbers in clear.

Sealed values look like `pan:v1:<base64url(nonce ‖ ciphertext ‖ tag)>`; nothing in them is a
digit run a PAN scanner would match. A value without the prefix is an old file's clear PAN:
`open_pan` accepts it (migrate on read), and the next write seals it.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = ".pan.key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM nonce size NIST SP 800-38D recommends
SEALED_PREFIX = "pan:v1:"
_AAD = b"eum-terminal-pan/1"  # binds a sealed value to this use


class PanVaultError(RuntimeError):
    """The key file or a sealed value is unusable. The text never holds the PAN or the key."""


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


class PanVault:
    """Seals and opens PANs for one state directory. The key is read (or created) lazily, so
    a directory whose files hold no PAN never gets a key file; thread-safe (the fleet writes
    from worker threads)."""

    def __init__(self, state_dir: Path) -> None:
        self.key_path = Path(state_dir) / KEY_FILE
        self._lock = threading.Lock()
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        with self._lock:
            if self._aead is None:
                self._aead = AESGCM(self._key())
            return self._aead

    def _key(self) -> bytes:
        """The directory's key; the first caller creates it. Written whole to a temp file and
        fsync'd, then linked into place (atomic, and refused if another process got there
        first) and the directory fsync'd: a queue sealed under a key is never on disk without
        it, and no reader ever sees half a key."""
        path = self.key_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, AESGCM.generate_key(bit_length=KEY_BYTES * 8))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it meanwhile: use theirs
            finally:
                tmp.unlink()
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise PanVaultError(f"PAN key file {path} is not a {KEY_BYTES}-byte key")
        return key

    def seal(self, pan: str) -> str:
        """`pan` enciphered (a fresh nonce each time); a sealed value is returned unchanged."""
        if is_sealed(pan):
            return pan
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._cipher().encrypt(nonce, pan.encode("ascii"), _AAD)
        return SEALED_PREFIX + base64.urlsafe_b64encode(blob).decode("ascii")

    def open(self, value: str) -> str:
        """The PAN of a sealed value; an unsealed value (an old file's clear PAN) as it is."""
        if not is_sealed(value):
            return value
        try:
            blob = base64.urlsafe_b64decode(value[len(SEALED_PREFIX):].encode("ascii"))
            clear = self._cipher().decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _AAD)
        except (ValueError, InvalidTag):
            raise PanVaultError(f"a sealed PAN does not open under {self.key_path} (another key, or damaged)") \
                from None
        return clear.decode("ascii")

    def seal_fields(self, fields: dict[str, str]) -> dict[str, str]:
        """A message's fields for a file: DE2 sealed, the rest as they are."""
        return {**fields, "2": self.seal(fields["2"])} if "2" in fields else dict(fields)

    def open_fields(self, fields: dict[str, str]) -> dict[str, str]:
        return {**fields, "2": self.open(fields["2"])} if "2" in fields else dict(fields)


def holds_clear_pan(fields: dict[str, str]) -> bool:
    """True for a message read from an old file, whose DE2 is in clear (to be rewritten sealed)."""
    return "2" in fields and not is_sealed(fields["2"])
