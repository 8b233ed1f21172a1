//! ISO 8583 against `pyiso8583` (PyPI), an implementation we did not write, with the same
//! profile file on both sides: messages it packs unpack identically here, and messages
//! packed here unpack identically there. Needs python3 with pyiso8583 4.0.1 (`.ci/run`
//! installs it); without it these tests fail and say so.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use codec::iso8583::{Content, IsoMessage, Profile};
use serde_json::Value;

fn profile_path(name: &str) -> String {
    format!("{}/profiles/iso8583/{name}.json", env!("CARGO_MANIFEST_DIR"))
}

fn peer(args: &[&str], input: Option<&str>) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/iso8583_peer.py");
    let check = Command::new("python3").args(["-c", "import iso8583"]).output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "pyiso8583 is required for the ISO 8583 interop tests: `python3 -m pip install pyiso8583==4.0.1` (.ci/run does)"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    if let Some(input) = input {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("python3 runs");
    assert!(output.status.success(), "iso8583_peer.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
}

/// Our message's fields in pyiso8583's decoded form.
fn as_peer_fields(profile: &Profile, message: &IsoMessage) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    fields.insert("t".to_string(), message.mti().to_string());
    for number in message.present() {
        let value = message.get(number).expect("present");
        let shown = match profile.field(number).expect("defined").content {
            Content::Binary => value.iter().map(|b| format!("{b:02X}")).collect(),
            _ => String::from_utf8(value.to_vec()).expect("text"),
        };
        fields.insert(number.to_string(), shown);
    }
    fields
}

fn peer_fields(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .expect("fields")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_string()))
        .collect()
}

#[test]
fn messages_packed_by_pyiso8583_unpack_identically() {
    for name in Profile::BUILTIN {
        let profile = Profile::builtin(name).expect("built in");
        let generated = peer(&["generate", &profile_path(name), "300"], None);
        assert_eq!(generated.len(), 300);
        let mut message = IsoMessage::default();
        for item in generated {
            let bytes = hex::decode(item["hex"].as_str().expect("hex")).expect("hex");
            profile.unpack(&bytes, &mut message).unwrap_or_else(|e| panic!("{name}: {e} in {}", item["hex"]));
            assert_eq!(as_peer_fields(&profile, &message), peer_fields(&item["fields"]), "{name}: {}", item["hex"]);
        }
    }
}

/// A small seeded generator, so every run packs the same messages.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below.max(1)
    }
}

fn random_message(profile: &Profile, rng: &mut Rng) -> IsoMessage {
    let mtis = ["0200", "0210", "0400", "0410", "0420", "0430", "0800", "0810"];
    let mut message = IsoMessage::new(mtis[rng.next(mtis.len())]).expect("valid MTI");
    for spec in profile.fields() {
        if rng.next(3) == 0 {
            continue;
        }
        let max = usize::from(spec.length_max);
        let length = if spec.prefix_bytes == 0 { max } else { 1 + rng.next(max.min(60)) };
        let value: Vec<u8> = match spec.content {
            Content::Numeric => (0..length).map(|_| b'0' + rng.next(10) as u8).collect(),
            Content::Alphanumeric => (0..length).map(|_| b"ABCXYZ0189"[rng.next(10)]).collect(),
            Content::Binary => (0..length).map(|_| rng.next(256) as u8).collect(),
            Content::Text if spec.data == codec::iso8583::Data::Utf8 => {
                let mut text = String::new();
                while text.len() + 3 <= length {
                    text.push(['静', 'a', '上', ' ', 'Z'][rng.next(5)]);
                }
                if text.is_empty() { "x".into() } else { text }.into_bytes()
            }
            Content::Text => (0..length).map(|_| b"Ab -./:&z9"[rng.next(10)]).collect(),
        };
        message.set(usize::from(spec.number), &value).expect("valid number");
    }
    message
}

#[test]
fn messages_packed_here_unpack_identically_in_pyiso8583() {
    for name in Profile::BUILTIN {
        let profile = Profile::builtin(name).expect("built in");
        let mut rng = Rng(8583);
        let messages: Vec<IsoMessage> = (0..300).map(|_| random_message(&profile, &mut rng)).collect();
        let mut input = String::new();
        for message in &messages {
            let mut bytes = Vec::new();
            profile.pack(message, &mut bytes).expect("packs");
            input.push_str(&hex::encode(bytes));
            input.push('\n');
        }
        let decoded = peer(&["decode", &profile_path(name)], Some(&input));
        assert_eq!(decoded.len(), 300);
        for (message, result) in messages.iter().zip(decoded) {
            assert!(result.get("error").is_none(), "{name}: pyiso8583 refused our message: {result}");
            assert_eq!(peer_fields(&result["fields"]), as_peer_fields(&profile, message), "{name}");
        }
    }
}
