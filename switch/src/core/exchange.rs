//! The exchange: routes requests, matches replies, times out and reverses. Deterministic:
//! it takes `now` and events, and returns the messages to send to which session. One
//! exchange per shard owns its transactions; nothing here is shared.
//!
//! A transaction's life:
//!
//! ```text
//! request ─▶ duplicate? ─▶ route ─▶ receiver signed on? ─▶ in-flight limit ─▶ forward + timer
//!              │ Duplicate   │ NoRoute   │ DestinationUnavailable │ SystemBusy
//! reply (from the receiver only) ─▶ answer the originator        (Approved / Declined)
//! timer ─▶ Timeout to the originator + reversal to the receiver, stored and forwarded
//!          until acknowledged (resent on its reconnect); a late approval is never forwarded
//! ```
//!
//! Invariants:
//! - Every request gets exactly one reply to its originator: a switch answer at once, the
//!   receiver's answer, or `Timeout`, whichever comes first; later ones are dropped.
//! - A reply is accepted only from the participant the request was sent to.
//! - A timed-out transaction is always reversed (its outcome at the receiver is unknown),
//!   so a late approval needs no second reversal and is never forwarded.
//! - Memory is bounded: in-flight transactions by `in_flight_max`, remembered completed
//!   ones (for duplicates and status queries) by `completed_max`, oldest forgotten first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use dashmap::DashSet;
use foldhash::fast::RandomState;

use codec::code::{ReplyCode, ReversalReason, TransactionStatus};
use codec::emv_qr::{MerchantCode, parse_merchant_code};
use codec::payment_code::PaymentCodeError;
use codec::{
    AuthorizationCode, Conversion, InstitutionId, LinkedRequest, Message, PaymentCode, Reply, StatusQuery, StatusReply,
    SwitchReference, TransactionId,
};

use crate::core::record::Record;
pub use crate::core::routes::{QrNetwork, Routes};
use crate::core::session::Now;
use crate::core::timers::Timers;
use crate::fx::RateTable;
use crate::log_limit::LogLimit;
use crate::participant::Onboarding;

/// The exchange's own maps: foldhash (randomly seeded per process, so keys that
/// participants choose cannot be aimed at one bucket) instead of SipHash, which was the
/// single largest cost in a profile of the per-message path.
type FastMap<K, V> = HashMap<K, V, RandomState>;
type FastSet<K> = HashSet<K, RandomState>;

/// A connection's id, unique for the process.
pub type SessionId = u64;

/// Single-use payment codes the switch has forwarded and still remembers, shared by every
/// shard's exchange (a code's duplicates may arrive under any transaction id, so on any
/// shard). A code is claimed with one atomic insert-if-absent and released when its
/// transaction is forgotten, so the set is bounded like the transactions.
#[derive(Debug, Clone, Default)]
pub struct UsedCodes(Arc<DashSet<PaymentCode, RandomState>>);

impl UsedCodes {
    /// Room for `capacity` codes reserved up front.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Arc::new(DashSet::with_capacity_and_hasher(capacity, RandomState::default())))
    }

    /// Touches the memory reserved for `capacity` codes once (see `Exchange::prefault`).
    pub fn prefault(&self, capacity: usize) {
        for n in 0..capacity as u64 {
            self.0.insert(PaymentCode::from_bytes(numbered(n)).unwrap_or_default());
        }
        self.0.clear();
    }

    /// Claims `code`: `false` when it is already claimed.
    pub fn claim(&self, code: PaymentCode) -> bool {
        self.0.insert(code)
    }

    pub fn release(&self, code: &PaymentCode) {
        self.0.remove(code);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Twenty digits for `n`, zero padded to 32 bytes: a distinct payment code or transaction
/// id per `n`, for touching reserved tables.
fn numbered(n: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut rest = n;
    for byte in bytes[..20].iter_mut().rev() {
        *byte = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    bytes
}

/// A new transaction as the exchange records it: live (`admit`) or from the journal
/// (`replay`).
#[derive(Debug, Clone, Copy)]
struct Admission {
    originator: InstitutionId,
    id: TransactionId,
    receiver: InstitutionId,
    amount_minor: u64,
    currency: u16,
    kind: Kind,
    payment_code: Option<PaymentCode>,
    /// Into the payer's settlement currency (`Conversion::NONE`: not converted).
    conversion: Conversion,
}

impl Admission {
    /// A payment (either mode) of `details` to `receiver`.
    fn payment(
        details: &codec::TransactionDetails,
        receiver: InstitutionId,
        payment_code: Option<PaymentCode>,
    ) -> Self {
        Self {
            originator: details.originator,
            id: details.originator_transaction_id,
            receiver,
            amount_minor: details.amount_minor,
            currency: details.currency,
            kind: Kind::Payment,
            payment_code,
            conversion: Conversion::NONE,
        }
    }

    fn record(&self, reference: u64, time_ms: i64) -> Record {
        Record::Admitted {
            reference,
            time_ms,
            originator: self.originator,
            receiver: self.receiver,
            id: self.id,
            amount_minor: self.amount_minor,
            currency: self.currency,
            refund_of: match self.kind {
                Kind::Payment => 0,
                Kind::Refund { original } => original,
            },
            payment_code: self.payment_code,
        }
    }
}

/// A message for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub session: SessionId,
    pub message: Message,
}

#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    pub switch_id: InstitutionId,
    pub node: u8,
    pub shard: u8,
    /// How long the receiver has to answer before the originator gets `Timeout`.
    pub reply_deadline_ms: u64,
    /// How often an unacknowledged reversal is sent again.
    pub reversal_retry_ms: u64,
    pub in_flight_max: usize,
    /// In flight at once per participant, as originator and as receiver apart: beyond it
    /// the request is shed with `SystemBusy`, so one slow or silent receiver (or one
    /// flooding originator) uses up only its own allowance.
    pub in_flight_per_participant_max: usize,
    pub completed_max: usize,
    /// Per-participant policy; participants not listed are active with the defaults.
    pub policies: HashMap<InstitutionId, ParticipantPolicy>,
    /// Admitted counterparties of the participants that have a list; a request between two
    /// participants goes on only if each one's list (where it has one) names the other.
    pub counterparties: HashMap<InstitutionId, Vec<InstitutionId>>,
    /// Consecutive timeouts at a receiver that open its circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker refuses before letting one probe through.
    pub breaker_open_ms: u64,
    /// The largest amount (minor units) a transaction may carry when either party is in
    /// production verification or agreement.
    pub verification_amount_max_minor: u64,
    /// Requests per second a participant in production verification or agreement may
    /// originate (with bursts of one second's worth).
    pub verification_rate_per_second: u32,
    /// The FX rates in force (replaced whole by [`Exchange::set_rates`]).
    pub rates: Arc<RateTable>,
    /// Added to the mid rate on every conversion, in basis points.
    pub fx_margin_basis_points: u16,
    /// On shutdown, how long what is in flight may take to be answered before it is timed
    /// out and reversed (new requests are refused `SystemBusy` meanwhile).
    pub drain_deadline_ms: u64,
}

/// What the exchange applies to one participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParticipantPolicy {
    /// Its onboarding state (`Onboarding`: what traffic it may take part in). A suspended
    /// participant may sign on (it still receives the reversals owed to it), but its new
    /// requests are refused `NotAuthorised` and none are routed to it.
    pub state: Onboarding,
    /// The state a suspended participant was suspended from (where it may go back).
    pub suspended_from: Option<Onboarding>,
    /// When an operator last changed its state (Unix ms; 0: the configuration's state).
    pub state_changed_ms: i64,
    /// One of the network's test counterparts: it transacts only with participants in
    /// joint testing (and other test counterparts).
    pub test: bool,
    /// Its reply deadline as a receiver, instead of `reply_deadline_ms`.
    pub reply_deadline_ms: Option<u64>,
    /// Requests it may originate per second, with bursts up to one second's worth
    /// (`None`: unlimited). Beyond it, `SystemBusy`.
    pub rate_per_second: Option<u32>,
    /// The currency it settles in as a payer (ISO 4217 numeric). A payment it pays in
    /// another currency is converted into this one; `None`: it pays in the transaction's.
    pub settlement_currency: Option<u16>,
}

