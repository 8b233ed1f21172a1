#!/usr/bin/env python3
"""Prints the codec micro benchmarks' medians and ratios as a Markdown table, from the
estimates criterion wrote in the same invocation (target/criterion/payment_code_request).

  cargo bench -p benchmarks --bench codec && python3 benchmarks/scripts/codec_table.py
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parents[2] / "target" / "criterion" / "payment_code_request"
rows = ["native_validate_and_read", "native_encode", "serde_bincode_decode", "serde_bincode_decode_checked",
        "serde_bincode_encode"]
medians = {}
for name in rows:
    path = root / name / "new" / "estimates.json"
    if not path.exists():
        sys.exit(f"no estimates at {path}: run `cargo bench -p benchmarks --bench codec` first")
    estimate = json.loads(path.read_text())["median"]
    medians[name] = (estimate["point_estimate"], estimate["confidence_interval"]["lower_bound"],
                     estimate["confidence_interval"]["upper_bound"])
print("| benchmark | median (ns) | 95% CI (ns) |")
print("|---|---:|---:|")
for name in rows:
    median, low, high = medians[name]
    shown = name.replace("native_", "native/").replace("serde_bincode_", "serde_bincode/")
    print(f"| `{shown}` | {median:.1f} | {low:.1f}-{high:.1f} |")
native = medians["native_validate_and_read"][0]
print()
print(f"- bincode decode / native validate-and-read: **{medians['serde_bincode_decode'][0] / native:.2f}x**")
print(f"- bincode decode with CRC32C and the same field checks / native validate-and-read: "
      f"**{medians['serde_bincode_decode_checked'][0] / native:.2f}x**")
print(f"- native encode / bincode encode: {medians['native_encode'][0] / medians['serde_bincode_encode'][0]:.2f}x")
