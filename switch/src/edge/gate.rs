//! Who may hold a connection, and how fast a source may fail to sign on: the edge's
//! defences against a participant port flooded with connections that never sign on, and
//! against guessing keys. Everything here is on the connection path (accept, sign-on,
//! close), never on the per-message path; one mutex guards it.
//!
//! Connections ([`Gate::admit`], on the acceptor, before a connection reaches a shard):
//! - A source address holds at most `unsigned_per_source_max` connections that have not
//!   signed on; a new one beyond is closed at once (`per_source`).
//! - All sources together hold at most `unsigned_max` of them, and all connections at most
//!   the process's descriptor limit less `fd_reserve` (kept for the admin port, the
//!   journal, the fleet and the runtime). A connection past either bound evicts the oldest
//!   connection that has not signed on (`evicted`): a flood slows honest sign-ons by its
//!   own rate but never locks them out. Past the descriptor budget with nobody to evict,
//!   the new connection is closed (`fd_budget`).
//! - A participant holds at most `sessions_per_participant_max` sessions; a sign-on beyond
//!   is refused `SystemBusy` (`sessions_per_participant`) after its proof is checked, so a
//!   prober learns nothing of which participants exist.
//!
//! Sign-ons ([`Gate::sign_on_wait`], [`Gate::sign_on_outcome`]): after
//! `sign_on_failures_free` failures from one source, each further attempt from it is
//! evaluated only after `sign_on_backoff_ms`, doubling with each failure up to
//! `sign_on_backoff_max_ms`, and attempts in parallel take turns (so at most 1000 /
//! `sign_on_backoff_ms` failures a second are evaluated from one source, 100 by default).
//! Attempts for one participant wait likewise after its own failures, without taking
//! turns and for at most [`PARTICIPANT_BACKOFF_MAX_MS`], so guesses spread over many
//! sources are slowed but the participant is never locked out. Attempts wait, they are not
//! refused: an honest one is evaluated, late, within its sign-on deadline. A success
//! forgets the failures of its source and participant; so does a minute without one.
//!
//! Invariant: every count a connection takes is returned exactly once, when its
//! [`Ticket`] is dropped (or, for an evicted one, when it is evicted).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codec::{InstitutionId, Message, ReplyCode};
use tokio::sync::Notify;

use crate::core::session::{CloseReason, Control, Session};
use crate::edge::tcp::Connection;
use crate::ops::metrics::{ConnectionRefusal, Metrics};

/// A participant's failures delay its next sign-on by at most this (whatever the source).
pub const PARTICIPANT_BACKOFF_MAX_MS: u64 = 1_000;
/// Failures older than this are forgotten.
const FAILURES_FORGOTTEN_MS: u64 = 60_000;
/// Sources and participants whose failures are remembered at once; past it the expired
/// are swept, and if none are, a new source is not remembered (counted as unthrottled).
const PENALTIES_MAX: usize = 65_536;
/// Descriptors assumed when the process's limit cannot be read.
const DESCRIPTORS_UNKNOWN: usize = 1_024;

/// The connection and sign-on limits (`[connections]` in the configuration file, read
/// as is: every key optional, unknown keys refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections not yet signed on, all sources together.
    pub unsigned_max: usize,
    /// Connections not yet signed on from one source address.
    pub unsigned_per_source_max: usize,
    /// Sessions one participant may hold at once.
    pub sessions_per_participant_max: usize,
    /// File descriptors kept out of the participants' reach.
    pub fd_reserve: usize,
    /// Failed sign-ons from a source before its attempts are slowed.
    pub sign_on_failures_free: u32,
    /// The first delay, doubled per further failure.
    pub sign_on_backoff_ms: u64,
    /// The longest delay between two attempts from one source.
    pub sign_on_backoff_max_ms: u64,
    /// The kernel's send buffer for each participant socket, in bytes (`None`: the kernel
    /// sizes it itself, up to `net.ipv4.tcp_wmem`). What a participant that stops reading
    /// holds in the kernel before the switch's write waits (and times out).
    pub socket_send_buffer_bytes: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            unsigned_max: 1_024,
            unsigned_per_source_max: 64,
            // The load generator opens up to 64 per participant.
            sessions_per_participant_max: 128,
            fd_reserve: 128,
            sign_on_failures_free: 3,
            sign_on_backoff_ms: 10,
            sign_on_backoff_max_ms: 10_000,
            socket_send_buffer_bytes: None,
        }
    }
}

