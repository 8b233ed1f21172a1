//! The switch routing real participants on loopback: acquirers and issuers are the load
//! generator's clients, as independent of the switch's code as a bank's would be.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codec::{InstitutionId, Message, MessageRef, ReplyCode};
use loadgen::client::Client;
use loadgen::issuer::run_issuer;
use loadgen::responder::Behaviour;
use switch::config::{SwitchConfig, demo_key};
use switch::core::exchange::{ExchangeConfig, Routes};
use switch::edge::tcp::{Shared, serve};
use switch::edge::transport::Io;
use switch::participant::Directory;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

/// Two shards, so requests, answers and deliveries cross shards as they do in production.
const SHARDS: usize = 2;

async fn start(reply_deadline_ms: u64) -> SocketAddr {
    start_with(ExchangeConfig { reply_deadline_ms, reversal_retry_ms: 200, ..ExchangeConfig::default() }).await.0
}

async fn start_with(exchange: ExchangeConfig) -> (SocketAddr, Arc<Shared>) {
    start_on(Io::Tokio, exchange).await
}

async fn start_on(io: Io, exchange: ExchangeConfig) -> (SocketAddr, Arc<Shared>) {
    let config = SwitchConfig::embedded_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shared = Arc::new(
        Shared::new(config.session, Directory::new(config.participants))
            .with_exchange(exchange, Routes::embedded_default())
            .with_shards(SHARDS)
            .with_io(io),
    );
    assert_eq!(shared.io, io, "this test needs the {io:?} data path; the kernel refused io_uring");
    tokio::spawn(serve(listener, Arc::clone(&shared), std::future::pending()));
    (address, shared)
}

/// Consumer-presented request `n` of a test, to the issuer `prefix` names (13 WeChat Pay,
/// 28 Alipay): ids and codes unique per `n`.
fn payment(prefix: &str, n: u64) -> Message {
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = format!("P{prefix}-{n}").parse().expect("valid");
    request.payment_code = format!("{prefix}{n:016}").parse().expect("valid");
    Message::PaymentCodeRequest(request)
}

async fn connect(address: SocketAddr, participant: &str) -> Client {
    Client::connect(address, id(participant), 1, &demo_key(participant)).await.expect("sign on")
}

fn code(reply: &codec::Reply) -> ReplyCode {
    ReplyCode::try_from(reply.code).expect("a code from the table")
}

/// Asks ACQ0001's record of `id` (by `reference` unless zero); the next message must be
/// the answer.
async fn query_status(client: &mut Client, id: codec::TransactionId, reference: u64) -> codec::StatusReply {
    let query = codec::StatusQuery {
        originator: InstitutionId::new("ACQ0001").expect("valid"),
        original_originator_transaction_id: id,
        original_switch_reference: reference,
        query_time_ms: 0,
    };
    client.writer.send(&Message::StatusQuery(query)).await.expect("send");
    client
        .reader
        .next(|m| match m.to_message() {
            Message::StatusReply(status) => status,
            other => panic!("expected the status reply, got {:?}", other.kind()),
        })
        .await
        .expect("status")
}

