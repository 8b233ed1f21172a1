//! Holds `PROTOCOL.md` to the code: every body's layout table (offset, size, field) and
//! every golden hex vector must match what the codec does, so the format cannot drift
//! silently. Run with `CODEC_PRINT_PROTOCOL=1` to print the generated tables and vectors.

use std::mem::{offset_of, size_of};

use codec::code::{RejectReason, ReplyCode, ReversalReason, SignOffReason, TransactionStatus};
use codec::message::*;
use codec::{MessageKind, encode_frame};
use rkyv::util::AlignedVec;

fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

struct Layout {
    name: &'static str,
    size: usize,
    fields: Vec<(&'static str, usize, usize)>,
}

macro_rules! layout {
    ($name:ident / $archived:ty { $($field:ident),* $(,)? }) => {
        Layout {
            name: stringify!($name),
            size: size_of::<$archived>(),
            fields: vec![$((
                stringify!($field),
                offset_of!($archived, $field),
                size_of_field::<$archived, _>(|body| &body.$field),
            )),*],
        }
    };
}

fn layouts() -> Vec<Layout> {
    vec![
        layout!(SignOnChallenge / ArchivedSignOnChallenge { switch_id, server_nonce, protocol_version, reserved }),
        layout!(
            SignOnRequest
                / ArchivedSignOnRequest { participant, client_nonce, proof, protocol_version, key_id, reserved }
        ),
        layout!(
            SignOnResult
                / ArchivedSignOnResult {
                    session_id,
                    server_proof,
                    echo_interval_ms,
                    idle_timeout_ms,
                    code,
                    frame_mac,
                    reserved
                }
        ),
        layout!(Echo / ArchivedEcho { sequence, sent_time_ms }),
        layout!(SignOff / ArchivedSignOff { code, reserved }),
        layout!(
            TransactionDetails
                / ArchivedTransactionDetails {
                    originator,
                    originator_transaction_id,
                    switch_reference,
                    amount_minor,
                    transaction_time_ms,
                    currency,
                    merchant_category_code,
                    merchant_country,
                    reserved,
                    merchant_id,
                    terminal_id,
                    merchant_name,
                    merchant_city,
                }
        ),
        layout!(PaymentCodeRequest / ArchivedPaymentCodeRequest { details, payment_code, conversion }),
        layout!(
            Conversion
                / ArchivedConversion { payer_amount_minor, rate, rate_version, payer_currency, margin_basis_points }
        ),
        layout!(QrPaymentRequest / ArchivedQrPaymentRequest { details, qr_length, reserved, qr_payload }),
        layout!(
            Reply
                / ArchivedReply {
                    originator,
                    originator_transaction_id,
                    switch_reference,
                    amount_minor,
                    reply_time_ms,
                    currency,
                    code,
                    reserved,
                    authorization_code,
                    responder,
                    conversion,
                }
        ),
        layout!(
            LinkedRequest
                / ArchivedLinkedRequest {
                    originator,
                    originator_transaction_id,
                    switch_reference,
                    original_switch_reference,
                    amount_minor,
                    transaction_time_ms,
                    currency,
                    reason,
                    reserved,
                    original_originator_transaction_id,
                    conversion,
                }
        ),
        layout!(
            StatusQuery
                / ArchivedStatusQuery {
                    originator,
                    original_originator_transaction_id,
                    original_switch_reference,
                    query_time_ms,
                }
        ),
        layout!(
            StatusReply
                / ArchivedStatusReply {
                    originator,
                    original_originator_transaction_id,
                    original_switch_reference,
                    amount_minor,
                    reply_time_ms,
                    currency,
                    code,
                    status,
                    reserved,
                }
        ),
        layout!(Reject / ArchivedReject { offset, reason, rejected_kind, reserved, detail }),
    ]
}

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
}

/// The rows `| offset | size | field | ...` of the table under `### {name} body (N bytes)`.
fn documented_rows(doc: &str, name: &str, size: usize) -> Vec<(String, usize, usize)> {
    let heading = format!("### {name} body ({size} bytes)");
    let start = doc.find(&heading).unwrap_or_else(|| panic!("PROTOCOL.md has no heading `{heading}`"));
    doc[start..]
        .lines()
        .skip(1)
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let offset = cells.get(1)?.parse().ok()?;
            let size = cells.get(2)?.parse().ok()?;
            Some((cells.get(3)?.trim_matches('`').to_string(), offset, size))
        })
        .collect()
}

