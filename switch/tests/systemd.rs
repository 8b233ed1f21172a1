//! The switch under systemd: the shipped unit verifies cleanly, and the switch speaks the
//! notification protocol (READY once serving, the watchdog while running, STOPPING on
//! drain) to a socket standing in for systemd's.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switch-systemd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_shipped_unit_verifies_without_a_warning() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/switch.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let text = text.replace("/usr/local/bin/switch", env!("CARGO_BIN_EXE_switch"));
    let dir = scratch("unit");
    let copy = dir.join("switch.service");
    std::fs::write(&copy, text).unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect(
        "systemd-analyze is needed to verify deploy/systemd/switch.service: `apt-get install systemd` (.ci/test does)",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Unknown keys and bad values are only warnings to systemd: none may appear.
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("switch.service")).collect();
    assert!(complaints.is_empty(), "{complaints:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_switch_notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = scratch("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = Vec::new();
    let mut buffer = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stop_sent = false;
    while Instant::now() < deadline {
        if let Ok(count) = socket.recv(&mut buffer) {
            heard.push(String::from_utf8_lossy(&buffer[..count]).to_string());
        }
        let watchdogs = heard.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
        if !stop_sent && heard.iter().any(|m| m.starts_with("READY=1")) && watchdogs >= 2 {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            stop_sent = true;
        }
        if heard.iter().any(|m| m.starts_with("STOPPING=1")) {
            break;
        }
    }
    let status = child.wait().unwrap();
    // Recovery may extend the start timeout first; nothing else comes before READY.
    let ready = heard.iter().position(|m| m.starts_with("READY=1"));
    assert!(ready.is_some(), "{heard:?}");
    assert!(heard[..ready.unwrap()].iter().all(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")), "{heard:?}");
    assert!(heard.iter().any(|m| m.starts_with("STOPPING=1")), "{heard:?}");
    assert!(status.success(), "{status}: {heard:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
