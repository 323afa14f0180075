"""Ed25519 bundle signatures: who made a bundle, not only that it arrived intact.

The manifest digest and the file hashes catch accidents (a truncated copy, a flipped bit), but
anyone who can edit a bundle can recompute them. `edgecxr export --signing-key KEY` adds
``signature.json``: an Ed25519 signature of the manifest digest, which covers every listed file.
A device given a trusted public key (``--trusted-key KEY.pub`` or ``$EDGECXR_TRUSTED_KEY``) refuses
bundles that are unsigned or signed by another key. Needs ``cryptography`` (``edgecxr[signing]``),
imported only when a key is used.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from edgecxr.utils.atomic import read_small
from edgecxr.utils.errors import BundleError, ConfigError, require

SIGNATURE = "signature.json"
TRUSTED_KEY_ENV = "EDGECXR_TRUSTED_KEY"
CONTEXT = b"edgecxr-bundle-signature-v1:"  # what is signed: CONTEXT + the manifest digest
PREDICTIONS = b"edgecxr-predictions-signature-v1:"  # a prediction file's: never valid as a bundle's


def _ed25519():
    require("cryptography", "signing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519, serialization


def keygen(path: Path) -> tuple[Path, Path]:
    """Write a new private key to PATH (PEM, mode 0600) and its public key to PATH.pub; never replaces a file."""
    ed25519, ser = _ed25519()
    path, public = Path(path), Path(f"{path}.pub")
    for p in (path, public):
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{p} already exists; keys are never overwritten: choose another path")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    public_pem = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
            fh.flush()
            os.fsync(fh.fileno())
        public.write_bytes(public_pem)
    except OSError as exc:  # a full disk: never leave an empty key behind that blocks the retry
        for p in (path, public):
            p.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write the key pair ({exc.strerror or exc}); free space and retry") from None
    return path, public


def _load(path, private: bool, what: str):
    ed25519, ser = _ed25519()
    kind = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    hint = "the private key file written by `edgecxr keygen`" if private else "the .pub file written by `edgecxr keygen`"
    data = read_small(path, f"{what} {path}")
    try:
        key = ser.load_pem_private_key(data, None) if private else ser.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{what} {path}: not a readable Ed25519 key ({str(exc).splitlines()[0][:120]}); pass {hint}") from None
    if not isinstance(key, kind):
        raise ConfigError(f"{what} {path}: not an Ed25519 key; pass {hint}")
    return key


def load_signing_key(path):
    return _load(path, True, "--signing-key")


def key_id(public_key) -> str:
    _, ser = _ed25519()
    return hashlib.sha256(public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)).hexdigest()[:16]


def sign_bundle(folder: Path, private_key, manifest: dict) -> None:
    """Write FOLDER/signature.json: the Ed25519 signature of the manifest's digest."""
    signature = private_key.sign(CONTEXT + manifest["digest"].encode())
    body = {"algorithm": "ed25519", "key_id": key_id(private_key.public_key()), "digest": manifest["digest"],
            "signature": base64.b64encode(signature).decode()}
    (Path(folder) / SIGNATURE).write_text(json.dumps(body, indent=1) + "\n")


def trusted_key_path(given=None):
    """--trusted-key, else $EDGECXR_TRUSTED_KEY, else None (no signature required)."""
    return given or os.environ.get(TRUSTED_KEY_ENV) or None


def verify_bundle(folder: Path, manifest: dict, trusted) -> None:
    """Refuse the bundle unless FOLDER/signature.json signs its manifest digest with the key in file `trusted`."""
    public_key = _load(trusted, False, "--trusted-key")  # first: names the extra when cryptography is missing
    from cryptography.exceptions import InvalidSignature

    path = Path(folder) / SIGNATURE
    if not path.is_file():
        raise BundleError(f"{folder}: the bundle is not signed and a trusted key is set ({trusted}); "
                          "use a bundle exported with --signing-key")
    try:
        body = json.loads(read_small(path, str(path), error=BundleError))
        signature = base64.b64decode(body["signature"], validate=True)
        public_key.verify(signature, CONTEXT + manifest["digest"].encode())
    except (InvalidSignature, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise BundleError(f"{folder}: the signature does not verify with the trusted key {trusted} (signed by "
                          "another key, or the bundle was changed after signing); refusing it") from None


def sign_digest(private_key, digest: str) -> dict:
    """The signature block of a prediction file's digest: what verify_digest checks."""
    signature = private_key.sign(PREDICTIONS + digest.encode())
    return {"algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
            "signature": base64.b64encode(signature).decode()}


def verify_digest(trusted, digest: str, block, what: str, error=BundleError) -> None:
    """Refuse `what` unless `block` (sign_digest's) signs `digest` with the key in file `trusted`."""
    public_key = _load(trusted, False, "--device-key")
    from cryptography.exceptions import InvalidSignature

    if not isinstance(block, dict):
        raise error(f"{what}: not signed, and a device key is set ({trusted}); write it with --signing-key")
    try:
        public_key.verify(base64.b64decode(block["signature"], validate=True), PREDICTIONS + digest.encode())
    except (InvalidSignature, ValueError, KeyError, TypeError):
        raise error(f"{what}: the signature does not verify with the device key {trusted} (another key, or the "
                    "file was changed after signing); refusing it") from None
