//! What an attacker must not be able to take from honest participants and operators: the
//! switch runs under a low file-descriptor limit (`ulimit -n 512`), so the limits bite in
//! seconds. Connections that never sign on are bounded per source address and in all,
//! cost little memory, and the oldest of them gives way to a new connection; the admin
//! port and an honest sign-on keep working throughout; a participant's sessions are
//! capped.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use codec::InstitutionId;
use common::{Process, free_port};
use loadgen::client::Client;
use switch::config::demo_key;

/// The switch's file-descriptor limit in this test.
const FD_LIMIT: usize = 512;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `switch run` on `config` under `ulimit -n FD_LIMIT`, its log in `dir`.
fn start(config: &Path, dir: &Path) -> Process {
    let log = std::fs::File::create(dir.join("switch.log")).expect("log");
    Process(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" run --shards 2 --config \"$1\""))
            .arg(env!("CARGO_BIN_EXE_switch"))
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sh runs"),
    )
}

/// The switch's resident memory (kB), from `/proc`.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the switch runs");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
}

/// Opens `count` TCP connections from `source` that never sign on; those the switch still
/// holds open are returned (a refused one is closed at once: a read sees its end).
async fn idle_connections(address: SocketAddr, source: IpAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let Ok(stream) = loadgen::client::tcp_from(address, source).await else { continue };
        held.push(stream);
    }
    held
}

/// Of `streams`, those the switch has not closed (after a moment to close them).
async fn still_open(streams: Vec<tokio::net::TcpStream>) -> Vec<tokio::net::TcpStream> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut open = Vec::new();
    for stream in streams {
        // The challenge (72 bytes) may be waiting; an end of stream or a reset means closed.
        let mut buffer = [0u8; 128];
        let closed = loop {
            match stream.try_read(&mut buffer) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if !closed {
            open.push(stream);
        }
    }
    open
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(name)).map_or(0, |value| value.trim().parse().unwrap_or(0))
}

