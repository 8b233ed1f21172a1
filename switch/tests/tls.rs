//! Mutual TLS on participant links, against a running switch: certificates from rcgen, a
//! client from tokio-rustls. A thousand attempts each with a certificate from an unknown CA
//! and with an expired one, all refused before any frame; a revoked certificate refused
//! once a new CRL is loaded at run time; a certificate naming another participant cannot
//! sign on as this one; plaintext refused on a TLS listener.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use codec::signon::{participant_session_macs, sign_on_accepted, sign_on_request};
use codec::{FrameDecoder, FrameEncoder, InstitutionId, Message, MessageRef, ReplyCode};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    date_time_ymd,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switch::config::{SwitchConfig, demo_key};
use switch::edge::tcp::{Shared, serve};
use switch::edge::tls::{Tls, TlsSettings};
use switch::participant::Directory;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const ATTEMPTS: usize = 1_000;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

/// A CA and what it issued, as PEM and as rustls wants them.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
    serial: u64,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { dir: dir.to_path_buf(), ca }
    }

    /// A leaf for `dns_name`, valid from `from` to `until` (years), for client or server auth.
    fn issue(&self, dns_name: &str, serial: u64, from: i32, until: i32, server: bool) -> Leaf {
        let mut params = CertificateParams::new(vec![dns_name.to_string()]).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(until, 1, 1);
        params.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("PKCS#8"),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }

    /// Writes this CA's CRL revoking `serials` to `crl.pem`.
    fn write_crl(&self, serials: &[u64]) -> PathBuf {
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(serials.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: date_time_ymd(2026, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .expect("CRL");
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, crl.pem().expect("PEM")).expect("write CRL");
        path
    }
}

struct Running {
    address: SocketAddr,
    shared: Arc<Shared>,
    pki: Pki,
}

/// A switch requiring mutual TLS: its certificate and the participant CA from `pki`,
/// revoking nothing yet; WECHATPAY signed on over TLS and approving.
async fn start(name: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("switch-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = Pki::new(&dir, "Participant CA");
    let server = pki.issue("localhost", 1, 2020, 2099, true);
    std::fs::write(dir.join("switch.crt"), &server.cert_pem).expect("write");
    std::fs::write(dir.join("switch.key"), &server.key_pem).expect("write");
    std::fs::write(dir.join("ca.crt"), pki.ca.pem()).expect("write");
    let crl = pki.write_crl(&[]);
    let tls = Tls::load(TlsSettings {
        cert_file: dir.join("switch.crt"),
        key_file: dir.join("switch.key"),
        client_ca_file: dir.join("ca.crt"),
        crl_files: vec![crl],
    })
    .expect("TLS material");
    let config = SwitchConfig::embedded_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shared = Arc::new(Shared::new(config.session, Directory::new(config.participants)).with_tls(tls));
    tokio::spawn(serve(listener, Arc::clone(&shared), std::future::pending()));
    let running = Running { address, shared, pki };
    let wechat = running.pki.issue("wechatpay", 2, 2020, 2099, false);
    let issuer = connect(&running, &wechat).await.expect("TLS");
    let issuer = sign_on(issuer, "WECHATPAY").await.expect("the issuer signs on");
    tokio::spawn(approve_everything(issuer));
    running
}

type Link = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection presenting `leaf`, trusting the participant CA for the switch, and the
/// first bytes it carried (the challenge's header).
async fn connect(running: &Running, leaf: &Leaf) -> std::io::Result<(Link, [u8; 16])> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(running.pki.ca.der().clone()).expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
        .expect("client certificate");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(running.address).await?;
    let mut stream = connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await?;
    // With TLS 1.3 the server checks the client's certificate after the client finished:
    // a refusal shows as the first read failing or ending.
    let mut first = [0u8; 16];
    stream.read_exact(&mut first).await?;
    Ok((stream, first))
}

