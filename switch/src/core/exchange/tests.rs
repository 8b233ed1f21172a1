//! The exchange's unit tests.

use codec::field::FieldText;
use codec::{Echo, PaymentCodeRequest, QrPaymentRequest};

use super::*;

const ACQUIRER: SessionId = 1;
const WECHAT: SessionId = 2;
const UNIONPAY: SessionId = 3;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

fn at(ms: u64) -> Now {
    Now { monotonic_ms: ms, unix_ms: 1_771_286_370_000 + ms as i64 }
}

fn exchange() -> Exchange {
    let mut exchange = Exchange::new(
        ExchangeConfig { reply_deadline_ms: 1_000, reversal_retry_ms: 500, ..ExchangeConfig::default() },
        Routes::embedded_default(),
    );
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    exchange.session_up(id("UNIONPAY"), UNIONPAY, &mut out);
    assert!(out.is_empty());
    exchange
}

fn payment(id_text: &str, code: &str) -> PaymentCodeRequest {
    let mut request = codec::sample::payment_code_request();
    request.details.originator_transaction_id = TransactionId::new(id_text).expect("valid");
    request.payment_code = PaymentCode::new(code).expect("valid");
    request
}

/// The acquirer sends payment `id` with `code`, at time 0.
fn pay(exchange: &mut Exchange, id: &str, code: &str, out: &mut Vec<Outbound>) {
    exchange.handle_request(at(0), ACQUIRER, Message::PaymentCodeRequest(payment(id, code)), out);
}

/// The switch reference of the last request forwarded in `out`.
fn forwarded_reference(out: &[Outbound]) -> u64 {
    match out.iter().rev().find_map(|o| match &o.message {
        Message::PaymentCodeRequest(request) => Some(request.details.switch_reference),
        _ => None,
    }) {
        Some(reference) => reference,
        None => panic!("nothing was forwarded: {out:?}"),
    }
}

fn reply_code(out: &[Outbound], session: SessionId) -> (ReplyCode, u64) {
    match out.iter().find(|o| o.session == session).map(|o| &o.message) {
        Some(Message::PaymentReply(reply)) => (ReplyCode::try_from(reply.code).expect("valid"), reply.switch_reference),
        other => panic!("expected a reply to session {session}, got {other:?}"),
    }
}

fn issuer_reply(reference: u64, code: ReplyCode) -> Message {
    Message::PaymentReply(Reply {
        switch_reference: reference,
        code: code.value(),
        authorization_code: if code.is_approved() {
            "A1B2C3".parse().expect("valid")
        } else {
            AuthorizationCode::EMPTY
        },
        ..codec::sample::payment_reply()
    })
}