#[tokio::test]
async fn both_payment_modes_are_routed_and_answered() {
    let address = start(5_000).await;
    let wechat = connect(address, "WECHATPAY").await;
    let unionpay = connect(address, "UNIONPAY").await;
    let wechat_task = tokio::spawn(run_issuer(wechat, behaviour("decline_every=2")));
    let unionpay_task = tokio::spawn(run_issuer(unionpay, Behaviour::default()));
    let mut acquirer = connect(address, "ACQ0001").await;

    // Consumer-presented, by payment-code prefix to WeChat Pay: approved, then declined.
    let mut request = common::payment_code_request();
    acquirer.writer.send(&Message::PaymentCodeRequest(request.clone())).await.expect("send");
    let reply = common::next_payment_reply(&mut acquirer).await;
    assert_eq!((code(&reply), reply.responder.to_string()), (ReplyCode::Approved, "WECHATPAY".to_string()));
    assert_ne!(reply.switch_reference, 0);
    assert_eq!(reply.originator_transaction_id, request.details.originator_transaction_id);
    request.details.originator_transaction_id = "T-2".parse().expect("valid");
    request.payment_code = "134567890123450002".parse().expect("valid");
    acquirer.writer.send(&Message::PaymentCodeRequest(request.clone())).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::InsufficientFunds);
    // The same payment code again: refused without reaching the issuer.
    request.details.originator_transaction_id = "T-3".parse().expect("valid");
    acquirer.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::Duplicate);

    // Merchant-presented, from a wallet by the QR's GUID to UnionPay.
    let mut wallet = connect(address, "WAL0001").await;
    let mut qr = common::qr_payment_request();
    qr.details.originator = id("WAL0001");
    wallet.writer.send(&Message::QrPaymentRequest(qr.clone().into())).await.expect("send");
    let reply = common::next_payment_reply(&mut wallet).await;
    assert_eq!((code(&reply), reply.responder.to_string()), (ReplyCode::Approved, "UNIONPAY".to_string()));
    // A plain acquirer may not originate a merchant-presented payment (its role).
    qr.details.originator = id("ACQ0001");
    acquirer.writer.send(&Message::QrPaymentRequest(qr.into())).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::NotAuthorised);

    // No route for an unknown prefix.
    let mut unknown = common::payment_code_request();
    unknown.details.originator_transaction_id = "T-4".parse().expect("valid");
    unknown.payment_code = "994567890123450004".parse().expect("valid");
    acquirer.writer.send(&Message::PaymentCodeRequest(unknown)).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::NoRoute);

    wechat_task.abort();
    unionpay_task.abort();
}

#[tokio::test]
async fn a_timeout_is_answered_and_reversed_after_the_issuer_reconnects() {
    let address = start(300).await;
    let silent = connect(address, "WECHATPAY").await;
    let silent_task = tokio::spawn(run_issuer(silent, behaviour("silent=100%")));
    let mut acquirer = connect(address, "ACQ0001").await;
    acquirer.writer.send(&Message::PaymentCodeRequest(common::payment_code_request())).await.expect("send");
    let started = std::time::Instant::now();
    let reply = common::next_payment_reply(&mut acquirer).await;
    assert_eq!(code(&reply), ReplyCode::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The silent issuer goes away; a new session of WeChat Pay gets the reversal.
    silent_task.abort();
    let _ = silent_task.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut issuer = connect(address, "WECHATPAY").await;
    let reversal = issuer
        .reader
        .next(|m| match m {
            MessageRef::ReversalRequest(reversal) => reversal.original_switch_reference.to_native(),
            other => panic!("expected a reversal, got {:?}", other.kind()),
        })
        .await
        .expect("reversal");
    assert_eq!(reversal, reply.switch_reference);
}

#[tokio::test]
async fn duplicates_meet_their_original_across_connections_and_shards() {
    let address = start(5_000).await;
    let wechat = connect(address, "WECHATPAY").await;
    let wechat_task = tokio::spawn(run_issuer(wechat, Behaviour::default()));
    // Two sessions of one acquirer, on different shards (connections are dealt round-robin).
    let mut first = connect(address, "ACQ0001").await;
    let mut second = connect(address, "ACQ0001").await;

    // Many transactions from both sessions: each is answered once, on its own session.
    for n in 0..200u64 {
        let mut request = common::payment_code_request();
        request.details.originator_transaction_id = format!("MX-{n}").parse().expect("valid");
        request.payment_code = format!("13{n:016}").parse().expect("valid");
        let client = if n % 2 == 0 { &mut first } else { &mut second };
        client.writer.queue(&Message::PaymentCodeRequest(request)).expect("queue");
    }
    first.writer.flush().await.expect("send");
    second.writer.flush().await.expect("send");
    for (client, parity) in [(&mut first, 0), (&mut second, 1)] {
        for _ in 0..100 {
            let reply = common::next_payment_reply(client).await;
            assert_eq!(code(&reply), ReplyCode::Approved);
            let n: u64 = reply.originator_transaction_id.to_string()[3..].parse().expect("ours");
            assert_eq!(n % 2, parity, "answered on the session that asked");
        }
    }

    // The same transaction id on the other session, with a fresh code: still a duplicate.
    let mut again = common::payment_code_request();
    again.details.originator_transaction_id = "MX-0".parse().expect("valid");
    again.payment_code = "139999999999999999".parse().expect("valid");
    second.writer.send(&Message::PaymentCodeRequest(again)).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut second).await), ReplyCode::Duplicate);
    // A used code under new ids, from either session: duplicates whichever shard owns them.
    for (n, client) in [&mut first, &mut second].into_iter().enumerate() {
        let mut reuse = common::payment_code_request();
        reuse.details.originator_transaction_id = format!("REUSE-{n}").parse().expect("valid");
        reuse.payment_code = format!("13{:016}", 7).parse().expect("valid");
        client.writer.send(&Message::PaymentCodeRequest(reuse)).await.expect("send");
        assert_eq!(code(&common::next_payment_reply(client).await), ReplyCode::Duplicate);
    }
    wechat_task.abort();
}