/// A signed-on participant over any stream.
struct Session<S> {
    stream: S,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn read(&mut self) -> Option<Message> {
        loop {
            if self.decoder.buffered() > 0 {
                match self.decoder.decode() {
                    Ok(Some(frame)) => return Some(frame.message.to_message()),
                    Ok(None) => {}
                    Err(error) => panic!("bad frame from the switch: {error}"),
                }
            }
            match self.stream.read(self.decoder.spare()).await {
                Ok(0) | Err(_) => return None,
                Ok(count) => self.decoder.commit(count),
            }
        }
    }

    async fn send(&mut self, message: &Message) {
        self.encoder.clear();
        self.encoder.encode(message).expect("valid");
        self.stream.write_all(self.encoder.bytes()).await.expect("write");
        self.stream.flush().await.expect("flush");
    }
}

/// Signs `participant` on over `stream` with its demo key; `Err` with the refusal.
async fn sign_on((stream, first): (Link, [u8; 16]), participant: &str) -> Result<Session<Link>, String> {
    let mut session = Session { stream, decoder: FrameDecoder::default(), encoder: FrameEncoder::default() };
    session.decoder.feed(&first);
    let Some(Message::SignOnChallenge(challenge)) = session.read().await else { return Err("no challenge".into()) };
    let key = demo_key(participant);
    let request = sign_on_request(&challenge, id(participant), 1, &key, [9; 32]);
    session.send(&Message::SignOnRequest(request.clone())).await;
    let macs;
    loop {
        if session.decoder.buffered() > 0
            && let Ok(Some(frame)) = session.decoder.decode()
        {
            let MessageRef::SignOnResult(result) = frame.message else { return Err("no result".into()) };
            if !sign_on_accepted(&challenge, &request, &key, result) {
                return Err(format!("sign-on refused with code {}", result.code.to_native()));
            }
            macs = participant_session_macs(&challenge, &request, &key, result);
            break;
        }
        match session.stream.read(session.decoder.spare()).await {
            Ok(0) | Err(_) => return Err("closed".into()),
            Ok(count) => session.decoder.commit(count),
        }
    }
    let macs = macs.expect("frame MACs");
    session.decoder.set_mac(Some(macs.to_participant));
    session.encoder.set_mac(Some(macs.to_switch));
    Ok(session)
}

async fn approve_everything(mut issuer: Session<Link>) {
    while let Some(message) = issuer.read().await {
        let Message::PaymentCodeRequest(request) = message else { continue };
        let details = request.details;
        let reply = common::approval(&details, id("WECHATPAY"));
        issuer.send(&Message::PaymentReply(reply)).await;
    }
}

