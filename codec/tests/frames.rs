//! Frame codec tests: round trips of every kind, every bad-input class with its documented
//! error, and arbitrary bytes (which must never panic).

use codec::message::{AMOUNT_MINOR_MAX, QR_PAYLOAD_SIZE_MAX, TIME_MS_MAX};
use codec::*;
use proptest::prelude::*;
use rkyv::util::AlignedVec;

fn encode(message: &Message) -> AlignedVec<16> {
    let mut out = AlignedVec::new();
    encode_frame(message, &mut out).expect("valid message encodes");
    out
}

/// Decodes `bytes` (one or more frames) through a fresh decoder, fed in `chunk`-byte reads.
fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Result<Message, DecodeError>> {
    let mut decoder = FrameDecoder::default();
    let mut results = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => results.push(Ok(frame.message.to_message())),
                Ok(None) => break,
                Err(error) => {
                    results.push(Err(error));
                    if !error.is_recoverable() {
                        return results;
                    }
                }
            }
        }
        if fed == bytes.len() {
            return results;
        }
        let end = (fed + chunk).min(bytes.len());
        fed += decoder.feed(&bytes[fed..end]);
    }
}

#[test]
fn every_sample_kind_round_trips() {
    for message in codec::sample::all_kinds() {
        let bytes = encode(&message);
        assert_eq!(bytes.len(), HEADER_SIZE + message.kind().body_size());
        let frame = decode_frame(&bytes).expect("valid").expect("complete");
        assert_eq!(frame.message.kind(), message.kind());
        assert_eq!(frame.message.to_message(), message);
        assert_eq!(frame.bytes, bytes.as_slice());
    }
}

#[test]
fn many_frames_split_across_reads() {
    let messages = codec::sample::all_kinds();
    let mut stream = AlignedVec::<16>::new();
    for message in messages.iter().cycle().take(200) {
        encode_frame(message, &mut stream).expect("valid");
    }
    for chunk in [1, 7, 16, 100, 4096, 65536] {
        let decoded: Vec<_> = decode_all(&stream, chunk).into_iter().map(|r| r.expect("valid stream")).collect();
        assert_eq!(decoded.len(), 200, "chunk {chunk}");
        assert!(decoded.iter().zip(messages.iter().cycle()).all(|(a, b)| a == b), "chunk {chunk}");
    }
}

#[test]
fn encoder_refuses_invalid_messages_and_leaves_buffer_unchanged() {
    let mut encoder = FrameEncoder::default();
    encoder.encode(&Message::EchoRequest(Echo { sequence: 1, sent_time_ms: 0 })).expect("valid");
    let before = encoder.bytes().to_vec();

    let mut request = codec::sample::payment_code_request();
    request.payment_code = PaymentCode::EMPTY;
    let error = encoder.encode(&Message::PaymentCodeRequest(request)).expect_err("empty payment code");
    assert_eq!(
        error,
        EncodeError::InvalidField {
            kind: MessageKind::PaymentCodeRequest,
            field: "payment_code",
            offset: 200,
            problem: FieldProblem::Empty
        }
    );
    let mut request = codec::sample::payment_code_request();
    request.details.amount_minor = 0;
    assert!(matches!(
        encoder.encode(&Message::PaymentCodeRequest(request)),
        Err(EncodeError::InvalidField { field: "amount_minor", offset: 56, .. })
    ));
    assert_eq!(encoder.bytes(), before.as_slice());
}

// ---- bad input: each class gives its documented error ---------------------------------

fn sample_frame() -> Vec<u8> {
    encode(&Message::PaymentCodeRequest(codec::sample::payment_code_request())).to_vec()
}

/// Decodes one frame from an aligned copy of `bytes`.
fn decode_one(bytes: &[u8]) -> Result<Option<Message>, DecodeError> {
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    decode_frame(&aligned).map(|frame| frame.map(|f| f.message.to_message()))
}

