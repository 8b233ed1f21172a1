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
use crate::ops::log_limit::LogLimit;
use crate::participant::Onboarding;

mod admission;
mod limits;
mod outcome;
mod replay;
mod status;

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

    /// When [`Exchange::handle_timers`] must next run (monotonic ms).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
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
}

#[cfg(test)]
mod tests;
