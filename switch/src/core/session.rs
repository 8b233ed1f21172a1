//! One participant session's protocol state machine: sign-on, echo, sign-off, deadlines and
//! bad frames. Deterministic: it takes `now` and inputs and returns messages to send and
//! whether to close; it does no I/O, reads no clock and draws no randomness (the nonce is
//! given), so every path is unit-tested.
//!
//! Invariants:
//! - Before an approved sign-on, nothing but a valid `SignOnRequest` is accepted; anything
//!   else, a malformed frame included, is rejected (`NotSignedOn`) and the session closes.
//! - After sign-on, the sender's identity is the session's participant; a transaction whose
//!   originator field names anyone else is answered `NotAuthorised` and goes no further.
//! - Every transaction request gets exactly one reply from the switch or the receiver.

use codec::code::{RejectReason, ReplyCode};
use codec::frame::{reject_for, salvage_request};
use codec::message::{ArchivedLinkedRequest, ArchivedTransactionDetails, PROOF_SIZE};
use codec::signon::{SignOnTranscript, server_proof, verify_client_proof};
use codec::{
    AuthorizationCode, DecodeError, Echo, InstitutionId, Message, MessageKind, MessageRef, PROTOCOL_VERSION, Reply,
    SessionMacs, SignOff, SignOnChallenge, SignOnResult,
};

use crate::core::exchange::switch_answer;
use crate::participant::Directory;

/// The clocks a session needs: monotonic for deadlines, wall for message timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub monotonic_ms: u64,
    pub unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub switch_id: InstitutionId,
    pub sign_on_timeout_ms: u64,
    pub echo_interval_ms: u32,
    pub idle_timeout_ms: u32,
    /// On shutdown, how long a session may take to answer the switch's sign-off.
    pub drain_timeout_ms: u64,
    /// How long a write to a participant may wait for it to read, before the session is
    /// closed (`Backlogged`).
    pub write_timeout_ms: u64,
    /// A transaction request whose `transaction_time_ms` is further than this from the
    /// switch's clock, either way, is refused `NotAuthorised`: a request captured earlier
    /// cannot be sent again later. (Frame MACs stop anyone but the participant itself from
    /// resending; the bound of the id check is in SECURITY.md.) `None`: no window.
    pub replay_window_ms: Option<u64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            switch_id: InstitutionId::new("CSWITCH").expect("valid id"),
            sign_on_timeout_ms: 10_000,
            echo_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            drain_timeout_ms: 5_000,
            write_timeout_ms: 5_000,
            replay_window_ms: Some(300_000),
        }
    }
}

/// What the edge does after handing the session an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Flush what was queued, then close the connection.
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    SignOnRefused,
    SignOnTimeout,
    NotSignedOn,
    IdleTimeout,
    SignedOff,
    FramingError,
    /// Shutdown before the session had signed on.
    Shutdown,
    /// Shutdown, and the participant did not answer the sign-off in time.
    DrainDeadline,
    /// The participant read too slowly: its outbound queue filled up, or a write to it
    /// waited past the write timeout.
    Backlogged,
    /// It had not signed on, and room was needed for a newer connection (`edge::gate`).
    Evicted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingSignOn {
        deadline_ms: u64,
    },
    SignedOn {
        participant: InstitutionId,
    },
    /// The switch is shutting down: it sent a sign-off and waits for the reply until
    /// `deadline_ms`; new requests are answered `SystemBusy`.
    Draining {
        participant: InstitutionId,
        deadline_ms: u64,
    },
    Closed,
}

#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    session_id: u64,
    server_nonce: [u8; PROOF_SIZE],
    last_received_ms: u64,
    /// The frame MACs of an approved sign-on, until the edge takes them.
    macs: Option<SessionMacs>,
    /// On a TLS link: the participants the client certificate names; sign-on as anyone
    /// else is refused.
    certified: Option<Vec<InstitutionId>>,
    /// The message kinds the signed-on participant's roles let it originate, one bit per
    /// kind byte, read from the directory once at sign-on.
    originates: u128,
}

