#!/usr/bin/env python3
"""Prints the medians of every criterion benchmark from the last invocation, one Markdown
table per group, from target/criterion/*/*/new/estimates.json.

  cargo bench -p benchmarks --bench formats && python3 benchmarks/scripts/medians.py iso8583_0200 emv_qr payment_code
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parents[2] / "target" / "criterion"
groups = sys.argv[1:] or sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "report")
for group in groups:
    estimates = sorted((root / group).glob("**/new/estimates.json"))
    if not estimates:
        sys.exit(f"no estimates for {group} under {root}: run the benchmark first")
    print(f"| `{group}` | median (ns) | 95% CI (ns) |")
    print("|---|---:|---:|")
    for path in estimates:
        name = path.parent.parent.relative_to(root / group).as_posix() or group
        median = json.loads(path.read_text())["median"]
        low, high = median["confidence_interval"]["lower_bound"], median["confidence_interval"]["upper_bound"]
        print(f"| {name} | {median['point_estimate']:.1f} | {low:.1f}-{high:.1f} |")
    print()