impl ExchangeConfig {
    /// Shard `index`'s share of this configuration among `shards`: its shard bits, and every
    /// limit divided (rounded up) so the shards together enforce about the configured value.
    /// Transactions spread evenly over shards by the owner hash, so an even split is fair.
    pub fn for_shard(&self, index: usize, shards: usize) -> Self {
        let split = |value: usize| value.div_ceil(shards);
        let mut config = self.clone();
        config.shard = index as u8;
        config.in_flight_max = split(self.in_flight_max);
        config.in_flight_per_participant_max = split(self.in_flight_per_participant_max);
        config.completed_max = split(self.completed_max);
        for policy in config.policies.values_mut() {
            policy.rate_per_second = policy.rate_per_second.map(|rate| rate.div_ceil(shards as u32));
        }
        config.verification_rate_per_second = self.verification_rate_per_second.div_ceil(shards as u32);
        config
    }
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        Self {
            switch_id: InstitutionId::new("CSWITCH").expect("valid id"),
            node: 0,
            shard: 0,
            reply_deadline_ms: 10_000,
            reversal_retry_ms: 5_000,
            in_flight_max: 200_000,
            in_flight_per_participant_max: 20_000,
            completed_max: 1_000_000,
            policies: HashMap::new(),
            counterparties: HashMap::new(),
            breaker_failures: 5,
            breaker_open_ms: 10_000,
            // 1,000.00 in a two-decimal currency; one request a second.
            verification_amount_max_minor: 100_000,
            verification_rate_per_second: 1,
            rates: Arc::default(),
            fx_margin_basis_points: 0,
            drain_deadline_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight {
        deadline_ms: u64,
    },
    Approved,
    Declined(ReplyCode),
    /// Answered `Timeout`; a reversal is pending or acknowledged.
    TimedOut,
    Reversed,
}

#[derive(Debug, Clone)]
struct Transaction {
    originator: InstitutionId,
    originator_session: SessionId,
    originator_transaction_id: TransactionId,
    receiver: InstitutionId,
    amount_minor: u64,
    currency: u16,
    state: State,
    /// A consumer-presented request's code, claimed in [`UsedCodes`] until this record is
    /// forgotten.
    payment_code: Option<PaymentCode>,
    kind: Kind,
    /// A payment's approved refunds, and those still waiting for the receiver's answer:
    /// together never more than its amount.
    refunded_minor: u64,
    refund_pending_minor: u64,
    /// Into the payer's currency (a refund's: what the payer gets back).
    conversion: Conversion,
    /// A converted payment's approved and pending refunds, in the payer's currency.
    refunded_payer_minor: u64,
    /// The oldest journal record it needs: its `Admitted`, or a refund's payment's if
    /// older (clearing needs the payment to know who pays whom). Retention keeps the
    /// journal from the oldest one held (`Exchange::cut`).
    needs_from: u64,
    /// Its turn to be forgotten came while its reversal was pending.
    forget_when_reversed: bool,
    /// The receiver approved another amount or currency than asked: the originator was
    /// answered `ApprovalMismatch` and the approval is reversed.
    approval_refused: bool,
}

/// What a transaction is: its reply kind, and what its outcome changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Payment,
    /// A refund of the payment with switch reference `original`.
    Refund {
        original: u64,
    },
}

impl Kind {
    /// `reply` as this kind's reply message.
    fn reply(self, reply: Reply) -> Message {
        match self {
            Self::Payment => Message::PaymentReply(reply),
            Self::Refund { .. } => Message::RefundReply(reply),
        }
    }
}

#[derive(Debug, Clone)]
struct PendingReversal {
    original: u64,
    receiver: InstitutionId,
    message: Message,
}

/// One participant's share of an exchange's state (see [`Exchange::participant_flights`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ParticipantFlight {
    pub participant: InstitutionId,
    /// Transactions in flight that it originated.
    pub originating: usize,
    /// Transactions in flight waiting for its answer.
    pub receiving: usize,
    /// Reversals sent to it and not yet acknowledged.
    pub reversals_pending: usize,
    pub breaker: BreakerState,
}

/// A receiver's circuit breaker as the admin port shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    #[default]
    Closed,
    /// Lets one request through to test the receiver.
    Probing,
    /// Refusing requests to it with `DestinationUnavailable`.
    Open,
}

/// A receiver's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    /// Counting consecutive timeouts.
    Closed { failures: u32 },
    /// Refusing until `until_ms`.
    Open { until_ms: u64 },
    /// One probe request is in flight; its outcome closes or reopens the breaker.
    Probing,
}

/// A token bucket in thousandths of a request, refilled by elapsed time.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens_milli: u64,
    refilled_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Reply(u64),
    ReversalRetry(u64),
}

/// What a switch answer echoes of the request it answers.
#[derive(Debug, Clone, Copy)]
struct Answering {
    originator: InstitutionId,
    id: TransactionId,
    amount_minor: u64,
    currency: u16,
    conversion: Conversion,
}

impl Answering {
    /// A request not (or not yet) converted.
    fn unconverted(originator: InstitutionId, id: TransactionId, amount_minor: u64, currency: u16) -> Self {
        Self { originator, id, amount_minor, currency, conversion: Conversion::NONE }
    }

    fn of(transaction: &Transaction) -> Self {
        Self {
            originator: transaction.originator,
            id: transaction.originator_transaction_id,
            amount_minor: transaction.amount_minor,
            currency: transaction.currency,
            conversion: transaction.conversion,
        }
    }

    fn details(details: &codec::TransactionDetails) -> Self {
        Self::unconverted(details.originator, details.originator_transaction_id, details.amount_minor, details.currency)
    }

    fn linked(request: &LinkedRequest) -> Self {
        Self::unconverted(request.originator, request.originator_transaction_id, request.amount_minor, request.currency)
    }

    fn reply(self, reference: u64, code: ReplyCode, responder: InstitutionId, now: Now) -> Reply {
        Reply {
            originator: self.originator,
            originator_transaction_id: self.id,
            switch_reference: reference,
            amount_minor: self.amount_minor,
            reply_time_ms: now.unix_ms,
            currency: self.currency,
            code: code.value(),
            reserved: [0; 4],
            authorization_code: AuthorizationCode::EMPTY,
            responder,
            conversion: self.conversion,
        }
    }
}

/// The switch's own answer with `code` to a request that never reached an exchange (shed
/// at a full hand-off queue): the reply kind the request expects, echoing its identifiers.
/// A status query gets status `Unknown` with `code`, meaning "ask again". `None` for a
/// message that is not a request.
pub fn switch_answer(request: &Message, code: ReplyCode, responder: InstitutionId, now: Now) -> Option<Message> {
    Some(match request {
        Message::PaymentCodeRequest(request) => {
            Message::PaymentReply(Answering::details(&request.details).reply(0, code, responder, now))
        }
        Message::QrPaymentRequest(request) => {
            Message::PaymentReply(Answering::details(&request.details).reply(0, code, responder, now))
        }
        Message::ReversalRequest(request) => {
            Message::ReversalReply(Answering::linked(request).reply(0, code, responder, now))
        }
        Message::RefundRequest(request) => {
            Message::RefundReply(Answering::linked(request).reply(0, code, responder, now))
        }
        Message::StatusQuery(query) => Message::StatusReply(StatusReply {
            originator: query.originator,
            original_originator_transaction_id: query.original_originator_transaction_id,
            original_switch_reference: query.original_switch_reference,
            amount_minor: 0,
            reply_time_ms: now.unix_ms,
            currency: 0,
            code: code.value(),
            status: TransactionStatus::Unknown.value(),
            reserved: [0; 3],
        }),
        _ => return None,
    })
}

/// What happened to an answer from a receiver (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    Forwarded,
    /// An approval for another amount or currency than asked: the originator was answered
    /// `ApprovalMismatch` and the receiver is sent a reversal.
    Refused,
    /// An approval after the timeout: covered by the pending reversal, not forwarded.
    LateApproval,
    /// A second answer, or one for a transaction the switch no longer remembers.
    Unmatched,
    /// An answer from a participant the request was not sent to.
    WrongSender,
    ReversalAcknowledged,
}

