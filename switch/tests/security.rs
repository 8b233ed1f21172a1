//! Attacks on a running switch, a thousand attempts per class: each is refused, counted,
//! and nothing of it reaches an issuer. The issuers here count every request the switch
//! forwards to them; the attackers speak raw frames where the attack needs it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use codec::signon::{participant_session_macs, sign_on_accepted, sign_on_request};
use codec::{
    FrameDecoder, FrameEncoder, InstitutionId, MAC_SIZE, Message, MessageRef, RejectReason, ReplyCode, SessionMacs,
};
use loadgen::client::Client;
use switch::config::{SwitchConfig, demo_key};
use switch::core::exchange::Routes;
use switch::edge::tcp::{Shared, serve};
use switch::participant::{Directory, SharedKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Attempts per attack class.
const ATTEMPTS: u64 = 1_000;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

struct Switch {
    address: SocketAddr,
    shared: Arc<Shared>,
    /// Requests the switch forwarded to WECHATPAY (codes with prefix 13).
    wechat: Arc<AtomicU64>,
    /// Requests the switch forwarded to UNIONPAY (QR payments).
    unionpay: Arc<AtomicU64>,
}

impl Switch {
    fn forwarded(&self) -> u64 {
        self.wechat.load(Ordering::SeqCst) + self.unionpay.load(Ordering::SeqCst)
    }

    fn rejected(&self, reason: &str) -> u64 {
        metric(&self.shared.metrics.render(), &format!("switch_frames_rejected_total{{reason=\"{reason}\"}}"))
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(name)).map_or(0, |value| value.trim().parse().expect("a count"))
}

/// The embedded default's participants, with `edit` applied: two shards, issuers
/// WECHATPAY and UNIONPAY signed on and counting.
async fn start(edit: impl FnOnce(&mut SwitchConfig)) -> Switch {
    let mut config = SwitchConfig::embedded_default();
    edit(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shared = Arc::new(
        Shared::new(config.session, Directory::new(config.participants))
            .with_exchange(config.exchange, Routes::embedded_default())
            .with_connection_limits(config.connections)
            .with_shards(2),
    );
    tokio::spawn(serve(listener, Arc::clone(&shared), std::future::pending()));
    let wechat = counting_issuer(address, "WECHATPAY").await;
    let unionpay = counting_issuer(address, "UNIONPAY").await;
    Switch { address, shared, wechat, unionpay }
}

/// Signs `participant` on and approves every payment forwarded to it, counting them.
async fn counting_issuer(address: SocketAddr, participant: &str) -> Arc<AtomicU64> {
    let client = connect(address, participant).await;
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    let Client { participant, mut reader, mut writer, .. } = client;
    tokio::spawn(async move {
        while let Ok(message) = reader.next(|m| m.to_message()).await {
            let details = match &message {
                Message::PaymentCodeRequest(request) => request.details.clone(),
                Message::QrPaymentRequest(request) => request.details.clone(),
                _ => continue,
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let reply = common::approval(&details, participant);
            if writer.send(&Message::PaymentReply(reply)).await.is_err() {
                return;
            }
        }
    });
    count
}

async fn connect(address: SocketAddr, participant: &str) -> Client {
    Client::connect(address, id(participant), 1, &demo_key(participant)).await.expect("sign on")
}

/// Payment `n` from `originator` to WECHATPAY: id and payment code unique per `n`.
fn payment(originator: &str, n: u64) -> codec::PaymentCodeRequest {
    let mut request = common::payment_code_request();
    request.details.originator = id(originator);
    request.details.originator_transaction_id = format!("ATTACK-{n}").parse().expect("valid");
    request.payment_code = format!("13{n:016}").parse().expect("valid");
    request
}

async fn next_message(client: &mut Client) -> Message {
    client.reader.next(|m| m.to_message()).await.expect("a message")
}

fn reply_code(message: &Message) -> ReplyCode {
    match message {
        Message::PaymentReply(reply) => ReplyCode::try_from(reply.code).expect("a table code"),
        other => panic!("expected a payment reply, got {:?}", other.kind()),
    }
}

/// Sends `requests` on `client` in batches and returns the reply codes, in order.
async fn exchange_all(client: &mut Client, requests: impl IntoIterator<Item = Message>) -> Vec<ReplyCode> {
    let mut sent = 0;
    for request in requests {
        client.writer.queue(&request).expect("queue");
        sent += 1;
    }
    client.writer.flush().await.expect("send");
    let mut codes = Vec::with_capacity(sent);
    for _ in 0..sent {
        codes.push(reply_code(&next_message(client).await));
    }
    codes
}

/// A participant speaking raw frames: signs on properly, then sends whatever bytes the
/// attack needs.
struct Raw {
    stream: TcpStream,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
}

impl Raw {
    /// Connected, the switch's challenge read, not signed on.
    async fn connect(address: SocketAddr) -> (Self, codec::SignOnChallenge) {
        let stream = TcpStream::connect(address).await.expect("connect");
        let mut raw = Self { stream, decoder: FrameDecoder::default(), encoder: FrameEncoder::default() };
        let Some(Message::SignOnChallenge(challenge)) = raw.read().await else { panic!("no challenge") };
        (raw, challenge)
    }

    async fn sign_on(address: SocketAddr, participant: &str) -> Self {
        let (mut raw, challenge) = Self::connect(address).await;
        let key = demo_key(participant);
        let request = sign_on_request(&challenge, id(participant), 1, &key, [5; 32]);
        raw.send(&Message::SignOnRequest(request.clone())).await;
        let macs = raw
            .read_with(|m| match m {
                MessageRef::SignOnResult(result) => {
                    assert!(sign_on_accepted(&challenge, &request, &key, result), "sign-on refused");
                    participant_session_macs(&challenge, &request, &key, result)
                }
                other => panic!("expected a sign-on result, got {:?}", other.kind()),
            })
            .await
            .expect("a result");
        let macs: SessionMacs = macs.expect("the demo participants use frame MACs");
        raw.decoder.set_mac(Some(macs.to_participant));
        raw.encoder.set_mac(Some(macs.to_switch));
        raw
    }

    /// The bytes `message` takes on this session, signed with the session's next tag.
    fn frame(&mut self, message: &Message) -> Vec<u8> {
        self.encoder.clear();
        self.encoder.encode(message).expect("valid");
        self.encoder.bytes().to_vec()
    }

    async fn send(&mut self, message: &Message) {
        let bytes = self.frame(message);
        self.write(&bytes).await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The switch may already have closed on us; what it answered is read next.
        let _ = self.stream.write_all(bytes).await;
    }

    async fn read(&mut self) -> Option<Message> {
        self.read_with(|m| m.to_message()).await
    }

    /// The next frame, or `None` once the switch closed the connection.
    async fn read_with<R>(&mut self, f: impl FnOnce(MessageRef<'_>) -> R) -> Option<R> {
        loop {
            if self.decoder.buffered() > 0 {
                match self.decoder.decode() {
                    Ok(Some(frame)) => return Some(f(frame.message)),
                    Ok(None) => {}
                    Err(error) => panic!("the switch sent a bad frame: {error}"),
                }
            }
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), self.stream.read(self.decoder.spare()));
            match read.await.expect("the switch answers or closes") {
                Ok(0) | Err(_) => return None,
                Ok(count) => self.decoder.commit(count),
            }
        }
    }

    /// Reads until the switch closes; returns the reject reasons it sent.
    async fn rejects_until_closed(&mut self) -> Vec<RejectReason> {
        let mut reasons = Vec::new();
        while let Some(message) = self.read().await {
            if let Message::Reject(reject) = message {
                reasons.push(RejectReason::try_from(reject.reason).expect("a table reason"));
            }
        }
        reasons
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_originators_are_refused() {
    let switch = start(|_| {}).await;
    let mut acquirer = connect(switch.address, "ACQ0001").await;
    let spoofed = (0..ATTEMPTS).map(|n| Message::PaymentCodeRequest(payment("ACQ0002", n)));
    let codes = exchange_all(&mut acquirer, spoofed).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::NotAuthorised), "{codes:?}");
    assert_eq!(switch.forwarded(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_may_send_only_the_kinds_it_is_allowed() {
    let switch = start(|_| {}).await;
    // A plain acquirer may not originate merchant-presented (QR) payments...
    let mut acquirer = connect(switch.address, "ACQ0001").await;
    let qr = (0..ATTEMPTS).map(|n| {
        let mut request = common::qr_payment_request();
        request.details.originator_transaction_id = format!("QR-{n}").parse().expect("valid");
        Message::QrPaymentRequest(request.into())
    });
    let codes = exchange_all(&mut acquirer, qr).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::NotAuthorised), "{codes:?}");
    // ...and a plain issuer (a wallet) may not present a consumer's payment code.
    let mut wallet = connect(switch.address, "WAL0001").await;
    let codes =
        exchange_all(&mut wallet, (0..ATTEMPTS).map(|n| Message::PaymentCodeRequest(payment("WAL0001", n)))).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::NotAuthorised), "{codes:?}");
    assert_eq!(switch.forwarded(), 0);
    // The same wallet's QR payment goes through: the refusals were the role's.
    let mut allowed = common::qr_payment_request();
    allowed.details.originator = id("WAL0001");
    let codes = exchange_all(&mut wallet, [Message::QrPaymentRequest(allowed.into())]).await;
    assert_eq!(codes, [ReplyCode::Approved]);
    assert_eq!(switch.unionpay.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counterparties_not_admitted_are_refused() {
    let switch = start(|config| {
        // ACQ0002 is admitted to Alipay only.
        config.exchange.counterparties.insert(id("ACQ0002"), vec![id("ALIPAY")]);
    })
    .await;
    let mut acquirer = connect(switch.address, "ACQ0002").await;
    let codes =
        exchange_all(&mut acquirer, (0..ATTEMPTS).map(|n| Message::PaymentCodeRequest(payment("ACQ0002", n)))).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::NotAuthorised), "{codes:?}");
    assert_eq!(switch.forwarded(), 0);
    // ACQ0001 has no list, and WECHATPAY none either: its payment goes through.
    let mut other = connect(switch.address, "ACQ0001").await;
    assert_eq!(
        exchange_all(&mut other, [Message::PaymentCodeRequest(payment("ACQ0001", 0))]).await,
        [ReplyCode::Approved]
    );
    assert_eq!(switch.forwarded(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_transactions_and_reused_payment_codes_are_refused() {
    let switch = start(|_| {}).await;
    let mut acquirer = connect(switch.address, "ACQ0001").await;
    let original = payment("ACQ0001", 0);
    assert_eq!(
        exchange_all(&mut acquirer, [Message::PaymentCodeRequest(original.clone())]).await,
        [ReplyCode::Approved]
    );
    // The same request again and again (properly signed: the participant's own resend).
    let resends = (0..ATTEMPTS).map(|_| Message::PaymentCodeRequest(original.clone()));
    let codes = exchange_all(&mut acquirer, resends).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::Duplicate), "{codes:?}");
    // The same single-use payment code under new transaction ids.
    let reused = (1..=ATTEMPTS).map(|n| {
        let mut request = payment("ACQ0001", n);
        request.payment_code = original.payment_code;
        Message::PaymentCodeRequest(request)
    });
    let codes = exchange_all(&mut acquirer, reused).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::Duplicate), "{codes:?}");
    // Captured requests replayed later: outside the replay window, whatever their id.
    let stale = (ATTEMPTS + 1..=2 * ATTEMPTS).map(|n| {
        let mut request = payment("ACQ0001", n);
        request.details.transaction_time_ms = common::now_ms() - 10 * 60 * 1000;
        Message::PaymentCodeRequest(request)
    });
    let codes = exchange_all(&mut acquirer, stale).await;
    assert!(codes.iter().all(|&c| c == ReplyCode::NotAuthorised), "{codes:?}");
    assert_eq!(switch.forwarded(), 1, "only the original reached the issuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frames_are_refused_on_the_same_session_and_any_other() {
    let switch = start(|_| {}).await;
    let mut captured: Option<Vec<u8>> = None;
    for n in 0..ATTEMPTS {
        let mut raw = Raw::sign_on(switch.address, "ACQ0001").await;
        if n % 2 == 0 {
            // A legitimate payment, then its exact bytes (frame and tag) again on the same
            // session: the tag was for the previous place in the stream.
            let bytes = raw.frame(&Message::PaymentCodeRequest(payment("ACQ0001", n)));
            raw.write(&bytes).await;
            let reply = raw.read().await.expect("a reply");
            assert_eq!(reply_code(&reply), ReplyCode::Approved);
            raw.write(&bytes).await;
            captured = Some(bytes);
        } else {
            // Another session's captured frame as this session's first.
            raw.write(captured.as_ref().expect("captured")).await;
        }
        assert_eq!(raw.rejects_until_closed().await, [RejectReason::BadMac], "attempt {n}");
    }
    assert_eq!(switch.forwarded(), ATTEMPTS / 2, "only the legitimate payments reached the issuer");
    assert_eq!(switch.rejected("BadMac"), ATTEMPTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_with_a_wrong_mac_are_refused() {
    let switch = start(|_| {}).await;
    for n in 0..ATTEMPTS {
        let mut raw = Raw::sign_on(switch.address, "ACQ0001").await;
        let mut bytes = raw.frame(&Message::PaymentCodeRequest(payment("ACQ0001", n)));
        // Alter one bit: of the tag, or of the frame with its checksum made good again
        // (an attacker on the path can always fix a CRC).
        let last = bytes.len() - 1;
        if n % 2 == 0 {
            bytes[last - (n as usize % MAC_SIZE)] ^= 1 << (n % 8);
        } else {
            let amount_at = codec::HEADER_SIZE + 56;
            bytes[amount_at] ^= 1;
            let frame_end = bytes.len() - MAC_SIZE;
            codec::seal_frame(&mut bytes[..frame_end]);
        }
        raw.write(&bytes).await;
        assert_eq!(raw.rejects_until_closed().await, [RejectReason::BadMac], "attempt {n}");
    }
    assert_eq!(switch.forwarded(), 0);
    assert_eq!(switch.rejected("BadMac"), ATTEMPTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_before_sign_on_is_refused() {
    let switch = start(|_| {}).await;
    for n in 0..ATTEMPTS {
        let (mut raw, _) = Raw::connect(switch.address).await;
        raw.send(&Message::PaymentCodeRequest(payment("ACQ0001", n))).await;
        assert_eq!(raw.rejects_until_closed().await, [RejectReason::NotSignedOn], "attempt {n}");
    }
    assert_eq!(switch.forwarded(), 0);
    assert_eq!(switch.rejected("NotSignedOn"), ATTEMPTS);
}

/// PROTOCOL.md section 7 rule 2 for malformed frames too: before sign-on, a frame of an
/// unknown kind, of the wrong length for its kind, or with an invalid field (a sign-on
/// request among them) gets a `Reject` `NotSignedOn` and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_before_sign_on_are_refused_and_closed() {
    let switch = start(|_| {}).await;
    let echo = Message::EchoRequest(codec::Echo { sequence: 1, sent_time_ms: common::now_ms() });
    for n in 0..ATTEMPTS {
        let (mut raw, challenge) = Raw::connect(switch.address).await;
        let mut frame = raw.frame(&echo);
        match n % 3 {
            // A kind byte that is in no table.
            0 => frame[11] = 0x55,
            // A body of another kind's length: the echo's 16 bytes announced as a sign-on.
            1 => frame[11] = codec::MessageKind::SignOnRequest as u8,
            // A sign-on request with a non-zero reserved byte.
            _ => {
                let request = sign_on_request(&challenge, id("ACQ0001"), 1, &demo_key("ACQ0001"), [5; 32]);
                frame = raw.frame(&Message::SignOnRequest(request));
                let last = frame.len() - 1;
                frame[last] = 1;
            }
        }
        codec::frame::seal_frame(&mut frame);
        raw.write(&frame).await;
        assert_eq!(raw.rejects_until_closed().await, [RejectReason::NotSignedOn], "attempt {n}");
    }
    assert_eq!(switch.forwarded(), 0);
    assert_eq!(switch.rejected("NotSignedOn"), ATTEMPTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_on_with_a_wrong_unknown_or_expired_key_is_refused() {
    let switch = start(|config| {
        // A thousand failures from one address: throttled, but by a millisecond at most
        // here (the throttle has its own test below).
        config.connections.sign_on_backoff_ms = 1;
        config.connections.sign_on_backoff_max_ms = 1;
        // ACQ0002 is rotating: key 1 ended a minute ago, key 2 is current.
        let acquirer = config.participants.iter_mut().find(|p| p.id == id("ACQ0002")).expect("demo participant");
        acquirer.keys[0].not_after_unix_ms = Some(common::now_ms() - 60_000);
        acquirer.keys.push(SharedKey::new(2, b"the-new-key-of-ACQ0002".to_vec()));
    })
    .await;
    for n in 0..ATTEMPTS {
        let (participant, key_id, key): (&str, u16, Vec<u8>) = match n % 4 {
            0 => ("ACQ0001", 1, b"a guessed key".to_vec()),
            1 => ("NOSUCHBANK", 1, demo_key("NOSUCHBANK")),
            2 => ("ACQ0002", 1, demo_key("ACQ0002")),
            _ => ("ACQ0001", 9, demo_key("ACQ0001")),
        };
        let refused = Client::connect(switch.address, id(participant), key_id, &key).await;
        assert!(refused.is_err(), "attempt {n} ({participant}, key {key_id}) was let in");
    }
    let metrics = switch.shared.metrics.render();
    assert_eq!(metric(&metrics, "switch_sign_on_total{result=\"refused\"}"), ATTEMPTS);
    // The overlap's new key works.
    Client::connect(switch.address, id("ACQ0002"), 2, b"the-new-key-of-ACQ0002").await.expect("the current key");
}

/// Failed sign-ons are throttled: from one source, after three free failures each attempt
/// waits its turn, twice as long each time (up to the cap); parallel attempts take turns;
/// honest participants elsewhere, and the attacked participant with its right key, still
/// sign on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ons_are_throttled_per_source_and_participant() {
    let switch = start(|config| {
        config.connections.sign_on_failures_free = 3;
        config.connections.sign_on_backoff_ms = 8;
        config.connections.sign_on_backoff_max_ms = 64;
    })
    .await;
    let attacker: std::net::IpAddr = [127, 0, 0, 21].into();
    let guess = |n: u64| format!("guessed key number {n:06}").into_bytes();
    let started = std::time::Instant::now();
    for n in 0..12 {
        let refused = Client::connect_from(switch.address, attacker, id("ACQ0001"), 1, &guess(n)).await;
        assert!(refused.is_err(), "guess {n} was let in");
    }
    // Waits after the three free failures: 8, 16, 32, then 64 ms each: 440 ms at least.
    let elapsed = started.elapsed();
    assert!(elapsed >= std::time::Duration::from_millis(430), "12 failures in {elapsed:?}: not throttled");
    // Ten in parallel from the same source take turns: 64 ms apart.
    let started = std::time::Instant::now();
    let parallel: Vec<_> = (0..10)
        .map(|n| {
            let (address, key) = (switch.address, guess(100 + n));
            tokio::spawn(async move { Client::connect_from(address, attacker, id("ACQ0001"), 1, &key).await })
        })
        .collect();
    for attempt in parallel {
        let attempt = attempt.await.expect("task");
        assert!(attempt.is_err());
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(600), "parallel guesses in {:?}", started.elapsed());
    let metrics = switch.shared.metrics.render();
    assert!(metric(&metrics, "switch_sign_on_throttled_total") >= 19, "{metrics}");
    // Another participant from another address is not slowed...
    let started = std::time::Instant::now();
    let honest: std::net::IpAddr = [127, 0, 0, 22].into();
    Client::connect_from(switch.address, honest, id("ACQ0002"), 1, &demo_key("ACQ0002")).await.expect("honest");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "honest sign-on took {:?}", started.elapsed());
    // ...and the attacked participant, with its key, from its own address, gets in within
    // its sign-on deadline (its own failures delay it by at most a second).
    Client::connect_from(switch.address, honest, id("ACQ0001"), 1, &demo_key("ACQ0001")).await.expect("the owner");
}
