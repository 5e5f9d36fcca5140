"""Signed bundles: an Ed25519 signature over the manifest's bytes, which hold every file's sha256.

The sha256 list proves a bundle is intact; a signature proves who built it. `edgemfm keygen`
writes a key pair, `edgemfm sign BUNDLE --key KEY` writes `manifest.sig` beside the manifest (the
manifest does not list it: it signs the manifest), and `edgemfm.load(..., trusted_keys=[...])` /
`edgemfm run --trusted-key KEY.pub` refuse a bundle unless one of the keys verifies it.

Example:
    >>> keygen("ci-key")                                                    # doctest: +SKIP
    (PosixPath('ci-key'), PosixPath('ci-key.pub'))
    >>> sign("bundles/default-pi5", "ci-key")                                # doctest: +SKIP
    >>> edgemfm.load("bundles/default-pi5", trusted_keys=["ci-key.pub"])     # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from edgemfm.bundle import MANIFEST, SIGNATURE, read_manifest
from edgemfm.errors import BundleError, InputError, MissingExtraError
from edgemfm.records import write_json, write_text

ALGORITHM = "ed25519"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingExtraError("cryptography", extra="sign") from None
    return ed25519, serialization, InvalidSignature


def keygen(out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to `out` (PEM, mode 0600) and its public key to `out`.pub.

    Example:
        >>> keygen("ci-key")  # doctest: +SKIP
        (PosixPath('ci-key'), PosixPath('ci-key.pub'))
    """
    ed25519, serialization, _ = _crypto()
    private, public = Path(out), Path(f"{out}.pub")
    for path in (private, public):
        if path.exists() and not force:
            raise InputError(f"key file {str(path)!r} already exists; pass --force to replace it")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_text(private, pem.decode("ascii"), mode=0o600)  # never readable by others, not even briefly
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_text(public, public_pem.decode("ascii"))
    return private, public


def _read_key(path: str | Path, private: bool):
    ed25519, serialization, _ = _crypto()
    path = Path(path)
    kind = "private" if private else "public"
    if not path.is_file():
        raise InputError(f"{kind} key file {str(path)!r} does not exist; allowed: a PEM file from `edgemfm keygen`")
    try:
        load = serialization.load_pem_private_key if private else serialization.load_pem_public_key
        key = load(path.read_bytes(), **({"password": None} if private else {}))
    except (ValueError, TypeError) as e:
        raise InputError(
            f"{str(path)!r} is not a {kind} key ({e}); allowed: a PEM file from `edgemfm keygen`"
        ) from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise InputError(f"{str(path)!r} is a {type(key).__name__}; allowed: an Ed25519 {kind} key")
    return key


def _public_hex(key) -> str:
    _, serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign(bundle: str | Path, key: str | Path) -> Path:
    """Sign `bundle`'s manifest with the private `key`; writes and returns `bundle`/manifest.sig.

    The bundle is read back first (every file against its sha256), so only an intact bundle is signed.

    Example:
        >>> sign("bundles/default-pi5", "ci-key")  # doctest: +SKIP
        PosixPath('bundles/default-pi5/manifest.sig')
    """
    private = _read_key(key, private=True)
    read_manifest(bundle)
    data = (Path(bundle) / MANIFEST).read_bytes()
    record = {
        "algorithm": ALGORITHM,
        "public_key": _public_hex(private.public_key()),
        "signature": private.sign(data).hex(),
    }
    return write_json(Path(bundle) / SIGNATURE, record)


def verify(bundle: Path, manifest_bytes: bytes, trusted_keys: Sequence[str | Path]) -> str:
    """Check `manifest_bytes` against the bundle's signature with one of `trusted_keys` (public key
    files); returns the hex public key that verified it, or raises BundleError in one line."""
    _, _, invalid = _crypto()
    keys = [_read_key(k, private=False) for k in trusted_keys]
    path = bundle / SIGNATURE
    if path.is_symlink() or not path.is_file():
        raise BundleError(
            f"bundle {str(bundle)!r} is not signed (no {SIGNATURE}); allowed: a bundle signed by a trusted key"
        )
    try:
        record = json.loads(path.read_text())
        signature = bytes.fromhex(record["signature"])
        known_algorithm = record["algorithm"] == ALGORITHM
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BundleError(f"{str(path)!r} is not a signature edgemfm wrote; allowed: one from `edgemfm sign`") from None
    if not known_algorithm:
        raise BundleError(f"{str(path)!r} uses {record['algorithm']!r}; allowed: {ALGORITHM}")
    for key in keys:
        try:
            key.verify(signature, manifest_bytes)
        except invalid:
            continue
        return _public_hex(key)
    raise BundleError(
        f"the signature of bundle {str(bundle)!r} does not verify with any of the {len(keys)} trusted key(s) "
        "(tampered manifest, or signed by another key); allowed: a bundle signed by a trusted key"
    )
