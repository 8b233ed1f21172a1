//! Property test: random sequences of payments, approvals, declines, timeouts, late
//! replies, refunds, cancels and cut-offs through the exchange keep the invariants the
//! journal and clearing rest on:
//! - every request gets exactly one reply;
//! - the journal's records, replayed into a fresh exchange, give the same state;
//! - every window's positions sum to zero, rebuilt twice they are identical, and over all
//!   windows the acquirer is owed exactly its approved payments less its approved refunds;
//! - a journal kept only from a checkpoint's `low_water` on (what retention leaves)
//!   rebuilds the same exchange, recovers the same way, and gives the same windows after it.
//!
//! After every step, not only at the end (`check_step`): no request has two answers, the
//! journal so far replays to the same answers, and every window cut so far balances and
//! clears nothing the receiver did not approve. (Tried: making clearing count a declined
//! answer as an approval fails here at the first window that holds one.)

use codec::code::TransactionStatus;
use codec::field::FieldText;
use codec::{InstitutionId, LinkedRequest, Message, PaymentCode, Reply, ReplyCode, StatusQuery, TransactionId};
use proptest::prelude::*;
use switch::core::exchange::{Exchange, ExchangeConfig, Outbound, Routes, SessionId};
use switch::core::record::Record;
use switch::core::session::Now;
use switch::settlement::clearing::Window;

const ACQUIRER: SessionId = 1;
const WECHAT: SessionId = 2;

#[derive(Debug, Clone)]
enum Step {
    Pay {
        amount: u64,
    },
    /// The issuer answers the `pick`-th forwarded request it has not answered (late or not).
    Answer {
        pick: usize,
        approve: bool,
    },
    Refund {
        pick: usize,
        amount: u64,
    },
    Cancel {
        pick: usize,
    },
    Wait {
        ms: u64,
    },
    Cut,
    /// A restart point (`Record::Restart`), as a shard writes every so many records.
    RestartPoint,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..5_000).prop_map(|amount| Step::Pay { amount }),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, approve)| Step::Answer { pick, approve }),
        1 => (any::<usize>(), 1u64..3_000).prop_map(|(pick, amount)| Step::Refund { pick, amount }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        2 => (1u64..700).prop_map(|ms| Step::Wait { ms }),
        1 => Just(Step::Cut),
        1 => Just(Step::RestartPoint),
    ]
}

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid")
}

fn at(ms: u64) -> Now {
    Now { monotonic_ms: ms, unix_ms: 1_771_286_370_000 + ms as i64 }
}

fn status(exchange: &mut Exchange, id_text: &str) -> TransactionStatus {
    let query = StatusQuery {
        originator: id("ACQ0001"),
        original_originator_transaction_id: TransactionId::new(id_text).expect("valid"),
        original_switch_reference: 0,
        query_time_ms: 0,
    };
    let mut out = Vec::new();
    exchange.handle_request(at(0), ACQUIRER, Message::StatusQuery(query), &mut out);
    match out.pop().map(|o| o.message) {
        Some(Message::StatusReply(reply)) => TransactionStatus::try_from(reply.status).expect("valid"),
        other => panic!("expected a status reply: {other:?}"),
    }
}

/// An exchange that remembers `completed_max` completed transactions.
fn with_memory(completed_max: usize) -> Exchange {
    Exchange::new(
        ExchangeConfig { reply_deadline_ms: 1_000, reversal_retry_ms: 400, completed_max, ..ExchangeConfig::default() },
        Routes::embedded_default(),
    )
}

/// What one run of steps left.
struct Run {
    exchange: Exchange,
    records: Vec<Record>,
    /// Payments and refunds sent: id, amount.
    sent: Vec<(String, u64)>,
    refunds: Vec<(String, u64)>,
    replies: std::collections::HashMap<String, usize>,
    /// The last window cut.
    window: u64,
    now: u64,
}