impl Session {
    /// A new session on a fresh connection; send [`Session::challenge`] first.
    pub fn new(config: SessionConfig, now: Now, session_id: u64, server_nonce: [u8; PROOF_SIZE]) -> Self {
        assert!(session_id != 0, "session id zero means refused");
        let deadline_ms = now.monotonic_ms + config.sign_on_timeout_ms;
        Self {
            config,
            state: State::AwaitingSignOn { deadline_ms },
            session_id,
            server_nonce,
            last_received_ms: now.monotonic_ms,
            macs: None,
            certified: None,
            originates: 0,
        }
    }

    pub fn challenge(&self) -> Message {
        Message::SignOnChallenge(SignOnChallenge {
            switch_id: self.config.switch_id,
            server_nonce: self.server_nonce,
            protocol_version: PROTOCOL_VERSION,
            reserved: [0; 6],
        })
    }

    /// On a TLS link: only the participants `names` (those the client certificate names)
    /// may sign on.
    pub fn require_certificate_for(&mut self, names: Vec<InstitutionId>) {
        self.certified = Some(names);
    }

    /// Takes back an approval just given, before it was sent (the edge found the
    /// participant at its session limit): the session ends, and this refusal with `code`
    /// is what the participant is told instead.
    pub fn revoke_sign_on(&mut self, code: ReplyCode) -> Message {
        assert!(matches!(self.state, State::SignedOn { .. }), "only a sign-on just approved is revoked");
        self.state = State::Closed;
        self.macs = None;
        Message::SignOnResult(SignOnResult { code: code.value(), ..SignOnResult::default() })
    }

    /// After the sign-on this session approved, with frame MACs configured: the MACs. The
    /// edge checks every later frame from the participant with `to_switch` and signs every
    /// frame after the `SignOnResult` with `to_participant`.
    pub fn take_macs(&mut self) -> Option<SessionMacs> {
        self.macs.take()
    }

    /// The participant, once signed on.
    pub fn participant(&self) -> Option<InstitutionId> {
        match self.state {
            State::SignedOn { participant } | State::Draining { participant, .. } => Some(participant),
            _ => None,
        }
    }

    /// When [`Session::handle_timeout`] must next be called (monotonic ms).
    pub fn deadline_ms(&self) -> u64 {
        match self.state {
            State::AwaitingSignOn { deadline_ms } => deadline_ms,
            State::SignedOn { .. } => self.last_received_ms + u64::from(self.config.idle_timeout_ms),
            State::Draining { deadline_ms, .. } => deadline_ms,
            State::Closed => self.last_received_ms,
        }
    }

    pub fn handle_timeout(&mut self, now: Now, out: &mut Vec<Message>) -> Control {
        if now.monotonic_ms < self.deadline_ms() {
            return Control::Continue;
        }
        let reason = match self.state {
            State::AwaitingSignOn { .. } => CloseReason::SignOnTimeout,
            State::SignedOn { .. } => {
                out.push(Message::SignOffRequest(SignOff {
                    code: codec::SignOffReason::Normal.value(),
                    reserved: [0; 6],
                }));
                CloseReason::IdleTimeout
            }
            State::Draining { .. } => CloseReason::DrainDeadline,
            State::Closed => CloseReason::SignedOff,
        };
        self.state = State::Closed;
        Control::Close(reason)
    }

    /// The switch is shutting down: a signed-on session is asked to sign off and given
    /// `drain_timeout_ms` to answer; one that never signed on is closed at once.
    pub fn handle_shutdown(&mut self, now: Now, out: &mut Vec<Message>) -> Control {
        match self.state {
            State::AwaitingSignOn { .. } => {
                self.state = State::Closed;
                Control::Close(CloseReason::Shutdown)
            }
            State::SignedOn { participant } => {
                out.push(Message::SignOffRequest(SignOff {
                    code: codec::SignOffReason::Shutdown.value(),
                    reserved: [0; 6],
                }));
                let deadline_ms = now.monotonic_ms + self.config.drain_timeout_ms;
                self.state = State::Draining { participant, deadline_ms };
                Control::Continue
            }
            State::Draining { .. } => Control::Continue,
            State::Closed => Control::Close(CloseReason::Shutdown),
        }
    }

