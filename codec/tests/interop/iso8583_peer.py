#!/usr/bin/env python3
"""pyiso8583 as an independent ISO 8583 implementation, for codec/tests/iso8583_interop.rs.

Both sides read the same profile file (codec/profiles/iso8583/*.json, pyiso8583's spec
shape; our extra "_profile" header and "content" keys are ignored here).

  iso8583_peer.py generate PROFILE N   N random messages encoded by pyiso8583, one JSON
                                       object a line: {"hex": ..., "fields": {...}}
  iso8583_peer.py decode PROFILE       hex messages on stdin, decoded by pyiso8583, one
                                       JSON object a line: {"fields": {...}} or {"error": ...}

Field values are pyiso8583's decoded strings: digits for numeric fields (BCD unpacked),
text for text fields, upper-case hex for binary fields.
"""
import json
import random
import sys

import iso8583


def load(path):
    spec = json.load(open(path, encoding="utf-8"))
    spec.pop("_profile")
    return spec


ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TEXT = ALNUM + "abcdefghijklmnopqrstuvwxyz -./:'&"
UNICODE = TEXT + "静安咖啡上海北京全聚德éü"


def value_for(spec, rng):
    length = spec["max_len"] if spec["len_type"] == 0 else rng.randint(1, min(spec["max_len"], 60))
    content = spec.get("content", "ans")
    if content == "n":
        return "".join(rng.choice("0123456789") for _ in range(length))
    if content == "b":
        return "".join(rng.choice("0123456789ABCDEF") for _ in range(2 * length))
    if content == "an":
        return "".join(rng.choice(ALNUM) for _ in range(length))
    if spec["data_enc"] == "utf-8":
        text = ""
        while True:
            candidate = text + rng.choice(UNICODE)
            if len(candidate.encode("utf-8")) > length:
                return text or "x"
            text = candidate
    return "".join(rng.choice(TEXT) for _ in range(length))


def generate(spec, count):
    rng = random.Random(8583)
    numbers = [key for key in spec if key.isdigit() and key != "1"]
    for _ in range(count):
        fields = {"t": rng.choice(["0200", "0210", "0400", "0410", "0420", "0430", "0800", "0810"])}
        for key in rng.sample(numbers, rng.randint(1, len(numbers))):
            fields[key] = value_for(spec[key], rng)
        encoded, _ = iso8583.encode(dict(fields), spec)
        print(json.dumps({"hex": bytes(encoded).hex(), "fields": fields}, ensure_ascii=False))


def decode(spec):
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            decoded, _ = iso8583.decode(bytes.fromhex(line), spec)
        except iso8583.DecodeError as error:
            print(json.dumps({"error": str(error)}))
            continue
        fields = {key: value for key, value in decoded.items() if key not in ("p", "1", "h")}
        print(json.dumps({"fields": fields}, ensure_ascii=False))


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "generate":
        generate(load(path), int(sys.argv[3]))
    elif mode == "decode":
        decode(load(path))
    else:
        sys.exit(__doc__)