#[test]
fn truncated_frames_need_more_bytes() {
    let frame = sample_frame();
    for length in 0..frame.len() {
        assert_eq!(decode_one(&frame[..length]), Ok(None), "prefix {length}");
    }
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let mut header = sample_frame()[..HEADER_SIZE].to_vec();
    header[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let error = decode_one(&header).expect_err("too large");
    assert_eq!(error, DecodeError::BodyTooLarge { offset: 0, length: 1 << 30, max: 720 });
    assert!(!error.is_recoverable());
    // The decoder does not wait for (or buffer) the announced gigabyte.
    let mut decoder = FrameDecoder::default();
    decoder.feed(&header);
    assert_eq!(decoder.decode().map(|f| f.is_some()), Err(error));
    assert_eq!(decoder.decode().map(|f| f.is_some()), Err(error), "the error sticks");
}

#[test]
fn header_errors_name_their_offset() {
    let check = |at: usize, value: u8, expected: DecodeError| {
        let mut frame = sample_frame();
        frame[at] = value;
        assert_eq!(decode_one(&frame), Err(expected), "byte {at} = {value}");
        assert!(!expected.is_recoverable());
    };
    check(8, b'X', DecodeError::BadMagic { offset: 8, found: *b"XS" });
    check(10, 1, DecodeError::UnsupportedVersion { offset: 10, version: 1 });
    check(13, 1, DecodeError::HeaderReservedNotZero { offset: 12 });
    check(0, 1, DecodeError::BodyLengthUnaligned { offset: 0, length: 257 });
}

#[test]
fn bad_checksum_closes_the_stream() {
    let frame = sample_frame();
    for at in [0x04, 0x07, 0x10, 0x50, frame.len() - 1] {
        let mut corrupt = frame.clone();
        corrupt[at] ^= 0x01;
        let error = decode_one(&corrupt).expect_err("corrupt");
        assert!(matches!(error, DecodeError::BadChecksum { offset: 4, .. }), "byte {at}: {error:?}");
        assert!(!error.is_recoverable());
    }
    // A changed kind byte is caught by the checksum too.
    let mut corrupt = frame.clone();
    corrupt[11] = MessageKind::QrPaymentRequest as u8;
    assert!(matches!(decode_one(&corrupt), Err(DecodeError::BadChecksum { .. })));
    // So is a changed length that stays within the limits: the covered range moves.
    let mut corrupt = frame.clone();
    corrupt[0] = 248;
    corrupt[1] = 0;
    assert!(matches!(decode_one(&corrupt[..16 + 248]), Err(DecodeError::BadChecksum { .. })));
}

#[test]
fn misaligned_buffers_are_refused() {
    let frame = sample_frame();
    let mut shifted = AlignedVec::<16>::new();
    shifted.push(0);
    shifted.extend_from_slice(&frame);
    assert_eq!(decode_frame(&shifted[1..]).map(|f| f.is_some()), Err(DecodeError::Misaligned { offset: 0 }));
}

/// A frame whose checksum holds but whose content is wrong is skipped; the stream goes on.
#[test]
fn well_framed_bad_frames_are_skipped_and_the_stream_goes_on() {
    let good = encode(&Message::EchoRequest(Echo { sequence: 9, sent_time_ms: 1 })).to_vec();
    let unknown_kind = {
        let mut frame = good.clone();
        frame[11] = 0x55;
        seal_frame(&mut frame);
        frame
    };
    let wrong_length = {
        let mut frame = good.clone();
        frame[11] = MessageKind::SignOffRequest as u8;
        seal_frame(&mut frame);
        frame
    };
    let bad_field = {
        let mut frame = sample_frame();
        frame[HEADER_SIZE + 200 + 3] = b'X'; // a letter inside the payment code
        seal_frame(&mut frame);
        frame
    };
    let bad_reserved = {
        let mut frame = sample_frame();
        frame[HEADER_SIZE + 78] = 1; // TransactionDetails.reserved
        seal_frame(&mut frame);
        frame
    };
    let stream = [unknown_kind, good.clone(), wrong_length, bad_field, bad_reserved, good].concat();
    let results = decode_all(&stream, 13);
    let echo = Ok(Message::EchoRequest(Echo { sequence: 9, sent_time_ms: 1 }));
    assert_eq!(
        results,
        vec![
            Err(DecodeError::UnknownKind { offset: 11, kind: 0x55 }),
            echo.clone(),
            Err(DecodeError::BodyLengthMismatch {
                offset: 0,
                kind: MessageKind::SignOffRequest,
                expected: 8,
                have: 16
            }),
            Err(DecodeError::InvalidField {
                offset: 16 + 200,
                kind: MessageKind::PaymentCodeRequest,
                field: "payment_code",
                problem: FieldProblem::BadCharacter { index: 3 }
            }),
            Err(DecodeError::InvalidField {
                offset: 16 + 78,
                kind: MessageKind::PaymentCodeRequest,
                field: "reserved",
                problem: FieldProblem::ReservedNotZero
            }),
            echo,
        ]
    );
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(DecodeError::is_recoverable));
}

#[test]
fn rejects_describe_the_error_without_sensitive_data() {
    let error = DecodeError::InvalidField {
        offset: 216,
        kind: MessageKind::PaymentCodeRequest,
        field: "payment_code",
        problem: FieldProblem::BadCharacter { index: 3 },
    };
    let reject = codec::frame::reject_for(&error, 0x10);
    let Message::Reject(body) = &reject else { panic!("not a reject: {reject:?}") };
    assert_eq!((body.offset, body.reason, body.rejected_kind), (216, RejectReason::InvalidField.value(), 0x10));
    assert!(body.detail.to_string().starts_with("PaymentCodeRequest field `payment_code` at offset 216"));
    encode(&reject);
}