#[test]
fn layout_tables_match_the_code() {
    let doc = protocol_md();
    for layout in layouts() {
        let mut end = 0;
        for &(_, offset, size) in &layout.fields {
            assert_eq!(offset, end, "{}: a gap before offset {offset} (implicit padding)", layout.name);
            end = offset + size;
        }
        assert_eq!(end, layout.size, "{}: fields do not cover the body", layout.name);
        let expected: Vec<_> = layout.fields.iter().map(|&(f, o, s)| (f.to_string(), o, s)).collect();
        assert_eq!(documented_rows(&doc, layout.name, layout.size), expected, "{} table in PROTOCOL.md", layout.name);
    }
}

#[test]
fn kind_table_matches_the_code() {
    let doc = protocol_md();
    for &kind in MessageKind::ALL {
        let row = format!("| 0x{:02X} | {:?} | {} | {} |", kind as u8, kind, kind.body_name(), kind.body_size());
        assert!(doc.contains(&row), "PROTOCOL.md kind table lacks the row `{row}`");
    }
}

#[test]
fn code_tables_match_the_code() {
    let doc = protocol_md();
    for &code in ReplyCode::ALL {
        let row =
            format!("| {} | {:?} | {} | {} |", code.value(), code, code.iso8583_response_code(), code.description());
        assert!(doc.contains(&row), "PROTOCOL.md reply code table lacks `{row}`");
    }
    let rows = RejectReason::ALL
        .iter()
        .map(|c| format!("| {} | {:?} | {} |", c.value(), c, c.description()))
        .chain(TransactionStatus::ALL.iter().map(|c| format!("| {} | {:?} | {} |", c.value(), c, c.description())))
        .chain(ReversalReason::ALL.iter().map(|c| format!("| {} | {:?} | {} |", c.value(), c, c.description())))
        .chain(SignOffReason::ALL.iter().map(|c| format!("| {} | {:?} | {} |", c.value(), c, c.description())));
    for row in rows {
        assert!(doc.contains(&row), "PROTOCOL.md lacks the code row `{row}`");
    }
}

fn hex_dump(bytes: &[u8]) -> String {
    let mut text = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        text.push_str(&format!("{:04x}:", line * 16));
        for (index, byte) in chunk.iter().enumerate() {
            text.push_str(if index == 8 { "  " } else { " " });
            text.push_str(&format!("{byte:02x}"));
        }
        text.push('\n');
    }
    text
}

fn golden_section() -> String {
    let mut text = String::new();
    for message in codec::sample::all_kinds() {
        let mut frame = AlignedVec::<16>::new();
        encode_frame(&message, &mut frame).expect("sample is valid");
        let kind = message.kind();
        text.push_str(&format!("### Golden vector: {kind:?} (kind 0x{:02X}, {} bytes)\n\n", kind as u8, frame.len()));
        text.push_str("```text\n");
        text.push_str(&hex_dump(&frame));
        text.push_str("```\n\n");
    }
    text
}

#[test]
fn golden_vectors_match_the_encoder_and_decode_back() {
    let generated = golden_section();
    if std::env::var_os("CODEC_PRINT_PROTOCOL").is_some() {
        println!("{generated}");
        for layout in layouts() {
            println!("### {} body ({} bytes)\n", layout.name, layout.size);
            for (field, offset, size) in &layout.fields {
                println!("| {offset} | {size} | `{field}` | | |");
            }
            println!();
        }
    }
    let doc = protocol_md();
    for (section, expected) in
        doc.split("### Golden vector: ").skip(1).zip(generated.split("### Golden vector: ").skip(1))
    {
        let documented = &section[..section.find("```\n\n").map_or(section.len(), |at| at + 5).min(section.len())];
        assert_eq!(documented.trim_end(), expected.trim_end(), "PROTOCOL.md golden vector drifted");
    }
    assert_eq!(doc.matches("### Golden vector: ").count(), MessageKind::ALL.len(), "one golden vector per kind");

    // And the documented bytes decode to the sample message (read from the document, not
    // from the encoder, so a client author can trust the vectors).
    for (section, message) in doc.split("### Golden vector: ").skip(1).zip(codec::sample::all_kinds()) {
        let block = section.split("```text\n").nth(1).and_then(|rest| rest.split("```").next()).expect("hex block");
        let mut bytes = AlignedVec::<16>::new();
        for line in block.lines() {
            for pair in line.split_once(':').expect("offset").1.split_whitespace() {
                bytes.push(u8::from_str_radix(pair, 16).expect("hex byte"));
            }
        }
        let frame = codec::decode_frame(&bytes).expect("golden vector is valid").expect("complete");
        assert_eq!(frame.message.to_message(), message);
    }
}