#[derive(Debug)]
pub struct Exchange {
    config: ExchangeConfig,
    routes: Routes,
    sessions: FastMap<InstitutionId, Vec<SessionId>>,
    /// Every signed-on session, whatever its participant.
    live: FastSet<SessionId>,
    round_robin: usize,
    sequence: u64,
    transactions: FastMap<u64, Transaction>,
    in_flight: usize,
    /// In flight per originator and per receiver.
    originating: FastMap<InstitutionId, usize>,
    receiving: FastMap<InstitutionId, usize>,
    breakers: FastMap<InstitutionId, Breaker>,
    buckets: FastMap<InstitutionId, Bucket>,
    by_originator: FastMap<(InstitutionId, TransactionId), u64>,
    used_codes: UsedCodes,
    /// Completed transactions, oldest first, to forget beyond `completed_max`.
    completed: VecDeque<u64>,
    timers: Timers<Timer>,
    reversals: FastMap<u64, PendingReversal>,
    /// Decisions not yet handed to the journal, in the order they were made.
    records: Vec<Record>,
    /// The journal sequence the next record will have: one past the last replayed, counted
    /// on by each decision (the exchange is its journal's only writer).
    journal_next: u64,
    /// The last clearing window closed.
    window: u64,
    /// Shutting down: new requests are refused `SystemBusy`, what is in flight finishes.
    draining: bool,
}

impl Exchange {
    /// Reserves room for every transaction it may hold (`in_flight_max + completed_max`) up
    /// front: tables never grow on the message path, where a rehash of a million entries
    /// stalled a shard for hundreds of milliseconds. Untouched room costs address space,
    /// not memory.
    pub fn new(config: ExchangeConfig, routes: Routes) -> Self {
        let records = config.in_flight_max.saturating_add(config.completed_max);
        Self {
            routes,
            sessions: FastMap::default(),
            live: FastSet::default(),
            round_robin: 0,
            sequence: 0,
            transactions: FastMap::with_capacity_and_hasher(records, RandomState::default()),
            in_flight: 0,
            originating: FastMap::default(),
            receiving: FastMap::default(),
            breakers: FastMap::default(),
            buckets: FastMap::default(),
            by_originator: FastMap::with_capacity_and_hasher(records, RandomState::default()),
            used_codes: UsedCodes::default(),
            completed: VecDeque::with_capacity(config.completed_max.saturating_add(1)),
            timers: Timers::default(),
            reversals: FastMap::default(),
            records: Vec::new(),
            journal_next: 1,
            window: 0,
            draining: false,
            config,
        }
    }

    /// Touches every page of the tables reserved in `new` once, now: otherwise the first
    /// touches happen under the first traffic after a start (kernel page zeroing, hundreds of
    /// milliseconds of stalls spread over the first seconds, just when a restarted switch
    /// meets its backlog). Leaves the tables empty.
    pub fn prefault(&mut self) {
        let records = self.config.in_flight_max.saturating_add(self.config.completed_max);
        let dummy = Transaction {
            originator: InstitutionId::EMPTY,
            originator_session: 0,
            originator_transaction_id: TransactionId::EMPTY,
            receiver: InstitutionId::EMPTY,
            amount_minor: 0,
            currency: 0,
            state: State::Reversed,
            payment_code: None,
            kind: Kind::Payment,
            refunded_minor: 0,
            refund_pending_minor: 0,
            conversion: Conversion::NONE,
            refunded_payer_minor: 0,
            needs_from: 0,
            forget_when_reversed: false,
            approval_refused: false,
        };
        for n in 0..records as u64 {
            self.transactions.insert(n, dummy.clone());
            let id = TransactionId::from_bytes(numbered(n)).unwrap_or_default();
            self.by_originator.insert((InstitutionId::EMPTY, id), n);
        }
        self.transactions.clear();
        self.by_originator.clear();
    }

    /// Shares `codes` with other exchanges (the other shards'), instead of a set of its own.
    pub fn with_used_codes(mut self, codes: UsedCodes) -> Self {
        self.used_codes = codes;
        self
    }

    /// A session signed on: it can receive requests, and pending reversals for its
    /// participant are sent to it at once.
    pub fn session_up(&mut self, participant: InstitutionId, session: SessionId, out: &mut Vec<Outbound>) {
        self.sessions.entry(participant).or_default().push(session);
        self.live.insert(session);
        for pending in self.reversals.values().filter(|p| p.receiver == participant) {
            out.push(Outbound { session, message: pending.message.clone() });
        }
    }

    pub fn session_down(&mut self, participant: InstitutionId, session: SessionId) {
        if let Some(sessions) = self.sessions.get_mut(&participant) {
            sessions.retain(|&s| s != session);
        }
        self.live.remove(&session);
    }

    /// A message the edge could not deliver (its session ended, or its queue was full).
    /// An approval that never reached its originator is reversed: the payer must not be
    /// charged for a payment the merchant was never told of. Anything else is covered
    /// already: an undelivered request times out and is reversed, an undelivered reversal
    /// is resent, and a decline or switch answer moved no value.
    pub fn handle_undeliverable(&mut self, now: Now, message: Message, out: &mut Vec<Outbound>) {
        if let Message::PaymentReply(reply) | Message::RefundReply(reply) = message
            && reply.code == ReplyCode::Approved.value()
            && self.transactions.get(&reply.switch_reference).is_some_and(|t| t.state == State::Approved)
        {
            self.reverse(now, reply.switch_reference, ReversalReason::ReplyUndeliverable, out);
        }
    }

    /// When [`Exchange::handle_timers`] must next run (monotonic ms).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// What this exchange holds for each participant with anything in flight, a pending
    /// reversal or a breaker not closed, sorted by participant (for the admin port).
    pub fn participant_flights(&self, now: Now) -> Vec<ParticipantFlight> {
        let mut flights: std::collections::BTreeMap<InstitutionId, ParticipantFlight> = Default::default();
        fn entry(
            flights: &mut std::collections::BTreeMap<InstitutionId, ParticipantFlight>,
            participant: InstitutionId,
        ) -> &mut ParticipantFlight {
            flights.entry(participant).or_insert(ParticipantFlight { participant, ..ParticipantFlight::default() })
        }
        for (&participant, &count) in &self.originating {
            entry(&mut flights, participant).originating = count;
        }
        for (&participant, &count) in &self.receiving {
            entry(&mut flights, participant).receiving = count;
        }
        for pending in self.reversals.values() {
            entry(&mut flights, pending.receiver).reversals_pending += 1;
        }
        for (&participant, breaker) in &self.breakers {
            entry(&mut flights, participant).breaker = match breaker {
                Breaker::Closed { .. } => BreakerState::Closed,
                Breaker::Open { until_ms } if now.monotonic_ms >= *until_ms => BreakerState::Probing,
                Breaker::Open { .. } => BreakerState::Open,
                Breaker::Probing => BreakerState::Probing,
            };
        }
        flights.into_values().collect()
    }

    fn session_of(&mut self, participant: InstitutionId) -> Option<SessionId> {
        let sessions = self.sessions.get(&participant).filter(|s| !s.is_empty())?;
        self.round_robin = self.round_robin.wrapping_add(1);
        Some(sessions[self.round_robin % sessions.len()])
    }

    fn next_reference(&mut self) -> u64 {
        self.sequence += 1;
        SwitchReference::new(self.config.node, self.config.shard, self.sequence).0
    }

    fn answer(&self, to: Answering, reference: u64, code: ReplyCode, now: Now) -> Reply {
        to.reply(reference, code, self.config.switch_id, now)
    }