#[test]
fn consumer_presented_is_routed_by_prefix_and_the_reply_matched() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let [Outbound { session: WECHAT, message: Message::PaymentCodeRequest(forwarded) }] = out.as_slice() else {
        panic!("expected a forward to WeChat Pay: {out:?}");
    };
    let reference = forwarded.details.switch_reference;
    assert_ne!(reference, 0);
    assert_eq!(exchange.in_flight(), 1);
    out.clear();
    assert_eq!(
        exchange.handle_answer(at(50), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out),
        AnswerOutcome::Forwarded
    );
    assert_eq!(reply_code(&out, ACQUIRER), (ReplyCode::Approved, reference));
    assert_eq!(exchange.in_flight(), 0);
    // A second answer is not forwarded; the timer finds nothing to do.
    out.clear();
    assert_eq!(
        exchange.handle_answer(at(60), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out),
        AnswerOutcome::Unmatched
    );
    exchange.handle_timers(at(5_000), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn declines_pass_through_and_only_the_receiver_may_answer() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let reference = forwarded_reference(&out);
    out.clear();
    assert_eq!(
        exchange.handle_answer(at(1), id("UNIONPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out),
        AnswerOutcome::WrongSender
    );
    assert!(out.is_empty());
    exchange.handle_answer(at(2), id("WECHATPAY"), issuer_reply(reference, ReplyCode::InsufficientFunds), &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::InsufficientFunds);
}

#[test]
fn switch_answers_no_route_unavailable_duplicate_busy() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "994567890123451234", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::NoRoute);
    out.clear();
    // Alipay is routed but not signed on.
    pay(&mut exchange, "T2", "281234567890123456", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::DestinationUnavailable);
    out.clear();
    pay(&mut exchange, "T3", "134567890123451234", &mut out);
    out.clear();
    // Same originator transaction id; then the same payment code under a new id.
    pay(&mut exchange, "T3", "134567890123450000", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
    out.clear();
    pay(&mut exchange, "T4", "134567890123451234", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
    out.clear();
    // Wrong length for the prefix.
    pay(&mut exchange, "T5", "1345678901234512", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::FormatError);
    let mut busy =
        Exchange::new(ExchangeConfig { in_flight_max: 0, ..ExchangeConfig::default() }, Routes::embedded_default());
    busy.session_up(id("WECHATPAY"), WECHAT, &mut out);
    out.clear();
    pay(&mut busy, "T6", "134567890123459999", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::SystemBusy);
}

#[test]
fn a_silent_receiver_uses_up_only_its_own_allowance() {
    let config = ExchangeConfig { in_flight_per_participant_max: 2, ..ExchangeConfig::default() };
    let mut exchange = Exchange::new(config, Routes::embedded_default());
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    exchange.session_up(id("UNIONPAY"), UNIONPAY, &mut out);
    // WeChat Pay answers nothing: two requests fill its allowance, the third is shed.
    pay(&mut exchange, "W1", "134567890123450001", &mut out);
    pay(&mut exchange, "W2", "134567890123450002", &mut out);
    out.clear();
    pay(&mut exchange, "W3", "134567890123450003", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::SystemBusy);
    out.clear();
    // UnionPay's traffic is not held up by it (given room in the acquirer's own
    // originating allowance, which counts too)...
    let mut other = Exchange::new(
        ExchangeConfig { in_flight_per_participant_max: 3, ..ExchangeConfig::default() },
        Routes::embedded_default(),
    );
    other.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    other.session_up(id("WECHATPAY"), WECHAT, &mut out);
    other.session_up(id("UNIONPAY"), UNIONPAY, &mut out);
    pay(&mut other, "W1", "134567890123450001", &mut out);
    pay(&mut other, "W2", "134567890123450002", &mut out);
    out.clear();
    pay(&mut other, "U1", "6212345678901234561", &mut out);
    assert!(matches!(out.as_slice(), [Outbound { session: UNIONPAY, .. }]), "{out:?}");
    // ...and the allowance frees up when WeChat Pay's requests time out.
    out.clear();
    exchange.handle_timers(at(20_000), &mut out);
    out.clear();
    pay(&mut exchange, "W4", "134567890123450004", &mut out);
    assert!(matches!(out.as_slice(), [Outbound { session: WECHAT, .. }]), "{out:?}");
}

/// What happens to one payment from ACQ0001 to WeChat Pay of `amount`, with these
/// onboarding states (and test marks): `None` if forwarded, else the switch's answer.
fn onboarding_outcome(
    acquirer: (Onboarding, bool),
    wallet: (Onboarding, bool),
    amount: u64,
    requests: usize,
) -> Option<ReplyCode> {
    let policy = |(state, test)| ParticipantPolicy { state, test, ..ParticipantPolicy::default() };
    let policies = HashMap::from([(id("ACQ0001"), policy(acquirer)), (id("WECHATPAY"), policy(wallet))]);
    let config = ExchangeConfig {
        policies,
        verification_amount_max_minor: 5_000,
        verification_rate_per_second: 1,
        ..ExchangeConfig::default()
    };
    let mut exchange = Exchange::new(config, Routes::embedded_default());
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    for n in 0..requests {
        out.clear();
        let mut request = payment(&format!("OB{n}"), &format!("13456789012345000{n}"));
        request.details.amount_minor = amount;
        exchange.handle_request(at(0), ACQUIRER, Message::PaymentCodeRequest(request), &mut out);
    }
    match out.as_slice() {
        [Outbound { session: WECHAT, .. }] => None,
        _ => Some(reply_code(&out, ACQUIRER).0),
    }
}

#[test]
fn each_onboarding_state_admits_exactly_what_it_should() {
    use Onboarding::*;
    let (live, test) = ((Live, false), (Live, true));
    let refused = Some(ReplyCode::NotAuthorised);
    let unavailable = Some(ReplyCode::DestinationUnavailable);
    let cases = [
        // (acquirer, wallet, amount, requests at once) -> outcome of the last
        (live, live, 9_999, 1, None),
        ((Admission, false), live, 100, 1, refused),
        ((Suspended, false), live, 100, 1, refused),
        ((Terminated, false), live, 100, 1, refused),
        (live, (Admission, false), 100, 1, unavailable),
        (live, (Suspended, false), 100, 1, unavailable),
        (live, (Terminated, false), 100, 1, unavailable),
        // Joint testing: test counterparts only, and they only with joint testing.
        ((JointTesting, false), live, 100, 1, refused),
        ((JointTesting, false), test, 9_999, 1, None),
        (test, (JointTesting, false), 100, 1, None),
        (live, test, 100, 1, refused),
        (test, live, 100, 1, refused),
        (test, test, 100, 1, None),
        // Verification (and agreement): live counterparts, small amounts, a low rate.
        ((ProductionVerification, false), live, 5_000, 1, None),
        ((ProductionVerification, false), live, 5_001, 1, refused),
        ((ProductionVerification, false), test, 100, 1, refused),
        ((ProductionVerification, false), live, 100, 2, Some(ReplyCode::SystemBusy)),
        (live, (Agreement, false), 5_000, 1, None),
        (live, (Agreement, false), 5_001, 1, refused),
        ((Agreement, false), (ProductionVerification, false), 5_000, 1, None),
        ((JointTesting, false), (JointTesting, false), 100, 1, refused),
    ];
    for (acquirer, wallet, amount, requests, expected) in cases {
        assert_eq!(
            onboarding_outcome(acquirer, wallet, amount, requests),
            expected,
            "acquirer {acquirer:?}, wallet {wallet:?}, amount {amount}, {requests} request(s)"
        );
    }
}

#[test]
fn a_cut_checkpoints_what_the_journal_must_keep_and_a_replay_from_it_draws_new_references() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    exchange.set_onboarding(id("ALIPAY"), Onboarding::Suspended, Onboarding::Live, at(0));
    pay(&mut exchange, "K1", "134567890123450001", &mut out);
    let in_flight = forwarded_reference(&out);
    // Records 1 (onboarding), 2 (admitted), then the cut (3) and its checkpoint (4).
    assert_eq!(exchange.cut(1, at(5)), 2, "the payment in flight needs its Admitted");
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    assert_eq!(records[3], Record::Checkpoint { window: 1, sequence: 4, low_water: 2, reference_sequence: 1 });
    // The change in force is journaled again after the checkpoint, as it was made.
    assert_eq!(
        records[4],
        Record::Onboarding {
            participant: id("ALIPAY"),
            state: Onboarding::Suspended,
            previous: Onboarding::Live,
            time_ms: at(0).unix_ms
        }
    );
    assert_eq!(exchange.journal_next(), 6);
    // Kept from the checkpoint on (nothing in flight any more, say): the references
    // drawn before are not drawn again, and the suspension holds.
    let mut kept = Exchange::new(ExchangeConfig::default(), Routes::embedded_default());
    for (sequence, record) in (4..).zip(&records[3..]) {
        kept.replay(sequence, record);
    }
    assert_eq!((kept.journal_next(), kept.last_window()), (6, 1));
    assert_eq!(kept.onboarding(id("ALIPAY")).0, Onboarding::Suspended);
    kept.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    kept.session_up(id("WECHATPAY"), WECHAT, &mut out);
    out.clear();
    pay(&mut kept, "K2", "134567890123450002", &mut out);
    let next = forwarded_reference(&out);
    assert_eq!(SwitchReference(next).sequence(), SwitchReference(in_flight).sequence() + 1);
}

#[test]
fn an_onboarding_change_applies_at_once_and_replays_from_its_record() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    let now = at(0);
    exchange.set_onboarding(id("WECHATPAY"), Onboarding::Suspended, Onboarding::Live, now);
    pay(&mut exchange, "S1", "134567890123450001", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::DestinationUnavailable);
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    let change = records.iter().find(|r| matches!(r, Record::Onboarding { .. })).expect("journaled");
    let mut rebuilt = Exchange::new(ExchangeConfig::default(), Routes::embedded_default());
    rebuilt.replay(1, change);
    assert_eq!(rebuilt.onboarding(id("WECHATPAY")), (Onboarding::Suspended, Some(Onboarding::Live), now.unix_ms));
    assert_eq!(rebuilt.onboarding(id("ACQ0001")), (Onboarding::Live, None, 0));
}

