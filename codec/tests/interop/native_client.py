#!/usr/bin/env python3
"""An independent client of the native protocol, written from codec/PROTOCOL.md only.

Standard library only. It shares no code with the Rust codec: its own CRC32C table, its own
struct layouts. `codec/tests/python_client.rs` runs it:

  native_client.py verify PROTOCOL.md   check every golden vector's header, checksum and size
                                        against the kind table; print the sample payment
                                        request's fields as JSON
  native_client.py encode               print, as hex, a PaymentCodeRequest frame built here
"""
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
    covered = HEADER.pack(len(body), 0, b"CS", 1, kind, 0)[8:] + body
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
    return frame(0x10, details + text("281234567890123456", 32))


def verify(path):
    doc = open(path, encoding="utf-8").read()
    sizes = {int(k, 16): int(s) for k, s in re.findall(r"^\| (0x[0-9A-F]{2}) \| \w+ \| \w+ \| (\d+) \|", doc, re.M)}
    assert len(sizes) == 17, sizes
    checked = 0
    sample = None
    for name, block in re.findall(r"### Golden vector: (\w+) .*?```text\n(.*?)```", doc, re.S):
        data = bytes(int(b, 16) for line in block.strip().splitlines() for b in line.split(":", 1)[1].split())
        length, checksum, magic, version, kind, reserved = HEADER.unpack_from(data)
        assert magic == b"CS" and version == 1 and reserved == 0, name
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["verify"]:
        verify(sys.argv[2])
    elif sys.argv[1:2] == ["encode"]:
        print(payment_code_request().hex())
    else:
        sys.exit(__doc__)