    /// A request from a signed-on originator (identity already checked by its session).
    pub fn handle_request(&mut self, now: Now, session: SessionId, message: Message, out: &mut Vec<Outbound>) {
        match message {
            Message::PaymentCodeRequest(mut request) => {
                let details = &request.details;
                let (originator, id, amount, currency) =
                    (details.originator, details.originator_transaction_id, details.amount_minor, details.currency);
                let switch_answer = |exchange: &Self, code| {
                    Message::PaymentReply(exchange.answer(
                        Answering::unconverted(originator, id, amount, currency),
                        0,
                        code,
                        now,
                    ))
                };
                if self.by_originator.contains_key(&(originator, id)) {
                    out.push(Outbound { session, message: switch_answer(self, ReplyCode::Duplicate) });
                    return;
                }
                let receiver = match self.routes.issuers.lookup(request.payment_code.digits()) {
                    Ok(entry) => entry.issuer,
                    Err(PaymentCodeError::UnknownPrefix) => {
                        out.push(Outbound { session, message: switch_answer(self, ReplyCode::NoRoute) });
                        return;
                    }
                    Err(_) => {
                        out.push(Outbound { session, message: switch_answer(self, ReplyCode::FormatError) });
                        return;
                    }
                };
                let code = request.payment_code;
                if !self.used_codes.claim(code) {
                    out.push(Outbound { session, message: switch_answer(self, ReplyCode::Duplicate) });
                    return;
                }
                let admission = Admission::payment(&request.details, receiver, Some(code));
                let Some((reference, conversion)) = self.admit(now, session, admission, out) else {
                    self.used_codes.release(&code);
                    return;
                };
                request.details.switch_reference = reference;
                request.conversion = conversion;
                self.forward(receiver, Message::PaymentCodeRequest(request), out);
            }
            Message::QrPaymentRequest(mut request) => {
                let details = &request.details;
                let (originator, id, amount, currency) =
                    (details.originator, details.originator_transaction_id, details.amount_minor, details.currency);
                if self.by_originator.contains_key(&(originator, id)) {
                    let reply = self.answer(
                        Answering::unconverted(originator, id, amount, currency),
                        0,
                        ReplyCode::Duplicate,
                        now,
                    );
                    out.push(Outbound { session, message: Message::PaymentReply(reply) });
                    return;
                }
                // A stack copy of the payload, so the parsed code can fill the request.
                let payload = request.qr_payload;
                let length = usize::from(request.qr_length).min(payload.0.len());
                let text = std::str::from_utf8(&payload.0[..length]).unwrap_or("");
                let route = match parse_merchant_code(text) {
                    Ok(MerchantCode::Emv(qr)) => self.routes.route_merchant_code(&qr, &mut request.details),
                    Ok(MerchantCode::UnionPayUrl(url)) => {
                        self.routes.unionpay_institutions.get(url.institution_code).copied().ok_or(ReplyCode::NoRoute)
                    }
                    Err(_) => Err(ReplyCode::FormatError),
                };
                let receiver = match route {
                    Ok(receiver) => receiver,
                    Err(code) => {
                        let reply = self.answer(Answering::unconverted(originator, id, amount, currency), 0, code, now);
                        out.push(Outbound { session, message: Message::PaymentReply(reply) });
                        return;
                    }
                };
                let admission = Admission::payment(&request.details, receiver, None);
                if let Some((reference, _)) = self.admit(now, session, admission, out) {
                    request.details.switch_reference = reference;
                    self.forward(receiver, Message::QrPaymentRequest(request), out);
                }
            }
            Message::StatusQuery(query) => {
                let reply = self.status(&query, now);
                out.push(Outbound { session, message: Message::StatusReply(reply) });
            }
            Message::ReversalRequest(request) => self.cancel(now, session, &request, out),
            Message::RefundRequest(request) => self.refund(now, session, request, out),
            other => debug_assert!(false, "not a request: {:?}", other.kind()),
        }
    }

    /// The originator's own transaction that `request` names (by switch reference, or by
    /// its id at the originator), if the switch still remembers it.
    fn original_of(&self, request: &LinkedRequest) -> Option<u64> {
        let reference = if request.original_switch_reference != 0 {
            request.original_switch_reference
        } else {
            *self.by_originator.get(&(request.originator, request.original_originator_transaction_id))?
        };
        // Only the originator's own transactions: nobody refunds or cancels another's.
        self.transactions.get(&reference).filter(|t| t.originator == request.originator).map(|_| reference)
    }

    /// A refund: a new transaction, linked to an approved payment of the same originator,
    /// routed to the receiver that approved it. The payment's approved and pending refunds
    /// never exceed its amount; a refund is answered in a `RefundReply`.
    fn refund(&mut self, now: Now, session: SessionId, mut request: LinkedRequest, out: &mut Vec<Outbound>) {
        let (originator, id) = (request.originator, request.originator_transaction_id);
        let refuse = |exchange: &Self, code, out: &mut Vec<Outbound>| {
            let reply = exchange.answer(Answering::linked(&request), 0, code, now);
            out.push(Outbound { session, message: Message::RefundReply(reply) });
        };
        if self.by_originator.contains_key(&(originator, id)) {
            return refuse(self, ReplyCode::Duplicate, out);
        }
        let Some(original) = self.original_of(&request) else {
            return refuse(self, ReplyCode::UnknownOriginal, out);
        };
        let payment = &self.transactions[&original];
        if payment.kind != Kind::Payment || payment.state != State::Approved {
            // Nothing was approved to give back.
            return refuse(self, ReplyCode::UnknownOriginal, out);
        }
        let refundable = payment.amount_minor - payment.refunded_minor - payment.refund_pending_minor;
        if request.currency != payment.currency || request.amount_minor == 0 || request.amount_minor > refundable {
            return refuse(self, ReplyCode::InvalidAmount, out);
        }
        let (receiver, original_id) = (payment.receiver, payment.originator_transaction_id);
        // The payer gets back its share of what it paid, at the payment's rate.
        let conversion = if payment.conversion.is_some() {
            let share = codec::fx::refund_share(
                payment.amount_minor,
                payment.conversion.payer_amount_minor,
                request.amount_minor,
                refundable,
                payment.refunded_payer_minor,
            );
            Conversion { payer_amount_minor: share, ..payment.conversion }
        } else {
            Conversion::NONE
        };
        let admission = Admission {
            originator,
            id,
            receiver,
            amount_minor: request.amount_minor,
            currency: request.currency,
            kind: Kind::Refund { original },
            payment_code: None,
            conversion,
        };
        let Some((reference, _)) = self.admit(now, session, admission, out) else {
            return;
        };
        request.switch_reference = reference;
        request.original_switch_reference = original;
        request.original_originator_transaction_id = original_id;
        request.conversion = conversion;
        self.forward(receiver, Message::RefundRequest(request), out);
    }

    /// An originator cancels a transaction whose outcome it does not know (or wants undone).
    /// In flight: it is answered `Timeout` now and reversed; approved: reversed; declined,
    /// timed out or already reversed: nothing more to do. The reversal is stored and
    /// forwarded until the receiver acknowledges it, so the cancel is acknowledged at once.
    fn cancel(&mut self, now: Now, session: SessionId, request: &LinkedRequest, out: &mut Vec<Outbound>) {
        let Some(original) = self.original_of(request) else {
            let reply = self.answer(Answering::linked(request), 0, ReplyCode::UnknownOriginal, now);
            out.push(Outbound { session, message: Message::ReversalReply(reply) });
            return;
        };
        match self.transactions[&original].state {
            State::InFlight { .. } => self.abandon(now, original, ReversalReason::OriginatorCancel, out),
            State::Approved => self.reverse(now, original, ReversalReason::OriginatorCancel, out),
            State::Declined(_) | State::TimedOut | State::Reversed => {}
        }
        let reply = self.answer(Answering::linked(request), original, ReplyCode::Approved, now);
        out.push(Outbound { session, message: Message::ReversalReply(reply) });
    }

    /// Checks the receiver and the in-flight limit, converts a payment whose payer settles
    /// in another currency, and records a new transaction (and its journal records).
    /// Answers the originator itself and returns `None` when the request cannot go on;
    /// else its reference and conversion.
    fn admit(
        &mut self,
        now: Now,
        session: SessionId,
        mut admission: Admission,
        out: &mut Vec<Outbound>,
    ) -> Option<(u64, Conversion)> {
        let Admission { originator, id, receiver, amount_minor: amount, currency, kind, .. } = admission;
        let (originator_policy, receiver_policy) = (self.policy(originator), self.policy(receiver));
        // The payer: the issuer of a payment code, the wallet of a QR payment. A refund's
        // conversion comes with it (a share of its payment's).
        let payer = if admission.payment_code.is_some() { receiver_policy } else { originator_policy };
        let conversion = match kind {
            Kind::Payment => self.conversion(payer.settlement_currency, amount, currency, now),
            Kind::Refund { .. } => Ok(admission.conversion),
        };
        // Order matters: a token is spent only on a request the limits admit, and the
        // breaker is asked last, because letting a probe through changes its state.
        let rate = match (originator_policy.state.verifying(), originator_policy.rate_per_second) {
            (true, Some(rate)) => Some(rate.min(self.config.verification_rate_per_second)),
            (true, None) => Some(self.config.verification_rate_per_second),
            (false, rate) => rate,
        };
        let code = if self.draining {
            Some(ReplyCode::SystemBusy)
        } else if let Some(code) = self.onboarding_refusal(originator_policy, receiver_policy, amount) {
            Some(code)
        } else if !self.admitted(originator, receiver) {
            Some(ReplyCode::NotAuthorised)
        } else if self.sessions.get(&receiver).is_none_or(|s| s.is_empty()) {
            Some(ReplyCode::DestinationUnavailable)
        } else if conversion.is_err() {
            Some(ReplyCode::NoExchangeRate)
        } else if self.in_flight >= self.config.in_flight_max
            || self.originating.get(&originator).copied().unwrap_or(0) >= self.config.in_flight_per_participant_max
            || self.receiving.get(&receiver).copied().unwrap_or(0) >= self.config.in_flight_per_participant_max
            || !self.take_token(originator, rate, now)
        {
            Some(ReplyCode::SystemBusy)
        } else if !self.breaker_admits(receiver, now) {
            Some(ReplyCode::DestinationUnavailable)
        } else {
            None
        };
        if let Some(code) = code {
            let reply = self.answer(Answering::unconverted(originator, id, amount, currency), 0, code, now);
            out.push(Outbound { session, message: kind.reply(reply) });
            return None;
        }
        admission.conversion = conversion.unwrap_or(Conversion::NONE);
        let reference = self.next_reference();
        let reply_ms = receiver_policy.reply_deadline_ms.unwrap_or(self.config.reply_deadline_ms);
        self.open(reference, session, admission, now.monotonic_ms + reply_ms);
        self.timers.add(now.monotonic_ms, reply_ms, Timer::Reply(reference));
        self.journal(admission.record(reference, now.unix_ms));
        if admission.conversion.is_some() {
            self.journal(Record::Converted { reference, conversion: admission.conversion });
        }
        Some((reference, admission.conversion))
    }

