//! ISO 8583 participants: a connection on the `[iso8583]` listener speaks ISO 8583 (1987)
//! framed by the listener's profile (its TCP length header, field encodings), translated to
//! and from the canonical model by `codec::translate`. Past the translation it is a session
//! like any other: the same shards, exchange, journal and clearing.
//!
//! ```text
//! participant ──0800 (DE70 001, DE32 its id)──▶ sign-on: 0810 DE39 00 (or 58, then closed)
//!             ──0200 / 0400 / 0210 / 0410 ─────▶ translate ─▶ checks ─▶ shards
//!             ◀─0210 / 0410 / 0200 / 0420 ─────── translate ◀─ what the shards send it
//!             ──0800 301 echo ─▶ 0810           ──0800 002 sign-off ─▶ 0810, closed
//! ```
//!
//! Rules:
//! - Identity: only a participant configured with `protocol = "iso8583"` signs on here. On a
//!   TLS listener its certificate must name it (as on native links). On a plaintext
//!   listener (loopback tests, `plaintext = true`) the id in DE32 is taken as given:
//!   ISO 8583 has no sign-on proof, and DE128 MACs are not implemented (SECURITY.md).
//! - Every request is checked as on a native session: the originator it names is the
//!   session's participant, its roles allow the kind, its time is inside the replay window;
//!   otherwise it is answered (0210 DE39 58) and goes no further. While the switch drains,
//!   new requests are answered `SystemBusy` (96). A 0400 cancel is answered 0410; the
//!   switch's own reversals go out as 0420 and are answered 0430.
//! - Every answer to a request carries back the request's DE11, DE37, DE41 and DE42 as it
//!   sent them, under the request's response MTI (`codec::iso_answer::Echo`, kept per
//!   request until its answer goes out, at most `PENDING_MAX`).
//! - Only a stream that cannot be framed (a bad length header) closes a signed-on link.
//!   A framed request that cannot be unpacked or translated, or that breaks the native
//!   protocol's field rules, is answered DE39 30 (format error); one whose MTI or DE3
//!   processing code the switch does not carry, DE39 12; in both cases with whatever of
//!   its fields could be read (`codec::iso_answer::refusal`), and the link stays up. A
//!   message whose MTI or DE11 cannot be read cannot be matched by its host, so it is
//!   counted and logged (without content) and not answered; an answer that breaks the
//!   rules is dropped (its transaction times out and is reversed). Messages the model has
//!   no ISO 8583 form for (status replies) are not sent.
//! - Before sign-on, anything but a readable 0800 sign-on closes the connection.
//! - Timers: the sign-on deadline, then the idle timeout (a participant keeps the link up
//!   with 0800 301 echoes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use codec::field::FieldText;
use codec::iso_answer::{DE39_FORMAT_ERROR, DE39_INVALID_TRANSACTION, Echo, refusal};
use codec::iso8583::{IsoMessage, Profile};
use codec::translate::{TranslateError, Translated, from_iso, to_iso};
use codec::{InstitutionId, Message, MessageKind, ReplyCode, SignOff, SignOnResult, TransactionId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::core::exchange::switch_answer;
use crate::core::session::CloseReason;
use crate::edge::gate::{SessionClaim, Ticket};
use crate::edge::shard::Touched;
use crate::edge::tcp::{Connection, ConnectionGuard, next_outbound};
use crate::ops::log_limit::LogLimit;

/// The ISO 8583 listener: where it listens and the profile its links are framed by
/// (`[iso8583]` in the configuration).
#[derive(Debug, Clone)]
pub struct Iso8583Settings {
    pub listen: SocketAddr,
    pub profile: std::sync::Arc<codec::iso8583::Profile>,
}

/// Bytes read at a time once signed on; before, one sign-on's worth at most.
const READ_CHUNK: usize = 16 * 1024;
const READ_CHUNK_SIGN_ON: usize = 1024;
/// Requests of one link waiting for their answer (their echoes are kept until then);
/// beyond it, new requests are answered DE39 96 (system busy) at once.
const PENDING_MAX: usize = 65_536;

/// An answer's kind and the originator's id it answers: what a pending echo is found by.
type PendingKey = (MessageKind, TransactionId);

impl Connection {
    /// An ISO 8583 connection: the TLS handshake first when the switch has TLS, then the
    /// session.
    pub(crate) async fn serve_iso8583(
        self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
    ) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        match self.shared.tls.as_ref().map(|tls| tls.acceptor()) {
            Some(acceptor) => match self.handshake(acceptor, stream, peer, &ticket).await? {
                Some((stream, names)) => self.iso8583_session(stream, peer, Some(names), ticket).await,
                None => Ok(()),
            },
            None => {
                let stream = TcpStream::from_std(stream)?;
                self.iso8583_session(stream, peer, None, ticket).await
            }
        }
    }

    async fn iso8583_session<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        stream: S,
        peer: SocketAddr,
        certified: Option<Vec<InstitutionId>>,
        ticket: Ticket,
    ) -> std::io::Result<()> {
        let shared = std::sync::Arc::clone(&self.shared);
        let Some(settings) = shared.iso8583.as_ref() else { return Ok(()) };
        shared.metrics.connection_opened();
        let mut guard = ConnectionGuard { metrics: &shared.metrics, signed_on: false, reason: None };
        let session_id = shared.next_session_id();
        let mut link = IsoLink {
            connection: &self,
            profile: &settings.profile,
            peer,
            session_id,
            certified,
            participant: None,
            outbound: None,
            outgoing: Vec::new(),
            to_exchange: Vec::new(),
            draining: false,
            check: codec::FrameEncoder::default(),
            pending: HashMap::new(),
            wire: Vec::new(),
            answer: IsoMessage::for_profile(&settings.profile),
            ticket,
        };
        let result = link.run(stream, &mut guard).await;
        if let Some(participant) = link.participant {
            self.unregister(participant, session_id).await;
        }
        result
    }
}

