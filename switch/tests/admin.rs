//! The admin port on loopback: liveness, readiness through a drain, and metrics that count
//! what participants did.

mod common;

use std::sync::Arc;
use std::time::Duration;

use codec::{InstitutionId, Message, MessageRef};
use loadgen::client::Client;
use switch::config::{SwitchConfig, demo_key};
use switch::edge::admin::serve_admin;
use switch::edge::tcp::{Shared, serve};
use switch::ops::access::{AdminAccess, AdminRole, AdminToken};
use switch::participant::Directory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    call(address, "GET", path, None).await
}

async fn call(address: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("admin port");
    let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: switch\r\n{authorization}Content-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn liveness_readiness_and_metrics() {
    let mut config = SwitchConfig::embedded_default();
    config.session.drain_timeout_ms = 1_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_address = admin.local_addr().expect("address");
    let audit = std::env::temp_dir().join(format!("switch-admin-audit-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&audit);
    let access = AdminAccess::new(vec![
        AdminToken::new("viewer", AdminRole::Read, "read-token-1"),
        AdminToken::new("oncall", AdminRole::Operator, "operator-token-1"),
    ])
    .with_audit_log(&audit)
    .expect("audit log");
    let shared = Arc::new(Shared::new(config.session, Directory::new(config.participants)).with_admin(access));
    tokio::spawn(serve_admin(admin, Arc::clone(&shared), std::future::pending()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, Arc::clone(&shared), async {
        let _ = stopped.await;
    }));

    assert_eq!(get(admin_address, "/livez").await, (200, "ok\n".into()));
    // Ready once the shards are up (a moment: no journal here).
    let mut ready = get(admin_address, "/readyz").await;
    for _ in 0..100 {
        if ready.0 == 200 {
            break;
        }
        assert_eq!(ready, (503, "starting: recovering the journal\n".into()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        ready = get(admin_address, "/readyz").await;
    }
    assert_eq!(ready, (200, "ready\n".into()));
    assert_eq!(get(admin_address, "/nope").await.0, 404);

    let id = InstitutionId::new("ACQ0001").expect("valid");
    let mut client = Client::connect(address, id, 1, &demo_key("ACQ0001")).await.expect("sign on");
    assert!(Client::connect(address, id, 1, b"wrong key").await.is_err());
    client.writer.send(&Message::PaymentCodeRequest(common::payment_code_request())).await.expect("send");
    client.reader.next(|m| assert!(matches!(m, MessageRef::PaymentReply(_)))).await.expect("reply");
    let mut garbage = tokio::net::TcpStream::connect(address).await.expect("connect");
    garbage.write_all(&[0u8; 16]).await.expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), garbage.read_to_end(&mut sink)).await;

    // A connection is counted closed just after its socket closes, on its shard's thread:
    // poll briefly rather than race it.
    let mut metrics = String::new();
    for _ in 0..50 {
        let status;
        (status, metrics) = get(admin_address, "/metrics").await;
        assert_eq!(status, 200);
        if metrics.contains("switch_sessions_closed_total{reason=\"FramingError\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for expected in [
        "switch_sign_on_total{result=\"approved\"} 1",
        "switch_sign_on_total{result=\"refused\"} 1",
        "switch_replies_total{code=\"DestinationUnavailable\"} 1",
        "switch_frames_rejected_total{reason=\"BadMagic\"} 1",
        "switch_sessions_signed_on 1",
        "switch_sessions_closed_total{reason=\"SignOnRefused\"} 1",
        "switch_sessions_closed_total{reason=\"FramingError\"} 1",
        "switch_draining 0",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in\n{metrics}");
    }

    // Participant and link state: the acquirer's one session, the issuers' none; its
    // request was refused at once, so nothing is left in flight.
    assert_eq!(get(admin_address, "/participants").await.0, 401, "no token");
    assert_eq!(call(admin_address, "GET", "/participants", Some("guessed")).await.0, 401);
    let (status, document) = call(admin_address, "GET", "/participants", Some("read-token-1")).await;
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&document).expect("JSON");
    let find = |id: &str| {
        document["participants"].as_array().expect("array").iter().find(|p| p["id"] == id).cloned().expect("listed")
    };
    let acquirer = find("ACQ0001");
    assert_eq!(acquirer["sessions"].as_array().map(Vec::len), Some(1), "{acquirer}");
    assert_eq!(acquirer["sessions"][0]["shard"], 0);
    assert_eq!(acquirer["in_flight_originating"], 0);
    assert_eq!(find("WECHATPAY")["sessions"].as_array().map(Vec::len), Some(0));
    assert_eq!(find("WECHATPAY")["roles"], serde_json::json!(["issuer", "acquirer"]));

    // Changing state takes the operator role; every attempt is audited, no token logged.
    assert_eq!(call(admin_address, "POST", "/clearing/close", None).await.0, 401);
    assert_eq!(call(admin_address, "POST", "/clearing/close", Some("read-token-1")).await.0, 403);
    let (status, body) = call(admin_address, "POST", "/clearing/close", Some("operator-token-1")).await;
    assert_eq!(status, 409, "no journal here to cut: {body}");
    let log = std::fs::read_to_string(&audit).expect("audit log");
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let summary: Vec<(String, String)> = lines
        .iter()
        .map(|l| (l["who"].as_str().unwrap_or("-").to_string(), l["outcome"].as_str().expect("outcome").to_string()))
        .collect();
    // The two refusals of GET /participants without a known token, from one address, are
    // one line so far (the second is counted, and written when the interval ends).
    assert_eq!(summary.len(), 4, "{log}");
    assert_eq!(summary[3].0, "oncall", "{log}");
    assert!(summary[2] == ("viewer".into(), "refused: role read".into()), "{log}");
    assert!(lines.iter().all(|l| l["time"].is_string() && l["peer"].is_string() && l["action"].is_string()));
    assert!(!log.contains("token-1"), "tokens never reach the audit log");

    // Draining: not ready, still live; the silent session holds the drain open for 1 s.
    stop.send(()).expect("running");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(admin_address, "/readyz").await, (503, "draining\n".into()));
    assert_eq!(get(admin_address, "/livez").await.0, 200);
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("drained").expect("serve").expect("no journal");
    let (_, metrics) = get(admin_address, "/metrics").await;
    assert!(metrics.contains("switch_connections_open 0"), "{metrics}");
    assert!(metrics.contains("switch_sessions_signed_on 0"), "{metrics}");
    assert!(metrics.contains("switch_sessions_closed_total{reason=\"DrainDeadline\"} 1"), "{metrics}");
    drop(client);
}

/// Starts a 2-shard switch with a journal in `data_dir` and an admin port; returns the
/// participant and admin addresses and a stopper.
async fn start_with_journal(
    data_dir: &std::path::Path,
    audit: &std::path::Path,
) -> (std::net::SocketAddr, std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut config = SwitchConfig::embedded_default();
    config.session.drain_timeout_ms = 500;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_address = admin.local_addr().expect("address");
    let access = AdminAccess::new(vec![
        AdminToken::new("viewer", AdminRole::Read, "read-token-2"),
        AdminToken::new("onboarding-desk", AdminRole::Operator, "operator-token-2"),
    ])
    .with_audit_log(audit)
    .expect("audit log");
    let shared = Arc::new(
        Shared::new(config.session, Directory::new(config.participants))
            .with_admin(access)
            .with_shards(2)
            .with_journal(switch::durability::journal::JournalSettings {
                data_dir: data_dir.to_path_buf(),
                policy: switch::durability::journal::SyncPolicy::Always,
                segment_size: switch::durability::journal::SEGMENT_SIZE_MAX,
                retain_windows: 0,
                restart_every: switch::durability::journal::RESTART_EVERY_DEFAULT,
                damage: switch::durability::journal::Damage::Refuse,
                io_uring: false,
                code_key: None,
            }),
    );
    let admin_task = tokio::spawn(serve_admin(admin, Arc::clone(&shared), std::future::pending()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        serve(listener, shared, async {
            let _ = stopped.await;
        })
        .await
        .expect("serves");
        admin_task.abort();
    });
    for _ in 0..500 {
        if get(admin_address, "/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (address, admin_address, stop, served)
}

fn status_of(document: &str, participant: &str) -> String {
    let document: serde_json::Value = serde_json::from_str(document).expect("json");
    let participants = document["participants"].as_array().expect("participants");
    let view = participants.iter().find(|p| p["id"] == participant).expect("listed");
    view["status"].as_str().expect("status").to_string()
}

/// Signs `id` on and answers every request it receives with an approval.
async fn issuer(address: std::net::SocketAddr, id: &str) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    let participant = InstitutionId::new(id).expect("valid");
    let client = Client::connect(address, participant, 1, &demo_key(id)).await.expect("sign on");
    tokio::spawn(loadgen::issuer::run_issuer(client, loadgen::responder::Behaviour::default()))
}

/// The reply code ACQ0001 gets for a payment with `code` (13...: WeChat Pay; 62...: UnionPay).
async fn pay(address: std::net::SocketAddr, code: String, id_text: &str) -> u16 {
    let acquirer = InstitutionId::new("ACQ0001").expect("valid");
    let mut client = Client::connect(address, acquirer, 1, &demo_key("ACQ0001")).await.expect("sign on");
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = codec::TransactionId::new(id_text).expect("valid");
    request.payment_code = codec::PaymentCode::new(&code).expect("valid");
    client.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
    common::next_payment_reply(&mut client).await.code
}

/// Single-use payment codes: WeChat Pay's (18 digits from 13) and UnionPay's (19 from 62).
fn wechat_code(n: u32) -> String {
    format!("1345678901234{n:05}")
}

fn unionpay_code(n: u32) -> String {
    format!("62123456789012{n:05}")
}
const APPROVED: u16 = 0;
const UNAVAILABLE: u16 = 102;

#[tokio::test]
async fn onboarding_changes_gate_traffic_are_audited_and_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("switch-onboarding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let audit = dir.join("audit.log");
    std::fs::create_dir_all(&dir).expect("dir");
    let (address, admin, stop, served) = start_with_journal(&dir.join("data"), &audit).await;
    let operator = Some("operator-token-2");
    let post = |path: &'static str, token| call(admin, "POST", path, token);
    let (_wechat, _unionpay) = (issuer(address, "WECHATPAY").await, issuer(address, "UNIONPAY").await);
    assert_eq!(pay(address, wechat_code(1), "OB-0").await, APPROVED);

    // WeChat Pay is suspended: traffic to it is refused at once, on every shard.
    assert_eq!(post("/participants/WECHATPAY/state/suspended", Some("read-token-2")).await.0, 403);
    let (status, body) = post("/participants/WECHATPAY/state/suspended", operator).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""from":"live""#) && body.contains(r#""to":"suspended""#), "{body}");
    let (_, document) = call(admin, "GET", "/participants", Some("read-token-2")).await;
    assert_eq!(status_of(&document, "WECHATPAY"), "suspended");
    for n in 0..4 {
        assert_eq!(pay(address, wechat_code(10 + n), &format!("OB-S-{n}")).await, UNAVAILABLE);
    }
    // It may only go back where it was; states it cannot reach are refused and said why.
    let (status, body) = post("/participants/WECHATPAY/state/joint_testing", operator).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("it may only go back to live"), "{body}");
    assert_eq!(post("/participants/WECHATPAY/state/live", operator).await.0, 200);
    assert_eq!(pay(address, wechat_code(2), "OB-1").await, APPROVED);
    assert_eq!(post("/participants/NOBODY/state/live", operator).await.0, 404);
    assert_eq!(post("/participants/WECHATPAY/state/bogus", operator).await.0, 400);
    // UnionPay ends suspended; so does this switch.
    assert_eq!(post("/participants/UNIONPAY/state/suspended", operator).await.0, 200);
    let _ = stop.send(());
    served.await.expect("stopped");

    // Journaled: a new start on the same data directory has the same states.
    let (address, admin, stop, served) = start_with_journal(&dir.join("data"), &audit).await;
    let (_, document) = call(admin, "GET", "/participants", Some("read-token-2")).await;
    assert_eq!(status_of(&document, "UNIONPAY"), "suspended");
    assert_eq!(status_of(&document, "WECHATPAY"), "live");
    let (_wechat, _unionpay) = (issuer(address, "WECHATPAY").await, issuer(address, "UNIONPAY").await);
    assert_eq!(pay(address, wechat_code(3), "OB-2").await, APPROVED);
    for n in 0..4 {
        assert_eq!(pay(address, unionpay_code(20 + n), &format!("OB-U-{n}")).await, UNAVAILABLE);
    }
    let _ = stop.send(());
    served.await.expect("stopped");

    // Every change and every refusal is in the audit log, with who made it.
    let log = std::fs::read_to_string(&audit).expect("audit log");
    for expected in [
        "WECHATPAY live -> suspended",
        "WECHATPAY suspended -> live",
        "UNIONPAY live -> suspended",
        "refused: WECHATPAY is suspended: it cannot become joint_testing",
        "refused: unknown participant",
        "refused: role read",
    ] {
        assert!(log.contains(expected), "audit log lacks {expected:?}:\n{log}");
    }
    assert!(log.contains("onboarding-desk"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client without a token cannot fill the disk through the audit log: its refusals are
/// aggregated per source and action (the first written at once, the rest counted and
/// written once per interval), while attributable refusals are still written one by one.
#[tokio::test]
async fn unauthenticated_refusals_cannot_fill_the_disk() {
    let config = SwitchConfig::embedded_default();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_address = admin.local_addr().expect("address");
    let dir = std::env::temp_dir().join(format!("switch-admin-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let audit = dir.join("audit.log");
    let log = switch::ops::audit::AuditLog::open(&audit, switch::ops::audit::MAX_BYTES_DEFAULT)
        .expect("audit log")
        .with_refusal_interval(Duration::from_millis(200));
    let access = AdminAccess::new(vec![AdminToken::new("viewer", AdminRole::Read, "read-token-3")]).with_audit(log);
    let shared = Arc::new(Shared::new(config.session, Directory::new(config.participants)).with_admin(access));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(serve_admin(admin, Arc::clone(&shared), async {
        let _ = stopped.await;
    }));
    const FLOOD: u64 = 2_000;
    for n in 0..FLOOD {
        let token = (n % 2 == 0).then_some("not-a-token");
        assert_eq!(call(admin_address, "GET", "/participants", token).await.0, 401);
    }
    // Attributable refusals are each a line.
    for _ in 0..3 {
        assert_eq!(call(admin_address, "POST", "/clearing/close", Some("read-token-3")).await.0, 403);
    }
    let _ = stop.send(());
    admin_task.await.expect("stopped");
    let text = std::fs::read_to_string(&audit).expect("audit log");
    assert!(text.len() < 4_096, "{FLOOD} refusals took {} bytes of audit log:\n{text}", text.len());
    let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).expect("json")).collect();
    let counted: u64 = lines
        .iter()
        .filter(|line| line["who"].is_null())
        .map(|line| line.get("count").and_then(serde_json::Value::as_u64).unwrap_or(1))
        .sum();
    assert_eq!(counted, FLOOD, "every refusal is counted:\n{text}");
    assert_eq!(text.matches("refused: role read").count(), 3, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
