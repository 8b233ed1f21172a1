use codec::{FrameEncoder, Message};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn parts(c: &mut Criterion) {
    let message = Message::PaymentCodeRequest(codec::sample::payment_code_request());
    let mut encoder = FrameEncoder::with_capacity(4096);
    encoder.encode(&message).expect("valid");
    let mut frame = rkyv::util::AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.bytes());
    let body = &frame[16..];
    c.bench_function("crc_fast/checksum_244", |b| {
        b.iter(|| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, black_box(&frame[..])))
    });
    c.bench_function("crc_fast/digest_two_pieces", |b| {
        b.iter(|| {
            let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            d.update(black_box(&frame[..12]));
            d.update(black_box(body));
            d.finalize()
        })
    });
    c.bench_function("crc32c/two_pieces", |b| {
        b.iter(|| crc32c::crc32c_append(crc32c::crc32c(black_box(&frame[..12])), black_box(body)))
    });
    c.bench_function("rkyv/access_checked", |b| {
        b.iter(|| {
            rkyv::access::<codec::message::ArchivedPaymentCodeRequest, rkyv::rancor::Failure>(black_box(body)).is_ok()
        })
    });
    let archived = rkyv::access::<codec::message::ArchivedPaymentCodeRequest, rkyv::rancor::Failure>(body).unwrap();
    c.bench_function("validate_fields", |b| {
        b.iter(|| {
            codec::message::Validate::validate(black_box(archived), codec::MessageKind::PaymentCodeRequest).is_ok()
        })
    });
    let mut out = rkyv::util::AlignedVec::<16>::with_capacity(4096);
    let Message::PaymentCodeRequest(req) = &message else { unreachable!() };
    c.bench_function("rkyv/serialize", |b| {
        b.iter(|| {
            out.clear();
            rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Failure>(black_box(req), &mut out).is_ok()
        })
    });
}
criterion_group!(benches, parts);
criterion_main!(benches);
