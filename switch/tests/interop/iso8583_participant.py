#!/usr/bin/env python3
"""An ISO 8583 participant written with pyiso8583, independent of our codec: it reads the
same profile file (codec/profiles/iso8583/*.json is in pyiso8583's spec format) and speaks
to the switch's ISO 8583 listener over TCP with the profile's 2-byte length header.

  acquirer HOST PORT PROFILE ID CODE...   sign on as ID, pay each payment code (0200),
                                          cancel the last payment (0400), echo, sign off;
                                          one JSON line per 0210 and 0410 received; the
                                          merchant in DE43 is MERCHANT_NAME and
                                          MERCHANT_CITY from the environment if set, in the
                                          profile's DE43 encoding (a GBK profile's in GBK)
  network HOST PORT PROFILE ID COUNT      sign on as ID, answer COUNT 0200 requests with an
                                          approving 0210 (echoing the request's fields); with
                                          SILENT_FIRST=1 in the environment, leave the first
                                          unanswered and acknowledge the 0420 reversal the
                                          switch then sends (0430); with PARTIAL_FIRST=1,
                                          approve the first for half its DE4 (DE39 10)
  conformance HOST PORT PROFILE ID CODE   sign on as ID (an acquirer); send 100 malformed or
                                          unsupported 0200/0400/0100 whose MTI and DE11 can
                                          be read, one that cannot be read, then pay CODE;
                                          one JSON line per answer (its case, DE11, DE37,
                                          DE41, DE42 and DE39 against what was sent)
  claim HOST PORT PROFILE ID              sign on as ID; print the 0810's DE39
  spoof HOST PORT PROFILE ID OTHER CODE   sign on as ID, pay CODE claiming to be OTHER
                                          (DE32); print the 0210

Exit status 0 when every exchange had the expected shape; the caller checks the content.
"""

import datetime
import json
import os
import random
import socket
import struct
import sys

import iso8583


def load(path):
    spec = json.load(open(path, encoding="utf-8"))
    spec.pop("_profile")
    return spec


class Link:
    def __init__(self, host, port, spec):
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.spec = spec
        self.stan = random.randint(1, 900000)

    def send(self, fields):
        self.send_raw(encoded(fields, self.spec))

    def send_raw(self, data):
        self.sock.sendall(struct.pack(">H", len(data)) + data)

    def receive(self):
        header = self._exactly(2)
        (length,) = struct.unpack(">H", header)
        decoded, _ = iso8583.decode(self._exactly(length), self.spec)
        return decoded

    def _exactly(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the switch closed the connection")
            data += chunk
        return data

    def next_stan(self):
        self.stan = self.stan % 999999 + 1
        return "%06d" % self.stan

    def network(self, code, institution=None):
        fields = {"t": "0800", "7": utc_now(), "11": self.next_stan(), "70": code}
        if institution:
            fields["32"] = institution
        self.send(fields)
        reply = self.receive()
        if reply["t"] != "0810" or reply.get("70") != code:
            raise ValueError("expected 0810 for network code %s, got %r" % (code, reply))
        return reply


def subelements(field48):
    """Field 48's subelements (2-digit tag, 3-digit byte length, value), by tag."""
    values, data, position = {}, field48.encode("utf-8"), 0
    while position + 5 <= len(data):
        tag, length = data[position:position + 2].decode(), int(data[position + 2:position + 5])
        values[tag] = data[position + 5:position + 5 + length].decode("utf-8")
        position += 5 + length
    return values


def fixed(text, width, encoding):
    """`text` padded with spaces to `width` bytes in `encoding` (DE43's fixed layout)."""
    raw = text.encode(encoding)
    if len(raw) > width:
        raise ValueError("%r is longer than %d bytes in %s" % (text, width, encoding))
    return (raw + b" " * (width - len(raw))).decode(encoding)


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%m%d%H%M%S")


def acquirer(link, institution, codes, claimed=None):
    signed_on = link.network("001", institution)
    print(json.dumps({"sign_on": signed_on.get("39")}), flush=True)
    if signed_on.get("39") != "00":
        return
    for index, code in enumerate(codes):
        local = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=8)))
        rrn = "%06d%06d" % (random.randint(0, 999999), index)
        request = {
            "t": "0200",
            "2": code,
            "3": "000000",
            "4": "%012d" % (1000 + index),
            "7": utc_now(),
            "11": link.next_stan(),
            "12": local.strftime("%H%M%S"),
            "13": local.strftime("%m%d"),
            "18": "5812",
            "22": "031",
            "25": "00",
            "32": claimed or institution,
            "37": rrn,
            "41": "TERM0001",
            "42": "MERCHANT0000001",
            "43": fixed(os.environ.get("MERCHANT_NAME", "JINGAN COFFEE"), 25, link.spec["43"]["data_enc"])
            + fixed(os.environ.get("MERCHANT_CITY", "SHANGHAI"), 13, link.spec["43"]["data_enc"])
            + "CN",
            "49": "156",
        }
        link.send(request)
        reply = link.receive()
        print(json.dumps({
            "mti": reply["t"],
            "rrn_sent": rrn,
            "rrn": reply.get("37"),
            "amount": reply.get("4"),
            "currency": reply.get("49"),
            "response": reply.get("39"),
            "authorization": reply.get("38", "").strip(),
            # The switch's conversion into the payer's currency (DE48 16), if any.
            "conversion": subelements(reply.get("48", "")).get("16"),
        }), flush=True)
    if claimed:
        return
    # Cancel the last payment (0400): its own id in DE37, the payment's in DE48 09.
    cancel_rrn = "%06dC%05d" % (random.randint(0, 999999), len(codes))
    original = request["37"]
    link.send({
        "t": "0400",
        "3": "000000",
        "4": request["4"],
        "7": utc_now(),
        "11": link.next_stan(),
        "32": institution,
        "37": cancel_rrn,
        "48": "09%03d%s" % (len(original), original),
        "49": "156",
    })
    reply = link.receive()
    print(json.dumps({
        "mti": reply["t"],
        "cancelled": original,
        "response": reply.get("39"),
        "conversion": subelements(reply.get("48", "")).get("16"),
    }), flush=True)
    echo = link.network("301")
    print(json.dumps({"echo": echo.get("39", "00")}), flush=True)
    off = link.network("002")
    print(json.dumps({"sign_off": off.get("39")}), flush=True)


