//! A trivial switch: signs any known participant on and approves every request at once.
//! It measures the generator itself (how many requests one core can make and account for)
//! and, with a stall, proves the latency correction: requests due while it is stalled
//! show the stall as latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use codec::signon::{SignOnTranscript, server_proof, verify_client_proof};
use codec::{
    FrameDecoder, FrameEncoder, InstitutionId, Message, MessageRef, PROTOCOL_VERSION, ReplyCode, SignOnChallenge,
    SignOnResult, StatusReply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::participants::Participant;
use crate::responder::Answered;

/// A pause in answering: from `after` since the sink started, for `length`.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub after: Duration,
    pub length: Duration,
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, participants: Vec<Participant>, stall: Option<Stall>) -> anyhow::Result<()> {
    let participants = Arc::new(participants);
    let start = Instant::now();
    let mut session = 0u64;
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        session += 1;
        let participants = Arc::clone(&participants);
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &participants, session, start, stall).await {
                eprintln!("sink: session {session}: {error:#}");
            }
        });
    }
}

/// Binds and serves on a background task; returns the bound address.
pub async fn spawn(
    address: SocketAddr,
    participants: Vec<Participant>,
    stall: Option<Stall>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, participants, stall));
    Ok(bound)
}

async fn connection(
    mut stream: TcpStream,
    participants: &[Participant],
    session: u64,
    start: Instant,
    stall: Option<Stall>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let switch_id = InstitutionId::new("SINK").expect("valid id");
    let sink_id = switch_id;
    let mut server_nonce = [0u8; 32];
    getrandom::fill(&mut server_nonce).context("nonce")?;
    let mut encoder = FrameEncoder::default();
    let mut decoder = FrameDecoder::default();
    encoder.encode(&Message::SignOnChallenge(SignOnChallenge {
        switch_id,
        server_nonce,
        protocol_version: PROTOCOL_VERSION,
        reserved: [0; 6],
    }))?;
    stream.write_all(encoder.bytes()).await?;
    encoder.clear();
    let mut signed_on = false;
    let mut reference = session << 40;
    loop {
        let count = stream.read(decoder.spare()).await?;
        if count == 0 {
            return Ok(());
        }
        decoder.commit(count);
        if let Some(stall) = stall {
            let at = start.elapsed();
            if at >= stall.after && at < stall.after + stall.length {
                tokio::time::sleep(stall.after + stall.length - at).await;
            }
        }
        while let Some(frame) = decoder.decode()? {
            let answer = match frame.message {
                MessageRef::SignOnRequest(_) if !signed_on => {
                    let request = match frame.message.to_message() {
                        Message::SignOnRequest(r) => r,
                        _ => unreachable!("matched a sign-on request"),
                    };
                    let participant = participants.iter().find(|p| p.id == request.participant);
                    let transcript = SignOnTranscript {
                        switch_id: &switch_id,
                        participant: &request.participant,
                        server_nonce: &server_nonce,
                        client_nonce: &request.client_nonce,
                    };
                    let accepted = participant.filter(|p| {
                        verify_client_proof(
                            &p.key,
                            &transcript,
                            request.protocol_version.min(PROTOCOL_VERSION),
                            &request.proof,
                        )
                    });
                    signed_on = accepted.is_some();
                    Message::SignOnResult(SignOnResult {
                        session_id: session,
                        server_proof: accepted.map_or([0; 32], |p| server_proof(&p.key, &transcript, session)),
                        echo_interval_ms: 30_000,
                        idle_timeout_ms: 90_000,
                        code: if signed_on { 0 } else { ReplyCode::NotAuthorised.value() },
                        // The sink measures the generator, not MACs.
                        frame_mac: 0,
                        reserved: [0; 5],
                    })
                }
                _ if !signed_on => continue,
                MessageRef::PaymentCodeRequest(_) | MessageRef::QrPaymentRequest(_) => {
                    let details = match frame.message.to_message() {
                        Message::PaymentCodeRequest(r) => r.details,
                        Message::QrPaymentRequest(r) => r.details,
                        _ => unreachable!("matched a payment request"),
                    };
                    reference += 1;
                    let answered = Answered { switch_reference: reference, ..Answered::from(&details) };
                    Message::PaymentReply(answered.reply(sink_id, ReplyCode::Approved, Some(reference), 0))
                }
                MessageRef::RefundRequest(request) => {
                    reference += 1;
                    let answered = Answered { switch_reference: reference, ..Answered::from(request) };
                    Message::RefundReply(answered.reply(sink_id, ReplyCode::Approved, None, 0))
                }
                MessageRef::StatusQuery(query) => Message::StatusReply(StatusReply {
                    originator: query.originator,
                    original_originator_transaction_id: query.original_originator_transaction_id,
                    original_switch_reference: query.original_switch_reference.to_native(),
                    code: ReplyCode::Approved.value(),
                    status: codec::TransactionStatus::Approved.value(),
                    ..StatusReply::default()
                }),
                MessageRef::EchoRequest(echo) => Message::EchoReply(codec::Echo {
                    sequence: echo.sequence.to_native(),
                    sent_time_ms: echo.sent_time_ms.to_native(),
                }),
                _ => continue,
            };
            encoder.encode(&answer)?;
        }
        if !encoder.is_empty() {
            stream.write_all(encoder.bytes()).await?;
            encoder.clear();
        }
    }
}