    /// The conversion of a payment of `amount_minor` in `currency` whose payer settles in
    /// `settlement`: none when that is the payment's currency (or there is none), else at
    /// the rate in force now (the switch's clock) plus the margin. `Err` when there is no
    /// such rate or the amount does not convert: the payment is declined `NoExchangeRate`.
    fn conversion(
        &self,
        settlement: Option<u16>,
        amount_minor: u64,
        currency: u16,
        now: Now,
    ) -> Result<Conversion, codec::fx::FxError> {
        let Some(payer_currency) = settlement.filter(|&c| c != currency) else {
            return Ok(Conversion::NONE);
        };
        let rate =
            self.config.rates.lookup(currency, payer_currency, now.unix_ms).ok_or(codec::fx::FxError::BadRate)?;
        let margin = self.config.fx_margin_basis_points;
        let payer_amount_minor = codec::fx::convert(amount_minor, currency, payer_currency, rate.rate, margin)?;
        Ok(Conversion {
            payer_amount_minor,
            rate: rate.rate,
            rate_version: rate.version,
            payer_currency,
            margin_basis_points: margin,
        })
    }

    /// Replaces the FX rate table (the admin API's reload): payments admitted from now on
    /// convert at its rates; admitted ones keep theirs.
    pub fn set_rates(&mut self, rates: Arc<RateTable>) {
        self.config.rates = rates;
    }

    /// Records transaction `reference` as in flight until `deadline_ms`: its allowances,
    /// its id for duplicates and, for a refund, the amount it holds of its payment.
    fn open(&mut self, reference: u64, session: SessionId, admission: Admission, deadline_ms: u64) {
        let Admission { originator, id, receiver, amount_minor, currency, kind, payment_code, conversion } = admission;
        self.transactions.insert(
            reference,
            Transaction {
                originator,
                originator_session: session,
                originator_transaction_id: id,
                receiver,
                amount_minor,
                currency,
                state: State::InFlight { deadline_ms },
                payment_code,
                kind,
                refunded_minor: 0,
                refund_pending_minor: 0,
                conversion,
                refunded_payer_minor: 0,
                // `open` comes right before the `Admitted` is journaled (or replayed).
                needs_from: match kind {
                    Kind::Refund { original } => self
                        .transactions
                        .get(&original)
                        .map_or(self.journal_next, |payment| payment.needs_from.min(self.journal_next)),
                    Kind::Payment => self.journal_next,
                },
                forget_when_reversed: false,
                approval_refused: false,
            },
        );
        self.in_flight += 1;
        *self.originating.entry(originator).or_default() += 1;
        *self.receiving.entry(receiver).or_default() += 1;
        self.by_originator.insert((originator, id), reference);
        if let Kind::Refund { original } = kind
            && let Some(payment) = self.transactions.get_mut(&original)
        {
            payment.refund_pending_minor += amount_minor;
            payment.refunded_payer_minor += conversion.payer_amount_minor;
        }
    }

    /// Transaction `reference`, in flight, reached `outcome`: it leaves flight, a refund's
    /// amount is settled against its payment, and it joins the remembered transactions.
    /// Returns it as it was; `None` if it was not in flight.
    fn complete(&mut self, reference: u64, outcome: State) -> Option<Transaction> {
        let transaction = self.transactions.get_mut(&reference)?;
        if !matches!(transaction.state, State::InFlight { .. }) {
            return None;
        }
        transaction.state = outcome;
        let transaction = transaction.clone();
        self.leave_flight(transaction.originator, transaction.receiver);
        if let Kind::Refund { original } = transaction.kind {
            // Declined or timed out (and reversed): the refund did not happen.
            self.settle_refund(original, &transaction, outcome == State::Approved);
        }
        self.remember_completed(reference);
        Some(transaction)
    }

    /// Whether the receiver's breaker lets a request through now. An open breaker past its
    /// time lets exactly one probe through.
    fn breaker_admits(&mut self, receiver: InstitutionId, now: Now) -> bool {
        match self.breakers.get(&receiver).copied() {
            None | Some(Breaker::Closed { .. }) => true,
            Some(Breaker::Open { until_ms }) if now.monotonic_ms >= until_ms => {
                self.breakers.insert(receiver, Breaker::Probing);
                true
            }
            Some(Breaker::Open { .. } | Breaker::Probing) => false,
        }
    }

    /// A receiver answered (`answered`) or timed out: closes, counts or opens its breaker.
    fn breaker_record(&mut self, receiver: InstitutionId, answered: bool, now: Now) {
        if self.config.breaker_failures == 0 {
            return;
        }
        let state = self.breakers.get(&receiver).copied().unwrap_or(Breaker::Closed { failures: 0 });
        let next = match (state, answered) {
            (_, true) => None,
            (Breaker::Closed { failures }, false) if failures + 1 < self.config.breaker_failures => {
                Some(Breaker::Closed { failures: failures + 1 })
            }
            (Breaker::Closed { .. } | Breaker::Probing, false) => {
                tracing::warn!(%receiver, "circuit breaker open");
                Some(Breaker::Open { until_ms: now.monotonic_ms + self.config.breaker_open_ms })
            }
            (open @ Breaker::Open { .. }, false) => Some(open),
        };
        match next {
            Some(breaker) => self.breakers.insert(receiver, breaker),
            None => self.breakers.remove(&receiver),
        };
    }

    /// Takes one request's token from the originator's bucket, if it has a rate.
    fn take_token(&mut self, originator: InstitutionId, rate_per_second: Option<u32>, now: Now) -> bool {
        let Some(rate) = rate_per_second else { return true };
        // One second's worth of burst; tokens in thousandths so low rates refill smoothly.
        let capacity = u64::from(rate) * 1_000;
        let bucket =
            self.buckets.entry(originator).or_insert(Bucket { tokens_milli: capacity, refilled_ms: now.monotonic_ms });
        let elapsed = now.monotonic_ms.saturating_sub(bucket.refilled_ms);
        bucket.tokens_milli = (bucket.tokens_milli + elapsed * u64::from(rate)).min(capacity);
        bucket.refilled_ms = now.monotonic_ms;
        if bucket.tokens_milli >= 1_000 {
            bucket.tokens_milli -= 1_000;
            true
        } else {
            false
        }
    }

    /// Whether both sides admit each other as counterparties.
    fn admitted(&self, originator: InstitutionId, receiver: InstitutionId) -> bool {
        let admits = |who: InstitutionId, other: InstitutionId| {
            self.config.counterparties.get(&who).is_none_or(|list| list.contains(&other))
        };
        admits(originator, receiver) && admits(receiver, originator)
    }

    fn policy(&self, participant: InstitutionId) -> ParticipantPolicy {
        self.config.policies.get(&participant).copied().unwrap_or_default()
    }

