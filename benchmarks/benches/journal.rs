//! Journal micro benchmarks: encoding one approved payment's records (admitted and
//! answered), decoding them back (what recovery does per record), and appending a batch of
//! 1,000 payments to a segment in the page cache (no sync: the sync is the disk's cost, see
//! the macro scenarios). Fixed inputs.
//!
//! `cargo bench -p benchmarks --bench journal`

use std::hint::black_box;

use codec::{AuthorizationCode, InstitutionId, PaymentCode, TransactionId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switch::core::record::Record;
use switch::journal::{Damage, Journal, SyncPolicy};

/// The two records of one approved consumer-presented payment.
fn payment(n: u64) -> [Record; 2] {
    [
        Record::Admitted {
            reference: n,
            time_ms: 1_771_286_370_000,
            originator: InstitutionId::new("ACQ0001").expect("valid"),
            receiver: InstitutionId::new("WECHATPAY").expect("valid"),
            id: TransactionId::new("ACQ0001-20260216-000000042").expect("valid"),
            amount_minor: 3_800,
            currency: 156,
            refund_of: 0,
            payment_code: Some(PaymentCode::new("134567890123451234").expect("valid")),
        },
        Record::Answered {
            reference: n,
            time_ms: 1_771_286_370_100,
            code: 0,
            authorization_code: AuthorizationCode::new("A1B2C3").expect("valid"),
        },
    ]
}

fn records(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_record");
    let records = payment(7);
    let mut bytes = Vec::with_capacity(512);
    records.iter().enumerate().for_each(|(i, r)| r.encode(i as u64 + 1, None, &mut bytes));
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function(format!("encode_payment/{}_bytes", bytes.len()), |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            for (i, record) in black_box(&records).iter().enumerate() {
                record.encode(i as u64 + 1, None, &mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("decode_payment", |b| {
        b.iter(|| {
            let (first, _, size) = Record::decode(black_box(&bytes), None).expect("valid");
            let (second, _, _) = Record::decode(&bytes[size..], None).expect("valid");
            black_box((first, second))
        })
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_append");
    let dir = std::env::temp_dir().join(format!("bench-journal-{}", std::process::id()));
    let open = || {
        let _ = std::fs::remove_dir_all(&dir);
        Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open").0
    };
    let batch: Vec<Record> = (0..1_000).flat_map(payment).collect();
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("1000_payments_no_sync", |b| {
        b.iter_custom(|iterations| {
            // A fresh journal every 100 batches (about 22 MB), outside the timing, so the
            // benchmark does not fill the disk.
            let mut journal = open();
            let mut total = std::time::Duration::ZERO;
            for iteration in 0..iterations {
                if iteration % 100 == 99 {
                    journal = open();
                }
                let started = std::time::Instant::now();
                journal.append(black_box(&batch)).expect("append");
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, records, append);
criterion_main!(benches);
