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
use switch::participant::Directory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("admin port");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: switch\r\n\r\n").as_bytes()).await.expect("write");
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
    let shared = Arc::new(Shared::new(config.session, Directory::new(config.participants)));
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
    let (status, document) = get(admin_address, "/participants").await;
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