    /// The onboarding rules (`Onboarding`) for a request between these two parties of
    /// `amount`: the refusal, or `None` when both states allow it.
    fn onboarding_refusal(
        &self,
        originator: ParticipantPolicy,
        receiver: ParticipantPolicy,
        amount: u64,
    ) -> Option<ReplyCode> {
        if !originator.state.carries_traffic() {
            return Some(ReplyCode::NotAuthorised);
        }
        if !receiver.state.carries_traffic() {
            return Some(ReplyCode::DestinationUnavailable);
        }
        // Joint testing only with test counterparts; test counterparts only with joint
        // testing or each other: test traffic never reaches production participants.
        let fits = |one: ParticipantPolicy, other: ParticipantPolicy| match (one.state, one.test) {
            (Onboarding::JointTesting, _) => other.test,
            (_, true) => other.test || other.state == Onboarding::JointTesting,
            _ => true,
        };
        if !fits(originator, receiver) || !fits(receiver, originator) {
            return Some(ReplyCode::NotAuthorised);
        }
        if (originator.state.verifying() || receiver.state.verifying())
            && amount > self.config.verification_amount_max_minor
        {
            return Some(ReplyCode::NotAuthorised);
        }
        None
    }

    /// `participant`'s onboarding state, the state it was suspended from, and when an
    /// operator last changed it (Unix ms; 0: never).
    pub fn onboarding(&self, participant: InstitutionId) -> (Onboarding, Option<Onboarding>, i64) {
        let policy = self.policy(participant);
        (policy.state, policy.suspended_from, policy.state_changed_ms)
    }

    /// An operator moved `participant` from `previous` to `state`: it applies to the next
    /// request, and is journaled (in order with the decisions around it). The caller checks
    /// that the move is allowed (`Onboarding::may_become`).
    pub fn set_onboarding(&mut self, participant: InstitutionId, state: Onboarding, previous: Onboarding, now: Now) {
        self.apply_onboarding(participant, state, previous, now.unix_ms);
        self.journal(Record::Onboarding { participant, state, previous, time_ms: now.unix_ms });
    }

    fn apply_onboarding(&mut self, participant: InstitutionId, state: Onboarding, previous: Onboarding, at_ms: i64) {
        let policy = self.config.policies.entry(participant).or_default();
        policy.state = state;
        policy.suspended_from = (state == Onboarding::Suspended).then_some(previous);
        policy.state_changed_ms = at_ms;
    }