#[test]
fn suspended_participants_and_per_receiver_deadlines() {
    let mut policies = HashMap::new();
    policies.insert(id("UNIONPAY"), ParticipantPolicy { state: Onboarding::Suspended, ..ParticipantPolicy::default() });
    policies
        .insert(id("WECHATPAY"), ParticipantPolicy { reply_deadline_ms: Some(250), ..ParticipantPolicy::default() });
    let config = ExchangeConfig { policies, ..ExchangeConfig::default() };
    let mut exchange = Exchange::new(config, Routes::embedded_default());
    let mut out = Vec::new();
    for (participant, session) in [("ACQ0001", ACQUIRER), ("WECHATPAY", WECHAT), ("UNIONPAY", UNIONPAY)] {
        exchange.session_up(id(participant), session, &mut out);
    }
    // Nothing new is routed to a suspended participant, even signed on.
    pay(&mut exchange, "U1", "6212345678901234561", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::DestinationUnavailable);
    out.clear();
    // WeChat Pay's own deadline applies to requests it receives.
    pay(&mut exchange, "W1", "134567890123450001", &mut out);
    assert_eq!(exchange.next_deadline_ms(), Some(250));
    out.clear();
    // A suspended originator's new requests are refused.
    let mut request = payment("S1", "134567890123450002");
    request.details.originator = id("UNIONPAY");
    exchange.handle_request(at(1), UNIONPAY, Message::PaymentCodeRequest(request), &mut out);
    assert_eq!(reply_code(&out, UNIONPAY).0, ReplyCode::NotAuthorised);
}

#[test]
fn a_receiver_that_keeps_timing_out_is_cut_off_then_probed() {
    let config = ExchangeConfig {
        breaker_failures: 2,
        breaker_open_ms: 5_000,
        reply_deadline_ms: 100,
        ..ExchangeConfig::default()
    };
    let mut exchange = Exchange::new(config, Routes::embedded_default());
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    // Two timeouts open the breaker.
    pay(&mut exchange, "W1", "134567890123450001", &mut out);
    pay(&mut exchange, "W2", "134567890123450002", &mut out);
    exchange.handle_timers(at(100), &mut out);
    out.clear();
    exchange.handle_request(
        at(200),
        ACQUIRER,
        Message::PaymentCodeRequest(payment("W3", "134567890123450003")),
        &mut out,
    );
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::DestinationUnavailable, "open: refused at once");
    out.clear();
    // After the cool-down, one probe goes through; a second request waits for it.
    exchange.handle_request(
        at(5_100),
        ACQUIRER,
        Message::PaymentCodeRequest(payment("W4", "134567890123450004")),
        &mut out,
    );
    let probe = forwarded_reference(&out);
    out.clear();
    exchange.handle_request(
        at(5_101),
        ACQUIRER,
        Message::PaymentCodeRequest(payment("W5", "134567890123450005")),
        &mut out,
    );
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::DestinationUnavailable);
    out.clear();
    // The probe's answer closes the breaker.
    exchange.handle_answer(at(5_150), id("WECHATPAY"), issuer_reply(probe, ReplyCode::Approved), &mut out);
    out.clear();
    exchange.handle_request(
        at(5_200),
        ACQUIRER,
        Message::PaymentCodeRequest(payment("W6", "134567890123450006")),
        &mut out,
    );
    assert!(matches!(out.as_slice(), [Outbound { session: WECHAT, .. }]), "{out:?}");
}

#[test]
fn an_originator_over_its_rate_is_shed() {
    let mut policies = HashMap::new();
    policies.insert(id("ACQ0001"), ParticipantPolicy { rate_per_second: Some(2), ..ParticipantPolicy::default() });
    let mut exchange =
        Exchange::new(ExchangeConfig { policies, ..ExchangeConfig::default() }, Routes::embedded_default());
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    // A burst of two, then shed, then one more half a second later.
    for (n, ms, expect_forward) in [(1, 0, true), (2, 0, true), (3, 0, false), (4, 500, true), (5, 500, false)] {
        out.clear();
        let request = payment(&format!("R{n}"), &format!("1345678901234500{n:02}"));
        exchange.handle_request(at(ms), ACQUIRER, Message::PaymentCodeRequest(request), &mut out);
        if expect_forward {
            assert!(matches!(out.as_slice(), [Outbound { session: WECHAT, .. }]), "request {n}: {out:?}");
        } else {
            assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::SystemBusy, "request {n}");
        }
    }
}

#[test]
fn merchant_presented_is_routed_by_guid_and_filled_from_the_code() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    let mut request: QrPaymentRequest = codec::sample::qr_payment_request();
    request.details.originator = id("ACQ0001");
    exchange.handle_request(at(0), ACQUIRER, Message::QrPaymentRequest(request.into()), &mut out);
    let [Outbound { session: UNIONPAY, message: Message::QrPaymentRequest(forwarded) }] = out.as_slice() else {
        panic!("expected a forward to UnionPay: {out:?}");
    };
    assert_eq!(forwarded.details.merchant_name.as_str(), "JINGAN COFFEE");
    assert_eq!(forwarded.details.merchant_id.as_str(), "310115000123456");
    assert_eq!(forwarded.details.merchant_category_code, 5814);
}