fn refused(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("switch_tls_handshakes_total{result=\"refused\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn pay(session: &mut Session<Link>, n: u64) -> ReplyCode {
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = format!("TLS-{n}").parse().expect("valid");
    request.payment_code = format!("13{n:016}").parse().expect("valid");
    session.send(&Message::PaymentCodeRequest(request)).await;
    match session.read().await {
        Some(Message::PaymentReply(reply)) => ReplyCode::try_from(reply.code).expect("code"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_with_a_valid_certificate_pays_over_tls() {
    let running = start("valid").await;
    let leaf = running.pki.issue("acq0001", 10, 2020, 2099, false);
    let mut acquirer = sign_on(connect(&running, &leaf).await.expect("TLS"), "ACQ0001").await.expect("sign on");
    assert_eq!(pay(&mut acquirer, 1).await, ReplyCode::Approved);
    // The same certificate cannot sign on as another participant, whatever key it proves.
    let link = connect(&running, &leaf).await.expect("TLS");
    let error = sign_on(link, "ACQ0002").await.err().expect("refused");
    assert!(error.contains("code 106"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_and_expired_certificates_are_refused() {
    let running = start("refused").await;
    let stranger = Pki::new(&running.pki.dir, "Somebody else's CA");
    let unknown = stranger.issue("acq0001", 20, 2020, 2099, false);
    let expired = running.pki.issue("acq0001", 21, 2020, 2025, false);
    for n in 0..ATTEMPTS {
        let leaf = if n % 2 == 0 { &unknown } else { &expired };
        assert!(connect(&running, leaf).await.is_err(), "attempt {n} got a TLS session");
    }
    // Each refusal is counted as the server's side of the handshake ends, a moment after
    // the client saw it: wait for the last.
    let mut count = 0;
    for _ in 0..100 {
        count = refused(&running.shared.metrics.render());
        if count >= ATTEMPTS as u64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count, ATTEMPTS as u64);
    // A plain TCP client on the TLS listener never reaches the protocol.
    for _ in 0..10 {
        let mut plain = TcpStream::connect(running.address).await.expect("connect");
        let _ = plain.write_all(&[0u8; 64]).await;
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(!answer.windows(2).any(|w| w == b"CS"), "a native frame reached a plaintext client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_at_run_time_is_refused_after_the_crl_reload() {
    let running = start("revoked").await;
    let leaf = running.pki.issue("acq0001", 30, 2020, 2099, false);
    let mut before = sign_on(connect(&running, &leaf).await.expect("TLS"), "ACQ0001").await.expect("sign on");
    assert_eq!(pay(&mut before, 1).await, ReplyCode::Approved);
    running.pki.write_crl(&[leaf.serial]);
    running.shared.tls.as_ref().expect("TLS").reload().expect("reload");
    for n in 0..ATTEMPTS {
        assert!(connect(&running, &leaf).await.is_err(), "attempt {n}: a revoked certificate got in");
    }
    // Others are unaffected.
    let other = running.pki.issue("acq0001", 31, 2020, 2099, false);
    let mut after = sign_on(connect(&running, &other).await.expect("TLS"), "ACQ0001").await.expect("sign on");
    assert_eq!(pay(&mut after, 2).await, ReplyCode::Approved);
    // A reload that fails (a damaged CRL) keeps the running configuration.
    std::fs::write(running.pki.dir.join("crl.pem"), "not a CRL").expect("write");
    assert!(running.shared.tls.as_ref().expect("TLS").reload().is_err());
    assert!(connect(&running, &leaf).await.is_err(), "still revoked");
}

/// The shipped example, end to end: `switch run --config deploy/switch.example.toml` (mutual
/// TLS, the example PKI, frame MACs including HMAC-SM3 for UnionPay) driven by the load
/// generator presenting each participant's certificate from `deploy/tls`.
#[test]
fn the_example_configuration_serves_the_load_generator_over_tls() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = std::env::temp_dir().join(format!("switch-tls-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let (listen, admin) = (free(), free());
    let mut switch = std::process::Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["run", "--config"])
        .arg(deploy.join("switch.example.toml"))
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string(), "--data-dir"])
        .arg(dir.join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("switch");
    for _ in 0..200 {
        if std::net::TcpStream::connect(listen).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let summary = dir.join("summary.json");
    let code = loadgen::cli::main_with([
        "loadgen",
        "run",
        "--target",
        &listen.to_string(),
        "--participants",
        deploy.join("switch.example.toml").to_str().expect("utf-8"),
        "--tls-dir",
        deploy.join("tls").to_str().expect("utf-8"),
        "--rate",
        "300",
        "--duration",
        "1s",
        "--quiet",
        "--summary-json",
        summary.to_str().expect("utf-8"),
    ]);
    let _ = switch.kill();
    let _ = switch.wait();
    // Late sends on a shared box make a run invalid (2), not wrong.
    assert!(code == 0 || code == 2, "loadgen exited {code}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("JSON");
    assert_eq!(summary["missing"], 0, "{summary}");
    assert!(summary["replies"]["Approved"].as_u64().unwrap_or(0) > 100, "{summary}");
    assert!(summary["replies"]["NotAuthorised"].is_null(), "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}