    /// A transaction left flight (answered or timed out): its allowances free up.
    fn leave_flight(&mut self, originator: InstitutionId, receiver: InstitutionId) {
        self.in_flight -= 1;
        for (counts, participant) in [(&mut self.originating, originator), (&mut self.receiving, receiver)] {
            if let Some(count) = counts.get_mut(&participant) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&participant);
                }
            }
        }
    }

    fn forward(&mut self, receiver: InstitutionId, message: Message, out: &mut Vec<Outbound>) {
        // `admit` checked the receiver has a session.
        if let Some(session) = self.session_of(receiver) {
            out.push(Outbound { session, message });
        }
    }

    /// An answer from a receiver: a payment or refund reply, or a reversal acknowledgement.
    pub fn handle_answer(
        &mut self,
        now: Now,
        sender: InstitutionId,
        message: Message,
        out: &mut Vec<Outbound>,
    ) -> AnswerOutcome {
        match message {
            Message::ReversalReply(reply) => {
                let reference = reply.switch_reference;
                match self.reversals.get(&reference) {
                    Some(pending) if pending.receiver != sender => AnswerOutcome::WrongSender,
                    Some(_) => {
                        self.journal(Record::ReversalAcknowledged { reversal: reference, time_ms: now.unix_ms });
                        self.acknowledge_reversal(reference);
                        AnswerOutcome::ReversalAcknowledged
                    }
                    None => AnswerOutcome::Unmatched,
                }
            }
            Message::PaymentReply(reply) | Message::RefundReply(reply) => {
                let reference = reply.switch_reference;
                let Some(transaction) = self.transactions.get_mut(&reference) else {
                    return AnswerOutcome::Unmatched;
                };
                if transaction.receiver != sender {
                    return AnswerOutcome::WrongSender;
                }
                let mut code = ReplyCode::try_from(reply.code).unwrap_or(ReplyCode::DoNotHonour);
                match transaction.state {
                    State::InFlight { .. } => {
                        // An approval is for what was asked, or it is no approval: the
                        // switch never clears an amount the receiver did not approve, and
                        // never tells the originator of an approval the receiver did not give.
                        let refused = code.is_approved()
                            && (reply.amount_minor != transaction.amount_minor
                                || reply.currency != transaction.currency);
                        static REFUSED: LogLimit = LogLimit::per_second();
                        if refused && let Some(suppressed) = REFUSED.allow(now.monotonic_ms) {
                            tracing::warn!(
                                suppressed,
                                receiver = %sender,
                                reference,
                                asked_minor = transaction.amount_minor,
                                asked_currency = transaction.currency,
                                approved_minor = reply.amount_minor,
                                approved_currency = reply.currency,
                                "an approval for another amount or currency than asked: refused and reversed"
                            );
                        }
                        if refused {
                            code = ReplyCode::ApprovalMismatch;
                        }
                        let outcome = if code.is_approved() { State::Approved } else { State::Declined(code) };
                        let transaction = self.complete(reference, outcome).expect("in flight");
                        let authorization_code =
                            if code.is_approved() { reply.authorization_code } else { AuthorizationCode::EMPTY };
                        self.journal(Record::Answered {
                            reference,
                            time_ms: now.unix_ms,
                            code: code.value(),
                            authorization_code,
                        });
                        self.breaker_record(sender, true, now);
                        // The originator's fields come from the switch's record, never from
                        // the receiver's echo.
                        let answer = Reply {
                            authorization_code,
                            ..Answering::of(&transaction).reply(reference, code, sender, now)
                        };
                        let answer = transaction.kind.reply(answer);
                        if self.live.contains(&transaction.originator_session) {
                            out.push(Outbound { session: transaction.originator_session, message: answer });
                        } else {
                            self.handle_undeliverable(now, answer, out);
                        }
                        if refused {
                            // Whatever the receiver did on its side is undone there.
                            self.reverse(now, reference, ReversalReason::ApprovalMismatch, out);
                            return AnswerOutcome::Refused;
                        }
                        AnswerOutcome::Forwarded
                    }
                    State::TimedOut | State::Reversed if code.is_approved() => AnswerOutcome::LateApproval,
                    _ => AnswerOutcome::Unmatched,
                }
            }
            other => {
                debug_assert!(false, "not an answer: {:?}", other.kind());
                AnswerOutcome::Unmatched
            }
        }
    }

    /// Fires due timers: replies `Timeout` and starts reversals; resends reversals.
    pub fn handle_timers(&mut self, now: Now, out: &mut Vec<Outbound>) {
        while let Some((deadline, timer)) = self.timers.pop_due(now.monotonic_ms) {
            match timer {
                Timer::Reply(reference) => self.time_out(now, reference, deadline, out),
                Timer::ReversalRetry(reversal) => {
                    if let Some(pending) = self.reversals.get(&reversal) {
                        let (receiver, message) = (pending.receiver, pending.message.clone());
                        if let Some(session) = self.session_of(receiver) {
                            out.push(Outbound { session, message });
                        }
                        self.timers.add(
                            now.monotonic_ms,
                            self.config.reversal_retry_ms,
                            Timer::ReversalRetry(reversal),
                        );
                    }
                }
            }
        }
    }

    fn time_out(&mut self, now: Now, reference: u64, deadline: u64, out: &mut Vec<Outbound>) {
        let Some(transaction) = self.transactions.get(&reference) else { return };
        if transaction.state != (State::InFlight { deadline_ms: deadline }) {
            return;
        }
        self.breaker_record(transaction.receiver, false, now);
        self.abandon(now, reference, ReversalReason::Timeout, out);
    }

    /// Gives up on an in-flight transaction: the originator is answered `Timeout` (its one
    /// reply) and, the outcome at the receiver being unknown, it is reversed.
    fn abandon(&mut self, now: Now, reference: u64, reason: ReversalReason, out: &mut Vec<Outbound>) {
        let Some(transaction) = self.complete(reference, State::TimedOut) else { return };
        self.journal(Record::TimedOut { reference, time_ms: now.unix_ms });
        let reply = self.answer(Answering::of(&transaction), reference, ReplyCode::Timeout, now);
        out.push(Outbound { session: transaction.originator_session, message: transaction.kind.reply(reply) });
        self.reverse(now, reference, reason, out);
    }

    /// `refund` of payment `original` was answered: approved, it counts as refunded;
    /// otherwise its amount (and its payer share) is refundable again.
    fn settle_refund(&mut self, original: u64, refund: &Transaction, approved: bool) {
        if let Some(payment) = self.transactions.get_mut(&original) {
            payment.refund_pending_minor = payment.refund_pending_minor.saturating_sub(refund.amount_minor);
            if approved {
                payment.refunded_minor += refund.amount_minor;
            } else {
                payment.refunded_payer_minor =
                    payment.refunded_payer_minor.saturating_sub(refund.conversion.payer_amount_minor);
            }
        }
    }

    /// Starts the reversal of `reference` at its receiver: sent now if it is signed on,
    /// and again every `reversal_retry_ms` and on its every sign-on, until acknowledged.
    fn reverse(&mut self, now: Now, reference: u64, reason: ReversalReason, out: &mut Vec<Outbound>) {
        if !self.transactions.contains_key(&reference) {
            return;
        }
        let reversal = self.next_reference();
        self.journal(Record::ReversalStarted {
            reversal,
            original: reference,
            reason: reason.value(),
            time_ms: now.unix_ms,
        });
        let Some((receiver, message)) = self.start_reversal(reference, reversal, reason.value(), now.unix_ms) else {
            return;
        };
        if let Some(session) = self.session_of(receiver) {
            out.push(Outbound { session, message });
        }
        self.timers.add(now.monotonic_ms, self.config.reversal_retry_ms, Timer::ReversalRetry(reversal));
    }

    /// Marks `reference` reversed-pending and stores reversal `reversal` for it (live, and
    /// in replay); returns its receiver and the message.
    fn start_reversal(
        &mut self,
        reference: u64,
        reversal: u64,
        reason: u16,
        time_ms: i64,
    ) -> Option<(InstitutionId, Message)> {
        let transaction = self.transactions.get_mut(&reference)?;
        let was_approved = transaction.state == State::Approved;
        transaction.approval_refused |= transaction.state == State::Declined(ReplyCode::ApprovalMismatch);
        transaction.state = State::TimedOut;
        let transaction = transaction.clone();
        if let (true, Kind::Refund { original }) = (was_approved, transaction.kind)
            && let Some(payment) = self.transactions.get_mut(&original)
        {
            // An approved refund undone: its amount is refundable again.
            payment.refunded_minor = payment.refunded_minor.saturating_sub(transaction.amount_minor);
            payment.refunded_payer_minor =
                payment.refunded_payer_minor.saturating_sub(transaction.conversion.payer_amount_minor);
        }
        let message = Message::ReversalRequest(LinkedRequest {
            originator: self.config.switch_id,
            originator_transaction_id: TransactionId::new(&format!("REV{reversal:016X}")).expect("valid id"),
            switch_reference: reversal,
            original_switch_reference: reference,
            amount_minor: transaction.amount_minor,
            transaction_time_ms: time_ms,
            currency: transaction.currency,
            reason,
            reserved: [0; 4],
            original_originator_transaction_id: transaction.originator_transaction_id,
            conversion: transaction.conversion,
        });
        self.reversals.insert(
            reversal,
            PendingReversal { original: reference, receiver: transaction.receiver, message: message.clone() },
        );
        Some((transaction.receiver, message))
    }

    fn acknowledge_reversal(&mut self, reversal: u64) {
        if let Some(pending) = self.reversals.remove(&reversal)
            && let Some(transaction) = self.transactions.get_mut(&pending.original)
        {
            transaction.state = State::Reversed;
            if transaction.forget_when_reversed {
                self.forget(pending.original);
            }
        }
    }

    /// Moves the decisions made since the last call into `into`, oldest first: what the
    /// journal must make durable before anything this exchange sent may leave.
    pub fn take_records(&mut self, into: &mut Vec<Record>) {
        into.append(&mut self.records);
    }

    /// Queues `record` for the journal, where it will have sequence `journal_next`.
    fn journal(&mut self, record: Record) {
        self.records.push(record);
        self.journal_next += 1;
    }

    /// Rebuilds state from one journal record, `sequence` (recovery: records in journal
    /// order, on a fresh exchange, before any session is up). Emits nothing.
    ///
    /// The journal may start later than sequence 1 (retention removed what no later state
    /// needs, `Record::Checkpoint`): records of transactions admitted before its start are
    /// then met without their `Admitted`, and change nothing.
    pub fn replay(&mut self, sequence: u64, record: &Record) {
        self.journal_next = sequence;
        self.replay_record(record);
        self.journal_next = sequence + 1;
    }

    fn replay_record(&mut self, record: &Record) {
        match *record {
            Record::Admitted {
                reference,
                originator,
                receiver,
                id,
                amount_minor,
                currency,
                refund_of,
                payment_code,
                ..
            } => {
                self.sequence = self.sequence.max(SwitchReference(reference).sequence());
                let kind = if refund_of == 0 { Kind::Payment } else { Kind::Refund { original: refund_of } };
                let conversion = Conversion::NONE;
                let admission =
                    Admission { originator, id, receiver, amount_minor, currency, kind, payment_code, conversion };
                // No session and no timer: what is still in flight when replay ends is
                // timed out by `abandon_in_flight`.
                self.open(reference, 0, admission, 0);
                if let Some(code) = payment_code {
                    self.used_codes.claim(code);
                }
            }
            Record::Converted { reference, conversion } => {
                // Right after its `Admitted`: the transaction is still in flight.
                let Some(transaction) = self.transactions.get_mut(&reference) else { return };
                transaction.conversion = conversion;
                if let Kind::Refund { original } = transaction.kind
                    && let Some(payment) = self.transactions.get_mut(&original)
                {
                    payment.refunded_payer_minor += conversion.payer_amount_minor;
                }
            }
            Record::Answered { reference, code, .. } => {
                let code = ReplyCode::try_from(code).unwrap_or(ReplyCode::DoNotHonour);
                let outcome = if code.is_approved() { State::Approved } else { State::Declined(code) };
                self.replay_completion(reference, outcome);
            }
            Record::TimedOut { reference, .. } => self.replay_completion(reference, State::TimedOut),
            Record::ReversalStarted { reversal, original, reason, time_ms } => {
                self.sequence = self.sequence.max(SwitchReference(reversal).sequence());
                if self.start_reversal(original, reversal, reason, time_ms).is_some() {
                    // Sent when its receiver signs on, and retried from then on.
                    self.timers.add(0, self.config.reversal_retry_ms, Timer::ReversalRetry(reversal));
                }
            }
            Record::ReversalAcknowledged { reversal, .. } => self.acknowledge_reversal(reversal),
            Record::WindowCut { window, .. } => self.window = self.window.max(window),
            Record::Onboarding { participant, state, previous, time_ms } => {
                self.apply_onboarding(participant, state, previous, time_ms);
            }
            Record::Checkpoint { window, reference_sequence, .. }
            | Record::Restart { window, reference_sequence, .. } => {
                // What came before may be gone: the references drawn then are not reused.
                self.window = self.window.max(window);
                self.sequence = self.sequence.max(reference_sequence);
            }
        }
    }

    /// An `Answered` or `TimedOut` record: journaled only for a transaction in flight, so
    /// one not held was admitted before the journal's start, and its completion still
    /// takes its turn among the remembered (`remember_completed`).
    fn replay_completion(&mut self, reference: u64, outcome: State) {
        if !self.transactions.contains_key(&reference) {
            self.remember_completed(reference);
        } else {
            self.complete(reference, outcome);
        }
    }

    /// Closes clearing window `window` in this shard's journal (a record, in order with
    /// the decisions around it), followed by its checkpoint (`checkpoint`). Returns the
    /// checkpoint's low water.
    pub fn cut(&mut self, window: u64, now: Now) -> u64 {
        self.window = self.window.max(window);
        self.journal(Record::WindowCut { window, time_ms: now.unix_ms });
        self.checkpoint(true)
    }

    /// Journals a restart point (`Record::Restart`): a restart replays from its low water
    /// (returned), not from the journal's start.
    pub fn restart_point(&mut self) -> u64 {
        self.checkpoint(false)
    }

    /// A checkpoint (after a cut) or a restart point: the oldest record still needed (the
    /// `Admitted` of the oldest transaction held) and the last reference drawn. Every
    /// onboarding change in force is journaled again after it, so a journal kept (or
    /// replayed) from its `low_water` on still holds each participant's state.
    ///
    /// Finding the oldest transaction is one pass over the transaction table.
    fn checkpoint(&mut self, cut: bool) -> u64 {
        let sequence = self.journal_next;
        let low_water = self.transactions.values().map(|t| t.needs_from).min().unwrap_or(sequence).min(sequence);
        let (window, reference_sequence) = (self.window, self.sequence);
        self.journal(if cut {
            Record::Checkpoint { window, sequence, low_water, reference_sequence }
        } else {
            Record::Restart { window, sequence, low_water, reference_sequence }
        });
        let mut changed: Vec<_> = self
            .config
            .policies
            .iter()
            .filter(|(_, policy)| policy.state_changed_ms != 0)
            .map(|(&participant, policy)| (participant, policy.state, policy.suspended_from, policy.state_changed_ms))
            .collect();
        changed.sort_unstable_by_key(|&(participant, ..)| participant);
        for (participant, state, suspended_from, time_ms) in changed {
            let previous = suspended_from.unwrap_or(state);
            self.journal(Record::Onboarding { participant, state, previous, time_ms });
        }
        low_water
    }

    /// The journal sequence the next record will have.
    pub fn journal_next(&self) -> u64 {
        self.journal_next
    }

    /// The journal will give the next record sequence `next` (after recovery: one past
    /// its last record).
    pub fn set_journal_next(&mut self, next: u64) {
        self.journal_next = next;
    }

    /// The last clearing window closed (0: none).
    pub fn last_window(&self) -> u64 {
        self.window
    }

    /// The switch is shutting down: from now on new payments and refunds are refused
    /// `SystemBusy`, while answers, cancels and queries are handled as ever.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// How long a drain waits for what is in flight.
    pub fn drain_deadline_ms(&self) -> u64 {
        self.config.drain_deadline_ms
    }

    /// Ends recovery (what was in flight when the switch stopped), or a drain at its
    /// deadline: what is in flight has an unknown outcome at its receiver and an originator
    /// that has not heard. It is timed out and reversed (new records, for the journal).
    pub fn abandon_in_flight(&mut self, now: Now, out: &mut Vec<Outbound>) {
        let mut in_flight: Vec<u64> = self
            .transactions
            .iter()
            .filter(|(_, t)| matches!(t.state, State::InFlight { .. }))
            .map(|(&reference, _)| reference)
            .collect();
        in_flight.sort_unstable();
        for reference in in_flight {
            self.abandon(now, reference, ReversalReason::Timeout, out);
        }
    }

    /// Transaction `reference` completed: it joins the remembered ones, and the oldest
    /// beyond `completed_max` is forgotten, in completion order. One whose reversal is
    /// pending is forgotten when that is acknowledged instead (the reversal needs it).
    ///
    /// Which transaction is forgotten when depends only on the sequence of completions, so
    /// a replay of a journal retention shortened forgets exactly as the whole journal
    /// would: a completion of a transaction admitted before the journal's start still
    /// takes its turn (`replay_record`).
    fn remember_completed(&mut self, reference: u64) {
        self.completed.push_back(reference);
        while self.completed.len() > self.config.completed_max {
            let Some(oldest) = self.completed.pop_front() else { break };
            let Some(transaction) = self.transactions.get_mut(&oldest) else { continue };
            if transaction.state == State::TimedOut {
                transaction.forget_when_reversed = true;
            } else {
                self.forget(oldest);
            }
        }
    }

    fn forget(&mut self, reference: u64) {
        if let Some(transaction) = self.transactions.remove(&reference) {
            self.by_originator.remove(&(transaction.originator, transaction.originator_transaction_id));
            if let Some(code) = &transaction.payment_code {
                self.used_codes.release(code);
            }
        }
    }

    fn status(&self, query: &StatusQuery, now: Now) -> StatusReply {
        let reference = if query.original_switch_reference != 0 {
            Some(query.original_switch_reference)
        } else {
            self.by_originator.get(&(query.originator, query.original_originator_transaction_id)).copied()
        };
        // A query only ever sees the asker's own transactions.
        let found = reference
            .and_then(|r| self.transactions.get(&r).map(|t| (r, t)))
            .filter(|(_, t)| t.originator == query.originator);
        let (reference, status, code, amount, currency) = match found {
            None => (0, TransactionStatus::Unknown, 0, 0, 0),
            Some((reference, t)) => {
                let (status, code) = match t.state {
                    State::InFlight { .. } => (TransactionStatus::InFlight, 0),
                    State::Approved if t.refunded_minor > 0 => {
                        (TransactionStatus::Refunded, ReplyCode::Approved.value())
                    }
                    State::Approved => (TransactionStatus::Approved, ReplyCode::Approved.value()),
                    State::Declined(code) => (TransactionStatus::Declined, code.value()),
                    // The originator was told no; the reversal is the receiver's business.
                    State::TimedOut | State::Reversed if t.approval_refused => {
                        (TransactionStatus::Declined, ReplyCode::ApprovalMismatch.value())
                    }
                    State::TimedOut => (TransactionStatus::TimedOut, ReplyCode::Timeout.value()),
                    State::Reversed => (TransactionStatus::Reversed, ReplyCode::Timeout.value()),
                };
                (reference, status, code, t.amount_minor, t.currency)
            }
        };
        StatusReply {
            originator: query.originator,
            original_originator_transaction_id: query.original_originator_transaction_id,
            original_switch_reference: reference,
            amount_minor: amount,
            reply_time_ms: now.unix_ms,
            currency,
            code,
            status: status.value(),
            reserved: [0; 3],
        }
    }
}

