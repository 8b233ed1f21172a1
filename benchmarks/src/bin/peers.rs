//! The switch's peers in the side-by-side benchmark (`benchmarks/scripts/peers.sh`):
//!
//! - `relay`: a bare relay, the limit of a two-hop proxy on this box. Each requester
//!   connection is paired with a responder connection and bytes are copied both ways:
//!   the same frames as the switch carries, with no logic at all.
//! - `relay-run`: drives the relay: responders answer each request frame with a reply
//!   frame (as an issuer does), requesters keep N in flight (closed loop) or send at a rate
//!   (open loop, latency from each request's intended send time).
//! - `nats-run`: the same through NATS core request-reply (`nats-server`): requesters call
//!   `request` with the same request frame as payload, responders in a queue group publish
//!   the same reply frame.
//!
//! Each run prints one JSON line: throughput, latency percentiles (microseconds), whether
//! it kept its schedule.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use codec::field::FieldText;
use codec::{FrameDecoder, FrameEncoder, Message, MessageRef, TransactionId};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(name = "peers", about = "The switch's peers in the side-by-side benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A bare relay: requester connections paired with responder connections, bytes copied.
    Relay {
        #[arg(long)]
        requesters: SocketAddr,
        #[arg(long)]
        responders: SocketAddr,
    },
    /// Drive a relay.
    RelayRun {
        #[arg(long)]
        requesters: SocketAddr,
        #[arg(long)]
        responders: SocketAddr,
        #[command(flatten)]
        load: Load,
    },
    /// Drive NATS core request-reply.
    NatsRun {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        /// Responders in the queue group.
        #[arg(long, default_value_t = 2)]
        responders: usize,
        #[command(flatten)]
        load: Load,
    },
}

#[derive(Debug, Args, Clone, Copy)]
struct Load {
    /// Closed loop: keep this many requests outstanding.
    #[arg(long, conflicts_with = "rate")]
    in_flight: Option<usize>,
    /// Open loop: requests per second.
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Connections (requester/responder pairs, or NATS clients per side).
    #[arg(long, default_value_t = 2)]
    connections: usize,
}

/// A request that left more than this late makes an open-loop run invalid.
const LATE: Duration = Duration::from_millis(10);

/// What a run measured.
#[derive(Debug)]
struct Measured {
    answered: u64,
    seconds: f64,
    late: u64,
    missing: u64,
    latency_us: Histogram<u64>,
}

impl Measured {
    fn json(&self, mode: &str) -> String {
        let h = &self.latency_us;
        let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        format!(
            "{{\"mode\":\"{mode}\",\"throughput\":{:.0},\"answered\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"late\":{},\"missing\":{},\"valid\":{}}}",
            self.answered as f64 / self.seconds,
            self.answered,
            q(0.5),
            q(0.99),
            q(0.999),
            h.max(),
            self.late,
            self.missing,
            self.late == 0 && self.missing == 0
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The request every peer carries: the typical payment-code request frame (248 bytes),
/// with `id` as its transaction id.
fn request_frame(id: &str, encoder: &mut FrameEncoder) -> anyhow::Result<()> {
    let mut request = codec::sample::payment_code_request();
    request.details.originator_transaction_id = TransactionId::new(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    encoder.encode(&Message::PaymentCodeRequest(request)).context("encoding a request")
}

/// The reply frame a responder sends for a request with transaction id `id`.
fn reply_frame(id: TransactionId, encoder: &mut FrameEncoder) -> anyhow::Result<()> {
    let reply = codec::Reply { originator_transaction_id: id, ..codec::sample::payment_reply() };
    encoder.encode(&Message::PaymentReply(reply)).context("encoding a reply")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Relay { requesters, responders } => relay(requesters, responders).await,
            Command::RelayRun { requesters, responders, load } => {
                let measured = relay_run(requesters, responders, load).await?;
                println!("{}", measured.json(if load.in_flight.is_some() { "closed" } else { "open" }));
                Ok(())
            }
            Command::NatsRun { url, responders, load } => {
                let measured = nats_run(&url, responders, load).await?;
                println!("{}", measured.json(if load.in_flight.is_some() { "closed" } else { "open" }));
                Ok(())
            }
        }
    })
}

async fn relay(requesters: SocketAddr, responders: SocketAddr) -> anyhow::Result<()> {
    let requester_listener = TcpListener::bind(requesters).await.with_context(|| format!("binding {requesters}"))?;
    let responder_listener = TcpListener::bind(responders).await.with_context(|| format!("binding {responders}"))?;
    let (waiting, mut ready) = tokio::sync::mpsc::unbounded_channel::<TcpStream>();
    tokio::spawn(async move {
        while let Ok((stream, _)) = responder_listener.accept().await {
            let _ = stream.set_nodelay(true);
            if waiting.send(stream).is_err() {
                break;
            }
        }
    });
    println!("relay: requesters on {requesters}, responders on {responders}");
    loop {
        let (mut requester, _) = requester_listener.accept().await?;
        requester.set_nodelay(true)?;
        let Some(mut responder) = ready.recv().await else { return Ok(()) };
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut requester, &mut responder).await;
        });
    }
}

