//! Cross-shard hand-off: a request event pushed into another shard's inbox (a bounded
//! crossbeam `ArrayQueue`) by one thread and taken by another, in batches of 256 with one
//! wake-up per batch, as connections and shard loops do. Measures the per-event cost of
//! the only path shards share. Fixed inputs.
//!
//! `cargo bench -p benchmarks --bench handoff`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use codec::Message;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switch::edge::shard::{Event, Mesh, Touched};

const BATCH: u64 = 256;

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(BATCH));
    let request = Message::PaymentCodeRequest(codec::sample::payment_code_request());

    // The same thread pushes and pops: the queue's own cost, no cache line moving.
    let mesh = Mesh::new(2);
    group.bench_function("same_thread_256", |b| {
        b.iter(|| {
            let mut touched = Touched::default();
            for n in 0..BATCH {
                let event = Event::Request { session: n, message: request.clone() };
                assert!(mesh.try_push(1, event, &mut touched).is_ok());
            }
            let mut taken = 0;
            while let Some(event) = mesh.try_pop(1) {
                std::hint::black_box(event);
                taken += 1;
            }
            assert_eq!(taken, BATCH);
        });
    });

    // Another thread takes them: what a hand-off between shards costs.
    let mesh = Arc::new(Mesh::new(2));
    let taken = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (mesh, taken, stop) = (Arc::clone(&mesh), Arc::clone(&taken), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match mesh.try_pop(1) {
                    Some(event) => {
                        std::hint::black_box(event);
                        taken.fetch_add(1, Ordering::Release);
                    }
                    None => std::hint::spin_loop(),
                }
            }
        })
    };
    group.bench_function("cross_thread_256", |b| {
        b.iter_custom(|iterations| {
            let start = Instant::now();
            let mut pushed = taken.load(Ordering::Acquire);
            for _ in 0..iterations {
                let mut touched = Touched::default();
                for n in 0..BATCH {
                    let mut event = Event::Request { session: n, message: request.clone() };
                    while let Err(back) = mesh.try_push(1, event, &mut touched) {
                        event = back;
                        std::hint::spin_loop();
                    }
                }
                mesh.wake(&mut touched);
                pushed += BATCH;
            }
            while taken.load(Ordering::Acquire) < pushed {
                std::hint::spin_loop();
            }
            start.elapsed()
        });
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = consumer.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = handoff
}
criterion_main!(benches);