impl ConnectionLimits {
    /// The key that is out of range and why, if one is.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let at_least_one = |value: usize| if value == 0 { Err("must be at least 1".to_string()) } else { Ok(()) };
        at_least_one(self.unsigned_max).map_err(|p| ("unsigned_max", p))?;
        at_least_one(self.sessions_per_participant_max).map_err(|p| ("sessions_per_participant_max", p))?;
        if !(1..=self.unsigned_max).contains(&self.unsigned_per_source_max) {
            return Err(("unsigned_per_source_max", "must be 1 to unsigned_max".into()));
        }
        if !(16..=65_536).contains(&self.fd_reserve) {
            return Err(("fd_reserve", "must be 16 to 65536".into()));
        }
        if !(1..=60_000).contains(&self.sign_on_backoff_ms) {
            return Err(("sign_on_backoff_ms", "must be 1 to 60000".into()));
        }
        if !(self.sign_on_backoff_ms..=300_000).contains(&self.sign_on_backoff_max_ms) {
            return Err(("sign_on_backoff_max_ms", "must be sign_on_backoff_ms to 300000".into()));
        }
        if self.socket_send_buffer_bytes.is_some_and(|bytes| !(4_096..=64 << 20).contains(&bytes)) {
            return Err(("socket_send_buffer_bytes", "must be 4096 to 67108864".into()));
        }
        Ok(())
    }
}

/// One source's or participant's recent sign-on failures.
#[derive(Debug, Clone, Copy, Default)]
struct Penalty {
    failures: u32,
    last_failure_ms: u64,
    /// When the next attempt from this source may be evaluated (sources take turns).
    next_turn_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    next_ticket: u64,
    /// Connections admitted whose ticket is not dropped yet.
    open: usize,
    /// Of those, evicted ones still closing.
    evicting: usize,
    /// Connections not signed on, oldest first: their source and how to evict them.
    unsigned: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    unsigned_per_source: HashMap<IpAddr, usize>,
    sessions: HashMap<InstitutionId, usize>,
    sources: HashMap<IpAddr, Penalty>,
    participants: HashMap<InstitutionId, Penalty>,
}

/// The connection and sign-on limits in force, shared by the acceptor and every shard.
#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    /// The descriptor budget: the process's limit less the reserve.
    connections_max: usize,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

/// What became of a sign-on's claim to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionClaim {
    Granted,
    /// The participant holds `sessions_per_participant_max` sessions already.
    Full,
    /// The connection was evicted meanwhile.
    Evicted,
}