/// Checked after every step of `drive`, not only at the end: no request answered twice;
/// the journal so far rebuilds the same answers to every status query; every window cut
/// so far clears balanced, and clears only approvals (and refunds) the receiver approved.
fn check_step(
    exchange: &mut Exchange,
    completed_max: usize,
    records: &[Record],
    replies: &std::collections::HashMap<String, usize>,
    ids: &[String],
    approved_by_receiver: &std::collections::HashSet<u64>,
    window: u64,
) {
    if let Some((id_text, count)) = replies.iter().find(|(_, count)| **count > 1) {
        panic!("{id_text} answered {count} times");
    }
    let mut rebuilt = replayed(completed_max, 1, records);
    for id_text in ids {
        assert_eq!(status(&mut rebuilt, id_text), status(exchange, id_text), "{id_text}: replay differs from live");
    }
    let shards = [records.to_vec()];
    let fees = switch::settlement::clearing::FeeSchedule::default();
    for w in 1..=window {
        let built = Window::from_shards(w, &shards, &fees).unwrap_or_else(|e| panic!("window {w}: {e}"));
        for entry in &built.entries {
            if entry.kind != switch::settlement::clearing::EntryKind::Reversal {
                assert!(
                    approved_by_receiver.contains(&entry.reference),
                    "window {w} clears {} that the receiver did not approve",
                    entry.reference
                );
            }
        }
    }
}

/// Runs `steps` through an exchange remembering `completed_max` completed transactions
/// (checking `check_step` after each), then waits past every deadline and cuts a last
/// window.
fn drive(completed_max: usize, steps: Vec<Step>) -> Run {
    let mut exchange = with_memory(completed_max);
    let mut approved_by_receiver = std::collections::HashSet::new();
    let mut ids: Vec<String> = Vec::new();
    let mut out: Vec<Outbound> = Vec::new();
    exchange.session_up(id("ACQ0001"), ACQUIRER, &mut out);
    exchange.session_up(id("WECHATPAY"), WECHAT, &mut out);
    let mut now = 0u64;
    let mut window = 0u64;
    let mut sent: Vec<(String, u64)> = Vec::new(); // payments: id, amount
    let mut refunds: Vec<(String, u64)> = Vec::new();
    let mut forwarded: Vec<(u64, bool)> = Vec::new(); // reference, is refund
    let mut replies: std::collections::HashMap<String, usize> = Default::default();
    let mut records: Vec<Record> = Vec::new();
    for step in steps {
        match step {
            Step::Pay { amount } => {
                let n = sent.len();
                let mut request = codec::sample::payment_code_request();
                request.details.originator_transaction_id = TransactionId::new(&format!("P{n}")).expect("valid");
                request.details.amount_minor = amount;
                request.payment_code = PaymentCode::new(&format!("13{n:016}")).expect("valid");
                exchange.handle_request(at(now), ACQUIRER, Message::PaymentCodeRequest(request), &mut out);
                sent.push((format!("P{n}"), amount));
                ids.push(format!("P{n}"));
            }
            Step::Answer { pick, approve } if !forwarded.is_empty() => {
                let (reference, refund) = forwarded.remove(pick % forwarded.len());
                let reply = Reply {
                    switch_reference: reference,
                    code: if approve { 0 } else { ReplyCode::InsufficientFunds.value() },
                    ..codec::sample::payment_reply()
                };
                let message = if refund { Message::RefundReply(reply) } else { Message::PaymentReply(reply) };
                if approve {
                    approved_by_receiver.insert(reference);
                }
                exchange.handle_answer(at(now), id("WECHATPAY"), message, &mut out);
            }
            Step::Refund { pick, amount } if !sent.is_empty() => {
                let (original, _) = sent[pick % sent.len()].clone();
                let n = refunds.len();
                let request = LinkedRequest {
                    originator: id("ACQ0001"),
                    originator_transaction_id: TransactionId::new(&format!("R{n}")).expect("valid"),
                    original_originator_transaction_id: TransactionId::new(&original).expect("valid"),
                    amount_minor: amount,
                    currency: 156,
                    ..LinkedRequest::default()
                };
                exchange.handle_request(at(now), ACQUIRER, Message::RefundRequest(request), &mut out);
                refunds.push((format!("R{n}"), amount));
                ids.push(format!("R{n}"));
            }
            Step::Cancel { pick } if !sent.is_empty() => {
                let (original, amount) = sent[pick % sent.len()].clone();
                let request = LinkedRequest {
                    originator: id("ACQ0001"),
                    originator_transaction_id: TransactionId::new(&format!("C{}", records.len())).expect("valid"),
                    original_originator_transaction_id: TransactionId::new(&original).expect("valid"),
                    amount_minor: amount,
                    currency: 156,
                    reason: 2,
                    ..LinkedRequest::default()
                };
                exchange.handle_request(at(now), ACQUIRER, Message::ReversalRequest(request), &mut out);
            }
            Step::Wait { ms } => {
                now += ms;
                exchange.handle_timers(at(now), &mut out);
            }
            Step::Cut => {
                window += 1;
                exchange.cut(window, at(now));
            }
            Step::RestartPoint => {
                exchange.restart_point();
            }
            _ => {}
        }
        for outbound in out.drain(..) {
            match (outbound.session, &outbound.message) {
                (WECHAT, Message::PaymentCodeRequest(request)) => {
                    forwarded.push((request.details.switch_reference, false))
                }
                (WECHAT, Message::RefundRequest(request)) => forwarded.push((request.switch_reference, true)),
                (ACQUIRER, Message::PaymentReply(reply) | Message::RefundReply(reply)) => {
                    *replies.entry(reply.originator_transaction_id.as_str().to_string()).or_default() += 1;
                }
                _ => {}
            }
        }
        exchange.take_records(&mut records);
        check_step(&mut exchange, completed_max, &records, &replies, &ids, &approved_by_receiver, window);
    }
    // Past every deadline: every request has had its one reply.
    now += 2_000;
    exchange.handle_timers(at(now), &mut out);
    for outbound in out.drain(..) {
        if let (ACQUIRER, Message::PaymentReply(reply) | Message::RefundReply(reply)) =
            (outbound.session, &outbound.message)
        {
            *replies.entry(reply.originator_transaction_id.as_str().to_string()).or_default() += 1;
        }
    }
    window += 1;
    exchange.cut(window, at(now));
    exchange.take_records(&mut records);
    Run { exchange, records, sent, refunds, replies, window, now }
}

