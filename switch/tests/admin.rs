//! The admin port on loopback: liveness, readiness through a drain, and metrics that count
//! what participants did.

mod common;

use std::sync::Arc;
use std::time::Duration;

use codec::{InstitutionId, Message, MessageRef};
use loadgen::client::Client;
use switch::access::{AdminAccess, AdminRole, AdminToken};
use switch::config::{SwitchConfig, demo_key};
use switch::edge::admin::serve_admin;
use switch::edge::tcp::{Shared, serve};
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
    assert_eq!(summary.len(), 5, "{log}");
    assert_eq!(summary[4].0, "oncall", "{log}");
    assert!(summary[3] == ("viewer".into(), "refused: role read".into()), "{log}");
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