#[test]
fn timeout_answers_the_originator_and_reverses_until_acknowledged() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let reference = forwarded_reference(&out);
    out.clear();
    let flights = exchange.participant_flights(at(0));
    assert_eq!(
        flights.iter().map(|f| (f.participant, f.originating, f.receiving)).collect::<Vec<_>>(),
        [(id("ACQ0001"), 1, 0), (id("WECHATPAY"), 0, 1)]
    );
    assert_eq!(exchange.next_deadline_ms(), Some(1_000));
    exchange.handle_timers(at(999), &mut out);
    assert!(out.is_empty());
    exchange.handle_timers(at(1_000), &mut out);
    assert_eq!(reply_code(&out, ACQUIRER), (ReplyCode::Timeout, reference));
    let reversal = match out.iter().find(|o| o.session == WECHAT).map(|o| &o.message) {
        Some(Message::ReversalRequest(r)) => r.clone(),
        other => panic!("expected a reversal to WeChat Pay: {other:?}"),
    };
    assert_eq!((reversal.original_switch_reference, reversal.reason), (reference, ReversalReason::Timeout.value()));
    out.clear();
    // A late approval is never forwarded.
    assert_eq!(
        exchange.handle_answer(at(1_100), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out),
        AnswerOutcome::LateApproval
    );
    assert!(out.is_empty());
    // The issuer goes away; the reversal waits and is resent when it signs on again.
    exchange.session_down(id("WECHATPAY"), WECHAT);
    exchange.handle_timers(at(1_500), &mut out);
    assert!(out.is_empty(), "no session to send to: {out:?}");
    let flights = exchange.participant_flights(at(1_500));
    assert_eq!(
        flights.iter().map(|f| (f.participant, f.receiving, f.reversals_pending)).collect::<Vec<_>>(),
        [(id("WECHATPAY"), 0, 1)]
    );
    exchange.session_up(id("WECHATPAY"), 9, &mut out);
    assert!(matches!(out.as_slice(), [Outbound { session: 9, message: Message::ReversalRequest(_) }]), "{out:?}");
    out.clear();
    let ack =
        Message::ReversalReply(Reply { switch_reference: reversal.switch_reference, ..codec::sample::payment_reply() });
    assert_eq!(exchange.handle_answer(at(1_600), id("WECHATPAY"), ack, &mut out), AnswerOutcome::ReversalAcknowledged);
    exchange.handle_timers(at(10_000), &mut out);
    assert!(out.is_empty(), "acknowledged: no more retries: {out:?}");
    // The record says reversed.
    let query = StatusQuery {
        originator: id("ACQ0001"),
        original_originator_transaction_id: TransactionId::new("T1").expect("valid"),
        original_switch_reference: 0,
        query_time_ms: 0,
    };
    exchange.handle_request(at(2_000), ACQUIRER, Message::StatusQuery(query), &mut out);
    let Some(Message::StatusReply(status)) = out.pop().map(|o| o.message) else { panic!("expected a status reply") };
    assert_eq!((status.status, status.original_switch_reference), (TransactionStatus::Reversed.value(), reference));
}

#[test]
fn an_approval_that_cannot_reach_its_originator_is_reversed() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let reference = forwarded_reference(&out);
    out.clear();
    // The acquirer's session ends before the approval arrives.
    exchange.session_down(id("ACQ0001"), ACQUIRER);
    exchange.handle_answer(at(10), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out);
    let [Outbound { session: WECHAT, message: Message::ReversalRequest(reversal) }] = out.as_slice() else {
        panic!("expected only a reversal to the issuer: {out:?}");
    };
    assert_eq!(
        (reversal.original_switch_reference, reversal.reason),
        (reference, ReversalReason::ReplyUndeliverable.value())
    );

    // The same when the edge finds the originator's queue full.
    let mut exchange = self::exchange();
    pay(&mut exchange, "T2", "134567890123452222", &mut out);
    let reference = forwarded_reference(&out);
    out.clear();
    exchange.handle_answer(at(10), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out);
    let approval = out.pop().expect("the approval").message;
    exchange.handle_undeliverable(at(11), approval, &mut out);
    assert!(matches!(out.as_slice(), [Outbound { session: WECHAT, message: Message::ReversalRequest(_) }]), "{out:?}");
    // A decline that cannot be delivered moved no value: nothing to undo.
    out.clear();
    exchange.handle_undeliverable(at(12), issuer_reply(reference, ReplyCode::InsufficientFunds), &mut out);
    assert!(out.is_empty());
}

#[test]
fn status_queries_see_only_the_askers_transactions() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let reference = forwarded_reference(&out);
    out.clear();
    let query = StatusQuery {
        originator: id("ACQ0002"),
        original_originator_transaction_id: TransactionId::new("T1").expect("valid"),
        original_switch_reference: reference,
        query_time_ms: 0,
    };
    exchange.handle_request(at(1), 7, Message::StatusQuery(query), &mut out);
    let Some(Message::StatusReply(status)) = out.pop().map(|o| o.message) else { panic!("expected a status reply") };
    assert_eq!(status.status, TransactionStatus::Unknown.value());
    let _ = Echo::default();
}

#[test]
fn prefaulting_leaves_the_tables_empty_and_their_room_reserved() {
    let mut exchange = Exchange::new(
        ExchangeConfig { in_flight_max: 10, completed_max: 100, ..ExchangeConfig::default() },
        Routes::embedded_default(),
    );
    let room = exchange.transactions.capacity();
    exchange.prefault();
    exchange.used_codes.prefault(110);
    assert!(exchange.transactions.is_empty() && exchange.by_originator.is_empty() && exchange.used_codes.is_empty());
    assert_eq!(exchange.transactions.capacity(), room, "no growth: the reserved room was used");
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    forwarded_reference(&out);
}

#[test]
fn completed_memory_is_bounded() {
    let mut exchange =
        Exchange::new(ExchangeConfig { completed_max: 3, ..ExchangeConfig::default() }, Routes::embedded_default());
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    for n in 0..10u64 {
        out.clear();
        exchange.handle_request(
            at(0),
            ACQUIRER,
            Message::PaymentCodeRequest(payment(&format!("T{n}"), &format!("13{n:016}"))),
            &mut out,
        );
        let reference = forwarded_reference(&out);
        exchange.handle_answer(at(1), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out);
    }
    assert_eq!(exchange.transactions.len(), 3);
    assert_eq!(exchange.by_originator.len(), 3);
    assert_eq!(exchange.used_codes.len(), 3, "codes are forgotten with their transactions");
}