/// One ISO 8583 session's state.
struct IsoLink<'a> {
    connection: &'a Connection,
    profile: &'a Profile,
    peer: SocketAddr,
    session_id: u64,
    certified: Option<Vec<InstitutionId>>,
    /// Set at sign-on.
    participant: Option<InstitutionId>,
    outbound: Option<mpsc::UnboundedReceiver<Message>>,
    /// Messages for the participant, in the model (translated on the way out).
    outgoing: Vec<Message>,
    to_exchange: Vec<Message>,
    draining: bool,
    /// Checks translated messages against the native field rules.
    check: codec::FrameEncoder,
    /// What the answer to each request waiting for one carries back (response MTI,
    /// DE11, DE37, DE41, DE42), by the answer's kind and the request's id.
    pending: HashMap<PendingKey, Echo>,
    /// Bytes for the participant, written after each read.
    wire: Vec<u8>,
    /// The switch's own answers, built here.
    answer: IsoMessage,
    /// The connection's place at the gate (`edge::gate`).
    ticket: Ticket,
}

impl IsoLink<'_> {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        guard: &mut ConnectionGuard<'_>,
    ) -> std::io::Result<()> {
        let shared = std::sync::Arc::clone(&self.connection.shared);
        let config = &shared.session;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut draining = self.connection.draining.clone();
        // Small until signed on: a connection that never signs on costs little.
        let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_SIGN_ON);
        let mut chunk = vec![0u8; READ_CHUNK_SIGN_ON];
        // Knows the profile's GBK fields, for messages built here before any is read.
        let mut iso = IsoMessage::for_profile(self.profile);
        let mut touched = Touched::default();
        let mut deadline = tokio::time::Instant::now() + Duration::from_millis(config.sign_on_timeout_ms);
        loop {
            let mut close = None;
            let crowded = self.connection.mesh.crowded();
            tokio::select! {
                changed = draining.wait_for(|draining| *draining), if !self.draining => {
                    // New requests are answered SystemBusy from now on; the participant
                    // is asked to sign off and the link closes at the drain deadline.
                    self.draining = true;
                    if changed.is_ok() && self.participant.is_some() {
                        // What the shards queued for it goes out before the sign-off.
                        if let Some(receiver) = &mut self.outbound {
                            while let Ok(message) = receiver.try_recv() {
                                self.outgoing.push(message);
                            }
                        }
                        self.outgoing.push(Message::SignOffRequest(SignOff { code: 0, reserved: [0; 6] }));
                    }
                    deadline = tokio::time::Instant::now() + Duration::from_millis(config.drain_timeout_ms);
                }
                received = next_outbound(&mut self.outbound, &mut self.outgoing) => {
                    if !received {
                        close = Some(CloseReason::Backlogged);
                    }
                }
                () = self.ticket.evicted(), if self.participant.is_none() => close = Some(CloseReason::Evicted),
                // While a shard is crowded with admitted work, nothing more is read (a look
                // every millisecond): what would be read would only wait longer.
                () = tokio::time::sleep(Duration::from_millis(1)), if crowded => {}
                read = tokio::time::timeout_at(deadline, reader.read(&mut chunk)), if !crowded => match read {
                    Err(_) => {
                        close = Some(match (self.draining, self.participant) {
                            (true, _) => CloseReason::DrainDeadline,
                            (false, Some(_)) => CloseReason::IdleTimeout,
                            (false, None) => CloseReason::SignOnTimeout,
                        });
                    }
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Err(error)) => return Err(error),
                    Ok(Ok(count)) => {
                        buffer.extend_from_slice(&chunk[..count]);
                        // After failed sign-ons from here or for it, a sign-on waits its turn.
                        let claimed = self.participant.is_none().then(|| self.claimed(&buffer, &mut iso));
                        let turn = match claimed {
                            Some(claimed) => self.connection.sign_on_turn(deadline.into_std(), self.peer, claimed).await,
                            None => true,
                        };
                        close = if turn {
                            self.take_messages(&mut buffer, &mut iso)
                        } else {
                            Some(CloseReason::SignOnTimeout)
                        };
                        // Signed on (perhaps by this read): idle from now on.
                        if self.participant.is_some() && !self.draining {
                            deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(config.idle_timeout_ms));
                        }
                    }
                },
            }
            if let (Some(participant), None) = (self.participant, &self.outbound) {
                self.outbound = Some(self.connection.register(participant, self.session_id, self.peer).await);
                guard.signed_on = true;
                chunk.resize(READ_CHUNK, 0);
            }
            if !self.to_exchange.is_empty() {
                self.connection.hand_off(
                    self.session_id,
                    self.participant,
                    &mut self.to_exchange,
                    &mut self.outgoing,
                    &mut touched,
                );
            }
            for message in std::mem::take(&mut self.outgoing) {
                shared.metrics.sent(&message);
                let mut packed = to_iso(&message, &mut iso).map_err(|error| error.to_string());
                // An answer to this participant's request carries back what it sent.
                if let Message::PaymentReply(reply) | Message::RefundReply(reply) | Message::ReversalReply(reply) =
                    &message
                    && let Some(echo) = self.pending.remove(&(message.kind(), reply.originator_transaction_id))
                {
                    packed = packed.and_then(|()| echo.apply(&mut iso).map_err(|error| error.to_string()));
                }
                let packed = packed
                    .and_then(|()| self.profile.pack_frame(&iso, &mut self.wire).map_err(|error| error.to_string()));
                if let Err(error) = packed {
                    // A status reply, say: the model has no ISO 8583 form for it.
                    tracing::debug!(peer = %self.peer, kind = ?message.kind(), %error, "not sent to an ISO 8583 participant");
                }
            }
            if !self.wire.is_empty() {
                // A participant that does not read what it was sent within the write timeout
                // is closed, not waited on. (Unlike native links, an ISO 8583 link does not
                // read while it writes: the timeout is what ends a deadlock.)
                let timeout = Duration::from_millis(config.write_timeout_ms);
                match tokio::time::timeout(timeout, writer.write_all(&self.wire)).await {
                    Ok(written) => written?,
                    Err(_) => {
                        guard.reason = Some(CloseReason::Backlogged);
                        return Ok(());
                    }
                }
                self.wire.clear();
            }
            if let Some(reason) = close {
                guard.reason = Some(reason);
                static CLOSING: LogLimit = LogLimit::per_second();
                if let Some(suppressed) = CLOSING.allow(shared.now().monotonic_ms) {
                    let participant = self.participant;
                    tracing::info!(suppressed, peer = %self.peer, ?participant, ?reason, "closing ISO 8583 session");
                }
                writer.shutdown().await?;
                return Ok(());
            }
        }
    }

    /// The institution the first whole message in `buffer` signs on as, if it is a
    /// sign-on naming one (for the sign-on throttle; `take_messages` reads it properly).
    fn claimed(&self, buffer: &[u8], iso: &mut IsoMessage) -> Option<InstitutionId> {
        let range = self.profile.frame(buffer).ok()??;
        self.profile.unpack(&buffer[range], iso).ok()?;
        (iso.mti() == "0800" && iso.get_str(70) == Some("001")).then(|| iso.get_str(32)?.parse().ok())?
    }

    /// Handles every whole message in `buffer` (and removes it); a reason to close, if any.
    fn take_messages(&mut self, buffer: &mut Vec<u8>, iso: &mut IsoMessage) -> Option<CloseReason> {
        let shared = std::sync::Arc::clone(&self.connection.shared);
        let mut consumed = 0;
        let mut close = None;
        let mut frames = 0;
        while close.is_none() {
            let range = match self.profile.frame(&buffer[consumed..]) {
                Ok(Some(range)) => range,
                Ok(None) => break,
                Err(error) => {
                    tracing::info!(peer = %self.peer, %error, "ISO 8583 framing error");
                    close = Some(CloseReason::FramingError);
                    break;
                }
            };
            frames += 1;
            let body = consumed + range.start..consumed + range.end;
            consumed += range.end;
            let now = shared.now();
            let translated = self
                .profile
                .unpack(&buffer[body], iso)
                .map_err(TranslateError::from)
                .and_then(|()| from_iso(iso, now.unix_ms));
            close = match (translated, self.participant) {
                (Ok(translated), None) => self.sign_on(translated),
                (Err(error), None) => {
                    tracing::info!(peer = %self.peer, %error, "ISO 8583 message before sign-on refused");
                    Some(CloseReason::NotSignedOn)
                }
                (Ok(translated), Some(_)) => self.handle(translated, iso),
                (Err(error), Some(participant)) => {
                    self.refuse(participant, iso, &error);
                    None
                }
            };
        }
        buffer.drain(..consumed);
        shared.metrics.frames_received(frames);
        close
    }

    /// Answers a framed message that could not be unpacked or translated, with what of it
    /// could be read: DE39 12 when the switch does not carry what it asks, else 30. A
    /// message whose MTI or DE11 could not be read is not answered (its host could not
    /// match the answer), only counted.
    fn refuse(&mut self, participant: InstitutionId, request: &IsoMessage, error: &TranslateError) {
        let metrics = &self.connection.shared.metrics;
        let unsupported =
            matches!(error, TranslateError::UnsupportedMti { .. } | TranslateError::UnsupportedProcessingCode { .. });
        let code = if unsupported { DE39_INVALID_TRANSACTION } else { DE39_FORMAT_ERROR };
        let answered = refusal(request, code, &mut self.answer)
            .is_some_and(|()| self.profile.pack_frame(&self.answer, &mut self.wire).is_ok());
        let outcome = match (answered, unsupported) {
            (false, _) => crate::ops::metrics::IsoRefusal::Unanswerable,
            (true, true) => crate::ops::metrics::IsoRefusal::Unsupported,
            (true, false) => crate::ops::metrics::IsoRefusal::Malformed,
        };
        metrics.iso8583_refused(outcome);
        static REFUSED: LogLimit = LogLimit::per_second();
        if let Some(suppressed) = REFUSED.allow(self.connection.shared.now().monotonic_ms) {
            let mti = request.mti();
            tracing::info!(suppressed, peer = %self.peer, %participant, mti, %error, ?outcome, "ISO 8583 message refused");
        }
    }

    /// Answers `request` (its unpacked form) with DE39 `code` here and now.
    fn answer_now(&mut self, request: &IsoMessage, code: &str) {
        if refusal(request, code, &mut self.answer).is_some()
            && let Err(error) = self.profile.pack_frame(&self.answer, &mut self.wire)
        {
            tracing::warn!(peer = %self.peer, %error, "an answer could not be packed");
        }
    }

    /// A translated message on a signed-on link; `iso` is its unpacked form.
    fn handle(&mut self, translated: Translated, iso: &IsoMessage) -> Option<CloseReason> {
        let shared = std::sync::Arc::clone(&self.connection.shared);
        let participant = self.participant?;
        let message = match translated {
            Translated::Message(message) => message,
            Translated::SignOn { .. } | Translated::SignOnReply { .. } => return None,
        };
        // A request's answer, whatever it is, carries back its trace fields.
        if let Some(key) = pending_key(&message)
            && let Some(echo) = Echo::of(iso)
        {
            if self.pending.contains_key(&key) {
                // The same id while its first request waits: answered here, so each answer
                // is found by exactly one request.
                self.answer_now(iso, ReplyCode::Duplicate.iso8583_response_code());
                return None;
            }
            if self.pending.len() >= PENDING_MAX {
                self.answer_now(iso, ReplyCode::SystemBusy.iso8583_response_code());
                return None;
            }
            self.pending.insert(key, echo);
        }
        let now = shared.now();
        let mut message = message;
        if let Message::PaymentReply(reply) | Message::ReversalReply(reply) | Message::RefundReply(reply) = &mut message
            && reply.responder.is_empty()
        {
            // A plain ISO 8583 answer does not name its responder (DE48 10): the session does.
            reply.responder = participant;
        }
        let valid = self.check.encode(&message);
        self.check.clear();
        if let Err(error) = valid {
            tracing::info!(peer = %self.peer, %participant, %error, "ISO 8583 message breaks the field rules");
            let outcome = match switch_answer(&message, ReplyCode::FormatError, shared.session.switch_id, now) {
                Some(answer) => {
                    self.outgoing.push(answer);
                    crate::ops::metrics::IsoRefusal::Malformed
                }
                None => {
                    tracing::warn!(peer = %self.peer, %participant, "invalid answer dropped");
                    crate::ops::metrics::IsoRefusal::Unanswerable
                }
            };
            shared.metrics.iso8583_refused(outcome);
            return None;
        }
        match message {
            Message::EchoRequest(echo) => self.outgoing.push(Message::EchoReply(echo)),
            Message::EchoReply(_) => {}
            Message::SignOffRequest(_) => {
                self.outgoing.push(Message::SignOffReply(SignOff { code: 0, reserved: [0; 6] }));
                return Some(CloseReason::SignedOff);
            }
            Message::SignOffReply(_) => return self.draining.then_some(CloseReason::SignedOff),
            Message::PaymentReply(_) | Message::ReversalReply(_) | Message::RefundReply(_) => {
                // The exchange checks it sent the request being answered to this participant.
                self.to_exchange.push(message);
            }
            request => {
                let claimed = match &request {
                    Message::PaymentCodeRequest(r) => Some((r.details.originator, r.details.transaction_time_ms)),
                    Message::QrPaymentRequest(r) => Some((r.details.originator, r.details.transaction_time_ms)),
                    Message::ReversalRequest(r) | Message::RefundRequest(r) => {
                        Some((r.originator, r.transaction_time_ms))
                    }
                    _ => None,
                };
                let Some((originator, time_ms)) = claimed else {
                    tracing::debug!(peer = %self.peer, kind = ?request.kind(), "kind not expected from an ISO 8583 participant");
                    return None;
                };
                let allowed = shared.directory.get(&participant).is_some_and(|p| p.may_originate(request.kind()));
                let stale =
                    shared.session.replay_window_ms.is_some_and(|window| now.unix_ms.abs_diff(time_ms) > window);
                let refusal = if originator != participant || !allowed || stale {
                    Some(ReplyCode::NotAuthorised)
                } else if self.draining {
                    Some(ReplyCode::SystemBusy)
                } else {
                    None
                };
                match refusal {
                    Some(code) => {
                        if let Some(answer) = switch_answer(&request, code, shared.session.switch_id, now) {
                            self.outgoing.push(answer);
                        }
                    }
                    None => self.to_exchange.push(request),
                }
            }
        }
        None
    }

    /// The first message must be a sign-on (0800, DE70 001) naming a participant that
    /// connects with ISO 8583 (and, on TLS, that its certificate names).
    fn sign_on(&mut self, translated: Translated) -> Option<CloseReason> {
        let shared = &self.connection.shared;
        let Translated::SignOn { institution } = translated else {
            tracing::info!(peer = %self.peer, "ISO 8583 message before sign-on");
            return Some(CloseReason::NotSignedOn);
        };
        let admitted = institution.filter(|id| {
            shared.directory.get(id).is_some_and(|p| p.iso8583)
                && self.certified.as_ref().is_none_or(|names| names.contains(id))
        });
        let known = institution.filter(|id| shared.directory.get(id).is_some());
        let now_ms = shared.now().monotonic_ms;
        shared.gate.sign_on_outcome(self.peer.ip(), admitted.or(known), admitted.is_some(), now_ms);
        // A participant at its session limit is refused, and told to try later.
        let (admitted, code) = match admitted {
            Some(participant) if self.ticket.claim_session(participant) == SessionClaim::Granted => {
                (Some(participant), ReplyCode::Approved)
            }
            Some(_) => (None, ReplyCode::SystemBusy),
            None => (None, ReplyCode::NotAuthorised),
        };
        self.outgoing.push(Message::SignOnResult(SignOnResult {
            session_id: self.session_id,
            code: code.value(),
            idle_timeout_ms: shared.session.idle_timeout_ms,
            echo_interval_ms: shared.session.echo_interval_ms,
            ..SignOnResult::default()
        }));
        match admitted {
            Some(participant) => {
                tracing::info!(peer = %self.peer, %participant, "ISO 8583 participant signed on");
                self.participant = Some(participant);
                None
            }
            None => {
                tracing::info!(peer = %self.peer, claimed = ?institution, "ISO 8583 sign-on refused");
                Some(CloseReason::SignOnRefused)
            }
        }
    }
}

/// Where the answer to a request is found: the answer's kind and the request's id.
fn pending_key(message: &Message) -> Option<PendingKey> {
    Some(match message {
        Message::PaymentCodeRequest(r) => (MessageKind::PaymentReply, r.details.originator_transaction_id),
        Message::QrPaymentRequest(r) => (MessageKind::PaymentReply, r.details.originator_transaction_id),
        Message::RefundRequest(r) => (MessageKind::RefundReply, r.originator_transaction_id),
        Message::ReversalRequest(r) => (MessageKind::ReversalReply, r.originator_transaction_id),
        _ => return None,
    })
}