    /// A frame the decoder refused; `frame` is its bytes when the decoder consumed it.
    /// A transaction request whose originator and transaction id are still readable gets
    /// its own reply kind with `FormatError`, so the originator has one definite answer for
    /// it; anything else gets a reject. Unrecoverable errors close the session.
    pub fn handle_decode_error(
        &mut self,
        now: Now,
        error: &DecodeError,
        rejected_kind: u8,
        frame: &[u8],
        out: &mut Vec<Message>,
    ) -> Control {
        if let State::AwaitingSignOn { .. } = self.state {
            // Before sign-on nothing is read further, malformed or not (PROTOCOL.md 7.2):
            // a well-framed bad frame is refused `NotSignedOn` (the offset says where it
            // went wrong), a framing error with its own reason; either way it closes.
            let mut refusal = reject_for(error, rejected_kind);
            if let Message::Reject(reject) = &mut refusal
                && error.is_recoverable()
            {
                reject.reason = RejectReason::NotSignedOn.value();
            }
            out.push(refusal);
            self.state = State::Closed;
            return Control::Close(if error.is_recoverable() {
                CloseReason::NotSignedOn
            } else {
                CloseReason::FramingError
            });
        }
        let salvaged = match self.state {
            State::SignedOn { participant } | State::Draining { participant, .. } => {
                salvage_request(frame, error).map(|request| (participant, request))
            }
            _ => None,
        };
        match salvaged {
            Some((participant, request)) => {
                let answered = Answered {
                    originator: request.originator,
                    originator_transaction_id: request.originator_transaction_id,
                    amount_minor: 0,
                    currency: 0,
                };
                let code =
                    if request.originator == participant { ReplyCode::FormatError } else { ReplyCode::NotAuthorised };
                let reply = answer(answered, code, self.config.switch_id, now);
                out.push(match request.kind {
                    MessageKind::ReversalRequest => Message::ReversalReply(reply),
                    MessageKind::RefundRequest => Message::RefundReply(reply),
                    _ => Message::PaymentReply(reply),
                });
            }
            None => out.push(reject_for(error, rejected_kind)),
        }
        if error.is_recoverable() {
            Control::Continue
        } else {
            self.state = State::Closed;
            Control::Close(CloseReason::FramingError)
        }
    }

    /// A validated frame from the participant. Answers for the participant go to `out`;
    /// transactions and answers for the exchange (routing, matching) go to `exchange`.
    pub fn handle_message(
        &mut self,
        now: Now,
        message: MessageRef<'_>,
        directory: &Directory,
        out: &mut Vec<Message>,
        exchange: &mut Vec<Message>,
    ) -> Control {
        self.last_received_ms = now.monotonic_ms;
        match self.state {
            State::Closed => Control::Close(CloseReason::SignedOff),
            State::AwaitingSignOn { .. } => self.handle_sign_on(now, message, directory, out),
            State::SignedOn { participant } => self.handle_signed_on(now, participant, false, message, out, exchange),
            State::Draining { participant, .. } => {
                self.handle_signed_on(now, participant, true, message, out, exchange)
            }
        }
    }

    fn handle_sign_on(
        &mut self,
        now: Now,
        message: MessageRef<'_>,
        directory: &Directory,
        out: &mut Vec<Message>,
    ) -> Control {
        let MessageRef::SignOnRequest(request) = message else {
            out.push(reject(RejectReason::NotSignedOn, message.kind(), "sign on first"));
            self.state = State::Closed;
            return Control::Close(CloseReason::NotSignedOn);
        };
        let participant = request.participant;
        let version = request.protocol_version.to_native();
        let transcript = SignOnTranscript {
            switch_id: &self.config.switch_id,
            participant: &participant,
            server_nonce: &self.server_nonce,
            client_nonce: &request.client_nonce,
        };
        let code = if version != PROTOCOL_VERSION {
            ReplyCode::FormatError
        } else {
            // Unknown participant, unknown or expired key id and wrong proof get the same
            // answer, so a prober learns nothing about which ids exist.
            let proven = directory
                .get(&participant)
                .and_then(|p| p.key(request.key_id.to_native()))
                .filter(|key| key.is_valid_at(now.unix_ms))
                .is_some_and(|key| verify_client_proof(&key.secret, &transcript, version, &request.proof));
            // On a TLS link the certificate must name the participant too.
            let certified = self.certified.as_ref().is_none_or(|names| names.contains(&participant));
            let proven = proven && certified;
            if proven { ReplyCode::Approved } else { ReplyCode::NotAuthorised }
        };
        if code != ReplyCode::Approved {
            out.push(Message::SignOnResult(SignOnResult { code: code.value(), ..SignOnResult::default() }));
            self.state = State::Closed;
            return Control::Close(CloseReason::SignOnRefused);
        }
        let found = directory.get(&participant).and_then(|p| p.key(request.key_id.to_native()).map(|key| (p, key)));
        let (entry, key) = found.expect("the key was found when the proof was verified");
        self.macs = SessionMacs::derive(entry.frame_mac, &key.secret, &transcript, self.session_id);
        self.originates = MessageKind::ALL
            .iter()
            .filter(|&&kind| entry.may_originate(kind))
            .fold(0, |mask, &kind| mask | 1u128 << (kind as u8));
        out.push(Message::SignOnResult(SignOnResult {
            session_id: self.session_id,
            server_proof: server_proof(&key.secret, &transcript, self.session_id),
            echo_interval_ms: self.config.echo_interval_ms,
            idle_timeout_ms: self.config.idle_timeout_ms,
            code: ReplyCode::Approved.value(),
            frame_mac: entry.frame_mac.value(),
            reserved: [0; 5],
        }));
        self.state = State::SignedOn { participant };
        Control::Continue
    }

