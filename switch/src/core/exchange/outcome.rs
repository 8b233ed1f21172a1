//! Outcomes: a receiver's answer, a timeout, a reversal resent until acknowledged, a
//! message that could not be delivered, the drain; and the bounded memory of completed
//! transactions (oldest forgotten first).

use super::*;

impl Exchange {
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

    /// Transaction `reference`, in flight, reached `outcome`: it leaves flight, a refund's
    /// amount is settled against its payment, and it joins the remembered transactions.
    /// Returns it as it was; `None` if it was not in flight.
    pub(super) fn complete(&mut self, reference: u64, outcome: State) -> Option<Transaction> {
        // Exactly one outcome: a transaction leaves `InFlight` once, for a final state.
        assert!(!matches!(outcome, State::InFlight { .. }), "transaction {reference} completed into InFlight");
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

    pub(super) fn time_out(&mut self, now: Now, reference: u64, deadline: u64, out: &mut Vec<Outbound>) {
        let Some(transaction) = self.transactions.get(&reference) else { return };
        if transaction.state != (State::InFlight { deadline_ms: deadline }) {
            return;
        }
        self.breaker_record(transaction.receiver, false, now);
        self.abandon(now, reference, ReversalReason::Timeout, out);
    }

    /// Gives up on an in-flight transaction: the originator is answered `Timeout` (its one
    /// reply) and, the outcome at the receiver being unknown, it is reversed.
    pub(super) fn abandon(&mut self, now: Now, reference: u64, reason: ReversalReason, out: &mut Vec<Outbound>) {
        let Some(transaction) = self.complete(reference, State::TimedOut) else { return };
        self.journal(Record::TimedOut { reference, time_ms: now.unix_ms });
        let reply = self.answer(Answering::of(&transaction), reference, ReplyCode::Timeout, now);
        out.push(Outbound { session: transaction.originator_session, message: transaction.kind.reply(reply) });
        self.reverse(now, reference, reason, out);
    }

    /// `refund` of payment `original` was answered: approved, it counts as refunded;
    /// otherwise its amount (and its payer share) is refundable again.
    pub(super) fn settle_refund(&mut self, original: u64, refund: &Transaction, approved: bool) {
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
    pub(super) fn reverse(&mut self, now: Now, reference: u64, reason: ReversalReason, out: &mut Vec<Outbound>) {
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
    pub(super) fn start_reversal(
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

    pub(super) fn acknowledge_reversal(&mut self, reversal: u64) {
        if let Some(pending) = self.reversals.remove(&reversal)
            && let Some(transaction) = self.transactions.get_mut(&pending.original)
        {
            transaction.state = State::Reversed;
            if transaction.forget_when_reversed {
                self.forget(pending.original);
            }
        }
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
    pub(super) fn remember_completed(&mut self, reference: u64) {
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
        assert!(self.completed.len() <= self.config.completed_max, "completed memory past completed_max");
    }

    pub(super) fn forget(&mut self, reference: u64) {
        if let Some(transaction) = self.transactions.remove(&reference) {
            self.by_originator.remove(&(transaction.originator, transaction.originator_transaction_id));
            if let Some(code) = &transaction.payment_code {
                self.used_codes.release(code);
            }
        }
    }
}