impl Gate {
    /// The gate for `limits`; the descriptor budget is the process's limit (raised to its
    /// hard limit first) less `fd_reserve`.
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Self {
        let descriptors = raise_descriptor_limit().unwrap_or(DESCRIPTORS_UNKNOWN);
        let connections_max = descriptors.saturating_sub(limits.fd_reserve).max(1);
        Self { limits, connections_max, metrics, state: Mutex::new(State::default()) }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// The most participant connections held at once.
    pub fn connections_max(&self) -> usize {
        self.connections_max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new connection from `source`: its ticket, or `None` (counted) when it must be
    /// closed at once. May evict the oldest connection not signed on to make room.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Ticket> {
        let source = source.to_canonical();
        let mut state = self.lock();
        if state.unsigned_per_source.get(&source).copied().unwrap_or(0) >= self.limits.unsigned_per_source_max {
            drop(state);
            self.metrics.connection_refused(ConnectionRefusal::PerSource);
            return None;
        }
        let held = state.open - state.evicting;
        if state.unsigned.len() >= self.limits.unsigned_max || held >= self.connections_max {
            match state.unsigned.pop_first() {
                Some((_, (oldest, evict))) => {
                    release_unsigned(&mut state, oldest);
                    state.evicting += 1;
                    evict.notify_one();
                    self.metrics.connection_refused(ConnectionRefusal::Evicted);
                }
                None if held >= self.connections_max => {
                    drop(state);
                    self.metrics.connection_refused(ConnectionRefusal::FdBudget);
                    return None;
                }
                None => {}
            }
        }
        state.next_ticket += 1;
        let id = state.next_ticket;
        let evict = Arc::new(Notify::new());
        state.open += 1;
        state.unsigned.insert(id, (source, Arc::clone(&evict)));
        *state.unsigned_per_source.entry(source).or_default() += 1;
        Some(Ticket { gate: Arc::clone(self), id, source, session: None, evict })
    }

    /// How long a sign-on from `source` claiming `participant` (`None`: not a configured
    /// participant) must wait before it is evaluated; reserves its turn among the
    /// source's attempts.
    pub fn sign_on_wait(&self, source: IpAddr, participant: Option<InstitutionId>, now_ms: u64) -> Duration {
        let limits = self.limits;
        let mut state = self.lock();
        let source_wait = match fresh(&mut state.sources, source.to_canonical(), now_ms) {
            Some(penalty) => {
                let turn = penalty.next_turn_ms.max(now_ms);
                penalty.next_turn_ms = turn + backoff(limits, penalty.failures, limits.sign_on_backoff_max_ms);
                turn - now_ms
            }
            None => 0,
        };
        let participant_wait = participant
            .and_then(|participant| fresh(&mut state.participants, participant, now_ms))
            .map_or(0, |penalty| {
                let delay = backoff(limits, penalty.failures, PARTICIPANT_BACKOFF_MAX_MS);
                (penalty.last_failure_ms + delay).saturating_sub(now_ms)
            });
        drop(state);
        let wait = source_wait.max(participant_wait);
        if wait > 0 {
            self.metrics.sign_on_throttled();
        }
        Duration::from_millis(wait)
    }

    /// A sign-on from `source` claiming `participant` was evaluated: `approved`, or not.
    pub fn sign_on_outcome(&self, source: IpAddr, participant: Option<InstitutionId>, approved: bool, now_ms: u64) {
        let limits = self.limits;
        let source = source.to_canonical();
        let mut state = self.lock();
        if approved {
            state.sources.remove(&source);
            if let Some(participant) = participant {
                state.participants.remove(&participant);
            }
            return;
        }
        let State { sources, participants, .. } = &mut *state;
        if let Some(penalty) = remembered(sources, source, now_ms) {
            fail(penalty, limits, limits.sign_on_backoff_max_ms, now_ms);
        }
        if let Some(penalty) = participant.and_then(|participant| remembered(participants, participant, now_ms)) {
            fail(penalty, limits, PARTICIPANT_BACKOFF_MAX_MS, now_ms);
        }
    }

    fn release(&self, id: u64, source: IpAddr, session: Option<InstitutionId>) {
        let mut state = self.lock();
        state.open -= 1;
        match session {
            Some(participant) => {
                if let Some(count) = state.sessions.get_mut(&participant) {
                    *count -= 1;
                    if *count == 0 {
                        state.sessions.remove(&participant);
                    }
                }
            }
            // Still waiting to sign on, or evicted (its counts went at the eviction).
            None => match state.unsigned.remove(&id) {
                Some(_) => release_unsigned(&mut state, source),
                None => state.evicting -= 1,
            },
        }
    }
}

/// One connection not signed on from `source` is gone.
fn release_unsigned(state: &mut State, source: IpAddr) {
    if let Some(count) = state.unsigned_per_source.get_mut(&source) {
        *count -= 1;
        if *count == 0 {
            state.unsigned_per_source.remove(&source);
        }
    }
}

/// The delay after `failures` failures, capped at `max_ms`.
fn backoff(limits: ConnectionLimits, failures: u32, max_ms: u64) -> u64 {
    if failures < limits.sign_on_failures_free {
        return 0;
    }
    let doublings = (failures - limits.sign_on_failures_free).min(32);
    limits.sign_on_backoff_ms.saturating_mul(1 << doublings).min(max_ms).min(limits.sign_on_backoff_max_ms)
}

/// `key`'s penalty if it has failures not yet forgotten (forgetting them if they are).
fn fresh<K: std::hash::Hash + Eq>(table: &mut HashMap<K, Penalty>, key: K, now_ms: u64) -> Option<&mut Penalty> {
    let expired = table.get(&key).is_some_and(|p| now_ms.saturating_sub(p.last_failure_ms) >= FAILURES_FORGOTTEN_MS);
    if expired {
        table.remove(&key);
    }
    table.get_mut(&key)
}

/// `key`'s penalty, made if need be (room permitting: see `PENALTIES_MAX`).
fn remembered<K: std::hash::Hash + Eq + Copy>(
    table: &mut HashMap<K, Penalty>,
    key: K,
    now_ms: u64,
) -> Option<&mut Penalty> {
    if fresh(table, key, now_ms).is_none() && table.len() >= PENALTIES_MAX {
        table.retain(|_, p| now_ms.saturating_sub(p.last_failure_ms) < FAILURES_FORGOTTEN_MS);
        if table.len() >= PENALTIES_MAX {
            return None;
        }
    }
    Some(table.entry(key).or_default())
}

fn fail(penalty: &mut Penalty, limits: ConnectionLimits, max_ms: u64, now_ms: u64) {
    penalty.failures = penalty.failures.saturating_add(1);
    penalty.last_failure_ms = now_ms;
    penalty.next_turn_ms = penalty.next_turn_ms.max(now_ms + backoff(limits, penalty.failures, max_ms));
}

/// A connection's place at the gate: counted as not signed on until [`Ticket::claim_session`]
/// succeeds, then as one of its participant's sessions; returned when dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    source: IpAddr,
    session: Option<InstitutionId>,
    evict: Arc<Notify>,
}