/// Section 12's authentication vectors, as the codec computes them: the sign-on proofs of
/// the golden challenge and request under ACQ0001's demo key, the direction keys of
/// session 7 (computed here from section 7's formula with HMAC-SHA256, independently of
/// `codec::mac`), and the golden EchoRequest as the participant's first tagged frame (the
/// codec's own encoder, checked against the formula).
fn authentication_vectors() -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let hmac = |key: &[u8], parts: &[&[u8]]| -> [u8; 32] {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    };
    let key = codec::signon::demo_key("ACQ0001");
    let Some(Message::SignOnChallenge(challenge)) =
        codec::sample::all_kinds().into_iter().find(|m| matches!(m, Message::SignOnChallenge(_)))
    else {
        panic!("the golden challenge")
    };
    let participant = codec::InstitutionId::new("ACQ0001").expect("valid");
    let client_nonce = [0xc3; 32];
    let request = codec::signon::sign_on_request(&challenge, participant, 1, &key, client_nonce);
    let session_id: u64 = 7;
    let transcript = codec::signon::SignOnTranscript {
        switch_id: &challenge.switch_id,
        participant: &participant,
        server_nonce: &challenge.server_nonce,
        client_nonce: &client_nonce,
    };
    let server_proof = codec::signon::server_proof(&key, &transcript, session_id);
    let bound: Vec<u8> = [
        challenge.switch_id.as_bytes(),
        participant.as_bytes(),
        &challenge.server_nonce[..],
        &client_nonce[..],
        &session_id.to_le_bytes()[..],
    ]
    .concat();
    let to_switch = hmac(&key, &[b"CSW1 mac p->s", &bound]);
    let to_participant = hmac(&key, &[b"CSW1 mac s->p", &bound]);
    let echo = codec::sample::all_kinds().into_iter().find(|m| matches!(m, Message::EchoRequest(_))).expect("echo");
    let macs = codec::SessionMacs::derive(codec::MacAlgorithm::HmacSha256, &key, &transcript, session_id)
        .expect("HMAC-SHA256");
    let mut encoder = codec::FrameEncoder::default();
    encoder.set_mac(Some(macs.to_switch));
    encoder.encode(&echo).expect("valid");
    let tagged = encoder.bytes().to_vec();
    let (frame, tag) = tagged.split_at(tagged.len() - codec::MAC_SIZE);
    let expected_tag = hmac(&to_switch, &[&1u64.to_le_bytes(), &frame[8..]]);
    assert_eq!(tag, &expected_tag[..16], "the codec's tag is section 7's formula");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut text = String::new();
    for (name, value) in [
        ("key", hex(&key)),
        ("client proof", hex(&request.proof)),
        ("server proof (session_id 7)", hex(&server_proof)),
        ("direction key p->s", hex(&to_switch)),
        ("direction key s->p", hex(&to_participant)),
        ("tag of the first EchoRequest", hex(tag)),
    ] {
        text.push_str(&format!("| {name} | `{value}` |\n"));
    }
    text.push_str("\n```text\n");
    text.push_str(&hex_dump(&tagged));
    text.push_str("```\n");
    text
}

#[test]
fn authentication_vectors_match_the_code() {
    let vectors = authentication_vectors();
    if std::env::var_os("CODEC_PRINT_PROTOCOL").is_some() {
        println!("{vectors}");
    }
    let doc = protocol_md();
    let section = &doc[doc.find("## 12. Authentication vectors").expect("section 12")..];
    for part in vectors.split("\n\n") {
        assert!(section.contains(part), "PROTOCOL.md section 12 lacks or differs from:\n{part}");
    }
}
