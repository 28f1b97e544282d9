"""ColonyOS crypto: published vectors, round-trips, Go's rejections, and pycolonies parity."""

from __future__ import annotations

import base64
import json
import random

import orjson
import pytest

from taskmasterd.colonies import crypto
from tests.support.colonies_fixtures import load_data

VECTORS = load_data("colonies_vectors.json")
SIGNED = [v for v in VECTORS["vectors"] if v["message"] is not None]


@pytest.mark.parametrize("vector", VECTORS["hash_vectors"], ids=lambda v: v["input"])
def test_sha3_is_fips_not_keccak(vector: dict) -> None:
    assert crypto.sha3_256_hex(vector["input"]) == vector["sha3_256"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["source"][:40])
def test_id_vectors(vector: dict) -> None:
    assert crypto.derive_id(vector["prvkey"]) == vector["id"]


@pytest.mark.parametrize("vector", SIGNED, ids=lambda v: v["signature"][:12])
def test_signature_vectors(vector: dict) -> None:
    assert crypto.recover_id(vector["message"], vector["signature"]) == vector["id"]
    if vector["signature_is_rfc6979_deterministic"]:
        assert crypto.sign(vector["message"], vector["prvkey"]) == vector["signature"]


@pytest.mark.parametrize("vector", [v for v in SIGNED if "rpc_envelope" in v], ids=lambda v: v["rpc_envelope"]["payloadtype"])
def test_pycolonies_envelope_vectors(vector: dict) -> None:
    envelope = vector["rpc_envelope"]
    assert crypto.decode_payload(envelope["payload"]) == json.loads(vector["payload_json"])
    assert crypto.sign(envelope["payload"], vector["prvkey"]) == envelope["signature"]
    assert crypto.recover_id(envelope["payload"], envelope["signature"]) == vector["id"]


def test_build_envelope_signs_the_base64_string() -> None:
    prvkey = crypto.generate_prvkey()
    payload = {"msgtype": "assignprocessmsg", "colonyname": "dev", "timeout": 10}
    envelope = orjson.loads(crypto.build_envelope("assignprocessmsg", payload, prvkey))
    assert envelope["payloadtype"] == "assignprocessmsg"
    assert base64.b64decode(envelope["payload"]) == orjson.dumps(payload)
    assert len(envelope["payload"]) % 4 == 0  # std alphabet, padded
    assert len(envelope["signature"]) == 130
    assert crypto.recover_id(envelope["payload"], envelope["signature"]) == crypto.derive_id(prvkey)


def test_unsigned_envelope_for_version() -> None:
    envelope = orjson.loads(crypto.build_envelope("versionmsg", {"msgtype": "versionmsg"}, None))
    assert envelope["signature"] == ""


def test_generated_keys_are_valid_scalars() -> None:
    keys = {crypto.generate_prvkey() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(key) == 64 and key == key.lower()
        assert 0 < int(key, 16) < crypto.N


@pytest.mark.parametrize(
    "key",
    ["", "00" * 32, format(crypto.N, "064x"), "ab" * 31, "zz" * 32, "ab" * 33],
    ids=["empty", "zero", "order", "short", "not-hex", "long"],
)
def test_invalid_private_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        crypto.derive_id(key)


def test_sign_recover_round_trips() -> None:
    rng = random.Random(1)
    for _ in range(50):
        prvkey = crypto.generate_prvkey()
        message = base64.b64encode(rng.randbytes(rng.randrange(0, 300))).decode()
        signature = crypto.sign(message, prvkey)
        assert signature[-2:] in ("00", "01")  # v is the raw recovery id, not 27/28
        assert crypto.recover_id(message, signature) == crypto.derive_id(prvkey)


def _tweak(signature: str, *, v_offset: int = 0, high_s: bool = False) -> str:
    raw = bytearray(bytes.fromhex(signature))
    if high_s:
        s = crypto.N - int.from_bytes(raw[32:64], "big")
        raw[32:64] = s.to_bytes(32, "big")
        raw[64] ^= 1  # the same point, mathematically still a valid signature
    raw[64] += v_offset
    return raw.hex()


def test_go_rejections() -> None:
    prvkey = crypto.generate_prvkey()
    signature = crypto.sign("payload", prvkey)
    for offset in (27, 4):  # Ethereum-style 27/28, and Go's compressed-key codes
        with pytest.raises(crypto.SignatureError, match="recovery code"):
            crypto.recover_id("payload", _tweak(signature, v_offset=offset))
    with pytest.raises(crypto.SignatureError, match="half the order"):
        crypto.recover_id("payload", _tweak(signature, high_s=True))
    with pytest.raises(crypto.SignatureError, match="R is 0"):
        crypto.recover_id("payload", "00" * 65)
    for garbage in ("", "xyz", signature[:-2]):
        with pytest.raises(crypto.SignatureError):
            crypto.recover_id("payload", garbage)
    # Another message recovers to some other identity, never to the signer.
    assert crypto.recover_id("other", signature) != crypto.derive_id(prvkey)


def test_parity_with_pycolonies_on_random_keys() -> None:
    from crypto import Crypto  # pycolonies' top-level module (test-only dependency)

    theirs = Crypto()
    rng = random.Random(7)
    for _ in range(200):
        prvkey = crypto.generate_prvkey()
        message = base64.b64encode(rng.randbytes(rng.randrange(1, 120))).decode()
        assert crypto.derive_id(prvkey) == theirs.id(prvkey)
        assert crypto.sign(message, prvkey) == theirs.sign(message, prvkey)
        their_key = theirs.prvkey()
        if 0 < int(their_key, 16) < crypto.N:
            assert crypto.derive_id(their_key) == theirs.id(their_key)
