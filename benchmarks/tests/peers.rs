//! The bare relay and its driver work end to end (the benchmark's numbers depend on it):
//! every request crosses the relay and is answered, closed and open loop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} in {json}")) + key.len() + 3;
    json[start..].split([',', '}']).next().unwrap()
}

#[test]
fn the_relay_carries_every_request_both_ways() {
    let (requesters, responders) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let peers = env!("CARGO_BIN_EXE_peers");
    let mut relay = Killed(
        Command::new(peers)
            .args(["relay", "--requesters", &requesters, "--responders", &responders])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Ready once it says so (a probe connection would take a pairing slot).
    let mut line = String::new();
    BufReader::new(relay.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("relay: requesters on"), "{line}");
    for load in [["--in-flight", "64"], ["--rate", "2000"]] {
        let output = Command::new(peers)
            .args(["relay-run", "--requesters", &requesters, "--responders", &responders, "--seconds", "1"])
            .args(load)
            .output()
            .unwrap();
        let json = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(output.status.success(), "{json}{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(field(&json, "missing"), "0", "{json}");
        assert!(field(&json, "answered").parse::<u64>().unwrap() >= 1000, "{json}");
    }
}