#[tokio::test]
async fn spoofing_a_missing_destination_and_queries_over_tcp() {
    let address = start(5_000).await;
    let wechat = connect(address, "WECHATPAY").await;
    let wechat_task = tokio::spawn(run_issuer(wechat, Behaviour::default()));
    let mut acquirer = connect(address, "ACQ0001").await;

    // A request naming another originator is refused, whatever the session's rights.
    let mut spoofed = common::payment_code_request();
    spoofed.details.originator = id("ACQ0002");
    acquirer.writer.send(&Message::PaymentCodeRequest(spoofed)).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::NotAuthorised);

    // Alipay is configured but not signed on.
    acquirer.writer.send(&payment("28", 1)).await.expect("send");
    assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::DestinationUnavailable);

    // An approval, then the switch's record of it, asked by id and by reference.
    acquirer.writer.send(&payment("13", 2)).await.expect("send");
    let approved = common::next_payment_reply(&mut acquirer).await;
    assert_eq!(code(&approved), ReplyCode::Approved);
    for reference in [0, approved.switch_reference] {
        let status = query_status(&mut acquirer, approved.originator_transaction_id, reference).await;
        assert_eq!(status.status, codec::code::TransactionStatus::Approved.value());
        assert_eq!(status.original_switch_reference, approved.switch_reference);
    }
    wechat_task.abort();
}

#[tokio::test]
async fn overload_is_shed_at_once_and_in_flight_state_stays_at_its_limit() {
    const IN_FLIGHT_MAX: usize = 64;
    const OFFERED: u64 = 4_000;
    let (address, shared) = start_with(ExchangeConfig {
        reply_deadline_ms: 1_500,
        in_flight_max: IN_FLIGHT_MAX,
        in_flight_per_participant_max: IN_FLIGHT_MAX,
        ..ExchangeConfig::default()
    })
    .await;
    let silent = connect(address, "WECHATPAY").await;
    let silent_task = tokio::spawn(run_issuer(silent, behaviour("silent=100%")));
    let mut acquirer = connect(address, "ACQ0001").await;

    // Far more than the limit, all at once, to an issuer that never answers.
    for n in 0..OFFERED {
        acquirer.writer.queue(&payment("13", n)).expect("queue");
        if n % 256 == 255 {
            acquirer.writer.flush().await.expect("send");
        }
    }
    acquirer.writer.flush().await.expect("send");
    let started = std::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    let mut codes = std::collections::BTreeMap::new();
    let mut busy_before_any_timeout = 0;
    for _ in 0..OFFERED {
        let reply = common::next_payment_reply(&mut acquirer).await;
        assert!(seen.insert(reply.originator_transaction_id), "answered twice: {:?}", reply.originator_transaction_id);
        if code(&reply) == ReplyCode::SystemBusy && !codes.contains_key(&ReplyCode::Timeout) {
            busy_before_any_timeout += 1;
        }
        *codes.entry(code(&reply)).or_insert(0usize) += 1;
        // Held state never exceeds the limit (the shards' summaries, sampled).
        let states = shared.onboarding_states().await;
        let document: serde_json::Value =
            serde_json::from_str(&shared.status.render(&shared.directory, &states)).expect("JSON");
        let in_flight: u64 = document["participants"]
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["in_flight_originating"].as_u64().expect("count"))
            .sum();
        assert!(in_flight <= IN_FLIGHT_MAX as u64, "{in_flight} in flight");
    }
    // Exactly the limit was admitted (each shard its even share); everything else was shed
    // at once with SystemBusy, long before the admitted ones timed out.
    assert_eq!(codes.get(&ReplyCode::Timeout), Some(&IN_FLIGHT_MAX), "{codes:?}");
    assert_eq!(codes.get(&ReplyCode::SystemBusy), Some(&(OFFERED as usize - IN_FLIGHT_MAX)), "{codes:?}");
    assert_eq!(busy_before_any_timeout, OFFERED as usize - IN_FLIGHT_MAX);
    assert!(started.elapsed() >= Duration::from_millis(1_000), "timeouts come at the deadline");
    silent_task.abort();
}