impl Ticket {
    /// Resolves when the gate evicts this connection to make room (only before sign-on).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// The connection signed on as `participant`: it becomes one of its sessions, if the
    /// participant has room for one more.
    pub fn claim_session(&mut self, participant: InstitutionId) -> SessionClaim {
        let gate = &self.gate;
        let mut state = gate.lock();
        if !state.unsigned.contains_key(&self.id) {
            return SessionClaim::Evicted;
        }
        let sessions = state.sessions.get(&participant).copied().unwrap_or(0);
        if sessions >= gate.limits.sessions_per_participant_max {
            drop(state);
            gate.metrics.connection_refused(ConnectionRefusal::SessionsPerParticipant);
            return SessionClaim::Full;
        }
        state.unsigned.remove(&self.id);
        release_unsigned(&mut state, self.source);
        *state.sessions.entry(participant).or_default() += 1;
        self.session = Some(participant);
        SessionClaim::Granted
    }

    pub fn source(&self) -> IpAddr {
        self.source
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.release(self.id, self.source, self.session);
    }
}

/// How a connection task meets the gate at sign-on (native sessions; ISO 8583 links use
/// `sign_on_turn` and claim their session themselves).
impl Connection {
    /// Waits, before a sign-on claiming `claimed` is evaluated, for as long as the gate
    /// says (after failed sign-ons from this source or for this participant); `false` when
    /// the sign-on `deadline` passes first.
    pub(crate) async fn sign_on_turn(
        &self,
        deadline: Instant,
        peer: SocketAddr,
        claimed: Option<InstitutionId>,
    ) -> bool {
        let shared = &self.shared;
        let known = claimed.filter(|claimed| shared.directory.get(claimed).is_some());
        let wait = shared.gate.sign_on_wait(peer.ip(), known, shared.now().monotonic_ms);
        if wait.is_zero() {
            return true;
        }
        tokio::time::sleep_until((Instant::now() + wait).min(deadline).into()).await;
        Instant::now() < deadline
    }

    /// A sign-on claiming `claimed` was evaluated (`control` is the session's answer): the
    /// gate learns the outcome, and an approved participant claims a session; one at its
    /// session limit is refused `SystemBusy` after all, its approval never sent.
    pub(crate) fn sign_on_evaluated(
        &self,
        session: &mut Session,
        ticket: &mut Ticket,
        peer: SocketAddr,
        claimed: InstitutionId,
        control: Control,
        outgoing: &mut Vec<Message>,
    ) -> Control {
        let shared = &self.shared;
        let now_ms = shared.now().monotonic_ms;
        let Some(participant) = session.participant() else {
            let known = shared.directory.get(&claimed).map(|_| claimed);
            shared.gate.sign_on_outcome(peer.ip(), known, false, now_ms);
            return control;
        };
        shared.gate.sign_on_outcome(peer.ip(), Some(participant), true, now_ms);
        if ticket.claim_session(participant) == SessionClaim::Granted {
            return control;
        }
        let approval = outgoing.pop();
        assert!(
            matches!(approval, Some(Message::SignOnResult(ref result)) if result.code == ReplyCode::Approved.value()),
            "the approval is the last message of a sign-on"
        );
        outgoing.push(session.revoke_sign_on(ReplyCode::SystemBusy));
        tracing::info!(%peer, %participant, "sign-on refused: the participant holds all the sessions it may");
        Control::Close(CloseReason::SignOnRefused)
    }
}