// ---- properties ----------------------------------------------------------------------

fn field<T: std::str::FromStr + std::fmt::Debug>(pattern: &'static str) -> impl Strategy<Value = T>
where
    T::Err: std::fmt::Debug,
{
    proptest::string::string_regex(pattern)
        .expect("regex")
        .prop_map(|text| text.parse().expect("generated field is valid"))
}

/// UTF-8 text without control characters, at most `bytes` long.
fn utf8_text(bytes: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex("\\PC{0,40}").expect("regex").prop_map(move |mut text| {
        while text.len() > bytes {
            text.pop();
        }
        text
    })
}

fn details(merchant_known: bool) -> impl Strategy<Value = TransactionDetails> {
    let merchant_min = u16::from(merchant_known);
    (
        (field("[0-9A-Z]{1,16}"), field("[!-~]{1,32}"), any::<u64>(), 1..=AMOUNT_MINOR_MAX, 0..=TIME_MS_MAX),
        (1u16..=999, merchant_min..=9999, merchant_min..=999),
        (
            field(if merchant_known { "[!-~]{1,16}" } else { "[!-~]{0,16}" }),
            field("[!-~]{0,8}"),
            utf8_text(64),
            utf8_text(32),
        ),
    )
        .prop_map(
            |(
                (originator, id, reference, amount, time),
                (currency, mcc, country),
                (merchant, terminal, name, city),
            )| {
                TransactionDetails {
                    originator,
                    originator_transaction_id: id,
                    switch_reference: reference,
                    amount_minor: amount,
                    transaction_time_ms: time,
                    currency,
                    merchant_category_code: mcc,
                    merchant_country: country,
                    reserved: 0,
                    merchant_id: merchant,
                    terminal_id: terminal,
                    merchant_name: MerchantName::new(&name).expect("fits"),
                    merchant_city: City::new(&city).expect("fits"),
                }
            },
        )
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        (field("[0-9A-Z]{1,16}"), field("[!-~]{1,32}"), any::<u64>(), 0..=AMOUNT_MINOR_MAX, 0..=TIME_MS_MAX),
        (0u16..=999, proptest::sample::select(ReplyCode::ALL), field("[0-9A-Z]{0,8}"), field("[0-9A-Z]{1,16}")),
    )
        .prop_map(|((originator, id, reference, amount, time), (currency, code, authorization, responder))| {
            Reply {
                originator,
                originator_transaction_id: id,
                switch_reference: reference,
                amount_minor: amount,
                reply_time_ms: time,
                currency,
                code: code.value(),
                reserved: [0; 4],
                authorization_code: authorization,
                responder,
                conversion: codec::Conversion::NONE,
            }
        })
}

fn linked(reversal: bool) -> impl Strategy<Value = LinkedRequest> {
    (
        (field("[0-9A-Z]{1,16}"), field("[!-~]{1,32}"), any::<u64>(), 1..=u64::MAX, 1..=AMOUNT_MINOR_MAX),
        (0..=TIME_MS_MAX, 1u16..=999, proptest::sample::select(ReversalReason::ALL), field("[!-~]{0,32}")),
    )
        .prop_map(move |((originator, id, reference, original, amount), (time, currency, reason, original_id))| {
            LinkedRequest {
                originator,
                originator_transaction_id: id,
                switch_reference: reference,
                original_switch_reference: original,
                amount_minor: amount,
                transaction_time_ms: time,
                currency,
                reason: if reversal { reason.value() } else { 0 },
                reserved: [0; 4],
                original_originator_transaction_id: original_id,
                conversion: codec::Conversion::NONE,
            }
        })
}