    /// A message on a signed-on session; `draining` while the switch shuts down, when new
    /// transactions are refused with `SystemBusy` and a sign-off reply ends the session.
    /// Transactions that pass the identity, role and replay-window checks, and answers to
    /// what the switch sent, go to the exchange.
    fn handle_signed_on(
        &mut self,
        now: Now,
        participant: InstitutionId,
        draining: bool,
        message: MessageRef<'_>,
        out: &mut Vec<Message>,
        exchange: &mut Vec<Message>,
    ) -> Control {
        let switch_id = self.config.switch_id;
        let window = self.config.replay_window_ms;
        let allowed = self.originates & (1u128 << (message.kind() as u8)) != 0;
        // Identity first: a request claiming another originator goes no further; then the
        // participant's roles, then the message's age.
        let refusal = |originator: InstitutionId, time_ms: i64| {
            let stale = window.is_some_and(|window| now.unix_ms.abs_diff(time_ms) > window);
            if originator != participant || !allowed || stale {
                Some(ReplyCode::NotAuthorised)
            } else if draining {
                Some(ReplyCode::SystemBusy)
            } else {
                None
            }
        };
        match message {
            MessageRef::EchoRequest(echo) => {
                out.push(Message::EchoReply(Echo {
                    sequence: echo.sequence.to_native(),
                    sent_time_ms: echo.sent_time_ms.to_native(),
                }));
            }
            MessageRef::SignOffReply(_) if draining => {
                self.state = State::Closed;
                return Control::Close(CloseReason::SignedOff);
            }
            MessageRef::EchoReply(_) | MessageRef::SignOffReply(_) => {}
            MessageRef::SignOffRequest(_) => {
                // In-flight transactions stay with the exchange; their answers still reach
                // the participant's other sessions, or time out and are reversed.
                out.push(Message::SignOffReply(SignOff { code: ReplyCode::Approved.value(), reserved: [0; 6] }));
                self.state = State::Closed;
                return Control::Close(CloseReason::SignedOff);
            }
            MessageRef::PaymentCodeRequest(request) => {
                match refusal(request.details.originator, request.details.transaction_time_ms.to_native()) {
                    Some(code) => {
                        out.push(Message::PaymentReply(answer((&request.details).into(), code, switch_id, now)))
                    }
                    None => exchange.push(message.to_message()),
                }
            }
            MessageRef::QrPaymentRequest(request) => {
                match refusal(request.details.originator, request.details.transaction_time_ms.to_native()) {
                    Some(code) => {
                        out.push(Message::PaymentReply(answer((&request.details).into(), code, switch_id, now)))
                    }
                    None => exchange.push(message.to_message()),
                }
            }
            MessageRef::ReversalRequest(request) => {
                match refusal(request.originator, request.transaction_time_ms.to_native()) {
                    Some(code) => out.push(Message::ReversalReply(answer(request.into(), code, switch_id, now))),
                    None => exchange.push(message.to_message()),
                }
            }
            MessageRef::RefundRequest(request) => {
                match refusal(request.originator, request.transaction_time_ms.to_native()) {
                    Some(code) => out.push(Message::RefundReply(answer(request.into(), code, switch_id, now))),
                    None => exchange.push(message.to_message()),
                }
            }
            MessageRef::StatusQuery(query) => {
                // Like every other kind: a query naming another originator is refused, so
                // nobody learns anything of another's transactions. (Its time is not held
                // to the replay window: a query moves no value.)
                if query.originator != participant {
                    let code = ReplyCode::NotAuthorised;
                    out.push(switch_answer(&message.to_message(), code, switch_id, now).expect("a query is a request"));
                } else {
                    exchange.push(message.to_message());
                }
            }
            MessageRef::PaymentReply(_) | MessageRef::ReversalReply(_) | MessageRef::RefundReply(_) => {
                // The exchange checks it sent the request being answered to this participant.
                exchange.push(message.to_message());
            }
            MessageRef::SignOnRequest(_)
            | MessageRef::SignOnChallenge(_)
            | MessageRef::SignOnResult(_)
            | MessageRef::StatusReply(_)
            | MessageRef::Reject(_) => {
                out.push(reject(RejectReason::UnexpectedKind, message.kind(), "kind not expected from a participant"));
            }
        }
        Control::Continue
    }
}