/// A responder on one connection: a reply frame for every request frame, everything one
/// read brought in answered in one write.
async fn respond(mut stream: TcpStream) -> anyhow::Result<()> {
    let mut decoder = FrameDecoder::default();
    let mut encoder = FrameEncoder::default();
    loop {
        let count = stream.read(decoder.spare()).await?;
        if count == 0 {
            return Ok(());
        }
        decoder.commit(count);
        while let Some(frame) = decoder.decode()? {
            if let MessageRef::PaymentCodeRequest(request) = frame.message {
                reply_frame(request.details.originator_transaction_id, &mut encoder)?;
            }
        }
        if !encoder.is_empty() {
            stream.write_all(encoder.bytes()).await?;
            encoder.clear();
        }
    }
}

/// Sequence and intended send time (microseconds from the start) carried in an id.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (sequence, due) = id.split_once('-')?;
    Some((u64::from_str_radix(sequence, 16).ok()?, u64::from_str_radix(due, 16).ok()?))
}

async fn relay_run(requesters: SocketAddr, responders: SocketAddr, load: Load) -> anyhow::Result<Measured> {
    let connections = load.connections.max(1);
    for _ in 0..connections {
        let stream = TcpStream::connect(responders).await.context("connecting a responder to the relay")?;
        stream.set_nodelay(true)?;
        tokio::spawn(respond(stream));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for index in 0..connections {
        let stream = TcpStream::connect(requesters).await.context("connecting a requester to the relay")?;
        stream.set_nodelay(true)?;
        tasks.push(tokio::spawn(requester(stream, index as u64, connections as u64, load, start)));
    }
    let mut total = Measured { answered: 0, seconds: load.seconds, late: 0, missing: 0, latency_us: histogram() };
    for task in tasks {
        let part = task.await.context("requester task")??;
        total.answered += part.answered;
        total.late += part.late;
        total.missing += part.missing;
        total.latency_us.add(&part.latency_us).context("merging histograms")?;
    }
    Ok(total)
}

/// One requester connection: its share of the in-flight window or of the rate.
async fn requester(stream: TcpStream, index: u64, of: u64, load: Load, start: Instant) -> anyhow::Result<Measured> {
    let (mut read, mut write) = stream.into_split();
    let mut decoder = FrameDecoder::default();
    let mut encoder = FrameEncoder::default();
    let mut latency_us = histogram();
    let end = start + Duration::from_secs_f64(load.seconds);
    let elapsed_us = || start.elapsed().as_micros() as u64;
    let (mut sent, mut answered, mut late) = (0u64, 0u64, 0u64);
    tokio::time::sleep_until(start.into()).await;
    let mut id = String::with_capacity(32);
    let mut make = |sequence: u64, due_us: u64, encoder: &mut FrameEncoder| {
        use std::fmt::Write;
        id.clear();
        let _ = write!(id, "{sequence:x}-{due_us:x}");
        request_frame(&id, encoder)
    };
    match (load.in_flight, load.rate) {
        (Some(in_flight), _) => {
            let window = (in_flight as u64).div_ceil(of).max(1);
            for _ in 0..window {
                make(sent, elapsed_us(), &mut encoder)?;
                sent += 1;
            }
            write.write_all(encoder.bytes()).await?;
            encoder.clear();
            while answered < sent {
                let count = tokio::time::timeout(Duration::from_secs(5), read.read(decoder.spare())).await??;
                anyhow::ensure!(count > 0, "the relay closed the connection");
                decoder.commit(count);
                let now = elapsed_us();
                while let Some(frame) = decoder.decode()? {
                    if let MessageRef::PaymentReply(reply) = frame.message
                        && let Some((_, sent_us)) = parse_id(reply.originator_transaction_id.as_str())
                    {
                        latency_us.saturating_record(now.saturating_sub(sent_us).max(1));
                        answered += 1;
                        if Instant::now() < end {
                            make(sent, now, &mut encoder)?;
                            sent += 1;
                        }
                    }
                }
                if !encoder.is_empty() {
                    write.write_all(encoder.bytes()).await?;
                    encoder.clear();
                }
            }
        }
        (None, Some(rate)) => {
            let period_ns = 1e9 * of as f64 / rate as f64;
            let total = (load.seconds * rate as f64 / of as f64) as u64;
            let offset_ns = period_ns * index as f64 / of as f64;
            let reader = tokio::spawn(async move {
                let mut latency_us = histogram();
                let mut answered = 0u64;
                while answered < total {
                    let count = match tokio::time::timeout(Duration::from_secs(5), read.read(decoder.spare())).await {
                        Ok(result) => result?,
                        Err(_) => break,
                    };
                    if count == 0 {
                        break;
                    }
                    decoder.commit(count);
                    let now = start.elapsed().as_micros() as u64;
                    while let Some(frame) = decoder.decode()? {
                        if let MessageRef::PaymentReply(reply) = frame.message
                            && let Some((_, due_us)) = parse_id(reply.originator_transaction_id.as_str())
                        {
                            latency_us.saturating_record(now.saturating_sub(due_us).max(1));
                            answered += 1;
                        }
                    }
                }
                anyhow::Ok((answered, latency_us))
            });
            while sent < total {
                let now_ns = start.elapsed().as_nanos() as f64;
                while sent < total && offset_ns + sent as f64 * period_ns <= now_ns {
                    let due_ns = offset_ns + sent as f64 * period_ns;
                    if now_ns - due_ns > LATE.as_nanos() as f64 {
                        late += 1;
                    }
                    make(sent, (due_ns / 1000.0) as u64, &mut encoder)?;
                    sent += 1;
                }
                if !encoder.is_empty() {
                    write.write_all(encoder.bytes()).await?;
                    encoder.clear();
                }
                let next = start + Duration::from_nanos((offset_ns + sent as f64 * period_ns) as u64);
                tokio::time::sleep_until(next.into()).await;
            }
            let (got, histogram) = reader.await.context("reader")??;
            answered = got;
            latency_us = histogram;
        }
        (None, None) => anyhow::bail!("give --in-flight N or --rate R"),
    }
    Ok(Measured { answered, seconds: load.seconds, late, missing: sent - answered, latency_us })
}

async fn nats_run(url: &str, responders: usize, load: Load) -> anyhow::Result<Measured> {
    const SUBJECT: &str = "switch.pay";
    for _ in 0..responders.max(1) {
        let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
        let mut subscriber = client.queue_subscribe(SUBJECT, "responders".to_string()).await?;
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut encoder = FrameEncoder::default();
            while let Some(message) = subscriber.next().await {
                let Some(reply_to) = message.reply else { continue };
                let mut decoder = FrameDecoder::default();
                decoder.feed(&message.payload);
                let id = match decoder.decode() {
                    Ok(Some(frame)) => match frame.message {
                        MessageRef::PaymentCodeRequest(request) => request.details.originator_transaction_id,
                        _ => continue,
                    },
                    _ => continue,
                };
                if reply_frame(id, &mut encoder).is_ok() {
                    let _ = client.publish(reply_to, encoder.bytes().to_vec().into()).await;
                }
                encoder.clear();
            }
        });
    }
    let mut clients = Vec::new();
    for _ in 0..load.connections.max(1) {
        clients.push(async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?);
    }
    // Let the queue subscriptions reach the server.
    for client in &clients {
        client.flush().await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(load.seconds);
    let shared = Arc::new(Mutex::new((histogram(), 0u64)));
    let payload = |sequence: u64, due_us: u64| -> anyhow::Result<Vec<u8>> {
        let mut encoder = FrameEncoder::default();
        request_frame(&format!("{sequence:x}-{due_us:x}"), &mut encoder)?;
        Ok(encoder.bytes().to_vec())
    };
    let mut late = 0;
    let mut sent = 0u64;
    match (load.in_flight, load.rate) {
        (Some(in_flight), _) => {
            let mut tasks = Vec::new();
            for worker in 0..in_flight {
                let client = clients[worker % clients.len()].clone();
                let shared = Arc::clone(&shared);
                let body = payload(worker as u64, 0)?;
                tasks.push(tokio::spawn(async move {
                    let mut local = histogram();
                    let mut count = 0u64;
                    while Instant::now() < end {
                        let sent_at = Instant::now();
                        if client.request(SUBJECT, body.clone().into()).await.is_err() {
                            break;
                        }
                        local.saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
                        count += 1;
                    }
                    let mut totals = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = totals.0.add(&local);
                    totals.1 += count;
                }));
            }
            for task in tasks {
                task.await?;
            }
            let totals = shared.lock().unwrap_or_else(|e| e.into_inner());
            sent = totals.1;
        }
        (None, Some(rate)) => {
            let period_ns = 1e9 / rate as f64;
            let total = (load.seconds * rate as f64) as u64;
            let mut tasks = Vec::with_capacity(total as usize);
            while sent < total {
                let now_ns = start.elapsed().as_nanos() as f64;
                while sent < total && sent as f64 * period_ns <= now_ns {
                    let due_ns = sent as f64 * period_ns;
                    if now_ns - due_ns > LATE.as_nanos() as f64 {
                        late += 1;
                    }
                    let client = clients[(sent as usize) % clients.len()].clone();
                    let shared = Arc::clone(&shared);
                    let body = payload(sent, (due_ns / 1000.0) as u64)?;
                    tasks.push(tokio::spawn(async move {
                        if client.request(SUBJECT, body.into()).await.is_ok() {
                            let latency = (start.elapsed().as_nanos() as f64 - due_ns) / 1000.0;
                            let mut totals = shared.lock().unwrap_or_else(|e| e.into_inner());
                            totals.0.saturating_record((latency as u64).max(1));
                            totals.1 += 1;
                        }
                    }));
                    sent += 1;
                }
                let next = start + Duration::from_nanos((sent as f64 * period_ns) as u64);
                tokio::time::sleep_until(next.into()).await;
            }
            for task in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
        }
        (None, None) => anyhow::bail!("give --in-flight N or --rate R"),
    }
    let (latency_us, answered) = {
        let totals = shared.lock().unwrap_or_else(|e| e.into_inner());
        (totals.0.clone(), totals.1)
    };
    Ok(Measured { answered, seconds: load.seconds, late, missing: sent.saturating_sub(answered), latency_us })
}
