//! Starts the real switch edge on a loopback port and talks to it as participants do,
//! through the load generator's client (which knows nothing of the switch's code).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codec::{Echo, InstitutionId, Message, MessageRef, ReplyCode};
use loadgen::client::Client;
use switch::config::{SwitchConfig, demo_key};
use switch::edge::tcp::{Shared, serve};
use switch::participant::Directory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Running {
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), switch::durability::journal::JournalError>>,
}

async fn start_switch_with(drain_timeout_ms: u64) -> Running {
    let mut config = SwitchConfig::embedded_default();
    config.session.drain_timeout_ms = drain_timeout_ms;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let shared = Arc::new(Shared::new(config.session, Directory::new(config.participants)));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let served = tokio::spawn(serve(listener, shared, async {
        let _ = stopped.await;
    }));
    Running { address, stop, served }
}

async fn start_switch() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let running = start_switch_with(5_000).await;
    (running.address, running.stop)
}

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

#[tokio::test]
async fn sign_on_echo_and_an_explicit_answer_for_every_request() {
    let (address, _stop) = start_switch().await;
    let mut client = Client::connect(address, id("ACQ0001"), 1, &demo_key("ACQ0001")).await.expect("sign on");
    assert_ne!(client.session_id, 0);

    client.writer.send(&Message::EchoRequest(Echo { sequence: 7, sent_time_ms: 1 })).await.expect("send");
    let sequence = client
        .reader
        .next(|m| match m {
            MessageRef::EchoReply(echo) => echo.sequence.to_native(),
            other => panic!("expected an echo reply, got {:?}", other.kind()),
        })
        .await
        .expect("echo reply");
    assert_eq!(sequence, 7);

    // A request as ourselves is routed to WeChat Pay, which is not signed on here: an
    // explicit answer. A request claiming another originator is refused.
    let mut request = common::payment_code_request();
    client.writer.queue(&Message::PaymentCodeRequest(request.clone())).expect("queue");
    request.details.originator = id("ACQ0002");
    client.writer.queue(&Message::PaymentCodeRequest(request)).expect("queue");
    client.writer.flush().await.expect("flush");
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(
            client
                .reader
                .next(|m| match m {
                    MessageRef::PaymentReply(reply) => reply.code(),
                    other => panic!("expected a reply, got {:?}", other.kind()),
                })
                .await
                .expect("reply"),
        );
    }
    // Replies are matched by transaction, not by order: the refusal comes straight from the
    // session, the routed answer from the exchange.
    codes.sort();
    assert_eq!(codes, vec![ReplyCode::DestinationUnavailable, ReplyCode::NotAuthorised]);
}

#[tokio::test]
async fn wrong_key_is_refused() {
    let (address, _stop) = start_switch().await;
    let error = Client::connect(address, id("ACQ0001"), 1, b"not the key").await.expect_err("refused");
    assert!(error.to_string().contains("refused with reply code 106"), "{error:#}");
}

#[tokio::test]
async fn garbage_gets_a_reject_and_the_connection_closes() {
    let (address, _stop) = start_switch().await;
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let mut challenge = [0u8; 72];
    stream.read_exact(&mut challenge).await.expect("challenge");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: switch\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the switch closes the connection")
        .expect("read");
    let mut decoder = codec::FrameDecoder::default();
    decoder.feed(&answer);
    let frame = decoder.decode().expect("a valid frame").expect("complete");
    let MessageRef::Reject(reject) = frame.message else { panic!("expected a reject") };
    assert_eq!(reject.reason.to_native(), codec::RejectReason::BadMagic.value());
}

#[tokio::test]
async fn open_loop_run_is_answered_in_full() {
    let (address, _stop) = start_switch().await;
    // Only the acquirer signs on: every payment is answered by the switch itself.
    let profile = loadgen::profile::Profile::parse("codes-only.toml", CODES_ONLY).expect("valid profile");
    let schedule = loadgen::schedule::Schedule::constant(2_000.0, Duration::from_millis(500));
    let spec = loadgen::engine::RunSpec {
        participants: loadgen::participants::demo().into_iter().filter(|p| p.id == id("ACQ0001")).collect(),
        ..loadgen::engine::RunSpec::new(address, Arc::new(profile), schedule)
    };
    let outcome = loadgen::engine::run(spec).await.expect("run");
    let table = loadgen::report::table(&outcome);
    // Late sends on a shared box make the run invalid, not wrong: every request sent must
    // still be answered exactly once.
    assert!(outcome.exact(), "{table}");
    assert!((990..=1_010).contains(&outcome.counters.scheduled), "{table}");
    assert!(outcome.counters.sent >= 800, "{table}");
    let by_code = outcome.replies_by_code();
    assert_eq!(by_code.get(&ReplyCode::DestinationUnavailable.value()), Some(&outcome.counters.sent), "{table}");
    assert_eq!(outcome.total.len(), outcome.counters.sent);
}