/// Raises this process's soft limit on open files to its hard limit and returns it
/// (`None` where it cannot be read).
fn raise_descriptor_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own; failure leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    usize::try_from(limit.rlim_cur).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate::new(limits, Arc::new(Metrics::default())))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn id(text: &str) -> InstitutionId {
        InstitutionId::new(text).expect("valid")
    }

    #[test]
    fn a_source_holds_its_share_and_the_oldest_gives_way() {
        let gate =
            gate(ConnectionLimits { unsigned_max: 3, unsigned_per_source_max: 2, ..ConnectionLimits::default() });
        let first = gate.admit(ip(1)).expect("room");
        let _second = gate.admit(ip(1)).expect("room");
        assert!(gate.admit(ip(1)).is_none(), "a third from one source");
        let _third = gate.admit(ip(2)).expect("room");
        // The fourth overall evicts the oldest, which can no longer become a session.
        let mut fourth = gate.admit(ip(3)).expect("room made");
        let mut first = first;
        assert_eq!(first.claim_session(id("A")), SessionClaim::Evicted);
        assert_eq!(fourth.claim_session(id("A")), SessionClaim::Granted);
        drop(first);
        // Source 1 has one connection not signed on again, so a second is allowed.
        let _again = gate.admit(ip(1)).expect("room");
        let state = gate.lock();
        assert_eq!((state.unsigned.len(), state.open, state.evicting), (3, 4, 0));
        assert_eq!(state.sessions[&id("A")], 1);
    }

    #[test]
    fn sessions_per_participant_are_capped_and_freed() {
        let gate = gate(ConnectionLimits { sessions_per_participant_max: 1, ..ConnectionLimits::default() });
        let mut one = gate.admit(ip(1)).expect("room");
        let mut two = gate.admit(ip(1)).expect("room");
        assert_eq!(one.claim_session(id("A")), SessionClaim::Granted);
        assert_eq!(two.claim_session(id("A")), SessionClaim::Full);
        drop(one);
        assert_eq!(two.claim_session(id("A")), SessionClaim::Granted);
        drop(two);
        let state = gate.lock();
        assert!(state.sessions.is_empty() && state.unsigned.is_empty() && state.open == 0);
    }

    #[test]
    fn failures_slow_a_source_down_and_attempts_take_turns() {
        let limits = ConnectionLimits {
            sign_on_failures_free: 2,
            sign_on_backoff_ms: 10,
            sign_on_backoff_max_ms: 40,
            ..ConnectionLimits::default()
        };
        let gate = gate(limits);
        let (source, other) = (ip(1), ip(2));
        for _ in 0..2 {
            assert_eq!(gate.sign_on_wait(source, None, 0), Duration::ZERO, "free failures");
            gate.sign_on_outcome(source, None, false, 0);
        }
        // Two failures: the next waits 10 ms; two in parallel take turns.
        assert_eq!(gate.sign_on_wait(source, None, 0), Duration::from_millis(10));
        assert_eq!(gate.sign_on_wait(source, None, 0), Duration::from_millis(20));
        assert_eq!(gate.sign_on_wait(other, None, 0), Duration::ZERO, "another source is not slowed");
        for _ in 0..5 {
            gate.sign_on_outcome(source, None, false, 100);
        }
        // Capped at 40 ms.
        assert_eq!(gate.sign_on_wait(source, None, 1_000), Duration::ZERO);
        assert_eq!(gate.sign_on_wait(source, None, 1_000), Duration::from_millis(40));
        // A success forgets; so does a minute.
        gate.sign_on_outcome(source, None, true, 1_000);
        assert_eq!(gate.sign_on_wait(source, None, 1_000), Duration::ZERO);
        for _ in 0..4 {
            gate.sign_on_outcome(other, None, false, 0);
        }
        assert_eq!(gate.sign_on_wait(other, None, FAILURES_FORGOTTEN_MS), Duration::ZERO);
    }

    #[test]
    fn a_participant_is_slowed_from_every_source_but_never_for_long() {
        let limits = ConnectionLimits {
            sign_on_failures_free: 1,
            sign_on_backoff_ms: 100,
            sign_on_backoff_max_ms: 60_000,
            ..ConnectionLimits::default()
        };
        let gate = gate(limits);
        let victim = Some(id("ACQ0001"));
        for source in 1..=20 {
            gate.sign_on_outcome(ip(source), victim, false, 0);
        }
        // A new source claiming the participant waits for its delay, at most 1 s, and
        // attempts do not queue behind each other.
        assert_eq!(gate.sign_on_wait(ip(100), victim, 0), Duration::from_millis(PARTICIPANT_BACKOFF_MAX_MS));
        assert_eq!(gate.sign_on_wait(ip(101), victim, 0), Duration::from_millis(PARTICIPANT_BACKOFF_MAX_MS));
        assert_eq!(gate.sign_on_wait(ip(102), victim, 500), Duration::from_millis(500));
        assert_eq!(gate.sign_on_wait(ip(103), Some(id("OTHER")), 0), Duration::ZERO);
    }
}