#[test]
fn a_code_is_single_use_across_exchanges_that_share_the_set() {
    let codes = UsedCodes::default();
    let (mut first, mut second) = (exchange().with_used_codes(codes.clone()), exchange().with_used_codes(codes));
    let mut out = Vec::new();
    pay(&mut first, "T1", "134567890123451234", &mut out);
    forwarded_reference(&out);
    out.clear();
    // Another transaction id, so possibly another shard: the code is still spent.
    pay(&mut second, "T2", "134567890123451234", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
    out.clear();
    // A request the limits refuse does not spend its code.
    let mut busy =
        Exchange::new(ExchangeConfig { in_flight_max: 0, ..ExchangeConfig::default() }, Routes::embedded_default())
            .with_used_codes(second.used_codes.clone());
    busy.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    busy.session_up(id("WECHATPAY"), WECHAT, &mut out);
    pay(&mut busy, "T3", "134567890123459999", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::SystemBusy);
    out.clear();
    pay(&mut second, "T4", "134567890123459999", &mut out);
    forwarded_reference(&out);
}

/// A refund or cancel from the acquirer naming original `original_id`.
fn linked(id_text: &str, original_id: &str, amount_minor: u64) -> LinkedRequest {
    LinkedRequest {
        originator: id("ACQ0001"),
        originator_transaction_id: TransactionId::new(id_text).expect("valid"),
        switch_reference: 0,
        original_switch_reference: 0,
        amount_minor,
        transaction_time_ms: 0,
        currency: 156,
        reason: 0,
        reserved: [0; 4],
        original_originator_transaction_id: TransactionId::new(original_id).expect("valid"),
        conversion: codec::Conversion::NONE,
    }
}

/// The code of the last `RefundReply` or `ReversalReply` to the acquirer in `out`.
fn linked_reply_code(out: &[Outbound]) -> ReplyCode {
    match out.iter().rev().find(|o| o.session == ACQUIRER).map(|o| &o.message) {
        Some(Message::RefundReply(reply) | Message::ReversalReply(reply)) => {
            ReplyCode::try_from(reply.code).expect("valid")
        }
        other => panic!("expected a refund or reversal reply, got {other:?}"),
    }
}

fn status_of(exchange: &mut Exchange, original_id: &str) -> TransactionStatus {
    let query = StatusQuery {
        originator: id("ACQ0001"),
        original_originator_transaction_id: TransactionId::new(original_id).expect("valid"),
        original_switch_reference: 0,
        query_time_ms: 0,
    };
    let mut out = Vec::new();
    exchange.handle_request(at(50), ACQUIRER, Message::StatusQuery(query), &mut out);
    match out.pop().map(|o| o.message) {
        Some(Message::StatusReply(reply)) => TransactionStatus::try_from(reply.status).expect("valid"),
        other => panic!("expected a status reply: {other:?}"),
    }
}

/// An exchange in which the acquirer's payment `id_text` (3800 CNY fen) was approved by
/// WeChat Pay; and its switch reference.
fn approved_payment(id_text: &str) -> (Exchange, u64) {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, id_text, "134567890123451234", &mut out);
    let payment = forwarded_reference(&out);
    exchange.handle_answer(at(1), id("WECHATPAY"), issuer_reply(payment, ReplyCode::Approved), &mut out);
    (exchange, payment)
}

const THB: u16 = 764;

/// An exchange where WeChat Pay settles in THB, with a CNY to THB rate for 2026 and
/// a 50 bp margin (the sample payment is 38.00 CNY in February 2026).
fn converting_exchange(rates: &str) -> Exchange {
    let mut config = ExchangeConfig {
        reply_deadline_ms: 1_000,
        reversal_retry_ms: 500,
        rates: Arc::new(RateTable::parse(rates).expect("valid rates")),
        fx_margin_basis_points: 50,
        ..ExchangeConfig::default()
    };
    config
        .policies
        .insert(id("WECHATPAY"), ParticipantPolicy { settlement_currency: Some(THB), ..ParticipantPolicy::default() });
    let mut exchange = Exchange::new(config, Routes::embedded_default());
    let mut out = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    exchange
}

const RATES_2026: &str = "version = 4\n[[rate]]\nmerchant = \"CNY\"\npayer = \"THB\"\nrate = \"4.9123\"\n\
    valid_from = \"2026-01-01T00:00:00+08:00\"\nvalid_until = \"2027-01-01T00:00:00+08:00\"\n";
const RATES_2025: &str = "version = 3\n[[rate]]\nmerchant = \"CNY\"\npayer = \"THB\"\nrate = \"4.9\"\n\
    valid_from = \"2025-01-01T00:00:00+08:00\"\nvalid_until = \"2026-01-01T00:00:00+08:00\"\n";

