//! Codec micro benchmarks: the native frame against serde + bincode, same message, same run.
//!
//! `cargo bench -p benchmarks --bench codec`
//!
//! - `native/validate_and_read`: header, CRC32C, layout (bytecheck) and every field's
//!   charset, range and code checked, then the router's fields read in place.
//! - `native/encode`: the owned message into a reused buffer, checked, sealed.
//! - `serde_bincode/decode`: bincode into owned `String`s; no integrity or field checks.
//! - `serde_bincode/decode_checked`: the same plus a CRC32C and the same field checks: what
//!   bincode costs for the native frame's guarantees.
//! - `mac/{hmac-sha256,hmac-sm3}/{sign,verify}`: the frame MAC of an authenticated session
//!   over the same frame (the keyed state precomputed, as a session holds it).

use std::hint::black_box;

use benchmarks::baseline::{self, BaselinePaymentRequest};
use codec::{FrameEncoder, Message, MessageRef, decode_frame};
use criterion::{Criterion, criterion_group, criterion_main};

fn payment_request(c: &mut Criterion) {
    let request = codec::sample::payment_code_request();
    let message = Message::PaymentCodeRequest(request.clone());
    let mut encoder = FrameEncoder::with_capacity(4096);
    encoder.encode(&message).expect("valid");
    let mut frame = rkyv::util::AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.bytes());

    let baseline_request = BaselinePaymentRequest::from(&request);
    let mut baseline_bytes = Vec::with_capacity(4096);
    baseline::encode(&baseline_request, &mut baseline_bytes);

    let mut group = c.benchmark_group("payment_code_request");
    // Validate the whole frame (header, CRC32C, layout, every field) and read the fields the
    // router needs, in place.
    group.bench_function("native/validate_and_read", |b| {
        b.iter(|| {
            let frame = decode_frame(black_box(&frame)).expect("valid").expect("complete");
            let MessageRef::PaymentCodeRequest(body) = frame.message else { unreachable!() };
            black_box((
                body.details.amount_minor.to_native(),
                body.payment_code.digits().len(),
                &body.details.originator,
            ))
        })
    });
    group.bench_function("native/encode", |b| {
        b.iter(|| {
            encoder.clear();
            encoder.encode(black_box(&message)).expect("valid");
            black_box(encoder.len())
        })
    });
    group.bench_function("serde_bincode/decode", |b| {
        b.iter(|| {
            let decoded = baseline::decode(black_box(&baseline_bytes)).expect("valid");
            black_box((decoded.amount_minor, decoded.payment_code.len()))
        })
    });
    let mut checked_bytes = Vec::with_capacity(4096);
    baseline::encode_checked(&baseline_request, &mut checked_bytes);
    group.bench_function("serde_bincode/decode_checked", |b| {
        b.iter(|| {
            let decoded = baseline::decode_checked(black_box(&checked_bytes)).expect("valid");
            black_box((decoded.amount_minor, decoded.payment_code.len()))
        })
    });
    group.bench_function("serde_bincode/encode", |b| {
        b.iter(|| {
            baseline::encode(black_box(&baseline_request), &mut baseline_bytes);
            black_box(baseline_bytes.len())
        })
    });
    group.finish();
}

fn frame_macs(c: &mut Criterion) {
    use codec::signon::SignOnTranscript;
    use codec::{InstitutionId, MacAlgorithm, SessionMacs};
    let mut encoder = FrameEncoder::with_capacity(4096);
    encoder.encode(&Message::PaymentCodeRequest(codec::sample::payment_code_request())).expect("valid");
    let frame = encoder.bytes().to_vec();
    let covered = &frame[8..];
    let (switch_id, participant) =
        (InstitutionId::new("CSWITCH").expect("id"), InstitutionId::new("ACQ0001").expect("id"));
    let transcript = SignOnTranscript {
        switch_id: &switch_id,
        participant: &participant,
        server_nonce: &[1; 32],
        client_nonce: &[2; 32],
    };
    let mut group = c.benchmark_group("payment_code_request");
    for algorithm in [MacAlgorithm::HmacSha256, MacAlgorithm::HmacSm3] {
        let macs = SessionMacs::derive(algorithm, b"benchmark key", &transcript, 1).expect("an algorithm");
        let mut signer = macs.to_switch.clone();
        group.bench_function(format!("mac/{}/sign", algorithm.name()), |b| {
            b.iter(|| black_box(signer.sign(black_box(covered))))
        });
        let mut verifier = macs.to_switch.clone();
        let tag = [0u8; codec::MAC_SIZE];
        // A wrong tag costs what a right one does: the whole MAC, then a constant-time compare.
        group.bench_function(format!("mac/{}/verify", algorithm.name()), |b| {
            b.iter(|| black_box(verifier.verify(black_box(covered), &tag)))
        });
    }
    group.finish();
}

criterion_group!(benches, payment_request, frame_macs);
criterion_main!(benches);