/// A profile of consumer-presented payments only, no refunds or queries.
const CODES_ONLY: &str = r#"
name = "codes-only"
title = "consumer-presented payments only"
day_transactions = 86400
points = [["00:00", 1.0], ["01:00", 1.0]]
[mix]
merchant_presented = 0.0
refunds = 0.0
queries = 0.0
[mix.amount]
median = "38.00"
p90 = "260.00"
max = "1000.00"
[[mix.wallet]]
name = "WeChat Pay"
participant = "WECHATPAY"
prefix = "13"
digits = 18
share = 1.0
"#;

#[tokio::test]
async fn shutdown_signs_off_sessions_and_waits_for_their_answer() {
    let running = start_switch_with(5_000).await;
    let mut client = Client::connect(running.address, id("ACQ0001"), 1, &demo_key("ACQ0001")).await.expect("sign on");
    running.stop.send(()).expect("switch running");
    let reason = client
        .reader
        .next(|m| match m {
            MessageRef::SignOffRequest(sign_off) => sign_off.code.to_native(),
            other => panic!("expected a sign-off, got {:?}", other.kind()),
        })
        .await
        .expect("sign-off");
    assert_eq!(reason, codec::SignOffReason::Shutdown.value());
    // New work while draining is refused explicitly.
    client.writer.send(&Message::PaymentCodeRequest(common::payment_code_request())).await.expect("send");
    let code = client
        .reader
        .next(|m| match m {
            MessageRef::PaymentReply(reply) => reply.code(),
            other => panic!("expected a reply, got {:?}", other.kind()),
        })
        .await
        .expect("reply");
    assert_eq!(code, ReplyCode::SystemBusy);
    let reply = codec::SignOff { code: ReplyCode::Approved.value(), reserved: [0; 6] };
    client.writer.send(&Message::SignOffReply(reply)).await.expect("send");
    assert!(client.reader.next(|_| ()).await.is_err(), "the switch closes after the sign-off reply");
    // The drain ended on the answer, long before its 5 s deadline.
    tokio::time::timeout(Duration::from_secs(2), running.served)
        .await
        .expect("drained promptly")
        .expect("serve")
        .expect("no journal");
}

#[tokio::test]
async fn a_silent_session_is_closed_at_the_drain_deadline() {
    let running = start_switch_with(300).await;
    let mut client = Client::connect(running.address, id("ACQ0001"), 1, &demo_key("ACQ0001")).await.expect("sign on");
    let started = std::time::Instant::now();
    running.stop.send(()).expect("switch running");
    tokio::time::timeout(Duration::from_secs(3), running.served)
        .await
        .expect("drain bounded")
        .expect("serve")
        .expect("no journal");
    assert!(started.elapsed() >= Duration::from_millis(300), "waited for the deadline");
    // The sign-off was sent, then the connection closed.
    assert!(client.reader.next(|m| matches!(m, MessageRef::SignOffRequest(_))).await.expect("sign-off"));
    assert!(client.reader.next(|_| ()).await.is_err());
    // New connections are refused once draining started.
    assert!(tokio::net::TcpStream::connect(running.address).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_payments_are_approved_end_to_end() {
    let (address, _stop) = start_switch().await;
    // The three domestic wallets answer; the closed loop sends codes to all of them.
    let mut issuers = Vec::new();
    for wallet in ["WECHATPAY", "ALIPAY", "UNIONPAY"] {
        let client = Client::connect(address, id(wallet), 1, &demo_key(wallet)).await.expect("sign on");
        issuers.push(tokio::spawn(loadgen::issuer::run_issuer(client, loadgen::responder::Behaviour::default())));
    }
    let acquirer = Client::connect(address, id("ACQ0001"), 1, &demo_key("ACQ0001")).await.expect("sign on");
    let report = loadgen::run::run_closed_loop(acquirer, 32, Duration::from_millis(300), Duration::from_secs(5))
        .await
        .expect("run");
    let text = report.render();
    assert!(report.answered > 100 && report.answered == report.sent, "{text}");
    // Every reply an approval: the requests carried a current time, the right roles and
    // MACs, and reached an issuer.
    assert_eq!(report.replies_by_code.get(&ReplyCode::Approved.value()), Some(&report.answered), "{text}");
    for issuer in issuers {
        issuer.abort();
    }
}