#[test]
fn a_payment_the_payer_settles_in_another_currency_is_converted_both_ways() {
    let mut exchange = converting_exchange(RATES_2026);
    let mut out = Vec::new();
    // The acquirer's own conversion field is overwritten, never trusted.
    let mut request = payment("T1", "134567890123451234");
    request.conversion.payer_currency = 840;
    exchange.handle_request(at(0), ACQUIRER, Message::PaymentCodeRequest(request), &mut out);
    let [Outbound { session: WECHAT, message: Message::PaymentCodeRequest(forwarded) }] = out.as_slice() else {
        panic!("expected a forward to WeChat Pay: {out:?}");
    };
    // 38.00 CNY x 4.9123 x 1.005 = 187.600737 THB: 187.60.
    let expected = Conversion {
        payer_amount_minor: 18_760,
        rate: 49_123_000_000,
        rate_version: 4,
        payer_currency: THB,
        margin_basis_points: 50,
    };
    assert_eq!(forwarded.conversion, expected);
    assert_eq!((forwarded.details.amount_minor, forwarded.details.currency), (3_800, 156));
    let reference = forwarded.details.switch_reference;
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    assert!(
        matches!(records.as_slice(), [Record::Admitted { .. }, Record::Converted { conversion, .. }] if *conversion == expected)
    );
    out.clear();
    // The issuer's reply says nothing of the conversion; the acquirer hears it anyway.
    exchange.handle_answer(at(5), id("WECHATPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out);
    let [Outbound { message: Message::PaymentReply(reply), .. }] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!((reply.code, reply.conversion), (0, expected));
    // A reversal gives the payer back what it paid.
    out.clear();
    let cancel = LinkedRequest { reason: ReversalReason::OriginatorCancel.value(), ..linked("C1", "T1", 3_800) };
    exchange.handle_request(at(6), ACQUIRER, Message::ReversalRequest(cancel), &mut out);
    let reversal = out.iter().find_map(|o| match &o.message {
        Message::ReversalRequest(r) if o.session == WECHAT => Some(r.conversion),
        _ => None,
    });
    assert_eq!(reversal, Some(expected));
    // Merchant-presented: the wallet is the payer; its reply carries the conversion.
    exchange.session_up(id("UNIONPAY"), UNIONPAY, &mut out);
    out.clear();
    let mut request: QrPaymentRequest = codec::sample::qr_payment_request();
    request.details.originator = id("WECHATPAY");
    exchange.handle_request(at(7), WECHAT, Message::QrPaymentRequest(request.into()), &mut out);
    let [Outbound { session: UNIONPAY, message: Message::QrPaymentRequest(forwarded) }] = out.as_slice() else {
        panic!("expected a forward to UnionPay: {out:?}");
    };
    let reference = forwarded.details.switch_reference;
    out.clear();
    exchange.handle_answer(at(8), id("UNIONPAY"), issuer_reply(reference, ReplyCode::Approved), &mut out);
    let [Outbound { session: WECHAT, message: Message::PaymentReply(reply) }] = out.as_slice() else {
        panic!("expected the wallet's reply: {out:?}")
    };
    assert_eq!(reply.conversion, expected, "the sample QR payment is 38.00 CNY too");
    // A domestic payer (no settlement currency) is not converted.
    let mut plain = exchange_with_alipay();
    out.clear();
    pay(&mut plain, "T2", "281234567890123456", &mut out);
    let forwarded = out.iter().find_map(|o| match &o.message {
        Message::PaymentCodeRequest(r) => Some(r.conversion),
        _ => None,
    });
    assert_eq!(forwarded, Some(Conversion::NONE));
}

fn exchange_with_alipay() -> Exchange {
    let mut exchange = exchange();
    exchange.session_up(id("ALIPAY"), 9, &mut Vec::new());
    exchange
}

#[test]
fn no_valid_rate_is_an_explicit_decline_and_a_new_table_applies_at_once() {
    // Only last year's rate: expired, so declined, and the code stays usable.
    let mut exchange = converting_exchange(RATES_2025);
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER), (ReplyCode::NoExchangeRate, 0));
    assert_eq!(exchange.in_flight(), 0);
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    assert!(records.is_empty(), "a decline before admission journals nothing: {records:?}");
    // The reloaded table applies to the next payment; the same code is accepted.
    exchange.set_rates(Arc::new(RateTable::parse(RATES_2026).expect("valid")));
    out.clear();
    pay(&mut exchange, "T2", "134567890123451234", &mut out);
    let reference = forwarded_reference(&out);
    assert_ne!(reference, 0);
    // An amount that rounds to nothing in the payer's currency is declined too.
    let mut tiny = payment("T3", "134567890123450001");
    tiny.details.amount_minor = 1;
    let table = RateTable::parse(&RATES_2026.replace("4.9123", "0.0001")).expect("valid");
    exchange.set_rates(Arc::new(table));
    out.clear();
    exchange.handle_request(at(1), ACQUIRER, Message::PaymentCodeRequest(tiny), &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::NoExchangeRate);
}

#[test]
fn refunds_of_a_converted_payment_give_back_shares_that_add_up_to_what_was_paid() {
    let mut exchange = converting_exchange(RATES_2026);
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let payment = forwarded_reference(&out);
    exchange.handle_answer(at(1), id("WECHATPAY"), issuer_reply(payment, ReplyCode::Approved), &mut out);
    let refund = |exchange: &mut Exchange, id_text: &str, amount, approve: bool| -> u64 {
        let mut out = Vec::new();
        exchange.handle_request(at(2), ACQUIRER, Message::RefundRequest(linked(id_text, "T1", amount)), &mut out);
        let Some((reference, share)) = out.iter().find_map(|o| match &o.message {
            Message::RefundRequest(r) => Some((r.switch_reference, r.conversion.payer_amount_minor)),
            _ => None,
        }) else {
            panic!("refund not forwarded: {out:?}")
        };
        let code = if approve { ReplyCode::Approved } else { ReplyCode::DoNotHonour };
        let reply = Message::RefundReply(Reply {
            switch_reference: reference,
            code: code.value(),
            amount_minor: amount,
            ..codec::sample::payment_reply()
        });
        exchange.handle_answer(at(3), id("WECHATPAY"), reply, &mut out);
        share
    };
    // 10.00 of 38.00 CNY: 10/38 of 187.60 THB = 49.368..., 49.37.
    assert_eq!(refund(&mut exchange, "R1", 1_000, true), 4_937);
    // A declined refund gives its share back to the refundable pot.
    assert_eq!(refund(&mut exchange, "R2", 1_000, false), 4_937);
    assert_eq!(refund(&mut exchange, "R3", 1_000, true), 4_937);
    // The last 18.00: all that remains of the 187.60, whatever the rounding did.
    assert_eq!(refund(&mut exchange, "R4", 1_800, true), 18_760 - 2 * 4_937);
    // Replaying the journal rebuilds the same payer shares.
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    let mut replayed = converting_exchange(RATES_2026);
    for (sequence, record) in (1..).zip(&records) {
        replayed.replay(sequence, record);
    }
    let payment_of = |e: &Exchange| {
        let t = &e.transactions[&payment];
        (t.refunded_minor, t.refunded_payer_minor, t.conversion)
    };
    assert_eq!(payment_of(&replayed), payment_of(&exchange));
    assert_eq!(payment_of(&replayed).1, 18_760);
}

