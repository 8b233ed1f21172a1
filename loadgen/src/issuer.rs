//! A receiving participant for closed-loop runs: answers every request the switch forwards
//! as soon as it arrives (decline and silent shares apply; latency does not: a closed loop
//! measures throughput), acknowledges reversals and refunds, answers echoes and sign-offs.
//! The open-loop engine's connections ([`crate::peer`]) answer with the full behaviour.

use codec::{Echo, Message, SignOff};

use crate::client::Client;
use crate::responder::{Answered, Behaviour, Decision};
use crate::rng::Rng;

/// Answers until the switch signs off or closes the connection; returns the requests seen.
pub async fn run_issuer(client: Client, behaviour: Behaviour) -> anyhow::Result<u64> {
    let Client { participant, mut reader, mut writer, .. } = client;
    let mut rng = Rng::new(0x1550E5);
    let mut requests = 0u64;
    let approved = codec::ReplyCode::Approved;
    loop {
        let Ok(message) = reader.next(|message| message.to_message()).await else {
            // The switch closed the connection.
            return Ok(requests);
        };
        let now_ms = 0;
        let answer = match &message {
            Message::PaymentCodeRequest(_) | Message::QrPaymentRequest(_) => {
                requests += 1;
                let details = match &message {
                    Message::PaymentCodeRequest(request) => &request.details,
                    Message::QrPaymentRequest(request) => &request.details,
                    _ => unreachable!("matched a payment request"),
                };
                match behaviour.payment(requests, &mut rng) {
                    Decision::Answer { code, .. } => Some(Message::PaymentReply(Answered::from(details).reply(
                        participant,
                        code,
                        Some(requests),
                        now_ms,
                    ))),
                    Decision::Ignore => None,
                }
            }
            Message::ReversalRequest(reversal) => (behaviour.linked(&mut rng) != Decision::Ignore)
                .then(|| Message::ReversalReply(Answered::from(reversal).reply(participant, approved, None, now_ms))),
            Message::RefundRequest(refund) => (behaviour.linked(&mut rng) != Decision::Ignore)
                .then(|| Message::RefundReply(Answered::from(refund).reply(participant, approved, None, now_ms))),
            Message::EchoRequest(Echo { sequence, sent_time_ms }) => {
                Some(Message::EchoReply(Echo { sequence: *sequence, sent_time_ms: *sent_time_ms }))
            }
            Message::SignOffRequest(_) => {
                writer.send(&Message::SignOffReply(SignOff { code: 0, reserved: [0; 6] })).await?;
                return Ok(requests);
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
