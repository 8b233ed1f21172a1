#!/usr/bin/env python3
"""An independent client of the native protocol, written from codec/PROTOCOL.md only.

Standard library only. It shares no code with the Rust codec: its own CRC32C table, its own
struct layouts. `codec/tests/python_client.rs` runs it:

  native_client.py verify PROTOCOL.md   check every golden vector's header, checksum and size
                                        against the kind table; print the sample payment
                                        request's fields as JSON
  native_client.py encode               print, as hex, a PaymentCodeRequest frame built here
  native_client.py tags ALG KEY SESSION print, as hex, two such frames each followed by its
                                        frame MAC tag (section 7, rule 8; hashlib's SHA-256
                                        or OpenSSL's SM3)
"""
import hashlib
import hmac
import json
import re
import struct
import sys


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


TABLE = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283

HEADER = struct.Struct("<II2sBBI")


def frame(kind, body):
    assert len(body) % 8 == 0
    covered = HEADER.pack(len(body), 0, b"CS", 2, kind, 0)[8:] + body
    return struct.pack("<II", len(body), crc32c(covered)) + covered


def text(value, size):
    raw = value.encode("utf-8")
    assert len(raw) <= size
    return raw + b"\0" * (size - len(raw))


def untext(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8")


DETAILS = struct.Struct("<16s32sQQqHHHH16s8s64s32s")


def payment_code_request():
    details = DETAILS.pack(
        text("ACQ0001", 16), text("PY-000001", 32), 0, 12345, 1771286370000, 156, 5411, 156, 0,
        text("M-PY-1", 16), text("T1", 8), text("全家便利店 FamilyMart", 64), text("北京", 32))
    # No conversion from an acquirer: 24 zero bytes.
    return frame(0x10, details + text("281234567890123456", 32) + bytes(24))


def verify(path):
    doc = open(path, encoding="utf-8").read()
    sizes = {int(k, 16): int(s) for k, s in re.findall(r"^\| (0x[0-9A-F]{2}) \| \w+ \| \w+ \| (\d+) \|", doc, re.M)}
    assert len(sizes) == 17, sizes
    checked = 0
    sample = None
    for name, block in re.findall(r"### Golden vector: (\w+) .*?```text\n(.*?)```", doc, re.S):
        data = bytes(int(b, 16) for line in block.strip().splitlines() for b in line.split(":", 1)[1].split())
        length, checksum, magic, version, kind, reserved = HEADER.unpack_from(data)
        assert magic == b"CS" and version == 2 and reserved == 0, name
        assert length == sizes[kind] == len(data) - 16, name
        assert checksum == crc32c(data[8:]), name
        checked += 1
        if kind == 0x10:
            fields = DETAILS.unpack_from(data, 16)
            sample = {
                "originator": untext(fields[0]),
                "originator_transaction_id": untext(fields[1]),
                "amount_minor": fields[3],
                "currency": fields[5],
                "merchant_name": untext(fields[11]),
                "payment_code_length": len(untext(data[16 + 200:16 + 232])),
            }
    print(json.dumps({"vectors_checked": checked, "payment_code_request": sample}, ensure_ascii=False))


def frame_tags(algorithm, key, switch_id, participant, server_nonce, client_nonce, session_id, frames):
    """PROTOCOL.md section 7 rule 8: the tags of `frames` (whole frames without tags), sent
    by the participant in this order after the SignOnResult."""
    digest = {"hmac-sha256": "sha256", "hmac-sm3": "sm3"}[algorithm]
    mac = lambda k, data: hmac.new(k, data, lambda: hashlib.new(digest)).digest()
    bound = text(switch_id, 16) + text(participant, 16) + server_nonce + client_nonce + struct.pack("<Q", session_id)
    direction_key = mac(key, b"CSW1 mac p->s" + bound)
    return [mac(direction_key, struct.pack("<Q", n) + f[8:])[:16] for n, f in enumerate(frames, start=1)]


if __name__ == "__main__":
    if sys.argv[1:2] == ["verify"]:
        verify(sys.argv[2])
    elif sys.argv[1:2] == ["encode"]:
        print(payment_code_request().hex())
    elif sys.argv[1:2] == ["tags"]:
        # tags ALGORITHM KEY_HEX SESSION_ID: two payment frames as the participant ACQ0001
        # sends them to switch CSWITCH with nonces of 0x01 and 0x02 bytes, each with its tag.
        algorithm, key, session_id = sys.argv[2], bytes.fromhex(sys.argv[3]), int(sys.argv[4])
        frames = [payment_code_request(), payment_code_request()]
        tags = frame_tags(algorithm, key, "CSWITCH", "ACQ0001", b"\x01" * 32, b"\x02" * 32, session_id, frames)
        print(b"".join(f + t for f, t in zip(frames, tags)).hex())
    else:
        sys.exit(__doc__)