#[test]
fn refunds_link_to_the_approval_and_never_exceed_it() {
    let (mut exchange, payment) = approved_payment("T1");
    let mut out = Vec::new();

    // Half of the 3800 back: routed to the issuer that approved, linked to the payment.
    let refund = |id_text: &str, amount| Message::RefundRequest(linked(id_text, "T1", amount));
    exchange.handle_request(at(2), ACQUIRER, refund("R1", 1_900), &mut out);
    let [Outbound { session: WECHAT, message: Message::RefundRequest(forwarded) }] = out.as_slice() else {
        panic!("expected the refund at WeChat Pay: {out:?}");
    };
    assert_eq!(forwarded.original_switch_reference, payment);
    let refund_reference = forwarded.switch_reference;
    out.clear();
    // While it waits, only the other half may be asked for.
    exchange.handle_request(at(3), ACQUIRER, refund("R2", 1_901), &mut out);
    assert_eq!(linked_reply_code(&out), ReplyCode::InvalidAmount);
    out.clear();
    let approve = Message::RefundReply(Reply {
        switch_reference: refund_reference,
        code: ReplyCode::Approved.value(),
        amount_minor: 1_900,
        ..codec::sample::payment_reply()
    });
    assert_eq!(exchange.handle_answer(at(4), id("WECHATPAY"), approve, &mut out), AnswerOutcome::Forwarded);
    assert_eq!(linked_reply_code(&out), ReplyCode::Approved);
    assert!(matches!(out.as_slice(), [Outbound { message: Message::RefundReply(_), .. }]), "{out:?}");
    out.clear();
    assert_eq!(status_of(&mut exchange, "T1"), TransactionStatus::Refunded);

    for (id_text, original, amount, expected) in [
        ("R1", "T1", 100, ReplyCode::Duplicate),
        ("R3", "T1", 1_901, ReplyCode::InvalidAmount),
        ("R4", "NOPE", 100, ReplyCode::UnknownOriginal),
        ("R5", "T1", 0, ReplyCode::InvalidAmount),
    ] {
        exchange.handle_request(at(5), ACQUIRER, Message::RefundRequest(linked(id_text, original, amount)), &mut out);
        assert_eq!(linked_reply_code(&out), expected, "{id_text}");
        out.clear();
    }
    // The rest, exactly, is fine.
    exchange.handle_request(at(6), ACQUIRER, refund("R6", 1_900), &mut out);
    assert!(matches!(out.as_slice(), [Outbound { session: WECHAT, message: Message::RefundRequest(_) }]));
    out.clear();

    // A declined payment has nothing to refund.
    pay(&mut exchange, "T2", "134567890123452222", &mut out);
    let declined = forwarded_reference(&out);
    exchange.handle_answer(at(7), id("WECHATPAY"), issuer_reply(declined, ReplyCode::InsufficientFunds), &mut out);
    out.clear();
    exchange.handle_request(at(8), ACQUIRER, Message::RefundRequest(linked("R7", "T2", 100)), &mut out);
    assert_eq!(linked_reply_code(&out), ReplyCode::UnknownOriginal);
}

#[test]
fn a_refund_that_times_out_is_reversed_and_frees_its_amount() {
    let (mut exchange, _) = approved_payment("T1");
    let mut out = Vec::new();
    exchange.handle_request(at(10), ACQUIRER, Message::RefundRequest(linked("R1", "T1", 3_800)), &mut out);
    out.clear();
    exchange.handle_timers(at(1_010), &mut out);
    assert_eq!(linked_reply_code(&out), ReplyCode::Timeout);
    assert!(
        out.iter()
            .any(|o| matches!(&o.message, Message::ReversalRequest(r) if r.reason == ReversalReason::Timeout.value())),
        "{out:?}"
    );
    out.clear();
    exchange.handle_request(at(1_020), ACQUIRER, Message::RefundRequest(linked("R2", "T1", 3_800)), &mut out);
    assert!(matches!(out.as_slice(), [Outbound { session: WECHAT, message: Message::RefundRequest(_) }]), "{out:?}");
}

#[test]
fn an_originator_cancel_reverses_what_may_have_happened() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    let cancel = |original: &str| Message::ReversalRequest(linked("C-1", original, 3_800));

    // In flight: the original is answered Timeout now, and reversed at the issuer.
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let in_flight = forwarded_reference(&out);
    out.clear();
    exchange.handle_request(at(5), ACQUIRER, cancel("T1"), &mut out);
    assert_eq!(reply_code(&out, ACQUIRER), (ReplyCode::Timeout, in_flight));
    let reversal = out.iter().find_map(|o| match &o.message {
        Message::ReversalRequest(r) if o.session == WECHAT => Some(r.clone()),
        _ => None,
    });
    let reversal = reversal.expect("a reversal to the issuer");
    assert_eq!(
        (reversal.original_switch_reference, reversal.reason),
        (in_flight, ReversalReason::OriginatorCancel.value())
    );
    assert_eq!(linked_reply_code(&out), ReplyCode::Approved);
    out.clear();
    // Its late approval is not forwarded; the timer finds nothing left to do.
    exchange.handle_answer(at(6), id("WECHATPAY"), issuer_reply(in_flight, ReplyCode::Approved), &mut out);
    exchange.handle_timers(at(1_001), &mut out);
    assert!(!out.iter().any(|o| matches!(o.message, Message::PaymentReply(_))), "{out:?}");
    out.clear();

    // Approved: reversed; a second cancel has nothing more to do.
    pay(&mut exchange, "T2", "134567890123452222", &mut out);
    let approved = forwarded_reference(&out);
    exchange.handle_answer(at(7), id("WECHATPAY"), issuer_reply(approved, ReplyCode::Approved), &mut out);
    out.clear();
    exchange.handle_request(at(8), ACQUIRER, cancel("T2"), &mut out);
    assert!(out.iter().any(|o| o.session == WECHAT && matches!(o.message, Message::ReversalRequest(_))));
    assert_eq!(linked_reply_code(&out), ReplyCode::Approved);
    out.clear();
    exchange.handle_request(at(9), ACQUIRER, cancel("T2"), &mut out);
    assert_eq!(out.len(), 1, "only the acknowledgement: {out:?}");
    assert_eq!(linked_reply_code(&out), ReplyCode::Approved);
    out.clear();

    // Unknown, or another originator's: nothing to cancel.
    exchange.handle_request(at(10), ACQUIRER, cancel("NOPE"), &mut out);
    assert_eq!(linked_reply_code(&out), ReplyCode::UnknownOriginal);
    out.clear();
    let mut foreign = linked("C-2", "T2", 3_800);
    foreign.originator = id("ACQ0002");
    exchange.handle_request(at(11), ACQUIRER, Message::ReversalRequest(foreign), &mut out);
    assert!(matches!(
        out.as_slice(),
        [Outbound { message: Message::ReversalReply(reply), .. }] if reply.code == ReplyCode::UnknownOriginal.value()
    ));
}