fn reject(reason: RejectReason, kind: MessageKind, detail: &str) -> Message {
    Message::Reject(codec::Reject {
        offset: 0,
        reason: reason.value(),
        rejected_kind: kind as u8,
        reserved: 0,
        detail: codec::RejectDetail::new(detail).unwrap_or_default(),
    })
}

/// The fields of a transaction request a switch answer echoes.
#[derive(Debug, Clone, Copy)]
struct Answered {
    originator: InstitutionId,
    originator_transaction_id: codec::TransactionId,
    amount_minor: u64,
    currency: u16,
}

impl From<&ArchivedTransactionDetails> for Answered {
    fn from(details: &ArchivedTransactionDetails) -> Self {
        Self {
            originator: details.originator,
            originator_transaction_id: details.originator_transaction_id,
            amount_minor: details.amount_minor.to_native(),
            currency: details.currency.to_native(),
        }
    }
}

impl From<&ArchivedLinkedRequest> for Answered {
    fn from(request: &ArchivedLinkedRequest) -> Self {
        Self {
            originator: request.originator,
            originator_transaction_id: request.originator_transaction_id,
            amount_minor: request.amount_minor.to_native(),
            currency: request.currency.to_native(),
        }
    }
}

/// The switch's own answer to a transaction request it refuses before the exchange.
fn answer(request: Answered, code: ReplyCode, switch_id: InstitutionId, now: Now) -> Reply {
    Reply {
        originator: request.originator,
        originator_transaction_id: request.originator_transaction_id,
        switch_reference: 0,
        amount_minor: request.amount_minor,
        reply_time_ms: now.unix_ms,
        currency: request.currency,
        code: code.value(),
        reserved: [0; 4],
        authorization_code: AuthorizationCode::EMPTY,
        responder: switch_id,
        conversion: codec::Conversion::NONE,
    }
}

#[cfg(test)]
mod tests {
    use codec::FrameEncoder;
    use codec::message::PaymentCodeRequest;
    use codec::signon::{sign_on_accepted, sign_on_request};

    use super::*;
    use crate::config::{SwitchConfig, demo_key};

    const NONCE: [u8; 32] = [7; 32];

    fn at(ms: u64) -> Now {
        Now { monotonic_ms: ms, unix_ms: 1_771_286_370_000 + ms as i64 }
    }

