//! Participant-format micro benchmarks: EMV QR parse with its CRC check, ISO 8583 unpack and
//! pack of a typical 0200, and the payment-code issuer lookup. Fixed inputs.
//!
//! `cargo bench -p benchmarks --bench formats`

use std::hint::black_box;

use codec::emv_qr::MerchantQr;
use codec::iso8583::{IsoMessage, Profile};
use codec::payment_code::IssuerTable;
use criterion::{Criterion, criterion_group, criterion_main};

fn emv_qr(c: &mut Criterion) {
    let mut group = c.benchmark_group("emv_qr");
    let static_ascii = codec::sample::SAMPLE_QR_PAYLOAD;
    let dynamic = codec::sample::cross_border_qr_spec().encode().expect("valid spec");
    group.bench_function("parse_with_crc/static_ascii_122", |b| {
        b.iter(|| {
            let qr = MerchantQr::parse(black_box(static_ascii)).expect("valid");
            black_box((qr.guids().next(), qr.currency(), qr.amount()))
        })
    });
    group.bench_function(format!("parse_with_crc/dynamic_utf8_{}", dynamic.chars().count()), |b| {
        b.iter(|| {
            let qr = MerchantQr::parse(black_box(&dynamic)).expect("valid");
            black_box((qr.guids().next(), qr.currency(), qr.amount()))
        })
    });
    group.finish();
}

fn iso8583(c: &mut Criterion) {
    let mut group = c.benchmark_group("iso8583_0200");
    let model = codec::Message::PaymentCodeRequest(codec::sample::payment_code_request());
    let mut message = IsoMessage::default();
    codec::translate::to_iso(&model, &mut message).expect("translates");
    for name in Profile::BUILTIN {
        let profile = Profile::builtin(name).expect("built in");
        let mut bytes = Vec::with_capacity(1024);
        profile.pack(&message, &mut bytes).expect("packs");
        let mut decoded = IsoMessage::default();
        group.bench_function(format!("unpack/{name}_{}", bytes.len()), |b| {
            b.iter(|| {
                profile.unpack(black_box(&bytes), &mut decoded).expect("valid");
                black_box(decoded.get(4).map(<[u8]>::len))
            })
        });
        let mut out = Vec::with_capacity(1024);
        group.bench_function(format!("pack/{name}"), |b| {
            b.iter(|| {
                out.clear();
                profile.pack(black_box(&message), &mut out).expect("valid");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn payment_code(c: &mut Criterion) {
    let table = IssuerTable::china_default();
    c.bench_function("payment_code/lookup", |b| {
        b.iter(|| table.lookup(black_box("281234567890123456789")).map(|entry| entry.issuer))
    });
}

criterion_group!(benches, emv_qr, iso8583, payment_code);
criterion_main!(benches);