#[test]
fn an_approval_for_another_amount_is_refused_reversed_and_replays_the_same() {
    let mut exchange = exchange();
    let mut out = Vec::new();
    pay(&mut exchange, "T1", "134567890123451234", &mut out);
    let reference = forwarded_reference(&out);
    out.clear();
    let Message::PaymentReply(mut less) = issuer_reply(reference, ReplyCode::Approved) else { unreachable!() };
    less.amount_minor = 3_799;
    let less = Message::PaymentReply(less);
    assert_eq!(exchange.handle_answer(at(1), id("WECHATPAY"), less, &mut out), AnswerOutcome::Refused);
    assert_eq!(reply_code(&out, ACQUIRER), (ReplyCode::ApprovalMismatch, reference));
    let reversal = out.iter().find_map(|o| match &o.message {
        Message::ReversalRequest(r) if o.session == WECHAT => Some(r.clone()),
        _ => None,
    });
    let reversal = reversal.expect("a reversal to the issuer");
    assert_eq!(reversal.reason, ReversalReason::ApprovalMismatch.value());
    assert_eq!((reversal.original_switch_reference, reversal.amount_minor), (reference, 3_800));
    assert_eq!(status_of(&mut exchange, "T1"), TransactionStatus::Declined);
    // The journal says the same after a restart: declined, the reversal still owed.
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    assert!(records.iter().any(|r| matches!(r, Record::Answered { code, .. } if *code == 108)), "{records:?}");
    let mut replayed = Exchange::new(ExchangeConfig::default(), Routes::embedded_default());
    for (sequence, record) in (1..).zip(&records) {
        replayed.replay(sequence, record);
    }
    assert_eq!(status_of(&mut replayed, "T1"), TransactionStatus::Declined);
    assert_eq!(replayed.reversals.len(), 1);
}

#[test]
fn replaying_the_records_rebuilds_the_state_and_recovery_reverses_what_was_in_flight() {
    let (mut live, _) = approved_payment("T1");
    let mut out = Vec::new();
    // A refund approved, a payment declined, one timed out and reversed, one in flight.
    live.handle_request(at(2), ACQUIRER, Message::RefundRequest(linked("R1", "T1", 800)), &mut out);
    let refund = match out.last().map(|o| &o.message) {
        Some(Message::RefundRequest(r)) => r.switch_reference,
        other => panic!("expected a forwarded refund: {other:?}"),
    };
    let approve = Reply { switch_reference: refund, code: 0, amount_minor: 800, ..codec::sample::payment_reply() };
    live.handle_answer(at(3), id("WECHATPAY"), Message::RefundReply(approve), &mut out);
    pay(&mut live, "T2", "134567890123452222", &mut out);
    let declined = forwarded_reference(&out);
    live.handle_answer(at(4), id("WECHATPAY"), issuer_reply(declined, ReplyCode::InsufficientFunds), &mut out);
    pay(&mut live, "T3", "134567890123453333", &mut out);
    live.handle_timers(at(1_100), &mut out);
    live.handle_request(
        at(1_200),
        ACQUIRER,
        Message::PaymentCodeRequest(payment("T4", "134567890123454444")),
        &mut out,
    );
    let mut records = Vec::new();
    live.take_records(&mut records);
    assert!(records.len() >= 9, "{records:?}");

    let mut recovered = Exchange::new(
        ExchangeConfig { reply_deadline_ms: 1_000, reversal_retry_ms: 500, ..ExchangeConfig::default() },
        Routes::embedded_default(),
    );
    for (sequence, record) in (1..).zip(&records) {
        recovered.replay(sequence, record);
    }
    for id_text in ["T1", "T2", "T3", "T4"] {
        assert_eq!(status_of(&mut recovered, id_text), status_of(&mut live, id_text), "{id_text}");
    }
    assert_eq!(status_of(&mut recovered, "T1"), TransactionStatus::Refunded);
    assert_eq!(recovered.reversals.len(), live.reversals.len());
    assert_eq!(recovered.used_codes.len(), live.used_codes.len());
    assert!(recovered.next_reference() > live.next_reference() - 1, "references continue past the journal");

    // What was in flight (T4) is timed out and reversed, with records for the journal.
    let mut out = Vec::new();
    recovered.abandon_in_flight(at(0), &mut out);
    assert_eq!(status_of(&mut recovered, "T4"), TransactionStatus::TimedOut);
    let mut new_records = Vec::new();
    recovered.take_records(&mut new_records);
    assert!(
        matches!(
            new_records.as_slice(),
            [Record::TimedOut { .. }, Record::ReversalStarted { reason, .. }] if *reason == ReversalReason::Timeout.value()
        ),
        "{new_records:?}"
    );
    // Its reversal, and T3's, go to WeChat Pay when it signs on.
    recovered.session_up(id("WECHATPAY"), 7, &mut out);
    assert_eq!(out.iter().filter(|o| o.session == 7 && matches!(o.message, Message::ReversalRequest(_))).count(), 2);
    // A resent request is still a duplicate, and its code still spent.
    out.clear();
    recovered.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    pay(&mut recovered, "T1", "134567890123459999", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
    out.clear();
    pay(&mut recovered, "T9", "134567890123452222", &mut out);
    assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
}
