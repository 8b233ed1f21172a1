//! The real switch process, killed with SIGKILL in the middle of traffic and restarted on
//! its journal, several times over: every approval an originator received is still an
//! approval; what was in flight is timed out and reversed at its issuer; ids and codes used
//! before the crash are still duplicates after it.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use codec::code::TransactionStatus;
use codec::field::FieldText;
use codec::{InstitutionId, Message, MessageRef, ReplyCode, TransactionId};
use common::{free_port, read_window, switch_cli};
use loadgen::client::Client;
use loadgen::issuer::run_issuer;
use loadgen::responder::Behaviour;
use switch::config::demo_key;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

/// A switch process, killed (SIGKILL) when dropped: also when a test fails.
struct Switch(Child);

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the switch on `data_dir` and waits until it accepts sign-ons.
async fn start(data_dir: &Path, port: u16) -> Switch {
    start_with_admin(data_dir, port, free_port()).await
}

async fn start_with_admin(data_dir: &Path, port: u16, admin_port: u16) -> Switch {
    start_with_args(data_dir, port, admin_port, &[]).await
}

async fn start_with_args(data_dir: &Path, port: u16, admin_port: u16, extra: &[&str]) -> Switch {
    let child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .arg("run")
        .args(extra)
        .args(["--shards", "2", "--fsync", "always", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switch starts");
    let switch = Switch(child);
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return switch;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the switch did not start");
}

async fn connect(port: u16, participant: &str) -> Client {
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    Client::connect(address, id(participant), 1, &demo_key(participant)).await.expect("sign on")
}

fn payment(cycle: u32, n: u64) -> Message {
    // Even: WeChat Pay (answers at once); odd: Alipay (never answers: in flight at the kill).
    let prefix = if n.is_multiple_of(2) { "13" } else { "28" };
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = format!("C{cycle}-{n}").parse().expect("valid");
    request.payment_code = format!("{prefix}{cycle:04}{n:012}").parse().expect("valid");
    Message::PaymentCodeRequest(request)
}

/// The next payment reply: its transaction id and code.
async fn next_reply(client: &mut Client) -> (String, u16) {
    let reply = common::next_payment_reply(client).await;
    (reply.originator_transaction_id.as_str().to_string(), reply.code)
}

async fn status_of(acquirer: &mut Client, id_text: &str) -> TransactionStatus {
    let query = codec::StatusQuery {
        originator: id("ACQ0001"),
        original_originator_transaction_id: TransactionId::new(id_text).expect("valid"),
        original_switch_reference: 0,
        query_time_ms: 0,
    };
    acquirer.writer.send(&Message::StatusQuery(query)).await.expect("send");
    let status = acquirer
        .reader
        .next(|m| match m {
            MessageRef::StatusReply(status) => status.status,
            other => panic!("expected a status reply, got {:?}", other.kind()),
        })
        .await
        .expect("status");
    TransactionStatus::try_from(status).expect("valid status")
}

#[tokio::test]
async fn approvals_survive_sigkill_and_what_was_in_flight_is_reversed() {
    const CYCLES: u32 = 3;
    const PER_CYCLE: u64 = 200;
    let data_dir = std::env::temp_dir().join(format!("switch-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = free_port();
    let mut approved_seen: Vec<String> = Vec::new();
    let mut in_flight_at_kill: Vec<String> = Vec::new();

    for cycle in 0..CYCLES {
        let switch = start(&data_dir, port).await;
        // The silent issuer first: after a restart it receives the reversals of what was in
        // flight at the kill before it.
        let mut alipay = connect(port, "ALIPAY").await;
        let mut reversed = HashSet::new();
        while reversed.len() < in_flight_at_kill.len() {
            let reversal = tokio::time::timeout(
                Duration::from_secs(10),
                alipay.reader.next(|m| match m.to_message() {
                    Message::ReversalRequest(reversal) => Some(reversal),
                    _ => None,
                }),
            )
            .await
            .expect("every transaction in flight at the kill is reversed at its issuer")
            .expect("reversal");
            let Some(reversal) = reversal else { continue };
            // Acknowledged, as an issuer does: it is not sent again.
            let ack = codec::Reply {
                originator: reversal.originator,
                originator_transaction_id: reversal.originator_transaction_id,
                switch_reference: reversal.switch_reference,
                amount_minor: reversal.amount_minor,
                currency: reversal.currency,
                code: ReplyCode::Approved.value(),
                responder: id("ALIPAY"),
                ..codec::sample::payment_reply()
            };
            alipay.writer.send(&Message::ReversalReply(ack)).await.expect("send");
            reversed.insert(reversal.original_originator_transaction_id.to_string());
        }
        assert_eq!(reversed, in_flight_at_kill.iter().cloned().collect::<HashSet<_>>());
        let alipay_task = tokio::spawn(run_issuer(alipay, behaviour("silent=100%")));
        let wechat_task = tokio::spawn(run_issuer(connect(port, "WECHATPAY").await, Behaviour::default()));
        let mut acquirer = connect(port, "ACQ0001").await;

        // What the earlier cycles established still holds.
        for id_text in &approved_seen {
            assert_eq!(status_of(&mut acquirer, id_text).await, TransactionStatus::Approved, "{id_text}");
        }
        for id_text in &in_flight_at_kill {
            let status = status_of(&mut acquirer, id_text).await;
            assert!(
                matches!(status, TransactionStatus::TimedOut | TransactionStatus::Reversed),
                "{id_text}: {status:?}"
            );
        }
        if let Some(first) = approved_seen.first() {
            // A resend of an approved payment is a duplicate, not a second payment.
            let n: u64 = first.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).expect("ours");
            let cycle_of: u32 = first[1..].split('-').next().and_then(|c| c.parse().ok()).expect("ours");
            acquirer.writer.send(&payment(cycle_of, n)).await.expect("send");
            let code = acquirer
                .reader
                .next(|m| match m {
                    MessageRef::PaymentReply(reply) => reply.code.to_native(),
                    other => panic!("expected a reply, got {:?}", other.kind()),
                })
                .await
                .expect("reply");
            assert_eq!(code, ReplyCode::Duplicate.value());
        }

        // This cycle's traffic; the kill comes once every WeChat Pay payment is answered,
        // while the Alipay ones are still in flight.
        for n in 0..PER_CYCLE {
            acquirer.writer.queue(&payment(cycle, n)).expect("queue");
        }
        acquirer.writer.flush().await.expect("send");
        let mut answered = 0;
        while answered < PER_CYCLE / 2 {
            let (id_text, code) = next_reply(&mut acquirer).await;
            assert_eq!(code, ReplyCode::Approved.value(), "{id_text}");
            approved_seen.push(id_text);
            answered += 1;
        }
        drop(switch); // SIGKILL
        in_flight_at_kill = (0..PER_CYCLE).filter(|n| n % 2 == 1).map(|n| format!("C{cycle}-{n}")).collect();
        alipay_task.abort();
        wechat_task.abort();
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn closing_a_window_accounts_for_every_approval_once_and_rebuilds_identically() {
    let data_dir = std::env::temp_dir().join(format!("switch-clearing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let data = data_dir.to_str().expect("utf-8 path");
    let port = free_port();
    let admin_port = free_port();
    let switch = start_with_admin(&data_dir, port, admin_port).await;
    let wechat = tokio::spawn(run_issuer(connect(port, "WECHATPAY").await, Behaviour::default()));
    let mut acquirer = connect(port, "ACQ0001").await;
    let mut approved = Vec::new();
    for n in 0..40u64 {
        acquirer.writer.send(&payment(9, n * 2)).await.expect("send");
        let (id_text, code) = next_reply(&mut acquirer).await;
        assert_eq!(code, 0);
        approved.push(id_text);
    }
    // An offline close is refused while the switch runs on the directory.
    let (ok, text) = switch_cli(&["clearing", "close", "--data-dir", data]);
    assert!(!ok && text.contains("in use by a running switch"), "{text}");

    // Through the admin port, as the operator whose token the switch wrote.
    let admin = format!("127.0.0.1:{admin_port}");
    let (ok, text) = switch_cli(&["clearing", "close", "--admin", &admin, "--token-file", "/nonexistent/admin.token"]);
    assert!(!ok && text.contains("cannot read the admin token"), "{text}");
    let token_file = data_dir.join("admin.token");
    let (ok, text) =
        switch_cli(&["clearing", "close", "--admin", &admin, "--token-file", token_file.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("window 1 closed"), "{text}");
    let files = read_window(&data_dir, 1);
    let csv = &files.iter().find(|(name, _)| name == "ACQ0001.csv").expect("acquirer's file").1;
    let csv = String::from_utf8_lossy(csv);
    for id_text in &approved {
        assert_eq!(csv.matches(&format!(",\"{id_text}\",")).count(), 1, "{id_text} once in\n{csv}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|(name, _)| name == "summary.json").expect("summary").1)
            .expect("JSON");
    assert_eq!(summary["sum_minor_by_currency"]["156"], 0, "{summary}");
    assert_eq!(summary["entries"], approved.len());

    // Killed, then rebuilt from the journal alone: the same bytes.
    wechat.abort();
    drop(switch);
    let before = files;
    let (ok, text) = switch_cli(&["clearing", "rebuild", "--data-dir", data, "--window", "1"]);
    assert!(ok, "{text}");
    assert_eq!(read_window(&data_dir, 1), before);
    // The switch is stopped: the next window closes offline (empty, and balanced).
    let (ok, text) = switch_cli(&["clearing", "close", "--data-dir", data]);
    assert!(ok && text.contains("window 2 closed"), "{text}");
    let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", data]);
    assert!(ok && text.contains("ok"), "{text}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn a_journal_write_that_fails_stops_the_switch_before_it_answers() {
    let data_dir = std::env::temp_dir().join(format!("switch-efbig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = free_port();
    // A file size limit of 64 blocks of 512 bytes (32 KiB): the journal's write fails with
    // EFBIG once its segment would pass it (SIGXFSZ ignored, so the write returns an error).
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec {} run --shards 2 --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:{} --data-dir {}",
        env!("CARGO_BIN_EXE_switch"),
        free_port(),
        data_dir.display()
    );
    let child = Command::new("sh").args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let mut switch = Switch(child.expect("sh runs"));
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let wechat = tokio::spawn(run_issuer(connect(port, "WECHATPAY").await, Behaviour::default()));
    let mut acquirer = connect(port, "ACQ0001").await;
    let mut approved = Vec::new();
    for n in 0..2_000u64 {
        if acquirer.writer.send(&payment(5, n * 2)).await.is_err() {
            break;
        }
        let reply = acquirer
            .reader
            .next(|m| match m {
                MessageRef::PaymentReply(reply) => Some(reply.originator_transaction_id.as_str().to_string()),
                _ => None,
            })
            .await;
        match reply {
            Ok(Some(id_text)) => approved.push(id_text),
            Ok(None) => {}
            Err(_) => break, // the switch stopped
        }
    }
    wechat.abort();
    let status = switch.0.wait().expect("exit status");
    assert_eq!(
        status.code(),
        Some(switch::durability::journal::EXIT_JOURNAL_FAILED),
        "stopped with the journal's exit code"
    );
    assert!(!approved.is_empty() && approved.len() < 2_000, "{} approvals before the limit", approved.len());
    let mut stderr = String::new();
    std::io::Read::read_to_string(switch.0.stderr.as_mut().expect("piped"), &mut stderr).expect("stderr");
    assert!(stderr.contains("journal write failed"), "{stderr}");

    // Everything answered before the failure was durable: still approved after a restart.
    let restarted = start(&data_dir, port).await;
    let mut acquirer = connect(port, "ACQ0001").await;
    for id_text in &approved {
        assert_eq!(status_of(&mut acquirer, id_text).await, TransactionStatus::Approved, "{id_text}");
    }
    drop(restarted);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A receiver's behaviour from loadgen's `--respond` syntax.
fn behaviour(spec: &str) -> Behaviour {
    spec.parse().expect("valid behaviour")
}

#[tokio::test]
async fn payment_codes_are_encrypted_at_rest_with_a_code_key() {
    let data_dir = std::env::temp_dir().join(format!("switch-code-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).expect("dir");
    let key_file = std::env::temp_dir().join(format!("switch-code-key-{}.key", std::process::id()));
    std::fs::write(&key_file, "00112233445566778899aabbccddeeff\n").expect("key");
    let key_arg = key_file.to_str().expect("utf-8").to_string();
    let data = data_dir.to_str().expect("utf-8").to_string();
    const PAYMENTS: u64 = 200;

    let port = free_port();
    let switch = start_with_args(&data_dir, port, free_port(), &["--code-key-file", &key_arg]).await;
    let wechat = tokio::spawn(run_issuer(connect(port, "WECHATPAY").await, Behaviour::default()));
    let mut acquirer = connect(port, "ACQ0001").await;
    for n in 0..PAYMENTS {
        acquirer.writer.queue(&payment(7, n * 2)).expect("queue");
    }
    acquirer.writer.flush().await.expect("send");
    for _ in 0..PAYMENTS {
        assert_eq!(next_reply(&mut acquirer).await.1, ReplyCode::Approved.value());
    }
    drop(switch); // SIGKILL
    wechat.abort();

    // No code, not even the codes' common prefix, is anywhere in the journal's bytes.
    let mut journal = Vec::new();
    for (_, dir) in switch::settlement::clearing::shard_dirs(&data_dir).expect("shards") {
        for segment in switch::durability::journal::segments(&dir).expect("segments") {
            journal.extend(std::fs::read(segment).expect("read"));
        }
    }
    assert!(journal.len() > 10_000);
    assert!(!journal.windows(6).any(|w| w == b"130007"), "a payment code prefix in clear");
    for n in 0..PAYMENTS {
        let code = format!("13{:04}{:012}", 7, n * 2);
        assert!(!journal.windows(code.len()).any(|w| w == code.as_bytes()));
    }

    // Reading it needs the key; with it, codes come back (masked when shown).
    let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", &data]);
    assert!(!ok && text.contains("encrypted payment code"), "{text}");
    let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", &data, "--code-key-file", &key_arg]);
    assert!(ok && text.contains("ok"), "{text}");
    let (ok, text) = switch_cli(&["journal", "inspect", "--data-dir", &data, "--code-key-file", &key_arg]);
    assert!(ok && text.contains("130007********"), "{text}");

    // Without the key the switch refuses to start (it could not rebuild the used codes)...
    let mut keyless = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["run", "--shards", "2", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port()), "--data-dir", &data])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = keyless.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = exited else {
        let _ = keyless.kill();
        panic!("a switch without the code key started on an encrypted journal");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut keyless.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert!(!status.success() && stderr.contains("code key"), "{stderr}");

    // ...and with it, it recovers every used code: reuse is still refused.
    let port = free_port();
    let _switch = start_with_args(&data_dir, port, free_port(), &["--code-key-file", &key_arg]).await;
    let mut acquirer = connect(port, "ACQ0001").await;
    let Message::PaymentCodeRequest(mut reuse) = payment(7, 0) else { unreachable!("a payment") };
    reuse.details.originator_transaction_id = "REUSE-AFTER-RESTART".parse().expect("valid");
    acquirer.writer.send(&Message::PaymentCodeRequest(reuse)).await.expect("send");
    assert_eq!(next_reply(&mut acquirer).await.1, ReplyCode::Duplicate.value());
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_file(&key_file);
}

/// Runs `switch run` with `args` expecting it to refuse to start; returns its stderr.
async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .arg("run")
        .args(args)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..200 {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success());
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
            return stderr;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("the switch started: {args:?}");
}

#[tokio::test]
async fn the_node_id_is_in_every_switch_reference_and_a_data_directory_keeps_its_node() {
    let data_dir = std::env::temp_dir().join(format!("switch-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let data = data_dir.to_str().expect("utf-8").to_string();
    let port = free_port();
    let switch = start_with_args(&data_dir, port, free_port(), &["--node", "3"]).await;
    let wechat = tokio::spawn(run_issuer(connect(port, "WECHATPAY").await, Behaviour::default()));
    let mut acquirer = connect(port, "ACQ0001").await;
    acquirer.writer.send(&payment(1, 0)).await.expect("send");
    let reference = common::next_payment_reply(&mut acquirer).await.switch_reference;
    assert_eq!(reference >> 56, 3, "node 3 in {reference:#018x}");
    drop(switch);
    wechat.abort();
    // The same directory as another node is refused, naming the node it belongs to.
    let stderr = refused_start(&["--data-dir", &data, "--node", "4"], &[]).await;
    assert!(stderr.contains("written by node 3"), "{stderr}");
    // `auto` takes the pod ordinal; a host name without one is refused.
    let stderr = refused_start(&["--data-dir", &data, "--node", "auto"], &[("HOSTNAME", "switch-5")]).await;
    assert!(stderr.contains("written by node 3"), "node 5 from the host name: {stderr}");
    let stderr = refused_start(&["--data-dir", &data, "--node", "auto"], &[("HOSTNAME", "worker")]).await;
    assert!(stderr.contains("does not end in -N"), "{stderr}");
    let _ = std::fs::remove_dir_all(&data_dir);
}
