//! Journal micro benchmarks: encoding one approved payment's records (admitted and
//! answered), decoding them back (what recovery does per record), and appending a batch of
//! 1,000 payments to a segment in the page cache (no sync: the sync is the disk's cost, see
//! the macro scenarios). Fixed inputs. And a window cut with a shard's default share of
//! remembered transactions (500,000 of the default 1,000,000 on two shards): the cut
//! finds the oldest record retention must keep with one pass over them, on the shard's
//! thread.
//!
//! `cargo bench -p benchmarks --bench journal`

use std::hint::black_box;

use codec::{AuthorizationCode, InstitutionId, PaymentCode, TransactionId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switch::core::record::Record;
use switch::durability::journal::{Damage, Journal, SyncPolicy};

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

/// An exchange remembering `count` approved payments (and one session per side).
fn exchange_remembering(count: u64) -> switch::core::exchange::Exchange {
    use codec::{Message, Reply};
    use switch::core::exchange::{Exchange, ExchangeConfig, Routes};
    use switch::core::session::Now;
    let id = |text: &str| InstitutionId::new(text).expect("valid");
    let mut exchange = Exchange::new(
        ExchangeConfig { completed_max: count as usize, ..ExchangeConfig::default() },
        Routes::embedded_default(),
    );
    let (mut out, mut records) = (Vec::new(), Vec::new());
    exchange.session_up(id("ACQ0001"), 1, &mut out);
    exchange.session_up(id("WECHATPAY"), 2, &mut out);
    let now = Now { monotonic_ms: 0, unix_ms: 1_771_286_370_000 };
    for n in 0..count {
        let mut request = codec::sample::payment_code_request();
        request.details.originator_transaction_id = TransactionId::new(&format!("B{n}")).expect("valid");
        request.payment_code = PaymentCode::new(&format!("13{n:016}")).expect("valid");
        out.clear();
        exchange.handle_request(now, 1, Message::PaymentCodeRequest(request), &mut out);
        let Some(Message::PaymentCodeRequest(forwarded)) = out.iter().map(|o| o.message.clone()).next() else {
            panic!("payment {n} was not forwarded: {out:?}");
        };
        let reply = Reply { switch_reference: forwarded.details.switch_reference, ..codec::sample::payment_reply() };
        exchange.handle_answer(now, id("WECHATPAY"), Message::PaymentReply(reply), &mut out);
        exchange.take_records(&mut records);
        records.clear();
    }
    exchange
}

fn cut(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_cut");
    group.sample_size(20);
    let remembered = 500_000;
    let mut exchange = exchange_remembering(remembered);
    let now = switch::core::session::Now { monotonic_ms: 0, unix_ms: 1_771_286_370_000 };
    let mut records = Vec::new();
    let mut window = 0;
    group.bench_function(format!("checkpoint_{remembered}_remembered"), |b| {
        b.iter(|| {
            window += 1;
            let low_water = exchange.cut(window, now);
            exchange.take_records(&mut records);
            records.clear();
            black_box(low_water)
        })
    });
    group.finish();
}

criterion_group!(benches, records, append, cut);
criterion_main!(benches);
