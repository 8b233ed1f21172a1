//! The journal on the real switch process, where its disk and files fail: a start on a
//! full disk exits 3 (the unit does not restart it), and a journal whose newest segment was
//! rolled back to an older copy is refused at start and by `journal verify`, naming what is
//! missing, instead of starting short of what participants were told.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codec::Message;
use common::{free_port, http, switch_cli};

/// `unshare` (util-linux) runs the switch with a small tmpfs as its data directory, in a
/// mount namespace of its own: a full disk without root or a loop device.
fn require_unshare() {
    let found = Command::new("unshare").arg("--version").output().is_ok_and(|output| output.status.success());
    assert!(
        found,
        "unshare (util-linux) is needed for the full-disk test: `apt-get install util-linux` (.ci/test does)"
    );
}

#[test]
fn a_start_on_a_full_disk_exits_3() {
    require_unshare();
    let dir = std::env::temp_dir().join(format!("switch-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // A 64 KiB tmpfs, an admin token (read, not written), then the rest filled up.
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {dir} && printf 'tok%.0s' $(seq 1 12) > {dir}/admin.token && \
         (dd if=/dev/zero of={dir}/filler bs=4k 2>/dev/null || true) && \
         exec {switch} run --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:{admin} --data-dir {dir}",
        dir = dir.display(),
        switch = env!("CARGO_BIN_EXE_switch"),
        port = free_port(),
        admin = free_port(),
    );
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "exit 3 on a full disk:\n{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A switch on `data_dir` (the embedded default, two shards); `Ok` once ready, or how it
/// exited.
fn start(data_dir: &Path, extra: &[&str]) -> Result<(common::Process, u16, std::net::SocketAddr), (i32, String)> {
    let (port, admin_port) = (free_port(), free_port());
    let log = data_dir.with_extension("log");
    let child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["run", "--shards", "2", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}"), "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("switch starts");
    let mut process = common::Process(child);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.0.try_wait().expect("wait") {
            return Err((status.code().unwrap_or(-1), std::fs::read_to_string(&log).unwrap_or_default()));
        }
        if http(admin, "GET", "/readyz", None).map(|(status, _)| status) == Some(200) {
            return Ok((process, port, admin));
        }
        assert!(Instant::now() < deadline, "the switch neither started nor exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `count` approved payment-code payments from ACQ0001 to WeChat Pay, ids `{tag}-{n}`.
async fn pay(port: u16, tag: &str, count: u64) {
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(port, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));
    let mut acquirer = common::signed_on(port, "ACQ0001").await;
    for n in 0..count {
        let mut request = common::payment_code_request();
        request.details.originator_transaction_id = format!("{tag}-{n}").parse().expect("valid");
        request.payment_code = format!("13{:04}{n:012}", tag.as_bytes()[0]).parse().expect("valid");
        acquirer.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
        assert_eq!(common::next_payment_reply(&mut acquirer).await.code, 0);
    }
    issuer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_newest_segment_is_refused_at_start_and_by_verify() {
    let data_dir = std::env::temp_dir().join(format!("switch-rolled-back-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let data = data_dir.to_str().expect("utf-8");
    let (switch, port, _) = start(&data_dir, &[]).expect("starts");
    pay(port, "A", 20).await;
    // The backup: an older copy of each shard's (only) segment.
    let segment = |shard: usize| data_dir.join(format!("journal/shard-{shard}/00000000000000000001.journal"));
    let copies: Vec<Vec<u8>> = (0..2).map(|shard| std::fs::read(segment(shard)).expect("segment")).collect();
    pay(port, "B", 30).await;
    // Killed more than a second after the last approval: the head has caught up with it.
    std::thread::sleep(Duration::from_millis(1_500));
    drop(switch);
    let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", data]);
    assert!(ok, "{text}");
    let whole: Vec<Vec<u8>> = (0..2).map(|shard| std::fs::read(segment(shard)).expect("segment")).collect();
    for (shard, copy) in copies.iter().enumerate() {
        std::fs::write(segment(shard), copy).expect("roll back");
    }
    let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", data]);
    assert!(!ok && text.contains("DAMAGED") && text.contains("an older copy of a segment was put back"), "{text}");
    let (code, log) = start(&data_dir, &[]).map(|_| ()).expect_err("refused");
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("the journal's head says every record up to"), "{log}");
    // Restored, the switch starts, and every approval is there.
    for (shard, bytes) in whole.iter().enumerate() {
        std::fs::write(segment(shard), bytes).expect("restore");
    }
    let (switch, _, admin) = start(&data_dir, &[]).expect("starts on the whole journal");
    let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("token");
    let (status, body) = http(admin, "POST", "/clearing/close", Some(token.trim())).expect("answers");
    assert_eq!(status, 200, "{body}");
    drop(switch);
    let acquirer = std::fs::read_to_string(data_dir.join("clearing/window-000001/ACQ0001.csv")).expect("file");
    assert_eq!(acquirer.lines().count(), 1 + 50, "every approval cleared");
    let _ = std::fs::remove_dir_all(&data_dir);
}
