//! EMV QR against implementations we did not write (npm's `promptpay-qr` and `pix-utils`,
//! run by `tests/interop/emv_qr_peers.mjs`): their payloads parse here with a valid CRC and
//! the right fields, and payloads generated here validate in `pix-utils`.
//!
//! Needs Node.js and `npm ci --prefix codec/tests/interop` (`.ci/run` does both); without
//! them these tests fail and say so.

use std::io::Write;
use std::process::{Command, Stdio};

use codec::emv_qr::{AccountSpec, Initiation, MerchantQr, QrSpec};
use serde_json::Value;

fn peers(args: &[&str], input: Option<&str>) -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
    assert!(
        std::path::Path::new(dir).join("node_modules/pix-utils").exists(),
        "the EMV QR interop peers are not installed: run `npm ci --prefix codec/tests/interop` (.ci/run does)"
    );
    let mut child = Command::new("node")
        .arg(format!("{dir}/emv_qr_peers.mjs"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("node is required for the EMV QR interop tests and could not run: {error}"));
    if let Some(input) = input {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write to node");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("node runs");
    assert!(output.status.success(), "emv_qr_peers.mjs {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}

#[test]
fn payloads_from_independent_generators_parse_with_the_right_fields() {
    let generated = peers(&["generate", "300"], None);
    assert_eq!(generated.len(), 300);
    for item in &generated {
        let payload = item["payload"].as_str().expect("payload");
        let expect = &item["expect"];
        let qr = MerchantQr::parse(payload).unwrap_or_else(|e| panic!("{} payload {payload}: {e}", item["library"]));
        assert_eq!(u64::from(qr.currency()), expect["currency"].as_u64().expect("currency"), "{payload}");
        assert_eq!(qr.country(), expect["country"], "{payload}");
        assert_eq!(qr.amount_minor(), Some(Ok(expect["amount_minor"].as_u64().expect("amount"))), "{payload}");
        if let Some(guid) = expect["guid"].as_str() {
            assert_eq!(qr.guids().next(), Some(guid), "{payload}");
            assert_eq!(qr.merchant_name(), expect["name"], "{payload}");
            assert_eq!(qr.merchant_city(), expect["city"], "{payload}");
        } else {
            let prefix = expect["guid_prefix"].as_str().expect("guid prefix");
            assert!(qr.guids().next().is_some_and(|g| g.starts_with(prefix)), "{payload}");
        }
    }
}

fn pix_spec(index: u32) -> QrSpec {
    QrSpec {
        initiation: Initiation::Static,
        accounts: vec![AccountSpec {
            tag: 26,
            guid: "br.gov.bcb.pix".into(),
            fields: vec![(1, format!("loja{index}@example.com"))],
        }],
        merchant_category_code: 5812,
        currency: 986,
        amount: Some(format!("{}.{:02}", 1 + index * 7, index % 100)),
        country: "BR".into(),
        merchant_name: format!("LOJA {index}"),
        merchant_city: "SAO PAULO".into(),
        postal_code: None,
        additional_data: vec![(5, format!("TX{index:06}"))],
        alternate_language: None,
    }
}

#[test]
fn payloads_generated_here_validate_in_pix_utils() {
    let payloads: Vec<String> = (0..100).map(|i| pix_spec(i).encode().expect("valid spec")).collect();
    // A negative control: the validator must refuse a payload with a broken CRC.
    let mut broken = payloads[0].clone();
    broken.replace_range(broken.len() - 4.., "0000");
    let input = payloads.iter().chain(std::iter::once(&broken)).cloned().collect::<Vec<_>>().join("\n") + "\n";
    let results = peers(&["validate"], Some(&input));
    assert_eq!(results.len(), 101);
    for (index, (result, payload)) in results.iter().zip(&payloads).enumerate() {
        assert_eq!(result["ok"], true, "pix-utils refused {payload}: {result}");
        let fields = &result["fields"];
        assert_eq!(fields["name"], format!("LOJA {index}"));
        assert_eq!(fields["key"], format!("loja{index}@example.com"));
        assert_eq!(fields["txid"], format!("TX{index:06}"));
        assert_eq!(fields["currency"], "986");
    }
    assert_eq!(results[100]["ok"], false, "pix-utils must refuse a broken CRC: {}", results[100]);
}
