//! Requests: duplicates, routing, the limits (`limits`), conversion, and the admission of
//! a new transaction with its timer; refunds and cancels, linked to the originator's own
//! transactions; forwarding to the receiver's session.

use super::*;

impl Exchange {
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
    pub(super) fn original_of(&self, request: &LinkedRequest) -> Option<u64> {
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
    pub(super) fn refund(&mut self, now: Now, session: SessionId, mut request: LinkedRequest, out: &mut Vec<Outbound>) {
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
    pub(super) fn cancel(&mut self, now: Now, session: SessionId, request: &LinkedRequest, out: &mut Vec<Outbound>) {
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
    pub(super) fn admit(
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
        // The limits were checked just above: admission never takes the exchange past them.
        assert!(self.in_flight <= self.config.in_flight_max, "in flight past in_flight_max");
        assert!(
            self.originating.get(&originator).is_some_and(|&n| n <= self.config.in_flight_per_participant_max),
            "{originator} originates past in_flight_per_participant_max"
        );
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
    pub(super) fn conversion(
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
    pub(super) fn open(&mut self, reference: u64, session: SessionId, admission: Admission, deadline_ms: u64) {
        let Admission { originator, id, receiver, amount_minor, currency, kind, payment_code, conversion } = admission;
        let previous = self.transactions.insert(
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
        // References are drawn once each (`next_reference`, and the journal in replay).
        assert!(previous.is_none(), "transaction {reference} opened twice");
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

    pub(super) fn forward(&mut self, receiver: InstitutionId, message: Message, out: &mut Vec<Outbound>) {
        // `admit` checked the receiver has a session.
        if let Some(session) = self.session_of(receiver) {
            out.push(Outbound { session, message });
        }
    }
}