#[tokio::test]
async fn a_silent_issuer_does_not_hold_up_another_issuers_traffic() {
    let (address, _) =
        start_with(ExchangeConfig { reply_deadline_ms: 3_000, breaker_failures: 0, ..ExchangeConfig::default() }).await;
    let silent = connect(address, "WECHATPAY").await;
    let silent_task = tokio::spawn(run_issuer(silent, behaviour("silent=100%")));
    let alipay = connect(address, "ALIPAY").await;
    let alipay_task = tokio::spawn(run_issuer(alipay, Behaviour::default()));
    let mut acquirer = connect(address, "ACQ0001").await;

    // Interleaved: every other request goes to the issuer that never answers.
    for n in 0..400u64 {
        acquirer.writer.queue(&payment(if n % 2 == 0 { "13" } else { "28" }, n)).expect("queue");
    }
    acquirer.writer.flush().await.expect("send");
    // Every Alipay approval arrives before any WeChat Pay timeout: nothing of Alipay's
    // waited behind the silent issuer's requests.
    for _ in 0..200 {
        let reply = common::next_payment_reply(&mut acquirer).await;
        assert_eq!((code(&reply), reply.responder.to_string()), (ReplyCode::Approved, "ALIPAY".to_string()));
    }
    for _ in 0..200 {
        assert_eq!(code(&common::next_payment_reply(&mut acquirer).await), ReplyCode::Timeout);
    }
    silent_task.abort();
    alipay_task.abort();
}

#[tokio::test]
async fn the_io_uring_data_path_carries_a_two_sided_run() {
    let (address, _) = start_on(Io::Uring, ExchangeConfig::default()).await;
    // The load generator plays every demo participant: acquirers send the weekday mix
    // (both payment modes, refunds, queries); wallets and UnionPay answer, every 4th
    // payment declined.
    let profile = std::sync::Arc::new(loadgen::profile::Profile::load("weekday").expect("built-in profile"));
    let schedule = loadgen::schedule::Schedule::constant(4_000.0, Duration::from_millis(500));
    let spec = loadgen::engine::RunSpec {
        behaviour: behaviour("decline_every=4"),
        ..loadgen::engine::RunSpec::new(address, profile, schedule)
    };
    let outcome = loadgen::engine::run(spec).await.expect("run");
    let table = loadgen::report::table(&outcome);
    // A debug build on a shared box may send a few requests late (the run is then marked
    // invalid): what this test holds is that every request sent was answered exactly once.
    assert!(outcome.exact(), "{table}");
    assert_eq!(outcome.counters.answered, outcome.counters.sent, "{table}");
    assert!(outcome.counters.sent >= 1_500, "{table}");
    assert!((1_900..=2_100).contains(&outcome.counters.scheduled), "{table}");
    let by_code = outcome.replies_by_code();
    let declined = by_code.get(&ReplyCode::InsufficientFunds.value()).copied().unwrap_or(0);
    assert!(declined >= 400, "every 4th payment per receiver is declined: {table}");
    assert_eq!(outcome.counters.errors, 0, "{table}");
}

