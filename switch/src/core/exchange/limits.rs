//! What admission checks besides the route: each receiver's breaker, each originator's
//! rate, onboarding states and counterparty lists, and the in-flight allowances.

use super::*;

impl Exchange {
    /// Whether the receiver's breaker lets a request through now. An open breaker past its
    /// time lets exactly one probe through.
    pub(super) fn breaker_admits(&mut self, receiver: InstitutionId, now: Now) -> bool {
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
    pub(super) fn breaker_record(&mut self, receiver: InstitutionId, answered: bool, now: Now) {
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
    pub(super) fn take_token(&mut self, originator: InstitutionId, rate_per_second: Option<u32>, now: Now) -> bool {
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
    pub(super) fn admitted(&self, originator: InstitutionId, receiver: InstitutionId) -> bool {
        let admits = |who: InstitutionId, other: InstitutionId| {
            self.config.counterparties.get(&who).is_none_or(|list| list.contains(&other))
        };
        admits(originator, receiver) && admits(receiver, originator)
    }

    pub(super) fn policy(&self, participant: InstitutionId) -> ParticipantPolicy {
        self.config.policies.get(&participant).copied().unwrap_or_default()
    }

    /// The onboarding rules (`Onboarding`) for a request between these two parties of
    /// `amount`: the refusal, or `None` when both states allow it.
    pub(super) fn onboarding_refusal(
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

    pub(super) fn apply_onboarding(
        &mut self,
        participant: InstitutionId,
        state: Onboarding,
        previous: Onboarding,
        at_ms: i64,
    ) {
        let policy = self.config.policies.entry(participant).or_default();
        policy.state = state;
        policy.suspended_from = (state == Onboarding::Suspended).then_some(previous);
        policy.state_changed_ms = at_ms;
    }

    /// A transaction left flight (answered or timed out): its allowances free up.
    pub(super) fn leave_flight(&mut self, originator: InstitutionId, receiver: InstitutionId) {
        // Only a transaction that entered the flight leaves it (`complete` checks its state).
        self.in_flight = self.in_flight.checked_sub(1).expect("a transaction left a flight it never entered");
        for (counts, participant) in [(&mut self.originating, originator), (&mut self.receiving, receiver)] {
            if let Some(count) = counts.get_mut(&participant) {
                assert!(*count > 0, "{participant}'s flight count is zero but held");
                *count -= 1;
                if *count == 0 {
                    counts.remove(&participant);
                }
            }
        }
    }
}
