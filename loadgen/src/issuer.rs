//! Plays a receiving participant (an issuer, or an acquirer for QR payments): answers
//! every request the switch forwards, approves refunds, acknowledges reversals, answers
//! echoes and sign-offs.
//! With the acquirer side (`run`) it makes one command a two-sided flow through the switch.

use codec::{AuthorizationCode, Echo, InstitutionId, LinkedRequest, Message, Reply, ReplyCode, SignOff};

use crate::client::Client;

/// How the receiver behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct IssuerBehaviour {
    /// Decline every Nth request with `InsufficientFunds` (0: approve all).
    pub decline_every: u64,
    /// Read requests and reversals but never answer them (a silent issuer, for timeout
    /// tests); echoes and sign-offs are still answered, so the session stays up.
    pub silent: bool,
}

/// What a receiver saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IssuerReport {
    pub requests: u64,
    pub approved: u64,
    pub declined: u64,
    pub reversals: u64,
    pub refunds: u64,
}

fn reply(participant: InstitutionId, request: &codec::TransactionDetails, code: ReplyCode, sequence: u64) -> Reply {
    Reply {
        code: code.value(),
        authorization_code: if code.is_approved() {
            AuthorizationCode::new(&format!("A{:05}", sequence % 100_000)).unwrap_or_default()
        } else {
            AuthorizationCode::EMPTY
        },
        ..echo(
            participant,
            (request.originator, request.originator_transaction_id, request.switch_reference),
            request.amount_minor,
            request.transaction_time_ms,
            request.currency,
        )
    }
}

/// An approving answer to a reversal or refund.
fn approve_linked(participant: InstitutionId, request: &LinkedRequest) -> Reply {
    echo(
        participant,
        (request.originator, request.originator_transaction_id, request.switch_reference),
        request.amount_minor,
        request.transaction_time_ms,
        request.currency,
    )
}

/// An approval echoing what identifies the request (originator, its id, the switch
/// reference) and its amount, time and currency.
fn echo(
    participant: InstitutionId,
    (originator, originator_transaction_id, switch_reference): (InstitutionId, codec::TransactionId, u64),
    amount_minor: u64,
    time_ms: i64,
    currency: u16,
) -> Reply {
    Reply {
        originator,
        originator_transaction_id,
        switch_reference,
        amount_minor,
        reply_time_ms: time_ms,
        currency,
        code: ReplyCode::Approved.value(),
        reserved: [0; 4],
        authorization_code: AuthorizationCode::EMPTY,
        responder: participant,
    }
}

/// Answers until the switch signs off or closes the connection.
pub async fn run_issuer(client: Client, behaviour: IssuerBehaviour) -> anyhow::Result<IssuerReport> {
    let Client { participant, mut reader, mut writer, .. } = client;
    let mut report = IssuerReport::default();
    loop {
        let Ok(message) = reader.next(|message| message.to_message()).await else {
            // The switch closed the connection.
            return Ok(report);
        };
        let answer = match message {
            Message::PaymentCodeRequest(_) | Message::QrPaymentRequest(_) => {
                report.requests += 1;
                let details = match &message {
                    Message::PaymentCodeRequest(request) => request.details.clone(),
                    Message::QrPaymentRequest(request) => request.details.clone(),
                    _ => unreachable!(),
                };
                if behaviour.silent {
                    None
                } else {
                    let decline = behaviour.decline_every > 0 && report.requests % behaviour.decline_every == 0;
                    let code = if decline { ReplyCode::InsufficientFunds } else { ReplyCode::Approved };
                    if decline {
                        report.declined += 1;
                    } else {
                        report.approved += 1;
                    }
                    Some(Message::PaymentReply(reply(participant, &details, code, report.requests)))
                }
            }
            Message::ReversalRequest(reversal) => {
                report.reversals += 1;
                (!behaviour.silent).then(|| Message::ReversalReply(approve_linked(participant, &reversal)))
            }
            Message::RefundRequest(refund) => {
                report.refunds += 1;
                (!behaviour.silent).then(|| Message::RefundReply(approve_linked(participant, &refund)))
            }
            Message::EchoRequest(Echo { sequence, sent_time_ms }) => {
                Some(Message::EchoReply(Echo { sequence, sent_time_ms }))
            }
            Message::SignOffRequest(_) => {
                writer.send(&Message::SignOffReply(SignOff { code: 0, reserved: [0; 6] })).await?;
                return Ok(report);
            }
            _ => None,
        };
        if let Some(answer) = answer {
            writer.queue(&answer)?;
        }
        // Everything a read brought in is answered in one write.
        if reader.buffered() == 0 {
            writer.flush().await?;
        }
    }
}
