#!/usr/bin/env python3
"""Independent check of the Octo v1 test vectors, written from proto/octo.md
alone (not from the Rust code): recomputes every link key, nonce and sealed
packet in octo-v1.json with Python's `cryptography` package.

    python3 proto/octo-vectors/verify.py [path/to/octo-v1.json]

Optional tooling: the Rust tests are what CI runs. Needs `pip install cryptography`.
"""
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"kaskade octo v1"
INFO_PREFIX = b"kaskade octo v1 link"
SUITES = {  # name: (suite id in the HKDF info, key length, AEAD)
    "aes128gcm": (1, 16, AESGCM),
    "chacha20poly1305": (2, 32, ChaCha20Poly1305),
}
PACKET_TYPES = {"rtp": 0, "rtcp": 1, "message": 2, "control": 3}
MEDIA_TYPES = {"audio": 0, "video": 1, "data": 2}
PLAINTEXT = 0x02


def link_keys(secret, suite, sender, receiver):
    suite_id, key_len, _ = SUITES[suite]
    info = INFO_PREFIX + bytes([suite_id]) + struct.pack(">II", sender, receiver)
    okm = HKDF(hashes.SHA256(), key_len + 12, SALT, info).derive(secret)
    return okm[:key_len], okm[key_len:]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "octo-v1.json")
    with open(path) as f:
        v = json.load(f)
    secret = bytes.fromhex(v["secret"])
    assert bytes.fromhex(v["hkdf_salt"]) == SALT
    assert bytes.fromhex(v["hkdf_info_prefix"]) == INFO_PREFIX
    for link in v["links"]:
        key, iv = link_keys(secret, link["suite"], link["sender"], link["receiver"])
        assert key.hex() == link["key"] and iv.hex() == link["iv"], link
    for p in v["packets"]:
        counter = int(p["counter"])
        header = bytes(
            [0x61, PACKET_TYPES[p["type"]], MEDIA_TYPES[p["media"]], p["flags"]]
        ) + struct.pack(">IIIQ", p["sender"], p["conference"], p["endpoint"], counter)
        payload = bytes.fromhex(p["payload"])
        if p["mode"] == "plaintext":
            assert p["flags"] & PLAINTEXT, p["name"]
            expected = header + payload
        else:
            assert not p["flags"] & PLAINTEXT, p["name"]
            key, iv = link_keys(secret, p["mode"], p["sender"], p["receiver"])
            mask = b"\0" * 4 + struct.pack(">Q", counter)
            nonce = bytes(a ^ b for a, b in zip(iv, mask))
            assert nonce.hex() == p["nonce"], p["name"]
            aead = SUITES[p["mode"]][2](key)
            expected = header + aead.encrypt(nonce, payload, header)
        assert expected.hex() == p["packet"], p["name"]
    print(f"{len(v['links'])} links, {len(v['packets'])} packets: ok")


if __name__ == "__main__":
    main()