/// The exchange rebuilt from `records`, the first of which is journal record `first`.
fn replayed(completed_max: usize, first: u64, records: &[Record]) -> Exchange {
    let mut exchange = with_memory(completed_max);
    for (sequence, record) in (first..).zip(records) {
        exchange.replay(sequence, record);
    }
    exchange
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn journal_and_clearing_invariants_hold(steps in prop::collection::vec(step(), 1..80)) {
        let Run { mut exchange, records, sent, refunds, replies, window, .. } = drive(ExchangeConfig::default().completed_max, steps);
        for (id_text, _) in sent.iter().chain(&refunds) {
            prop_assert_eq!(replies.get(id_text).copied(), Some(1), "{} answered once", id_text);
        }

        // The journal rebuilds the same state.
        let mut replayed = replayed(ExchangeConfig::default().completed_max, 1, &records);
        for (id_text, _) in &sent {
            prop_assert_eq!(status(&mut replayed, id_text), status(&mut exchange, id_text), "{}", id_text);
        }

        // Clearing: balanced windows, identical when rebuilt, and the right total.
        let shards = [records];
        let mut acquirer_net = 0i128;
        for w in 1..=window {
            let fees = switch::settlement::clearing::FeeSchedule::default();
            let built = Window::from_shards(w, &shards, &fees).expect("balanced");
            prop_assert_eq!(&built, &Window::from_shards(w, &shards, &fees).expect("balanced"));
            acquirer_net += built.positions.get(&id("ACQ0001")).and_then(|t| t.get(&156)).map_or(0, |t| t.net_minor);
        }
        let mut expected = 0i128;
        for (id_text, amount) in &sent {
            if matches!(status(&mut exchange, id_text), TransactionStatus::Approved | TransactionStatus::Refunded) {
                expected += i128::from(*amount);
            }
        }
        for (id_text, amount) in &refunds {
            let query = StatusQuery {
                originator: id("ACQ0001"),
                original_originator_transaction_id: TransactionId::new(id_text).expect("valid"),
                original_switch_reference: 0,
                query_time_ms: 0,
            };
            let mut answer = Vec::new();
            exchange.handle_request(at(0), ACQUIRER, Message::StatusQuery(query), &mut answer);
            if let Some(Message::StatusReply(reply)) = answer.pop().map(|o| o.message)
                && reply.status == TransactionStatus::Approved.value()
            {
                expected -= i128::from(*amount);
            }
        }
        prop_assert_eq!(acquirer_net, expected);
    }
}