ECHOED = ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "48", "49", "90")


def network(link, institution, count):
    signed_on = link.network("001", institution)
    print(json.dumps({"sign_on": signed_on.get("39")}), flush=True)
    silent = os.environ.get("SILENT_FIRST") == "1"
    answered = 0
    while answered < int(count):
        request = link.receive()
        reply = {key: value for key, value in request.items() if key in ECHOED}
        if request["t"] == "0420":
            reply.update({"t": "0430", "39": "00"})
            link.send(reply)
            original = subelements(request.get("48", "")).get("09")
            print(json.dumps({"reversal": original, "amount": request.get("4")}), flush=True)
            continue
        if request["t"] != "0200":
            raise ValueError("expected 0200 or 0420, got %r" % request)
        if silent:
            silent = False
            print(json.dumps({"ignored": request.get("37")}), flush=True)
            continue
        reply.update({"t": "0210", "38": "NW%04d" % random.randint(0, 9999), "39": "00"})
        if os.environ.get("PARTIAL_FIRST") == "1" and answered == 0:
            # A partial approval: DE39 10, half the amount in DE4.
            reply.update({"39": "10", "4": "%012d" % (int(request["4"]) // 2)})
        link.send(reply)
        answered += 1
        print(json.dumps({"answered": request.get("37"), "amount": request.get("4"), "code": request.get("2", "")[:6]}), flush=True)


def payment_fields(link, institution, code, rrn):
    """A well-formed 0200 for payment code CODE, DE37 RRN, a new STAN."""
    local = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=8)))
    return {
        "t": "0200", "2": code, "3": "000000", "4": "000000001234", "7": utc_now(),
        "11": link.next_stan(), "12": local.strftime("%H%M%S"), "13": local.strftime("%m%d"),
        "18": "5812", "22": "031", "25": "00", "32": institution, "37": rrn,
        "41": "T%07d" % random.randint(0, 9999999), "42": "M%014d" % random.randint(0, 10 ** 14 - 1),
        "43": fixed("JINGAN COFFEE", 25, link.spec["43"]["data_enc"])
        + fixed("SHANGHAI", 13, link.spec["43"]["data_enc"]) + "CN",
        "49": "156",
    }


