//! What the exchange reports: a participant's status query about its own transactions,
//! and each participant's flights for the admin port.

use super::*;

impl Exchange {
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

    pub(super) fn status(&self, query: &StatusQuery, now: Now) -> StatusReply {
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