fn message() -> impl Strategy<Value = Message> {
    let nonce = any::<[u8; 32]>();
    prop_oneof![
        (field("[0-9A-Z]{1,16}"), nonce, 1u16..).prop_map(|(switch_id, server_nonce, protocol_version)| {
            Message::SignOnChallenge(SignOnChallenge { switch_id, server_nonce, protocol_version, reserved: [0; 6] })
        }),
        (field("[0-9A-Z]{1,16}"), nonce, nonce, 1u16.., any::<u16>()).prop_map(
            |(participant, client_nonce, proof, protocol_version, key_id)| Message::SignOnRequest(SignOnRequest {
                participant,
                client_nonce,
                proof,
                protocol_version,
                key_id,
                reserved: [0; 4]
            })
        ),
        (any::<u64>(), nonce, any::<u32>(), any::<u32>(), proptest::sample::select(ReplyCode::ALL), 0u8..=2).prop_map(
            |(session_id, server_proof, echo_interval_ms, idle_timeout_ms, code, frame_mac)| Message::SignOnResult(
                SignOnResult {
                    session_id,
                    server_proof,
                    echo_interval_ms,
                    idle_timeout_ms,
                    code: code.value(),
                    frame_mac,
                    reserved: [0; 5]
                }
            )
        ),
        (any::<u64>(), 0..=TIME_MS_MAX, any::<bool>()).prop_map(|(sequence, sent_time_ms, reply)| {
            let echo = Echo { sequence, sent_time_ms };
            if reply { Message::EchoReply(echo) } else { Message::EchoRequest(echo) }
        }),
        proptest::sample::select(SignOffReason::ALL)
            .prop_map(|reason| Message::SignOffRequest(SignOff { code: reason.value(), reserved: [0; 6] })),
        proptest::sample::select(ReplyCode::ALL)
            .prop_map(|code| Message::SignOffReply(SignOff { code: code.value(), reserved: [0; 6] })),
        (details(true), field("[0-9]{1,32}")).prop_map(|(details, payment_code)| Message::PaymentCodeRequest(
            PaymentCodeRequest { details, payment_code, conversion: codec::Conversion::NONE }
        )),
        (details(false), proptest::string::string_regex("\\PC{1,200}").expect("regex")).prop_map(
            |(details, payload)| {
                let mut request = QrPaymentRequest { details, ..QrPaymentRequest::default() };
                let mut payload = payload;
                while payload.len() > QR_PAYLOAD_SIZE_MAX {
                    payload.pop();
                }
                request.set_payload(&payload).expect("fits");
                Message::QrPaymentRequest(request.into())
            }
        ),
        reply().prop_map(Message::PaymentReply),
        reply().prop_map(Message::ReversalReply),
        reply().prop_map(Message::RefundReply),
        linked(true).prop_map(Message::ReversalRequest),
        linked(false).prop_map(Message::RefundRequest),
        (field("[0-9A-Z]{1,16}"), field("[!-~]{1,32}"), any::<u64>(), 0..=TIME_MS_MAX).prop_map(
            |(originator, original_id, original_reference, time)| Message::StatusQuery(StatusQuery {
                originator,
                original_originator_transaction_id: original_id,
                original_switch_reference: original_reference,
                query_time_ms: time
            })
        ),
        (
            (field("[0-9A-Z]{1,16}"), field("[!-~]{1,32}"), any::<u64>(), 0..=AMOUNT_MINOR_MAX),
            (0..=TIME_MS_MAX, 0u16..=999, proptest::sample::select(ReplyCode::ALL)),
            proptest::sample::select(TransactionStatus::ALL)
        )
            .prop_map(|((originator, id, reference, amount), (time, currency, code), status)| {
                Message::StatusReply(StatusReply {
                    originator,
                    original_originator_transaction_id: id,
                    original_switch_reference: reference,
                    amount_minor: amount,
                    reply_time_ms: time,
                    currency,
                    code: code.value(),
                    status: status.value(),
                    reserved: [0; 3],
                })
            }),
        (any::<u32>(), proptest::sample::select(RejectReason::ALL), any::<u8>(), field("[ -~]{0,56}")).prop_map(
            |(offset, reason, rejected_kind, detail)| Message::Reject(Reject {
                offset,
                reason: reason.value(),
                rejected_kind,
                reserved: 0,
                detail
            })
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every kind: encode, then decode in random-sized reads, gives the same message.
    #[test]
    fn round_trip(messages in proptest::collection::vec(message(), 1..12), chunk in 1usize..2000) {
        let mut stream = AlignedVec::<16>::new();
        for message in &messages {
            encode_frame(message, &mut stream).expect("generated messages are valid");
        }
        let decoded: Vec<_> = decode_all(&stream, chunk).into_iter().map(|r| r.expect("valid stream")).collect();
        prop_assert_eq!(decoded, messages);
    }

    /// Arbitrary bytes never panic, and the decoder never buffers beyond its capacity.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..600) {
        let results = decode_all(&bytes, chunk);
        prop_assert!(results.iter().filter(|r| matches!(r, Err(e) if !e.is_recoverable())).count() <= 1);
    }

    /// A valid stream with bytes flipped never panics; whatever decodes is valid.
    #[test]
    fn mutated_streams_never_panic(
        messages in proptest::collection::vec(message(), 1..6),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        reseal in any::<bool>(),
    ) {
        let mut stream = AlignedVec::<16>::new();
        for message in &messages {
            encode_frame(message, &mut stream).expect("valid");
        }
        let length = stream.len();
        for (index, value) in flips {
            stream[index.index(length)] = value;
        }
        if reseal {
            // Re-seal the first frame so the mutation reaches the body checks.
            let size = HEADER_SIZE + messages[0].kind().body_size();
            seal_frame(&mut stream[..size]);
        }
        for result in decode_all(&stream, 64).into_iter().flatten() {
            let mut again = AlignedVec::<16>::new();
            encode_frame(&result, &mut again).expect("whatever decodes re-encodes");
        }
    }
}
