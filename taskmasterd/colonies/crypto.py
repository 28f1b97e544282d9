"""ColonyOS identity crypto: secp256k1 keys, SHA3-256 ids, recoverable signatures.

Wire facts (reference.md §1): a private key is 64 lowercase hex chars; an id is the
FIPS SHA3-256 of the *hex text* of the uncompressed public key (``04||X||Y``); a
signature is ``hex(r||s||v)`` with v in {0,1}, low-s, RFC6979, over SHA3-256 of the
UTF-8 message. For RPC the signed message is the base64 payload string as sent.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import coincurve
import orjson
from Crypto.Hash import SHA3_256

# Order of the secp256k1 group.
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = N // 2


class SignatureError(ValueError):
    """A signature that cannot be recovered to an identity."""


def sha3_256(data: str | bytes) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return SHA3_256.new(raw).digest()


def sha3_256_hex(data: str | bytes) -> str:
    return sha3_256(data).hex()


def generate_prvkey() -> str:
    """A fresh private key: a uniformly random scalar in [1, N)."""
    while True:
        scalar = secrets.randbelow(N)
        if scalar:
            return scalar.to_bytes(32, "big").hex()


def _private_key(prvkey: str) -> coincurve.PrivateKey:
    try:
        raw = bytes.fromhex(prvkey)
    except (ValueError, TypeError):
        raise ValueError("Invalid private key, not hex") from None
    if len(raw) != 32:
        raise ValueError("Invalid private key length, should be 256 bits")
    if not 0 < int.from_bytes(raw, "big") < N:
        raise ValueError("Invalid private key")
    return coincurve.PrivateKey(raw)


def _id_of(pubkey: coincurve.PublicKey) -> str:
    return sha3_256_hex(pubkey.format(compressed=False).hex())


def derive_id(prvkey: str) -> str:
    """The identity (executor, user, colony or server id) owned by ``prvkey``."""
    return _id_of(_private_key(prvkey).public_key)


def sign(message: str, prvkey: str) -> str:
    # coincurve already emits r||s||recid with low-s and RFC6979, like Go's btcec.
    return _private_key(prvkey).sign_recoverable(sha3_256(message), hasher=None).hex()


def recover_id(message: str, signature: str) -> str:
    """The id whose key signed ``message``; raises SignatureError like the Go server."""
    try:
        sig = bytes.fromhex(signature)
    except (ValueError, TypeError):
        raise SignatureError("invalid signature: not hex") from None
    if len(sig) != 65:
        raise SignatureError("invalid signature: signature length must be 65 bytes")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    v = sig[64]
    if v > 7:
        raise SignatureError(
            f"invalid signature: public key recovery code {v + 27} is not in the valid range [27, 34]"
        )
    if v > 3:
        # Go would take 4..7 as "compressed key" codes; no ColonyOS signer emits them.
        raise SignatureError(f"invalid signature: unsupported public key recovery code {v + 27}")
    if r == 0:
        raise SignatureError("invalid signature: R is 0")
    if s == 0:
        raise SignatureError("invalid signature: S is 0")
    if r >= N or s >= N:
        raise SignatureError("invalid signature: R or S >= group order")
    if s > _HALF_N:
        raise SignatureError("invalid signature: s value is over half the order")
    try:
        pubkey = coincurve.PublicKey.from_signature_and_message(sig, sha3_256(message), hasher=None)
    except Exception as exc:  # coincurve raises plain Exception on unrecoverable points
        raise SignatureError(f"invalid signature: {exc}") from None
    return _id_of(pubkey)


def encode_payload(payload: Any) -> str:
    """JSON then standard base64 with padding, as the payload field carries it."""
    return base64.b64encode(orjson.dumps(payload)).decode("ascii")


def decode_payload(payload: str) -> Any:
    return orjson.loads(base64.b64decode(payload, validate=True))


def build_envelope(payloadtype: str, payload: dict[str, Any], prvkey: str | None) -> bytes:
    """The JSON body of an RPC request; unsigned when ``prvkey`` is None (version only)."""
    encoded = encode_payload(payload)
    signature = sign(encoded, prvkey) if prvkey is not None else ""
    return orjson.dumps({"payloadtype": payloadtype, "payload": encoded, "signature": signature})