    /// Encodes `message` and hands its zero-copy view to `f`, as the edge would.
    fn with_ref<R>(message: &Message, f: impl FnOnce(MessageRef<'_>) -> R) -> R {
        let mut encoder = FrameEncoder::default();
        encoder.encode(message).expect("valid test message");
        let mut decoder = codec::FrameDecoder::default();
        decoder.feed(encoder.bytes());
        let frame = decoder.decode().expect("valid").expect("complete");
        f(frame.message)
    }

    struct Harness {
        session: Session,
        directory: Directory,
        out: Vec<Message>,
        exchange: Vec<Message>,
    }

    impl Harness {
        fn new() -> Self {
            let config = SwitchConfig::embedded_default();
            Self {
                session: Session::new(config.session.clone(), at(0), 9, NONCE),
                directory: Directory::new(config.participants),
                out: Vec::new(),
                exchange: Vec::new(),
            }
        }

        fn send(&mut self, ms: u64, message: &Message) -> Control {
            let Self { session, directory, out, exchange } = self;
            with_ref(message, |message| session.handle_message(at(ms), message, directory, out, exchange))
        }

        fn sign_on_request(&self, id: &str, key: &[u8]) -> codec::SignOnRequest {
            let Message::SignOnChallenge(challenge) = self.session.challenge() else { panic!("not a challenge") };
            sign_on_request(&challenge, InstitutionId::new(id).expect("valid"), 1, key, [3; 32])
        }

        fn sign_on(&mut self, id: &str) {
            let request = self.sign_on_request(id, &demo_key(id));
            assert_eq!(self.send(1, &Message::SignOnRequest(request.clone())), Control::Continue);
            let result = self.out.pop().expect("a sign-on result");
            let Message::SignOnChallenge(challenge) = self.session.challenge() else { panic!("not a challenge") };
            with_ref(&result, |result| {
                let MessageRef::SignOnResult(result) = result else { panic!("expected a sign-on result") };
                assert!(sign_on_accepted(&challenge, &request, &demo_key(id), result), "switch proof verifies");
            });
        }

        fn reply_code(&mut self) -> ReplyCode {
            match self.out.pop() {
                Some(Message::PaymentReply(reply) | Message::ReversalReply(reply) | Message::RefundReply(reply)) => {
                    ReplyCode::try_from(reply.code).expect("valid code")
                }
                other => panic!("expected a reply, got {other:?}"),
            }
        }
    }

    fn payment(originator: &str) -> Message {
        let mut request: PaymentCodeRequest = codec::sample::payment_code_request();
        request.details.originator = InstitutionId::new(originator).expect("valid");
        Message::PaymentCodeRequest(request)
    }

    #[test]
    fn sign_on_with_the_right_key_is_mutually_authenticated() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        assert_eq!(harness.session.participant(), InstitutionId::new("ACQ0001").ok());
    }

    #[test]
    fn roles_read_at_sign_on_decide_what_a_participant_may_originate() {
        // A wallet (issuer only) may not present a consumer's payment code...
        let mut wallet = Harness::new();
        wallet.sign_on("WAL0001");
        wallet.send(2, &payment("WAL0001"));
        assert_eq!(wallet.reply_code(), ReplyCode::NotAuthorised);
        assert!(wallet.exchange.is_empty());
        // ...but may pay by QR; an acquirer the other way round.
        let mut qr = codec::sample::qr_payment_request();
        qr.details.originator = InstitutionId::new("WAL0001").expect("valid");
        wallet.send(3, &Message::QrPaymentRequest(qr.clone().into()));
        assert_eq!(wallet.exchange.len(), 1);
        let mut acquirer = Harness::new();
        acquirer.sign_on("ACQ0001");
        acquirer.send(2, &payment("ACQ0001"));
        assert_eq!(acquirer.exchange.len(), 1);
        qr.details.originator = InstitutionId::new("ACQ0001").expect("valid");
        acquirer.send(3, &Message::QrPaymentRequest(qr.into()));
        assert_eq!(acquirer.reply_code(), ReplyCode::NotAuthorised);
        assert_eq!(acquirer.exchange.len(), 1);
    }

    #[test]
    fn sign_on_refusals_all_look_alike_and_close() {
        for (id, key) in [("ACQ0001", b"wrong".to_vec()), ("NOSUCHBANK", demo_key("NOSUCHBANK"))] {
            let mut harness = Harness::new();
            let request = harness.sign_on_request(id, &key);
            assert_eq!(harness.send(1, &Message::SignOnRequest(request)), Control::Close(CloseReason::SignOnRefused));
            assert_eq!(
                harness.out,
                vec![Message::SignOnResult(SignOnResult {
                    code: ReplyCode::NotAuthorised.value(),
                    ..SignOnResult::default()
                })]
            );
            assert_eq!(harness.session.participant(), None);
        }
    }

