"""Signed provenance: an experiment's in-toto Statement in a DSSE envelope, signed with a local key.

The one adapter to `securesystemslib` (its `CryptoSigner`, `SSlibKey` and `dsse.Envelope`): sealab does
not hand-write signatures, the pre-authentication encoding or the envelope's JSON.

The key pair is made by `sealab keygen`: an Ed25519 private key (PEM, PKCS#8, mode 0600) and its public
key (securesystemslib's key JSON: keyid, keytype, scheme, keyval), by default in `~/.config/sealab/`
(`$SEALAB_KEY_DIR`, else `$XDG_CONFIG_HOME/sealab`). A key file inside a workspace is refused, so the
key can never be committed, sealed into an image or named by a record. Verification needs only the
public key file: `sealab verify --provenance ENVELOPE [--key PUBLIC]`, or any DSSE verifier (the tests
use securesystemslib's own `Envelope.verify` on what `sealab provenance --sign` wrote).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.errors import SealabError

PAYLOAD_TYPE = "application/vnd.in-toto+json"  # in-toto's DSSE payload type for a Statement
PRIVATE_NAME, PUBLIC_NAME = "signing-key.pem", "signing-key.pub.json"


class SigningError(SealabError):
    """A key that cannot be made or read, or an envelope that does not verify: the reason, one line."""

    exit_code = 2


class NotVerified(SigningError):
    """The envelope was read but does not verify (edited, or signed by another key)."""

    exit_code = 1


def key_dir() -> Path:
    """Where `sealab keygen` puts the key pair, and where sign and verify look by default."""
    if os.environ.get("SEALAB_KEY_DIR"):
        return Path(os.environ["SEALAB_KEY_DIR"])
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "sealab"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    keyid: str


def _outside(path: Path, workspaces: tuple[Path, ...]) -> None:
    for root in workspaces:
        resolved, top = path.resolve(), root.resolve()
        if resolved == top or top in resolved.parents:
            raise SigningError(f"{path} is inside the workspace {root}: a signing key must live outside it (it "
                               "could be committed and sealed); use the default ~/.config/sealab or --dir elsewhere")


def keygen(directory: Path, *, force: bool = False, workspaces: tuple[Path, ...] = ()) -> KeyPair:
    """A new Ed25519 key pair in `directory`.

    Raises:
        SigningError: the directory lies inside a workspace, or a key is there already (without `force`).
    """
    from securesystemslib.signer import CryptoSigner

    _outside(directory, workspaces)
    private, public = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if not force and (private.exists() or public.exists()):
        raise SigningError(f"a signing key exists already in {directory}; keep it (its signatures verify with "
                           f"{public}) or pass --force to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    signer = CryptoSigner.generate_ed25519()
    key = signer.public_key
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    os.chmod(private, 0o600)
    public.write_text(json.dumps({"keyid": key.keyid, **key.to_dict()}, indent=2, sort_keys=True) + "\n")
    return KeyPair(private, public, key.keyid)


def load_public(path: Path) -> Any:
    """The securesystemslib key of a public key file `sealab keygen` wrote."""
    from securesystemslib.signer import SSlibKey

    try:
        data = json.loads(path.read_text())
        return SSlibKey.from_dict(data.pop("keyid"), data)
    except FileNotFoundError:
        raise SigningError(f"no public key at {path}; run `sealab keygen` or give --key") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SigningError(f"{path} is not a public key file of `sealab keygen`: {exc}") from None


def _signer(private: Path, public: Path) -> Any:
    from securesystemslib.signer import CryptoSigner

    key = load_public(public)
    if not private.is_file():
        raise SigningError(f"no private key at {private}; run `sealab keygen` first")
    try:
        return CryptoSigner.from_priv_key_uri(f"file2:{private}", key)
    except Exception as exc:  # noqa: BLE001 - the library's errors vary by cause; one line says which
        raise SigningError(f"cannot sign with {private} (public key {public}): {type(exc).__name__}: {exc}") from None


def sign(payload: bytes, private: Path, public: Path, *, workspaces: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`payload` (a Statement's canonical bytes) in a DSSE envelope signed with the key pair."""
    from securesystemslib.dsse import Envelope

    _outside(private, workspaces)
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(_signer(private, public))
    return envelope.to_dict()


def verify(envelope: Any, public: Path) -> tuple[dict[str, Any], str]:
    """The Statement inside a DSSE envelope whose signature the public key verifies, and that keyid.

    Raises:
        SigningError: not a DSSE envelope of an in-toto Statement (bad input).
        NotVerified: no signature by this key, or the signature does not match the payload and type.
    """
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    key = load_public(public)
    try:
        parsed = Envelope.from_dict(json.loads(json.dumps(envelope)))  # (from_dict edits what it is given)
    except Exception as exc:  # noqa: BLE001 - a malformed envelope, whatever the library says of it
        raise SigningError(f"not a DSSE envelope: {type(exc).__name__}: {exc}") from None
    if parsed.payload_type != PAYLOAD_TYPE:
        raise SigningError(f"the envelope's payloadType is {parsed.payload_type!r}, expected {PAYLOAD_TYPE!r}")
    signed_by = sorted(parsed.signatures)
    if key.keyid not in signed_by:
        raise NotVerified(f"no signature by the key {key.keyid[:16]}… ({public}); the envelope is signed by "
                          f"{', '.join(k[:16] + '…' for k in signed_by) or 'nobody'}")
    try:
        parsed.verify([key], 1)
    except VerificationError as exc:
        raise NotVerified(f"the signature by {key.keyid[:16]}… does not verify: the payload or its type changed "
                          f"after signing ({exc})") from None
    try:
        statement = json.loads(parsed.payload)
    except ValueError as exc:
        raise NotVerified(f"the signed payload is not JSON: {exc}") from None
    if not isinstance(statement, dict) or statement.get("_type") != "https://in-toto.io/Statement/v1":
        raise NotVerified("the signed payload is not an in-toto Statement v1")
    return statement, key.keyid