#[tokio::test]
async fn refunds_and_cancels_find_their_original_from_any_session() {
    let address = start(5_000).await;
    let wechat = connect(address, "WECHATPAY").await;
    let wechat_task = tokio::spawn(run_issuer(wechat, Behaviour::default()));
    let mut first = connect(address, "ACQ0001").await;
    let mut second = connect(address, "ACQ0001").await;
    let linked_reply = |message: MessageRef<'_>| match message.to_message() {
        Message::RefundReply(reply) | Message::ReversalReply(reply) => (message.kind(), code(&reply)),
        other => panic!("expected a refund or reversal reply, got {:?}", other.kind()),
    };

    for n in 0..8u64 {
        first.writer.send(&payment("13", n)).await.expect("send");
        assert_eq!(code(&common::next_payment_reply(&mut first).await), ReplyCode::Approved);
    }
    // Refunds from the other session (so often another shard), by the original's id.
    for n in 0..8u64 {
        let refund = codec::LinkedRequest {
            originator: id("ACQ0001"),
            originator_transaction_id: format!("RF-{n}").parse().expect("valid"),
            switch_reference: 0,
            original_switch_reference: 0,
            amount_minor: 1_000,
            transaction_time_ms: common::now_ms(),
            currency: 156,
            reason: 0,
            reserved: [0; 4],
            original_originator_transaction_id: format!("P13-{n}").parse().expect("valid"),
            conversion: codec::Conversion::NONE,
        };
        second.writer.send(&Message::RefundRequest(refund.clone())).await.expect("send");
        assert_eq!(
            second.reader.next(linked_reply).await.expect("reply"),
            (codec::MessageKind::RefundReply, ReplyCode::Approved)
        );
        // More than what is left: refused by the switch.
        let too_much = codec::LinkedRequest {
            originator_transaction_id: format!("RF-{n}-B").parse().expect("valid"),
            amount_minor: 2_801,
            ..refund.clone()
        };
        second.writer.send(&Message::RefundRequest(too_much)).await.expect("send");
        assert_eq!(second.reader.next(linked_reply).await.expect("reply").1, ReplyCode::InvalidAmount);
        // A cancel of the payment: accepted, and its reversal goes to the issuer.
        let cancel = codec::LinkedRequest {
            originator_transaction_id: format!("CX-{n}").parse().expect("valid"),
            reason: codec::code::ReversalReason::OriginatorCancel.value(),
            amount_minor: 3_800,
            ..refund
        };
        second.writer.send(&Message::ReversalRequest(cancel)).await.expect("send");
        assert_eq!(
            second.reader.next(linked_reply).await.expect("reply"),
            (codec::MessageKind::ReversalReply, ReplyCode::Approved)
        );
    }
    wechat_task.abort();
}

#[tokio::test]
async fn a_late_approval_is_reversed_and_never_forwarded() {
    let address = start(300).await;
    let mut issuer = connect(address, "WECHATPAY").await;
    let mut acquirer = connect(address, "ACQ0001").await;
    acquirer.writer.send(&payment("13", 1)).await.expect("send");
    let request = issuer
        .reader
        .next(|m| match m.to_message() {
            Message::PaymentCodeRequest(request) => request,
            other => panic!("expected the request, got {:?}", other.kind()),
        })
        .await
        .expect("request");
    // The originator hears Timeout at the deadline; the issuer gets the reversal.
    let timed_out = common::next_payment_reply(&mut acquirer).await;
    assert_eq!(code(&timed_out), ReplyCode::Timeout);
    let reversal = issuer
        .reader
        .next(|m| match m {
            MessageRef::ReversalRequest(reversal) => reversal.original_switch_reference.to_native(),
            other => panic!("expected a reversal, got {:?}", other.kind()),
        })
        .await
        .expect("reversal");
    assert_eq!(reversal, request.details.switch_reference);
    // Then the issuer approves, too late.
    let late = codec::Reply {
        originator: request.details.originator,
        originator_transaction_id: request.details.originator_transaction_id,
        switch_reference: request.details.switch_reference,
        amount_minor: request.details.amount_minor,
        currency: request.details.currency,
        code: ReplyCode::Approved.value(),
        authorization_code: "A00001".parse().expect("valid"),
        responder: id("WECHATPAY"),
        ..codec::sample::payment_reply()
    };
    issuer.writer.send(&Message::PaymentReply(late)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next thing the acquirer hears is the answer to its query, not the approval; and
    // the record says the payment was timed out (its reversal pending).
    let status = query_status(&mut acquirer, timed_out.originator_transaction_id, 0).await;
    assert_eq!(status.status, codec::code::TransactionStatus::TimedOut.value());
}

/// A receiver's behaviour from loadgen's `--respond` syntax.
fn behaviour(spec: &str) -> Behaviour {
    spec.parse().expect("valid behaviour")
}