    #[test]
    fn a_proof_made_for_one_participant_cannot_sign_on_another() {
        let mut harness = Harness::new();
        let mut request = harness.sign_on_request("ACQ0001", &demo_key("ACQ0001"));
        request.participant = InstitutionId::new("ACQ0002").expect("valid");
        assert_eq!(harness.send(1, &Message::SignOnRequest(request)), Control::Close(CloseReason::SignOnRefused));
    }

    #[test]
    fn traffic_before_sign_on_is_rejected_and_closes() {
        let mut harness = Harness::new();
        assert_eq!(harness.send(1, &payment("ACQ0001")), Control::Close(CloseReason::NotSignedOn));
        let Some(Message::Reject(reject)) = harness.out.pop() else { panic!("expected a reject") };
        assert_eq!(reject.reason, RejectReason::NotSignedOn.value());
        assert_eq!(reject.rejected_kind, MessageKind::PaymentCodeRequest as u8);
    }

    #[test]
    fn spoofed_originator_is_refused() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        assert_eq!(harness.send(2, &payment("ACQ0002")), Control::Continue);
        assert_eq!(harness.reply_code(), ReplyCode::NotAuthorised);
        assert!(harness.exchange.is_empty(), "a spoofed request never reaches the exchange");
        assert_eq!(harness.send(3, &payment("ACQ0001")), Control::Continue);
        assert!(harness.out.is_empty());
        assert_eq!(harness.exchange, vec![payment("ACQ0001")], "an honest one goes on to the exchange");
    }

    #[test]
    fn every_transaction_request_gets_exactly_one_reply() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        for message in codec::sample::all_kinds() {
            let kind = message.kind();
            let message = match message {
                Message::QrPaymentRequest(mut request) => {
                    request.details.originator = InstitutionId::new("ACQ0001").expect("valid");
                    Message::QrPaymentRequest(request)
                }
                other => other,
            };
            let before = harness.out.len() + harness.exchange.len();
            let control = harness.send(2, &message);
            let handled = harness.out.len() + harness.exchange.len() - before;
            match kind {
                MessageKind::SignOffRequest => {
                    assert_eq!(control, Control::Close(CloseReason::SignedOff));
                    return;
                }
                MessageKind::EchoReply | MessageKind::SignOffReply => assert_eq!(handled, 0, "{kind:?}"),
                _ => assert_eq!(handled, 1, "{kind:?} is answered or handed on exactly once"),
            }
        }
    }

    /// A request that fails a field check, but whose originator and transaction id are
    /// readable, is answered in its own reply kind with `FormatError`.
    #[test]
    fn invalid_requests_get_a_format_error_reply_they_can_match() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        let mut encoder = FrameEncoder::default();
        encoder.encode(&payment("ACQ0001")).expect("valid");
        let mut frame = encoder.bytes().to_vec();
        frame[codec::HEADER_SIZE + 200] = b'X'; // a letter in the payment code
        codec::seal_frame(&mut frame);
        let mut decoder = codec::FrameDecoder::default();
        decoder.feed(&frame);
        let error = decoder.decode().map(|_| ()).expect_err("invalid field");
        let control = harness.session.handle_decode_error(
            at(2),
            &error,
            decoder.last_kind(),
            decoder.last_frame(),
            &mut harness.out,
        );
        assert_eq!(control, Control::Continue);
        let Some(Message::PaymentReply(reply)) = harness.out.pop() else { panic!("expected a payment reply") };
        assert_eq!(reply.code, ReplyCode::FormatError.value());
        assert_eq!(reply.originator_transaction_id.to_string(), "ACQ0001-20260216-000000042");

        // Before sign-on the same frame only gets a reject.
        let mut fresh = Harness::new();
        fresh.session.handle_decode_error(at(2), &error, decoder.last_kind(), decoder.last_frame(), &mut fresh.out);
        assert!(matches!(fresh.out.pop(), Some(Message::Reject(_))));
    }

    #[test]
    fn echo_is_answered_and_keeps_the_session_alive() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        let echo = Echo { sequence: 5, sent_time_ms: 123 };
        harness.send(60_000, &Message::EchoRequest(echo.clone()));
        assert_eq!(harness.out.pop(), Some(Message::EchoReply(echo)));
        assert_eq!(harness.session.deadline_ms(), 60_000 + 90_000);
        assert_eq!(harness.session.handle_timeout(at(149_999), &mut harness.out), Control::Continue);
        assert_eq!(
            harness.session.handle_timeout(at(150_000), &mut harness.out),
            Control::Close(CloseReason::IdleTimeout)
        );
        assert!(matches!(harness.out.pop(), Some(Message::SignOffRequest(_))));
    }

    #[test]
    fn shutdown_signs_off_refuses_new_work_and_ends_on_the_reply_or_deadline() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        assert_eq!(harness.session.handle_shutdown(at(1_000), &mut harness.out), Control::Continue);
        let Some(Message::SignOffRequest(sign_off)) = harness.out.pop() else { panic!("expected a sign-off") };
        assert_eq!(sign_off.code, codec::SignOffReason::Shutdown.value());
        assert_eq!(harness.session.deadline_ms(), 6_000);
        // New work during the drain gets an explicit answer.
        assert_eq!(harness.send(1_100, &payment("ACQ0001")), Control::Continue);
        assert_eq!(harness.reply_code(), ReplyCode::SystemBusy);
        // The participant's sign-off reply ends the session.
        let reply = Message::SignOffReply(SignOff { code: ReplyCode::Approved.value(), reserved: [0; 6] });
        assert_eq!(harness.send(1_200, &reply), Control::Close(CloseReason::SignedOff));

        // A participant that never answers is closed at the deadline.
        let mut silent = Harness::new();
        silent.sign_on("ACQ0001");
        silent.session.handle_shutdown(at(1_000), &mut silent.out);
        assert_eq!(silent.session.handle_timeout(at(5_999), &mut silent.out), Control::Continue);
        assert_eq!(
            silent.session.handle_timeout(at(6_000), &mut silent.out),
            Control::Close(CloseReason::DrainDeadline)
        );
        // One that never signed on is closed at once.
        let mut fresh = Harness::new();
        assert_eq!(fresh.session.handle_shutdown(at(1), &mut fresh.out), Control::Close(CloseReason::Shutdown));
        assert!(fresh.out.is_empty());
    }

    #[test]
    fn sign_on_must_come_within_its_deadline() {
        let mut harness = Harness::new();
        assert_eq!(harness.session.deadline_ms(), 10_000);
        assert_eq!(harness.session.handle_timeout(at(9_999), &mut harness.out), Control::Continue);
        assert_eq!(
            harness.session.handle_timeout(at(10_000), &mut harness.out),
            Control::Close(CloseReason::SignOnTimeout)
        );
    }

    #[test]
    fn decode_errors_reject_and_close_only_when_unrecoverable() {
        let mut harness = Harness::new();
        harness.sign_on("ACQ0001");
        let skip = DecodeError::UnknownKind { offset: 11, kind: 0x55 };
        assert_eq!(harness.session.handle_decode_error(at(1), &skip, 0x55, &[], &mut harness.out), Control::Continue);
        let fatal = DecodeError::BadChecksum { offset: 4, expected: 1, computed: 2 };
        assert_eq!(
            harness.session.handle_decode_error(at(1), &fatal, 0x10, &[], &mut harness.out),
            Control::Close(CloseReason::FramingError)
        );
        let reasons: Vec<_> = harness
            .out
            .iter()
            .map(|m| match m {
                Message::Reject(r) => r.reason,
                other => panic!("expected rejects, got {other:?}"),
            })
            .collect();
        assert_eq!(reasons, vec![RejectReason::UnknownKind.value(), RejectReason::BadChecksum.value()]);
    }

    #[test]
    fn before_sign_on_even_a_recoverable_decode_error_closes() {
        let mut harness = Harness::new();
        let skip = DecodeError::UnknownKind { offset: 11, kind: 0x55 };
        assert_eq!(
            harness.session.handle_decode_error(at(1), &skip, 0x55, &[], &mut harness.out),
            Control::Close(CloseReason::NotSignedOn)
        );
        let [Message::Reject(reject)] = harness.out.as_slice() else { panic!("one reject: {:?}", harness.out) };
        assert_eq!((reject.reason, reject.offset, reject.rejected_kind), (RejectReason::NotSignedOn.value(), 11, 0x55));
    }
}