/// Every transaction's status as `exchange` answers a query for it.
fn statuses(exchange: &mut Exchange, run: &Run) -> Vec<TransactionStatus> {
    run.sent.iter().chain(&run.refunds).map(|(id_text, _)| status(exchange, id_text)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Retention keeps a shard's journal from a checkpoint's `low_water` on (or from any
    /// earlier record: a segment boundary), and a restart replays from a restart point's.
    /// Whatever was left out, the rebuilt exchange must answer every query alike, recover
    /// (time out and reverse) alike, draw the same next references, and clearing must give
    /// the same files for every later window.
    #[test]
    fn a_journal_kept_from_a_checkpoint_rebuilds_the_same_state(
        steps in prop::collection::vec(step(), 1..120),
        completed_max in 1usize..8,
        back in 0u64..3,
    ) {
        let mut run = drive(completed_max, steps);
        let records = &run.records;
        let full_statuses = statuses(&mut replayed(completed_max, 1, records), &run);
        let mut checked = 0;
        for (index, record) in records.iter().enumerate() {
            // Windows a journal kept from here may not rebuild: up to the cut a checkpoint
            // follows, and up to the open one at a restart point.
            let (sequence, low_water, cut) = match *record {
                Record::Checkpoint { window, sequence, low_water, .. } => (sequence, low_water, window),
                Record::Restart { window, sequence, low_water, .. } => (sequence, low_water, window + 1),
                _ => continue,
            };
            prop_assert_eq!(sequence, index as u64 + 1, "a checkpoint names its own sequence");
            let first = low_water.saturating_sub(back).max(1);
            let mut kept = replayed(completed_max, first, &records[first as usize - 1..]);
            let mut full = replayed(completed_max, 1, records);
            prop_assert_eq!(statuses(&mut kept, &run), full_statuses.clone(), "kept from {}", first);
            prop_assert_eq!(kept.journal_next(), full.journal_next());
            prop_assert_eq!(kept.in_flight(), full.in_flight());
            prop_assert_eq!(kept.last_window(), full.last_window());
            prop_assert_eq!(kept.participant_flights(at(run.now)), full.participant_flights(at(run.now)));
            let (mut kept_out, mut full_out, mut kept_records, mut full_records) = (vec![], vec![], vec![], vec![]);
            kept.abandon_in_flight(at(run.now), &mut kept_out);
            full.abandon_in_flight(at(run.now), &mut full_out);
            kept.take_records(&mut kept_records);
            full.take_records(&mut full_records);
            prop_assert_eq!(kept_records, full_records, "recovery decides alike");
            prop_assert_eq!(
                kept_out.iter().map(|o| (o.session, o.message.clone())).collect::<Vec<_>>(),
                full_out.iter().map(|o| (o.session, o.message.clone())).collect::<Vec<_>>()
            );
            let fees = switch::settlement::clearing::FeeSchedule::default();
            let tail = [(first, &records[first as usize - 1..])];
            for w in 1..=run.window {
                let whole = Window::from_shards(w, std::slice::from_ref(records), &fees).expect("balanced");
                match Window::from_journal_tails(w, &tail, &fees) {
                    Ok(rebuilt) => prop_assert_eq!(rebuilt, whole, "window {} from record {}", w, first),
                    // Only a window retention does not keep may be refused; never one after it.
                    Err(error) => prop_assert!(w <= cut, "window {} from record {}: {}", w, first, error),
                }
            }
            checked += 1;
        }
        prop_assert!(checked >= 1);
        run.records.clear();
    }
}