#[cfg(test)]
mod tests {
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
            Some(Message::PaymentReply(reply)) => {
                (ReplyCode::try_from(reply.code).expect("valid"), reply.switch_reference)
            }
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
        policies
            .insert(id("UNIONPAY"), ParticipantPolicy { state: Onboarding::Suspended, ..ParticipantPolicy::default() });
        policies.insert(
            id("WECHATPAY"),
            ParticipantPolicy { reply_deadline_ms: Some(250), ..ParticipantPolicy::default() },
        );
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
        let ack = Message::ReversalReply(Reply {
            switch_reference: reversal.switch_reference,
            ..codec::sample::payment_reply()
        });
        assert_eq!(
            exchange.handle_answer(at(1_600), id("WECHATPAY"), ack, &mut out),
            AnswerOutcome::ReversalAcknowledged
        );
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
        let Some(Message::StatusReply(status)) = out.pop().map(|o| o.message) else {
            panic!("expected a status reply")
        };
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
        assert!(
            matches!(out.as_slice(), [Outbound { session: WECHAT, message: Message::ReversalRequest(_) }]),
            "{out:?}"
        );
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
        let Some(Message::StatusReply(status)) = out.pop().map(|o| o.message) else {
            panic!("expected a status reply")
        };
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
        assert!(
            exchange.transactions.is_empty() && exchange.by_originator.is_empty() && exchange.used_codes.is_empty()
        );
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
        config.policies.insert(
            id("WECHATPAY"),
            ParticipantPolicy { settlement_currency: Some(THB), ..ParticipantPolicy::default() },
        );
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
            exchange.handle_request(
                at(5),
                ACQUIRER,
                Message::RefundRequest(linked(id_text, original, amount)),
                &mut out,
            );
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
            out.iter().any(
                |o| matches!(&o.message, Message::ReversalRequest(r) if r.reason == ReversalReason::Timeout.value())
            ),
            "{out:?}"
        );
        out.clear();
        exchange.handle_request(at(1_020), ACQUIRER, Message::RefundRequest(linked("R2", "T1", 3_800)), &mut out);
        assert!(
            matches!(out.as_slice(), [Outbound { session: WECHAT, message: Message::RefundRequest(_) }]),
            "{out:?}"
        );
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
        assert_eq!(
            out.iter().filter(|o| o.session == 7 && matches!(o.message, Message::ReversalRequest(_))).count(),
            2
        );
        // A resent request is still a duplicate, and its code still spent.
        out.clear();
        recovered.session_up(id("ACQ0001"), ACQUIRER, &mut out);
        pay(&mut recovered, "T1", "134567890123459999", &mut out);
        assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
        out.clear();
        pay(&mut recovered, "T9", "134567890123452222", &mut out);
        assert_eq!(reply_code(&out, ACQUIRER).0, ReplyCode::Duplicate);
    }
}