def encoded(fields, spec):
    data, _ = iso8583.encode(dict(fields), spec)
    return bytes(data)


def malformed(case, fields, spec):
    """The bytes of a 0200 (or 0400, 0100) that is wrong in the way CASE names; its MTI and
    DE11 stay readable."""
    if case == "bad_field_48":
        fields["48"] = "99ZZZ"
    elif case == "no_currency":
        del fields["49"]
    elif case == "no_amount":
        del fields["4"]
    elif case == "zero_amount":
        fields["4"] = "000000000000"
    elif case == "lowercase_institution":
        fields["32"] = fields["32"].lower()
    elif case == "cancel_bad_field_48":
        fields.update({"t": "0400", "48": "99ZZZ"})
        del fields["2"]
    elif case == "processing_code_99":
        fields["3"] = "990000"
    elif case == "processing_code_to_account":
        fields["3"] = "000099"
    elif case == "authorization_0100":
        fields["t"] = "0100"
    data = encoded(fields, spec)
    if case == "trailing_bytes":
        data += b"\x00\x01"
    elif case == "truncated":
        data = data[:-3]
    return data


MALFORMED = {
    "bad_field_48": "30", "no_currency": "30", "no_amount": "30", "zero_amount": "30",
    "lowercase_institution": "30", "cancel_bad_field_48": "30", "trailing_bytes": "30",
    "truncated": "30", "processing_code_99": "12", "processing_code_to_account": "12",
    "authorization_0100": "12",
}


def conformance(link, institution, code):
    signed_on = link.network("001", institution)
    print(json.dumps({"sign_on": signed_on.get("39")}), flush=True)
    cases = list(MALFORMED)
    for index in range(100):
        case = cases[index % len(cases)]
        fields = payment_fields(link, institution, code, "MAL%09d" % index)
        link.send_raw(malformed(case, fields, link.spec))
        reply = link.receive()
        print(json.dumps({
            "case": case, "expected": MALFORMED[case], "mti_sent": fields["t"], "mti": reply["t"],
            "response": reply.get("39"), "stan_sent": fields["11"], "stan": reply.get("11"),
            "rrn_sent": fields["37"], "rrn": reply.get("37"), "tid_sent": fields["41"], "tid": reply.get("41"),
            "mid_sent": fields["42"], "mid": reply.get("42"),
        }), flush=True)
    # One that cannot be answered: the bitmap announces field 5, which the profile does
    # not define, so nothing after it (DE11 included) can be read. No answer; the link
    # stays up for the payment after it.
    unreadable = bytearray(encoded(payment_fields(link, institution, code, "UNREADABLE01"), link.spec))
    unreadable[2] |= 0x08
    link.send_raw(bytes(unreadable))
    fields = payment_fields(link, institution, code, "GOOD00000001")
    link.send(fields)
    reply = link.receive()
    print(json.dumps({
        "case": "payment", "expected": "00", "mti_sent": "0200", "mti": reply["t"], "response": reply.get("39"),
        "stan_sent": fields["11"], "stan": reply.get("11"), "rrn_sent": fields["37"], "rrn": reply.get("37"),
        "tid_sent": fields["41"], "tid": reply.get("41"), "mid_sent": fields["42"], "mid": reply.get("42"),
    }), flush=True)
    off = link.network("002")
    print(json.dumps({"sign_off": off.get("39")}), flush=True)


def main():
    mode, host, port, profile, institution = sys.argv[1:6]
    link = Link(host, port, load(profile))
    if mode == "acquirer":
        acquirer(link, institution, sys.argv[6:])
    elif mode == "network":
        network(link, institution, sys.argv[6])
    elif mode == "spoof":
        acquirer(link, institution, sys.argv[7:8], claimed=sys.argv[6])
    elif mode == "conformance":
        conformance(link, institution, sys.argv[6])
    elif mode == "claim":
        reply = link.network("001", institution)
        print(json.dumps({"sign_on": reply.get("39")}), flush=True)
    else:
        raise SystemExit("unknown mode %s" % mode)


if __name__ == "__main__":
    main()