async fn sign_on_from(address: SocketAddr, source: IpAddr, id: &str) -> anyhow::Result<Client> {
    let participant = InstitutionId::new(id).expect("valid");
    tokio::time::timeout(Duration::from_secs(5), Client::connect_from(address, source, participant, 1, &demo_key(id)))
        .await
        .map_err(|_| anyhow::anyhow!("sign-on as {id} did not finish in 5 s"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_locks_out_neither_honest_participants_nor_operators() {
    let dir = std::env::temp_dir().join(format!("switch-resources-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, admin_port) = (free_port(), free_port());
    let mut text = format!(
        "[switch]\nid = \"CSWITCH\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nplaintext = true\n\n\
         [journal]\ndata_dir = \"data\"\n\n\
         [connections]\nsessions_per_participant_max = 3\n\n"
    );
    text.push_str(&common::demo_participant("ACQ0001", "\"acquirer\"", ""));
    text.push_str(&common::demo_participant("WECHATPAY", "\"issuer\", \"acquirer\"", ""));
    let config = dir.join("switch.toml");
    std::fs::write(&config, text).expect("config");
    let switch = start(&config, &dir);
    let pid = switch.0.id();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let ready = Instant::now() + Duration::from_secs(30);
    while common::http(admin, "GET", "/readyz", None).is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < ready, "the switch did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What a flood costs once (the shards' allocator heaps, the acceptor's buffers) is not
    // per connection: the same flood from another address before the baseline, its
    // connections held open (so their memory cannot be reused by the next).
    let warm = still_open(idle_connections(address, loopback(9), FD_LIMIT + 100).await).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready_kib = resident_kib(pid);

    // One source opens more connections than the switch has descriptors, and never signs
    // on: the switch holds only its share of them, each costing little.
    let flood = idle_connections(address, loopback(2), FD_LIMIT + 100).await;
    let held = still_open(flood).await;
    assert!(!held.is_empty() && held.len() <= 64, "one source holds {} connections", held.len());
    // A second source, so that 128 are measured. Resident memory grows in steps of the
    // allocator's and the kernel's (a 2 MiB huge page, a few at a time under load), so the
    // bound is 96 kB a connection (12 MB): 128 connections with their receive buffer
    // allocated at accept, as before, cost about 22 MB; here about 5 kB each.
    let also_held = still_open(idle_connections(address, loopback(3), 64).await).await;
    let measured = (held.len() + also_held.len()) as u64;
    let growth_kib = resident_kib(pid).saturating_sub(ready_kib);
    assert!(
        growth_kib < 96 * measured,
        "{measured} idle connections cost {growth_kib} kB: buffers belong to signed-on sessions"
    );
    // An honest participant from another address signs on, and the operator is served.
    let acquirer = sign_on_from(address, loopback(1), "ACQ0001").await.expect("an honest sign-on");
    let (status, metrics) = common::http(admin, "GET", "/metrics", None).expect("the admin port answers");
    assert_eq!(status, 200);
    let refused = metric(&metrics, "switch_connections_refused_total{reason=\"per_source\"}");
    assert!(refused >= (FD_LIMIT + 100 - 64) as u64, "per-source refusals counted: {refused}\n{metrics}");

    // Many sources together exceed what the switch may hold: the oldest connections that
    // have not signed on give way, and honest sign-ons still get in.
    let mut crowd = Vec::new();
    for source in 4..=11 {
        crowd.extend(idle_connections(address, loopback(source), 60).await);
    }
    let crowd = still_open(crowd).await;
    assert!(crowd.len() < FD_LIMIT, "{} held under a limit of {FD_LIMIT} descriptors", crowd.len());
    let wechat = sign_on_from(address, loopback(1), "WECHATPAY").await.expect("an honest sign-on in a crowd");
    assert_eq!(common::http(admin, "GET", "/readyz", None).map(|(s, _)| s), Some(200), "the operator is served");
    let (_, metrics) = common::http(admin, "GET", "/metrics", None).expect("metrics");
    assert!(metric(&metrics, "switch_connections_refused_total{reason=\"evicted\"}") > 0, "{metrics}");

    // A participant's sessions are capped (3 here): the fourth is refused SystemBusy.
    let second = sign_on_from(address, loopback(1), "ACQ0001").await.expect("a second session");
    let third = sign_on_from(address, loopback(1), "ACQ0001").await.expect("a third session");
    let Err(fourth) = sign_on_from(address, loopback(1), "ACQ0001").await else { panic!("a fourth was let in") };
    assert!(fourth.to_string().contains("reply code 103"), "{fourth}");
    let (_, metrics) = common::http(admin, "GET", "/metrics", None).expect("metrics");
    assert_eq!(metric(&metrics, "switch_connections_refused_total{reason=\"sessions_per_participant\"}"), 1);
    // When one ends, its place is free again.
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = sign_on_from(address, loopback(1), "ACQ0001").await.expect("a session freed its place");
    drop((warm, held, also_held, crowd, acquirer, wechat, third));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs stay readable under a flood: 300 connections that each send garbage are counted
/// one by one in the metrics, but each kind of line is written about once a second, with
/// how many like it were left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_frames_is_a_few_lines_of_log() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("switch-log-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, admin_port) = (free_port(), free_port());
    let mut text = format!(
        "[switch]\nid = \"CSWITCH\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nplaintext = true\n\n\
         [journal]\ndata_dir = \"data\"\n\n"
    );
    text.push_str(&common::demo_participant("ACQ0001", "\"acquirer\"", ""));
    let config = dir.join("switch.toml");
    std::fs::write(&config, text).expect("config");
    let _switch = start(&config, &dir);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let ready = Instant::now() + Duration::from_secs(30);
    while common::http(admin, "GET", "/readyz", None).is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < ready, "the switch did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const FLOOD: u64 = 300;
    for _ in 0..FLOOD {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\n\r\nnot a frame at all").await.expect("write");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
    }
    let (_, metrics) = common::http(admin, "GET", "/metrics", None).expect("metrics");
    assert_eq!(metric(&metrics, "switch_frames_rejected_total{reason=\"BadMagic\"}"), FLOOD, "{metrics}");
    let log = std::fs::read_to_string(dir.join("switch.log")).expect("log");
    for line in ["frame refused", "closing session"] {
        let written = log.matches(line).count();
        assert!((1..=10).contains(&written), "{written} lines of {line:?} for {FLOOD} refusals:\n{log}");
    }
    assert!(log.contains("suppressed="), "the lines say how many were left out:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
