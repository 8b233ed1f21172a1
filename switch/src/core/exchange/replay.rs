//! The exchange's journal records: pushed as it decides (`take_records` hands them to
//! the shard's group commit), replayed at recovery; window cuts, checkpoints and restart
//! points, which name the oldest record a replay needs.

use super::*;

impl Exchange {
    /// Moves the decisions made since the last call into `into`, oldest first: what the
    /// journal must make durable before anything this exchange sent may leave.
    pub fn take_records(&mut self, into: &mut Vec<Record>) {
        into.append(&mut self.records);
    }

    /// Queues `record` for the journal, where it will have sequence `journal_next`.
    pub(super) fn journal(&mut self, record: Record) {
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

    pub(super) fn replay_record(&mut self, record: &Record) {
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
    pub(super) fn replay_completion(&mut self, reference: u64, outcome: State) {
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
    pub(super) fn checkpoint(&mut self, cut: bool) -> u64 {
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
}
