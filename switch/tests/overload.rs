//! One definite answer at and beyond capacity, reproduced small: a switch that stops
//! (SIGSTOP) longer than its reply deadline, a client that stops reading, tiny queues, a
//! drain under load. Each request gets its one answer; healthy receivers are not blamed.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use codec::{InstitutionId, Message, ReplyCode};
use common::{Process, free_port};
use loadgen::client::Client;
use switch::config::demo_key;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

/// A loopback switch (`switch run`, 2 shards) with `exchange` lines in its `[exchange]`,
/// the demo acquirer and WeChat Pay; its log in `dir`.
struct Switch {
    process: Process,
    address: SocketAddr,
    admin: SocketAddr,
}

fn start(dir: &Path, fsync: &str, exchange: &str) -> Switch {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let (port, admin_port) = (free_port(), free_port());
    let mut text = format!(
        "[switch]\nid = \"CSWITCH\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nplaintext = true\n\n\
         [journal]\ndata_dir = \"data\"\nfsync = \"{fsync}\"\n\n[exchange]\n{exchange}\n\n"
    );
    text.push_str(&common::demo_participant("ACQ0001", "\"acquirer\"", ""));
    text.push_str(&common::demo_participant("WECHATPAY", "\"issuer\", \"acquirer\"", ""));
    let config = dir.join("switch.toml");
    std::fs::write(&config, text).expect("config");
    let process = common::start_switch(&config, dir);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let ready = Instant::now() + Duration::from_secs(30);
    while common::http(admin, "GET", "/readyz", None).is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < ready, "the switch did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Switch { process, address: format!("127.0.0.1:{port}").parse().expect("address"), admin }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(name)).map_or(0, |value| value.trim().parse().unwrap_or(0))
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid}");
}

async fn connect(address: SocketAddr, participant: &str) -> Client {
    Client::connect(address, id(participant), 1, &demo_key(participant)).await.expect("sign on")
}

/// A stop of the whole switch longer than its reply deadline (1 s here, stopped 1.5 s)
/// is the switch's own stall: what was in flight is answered when it resumes, not timed
/// out, and the healthy issuer's circuit breaker (opening at the first timeout here)
/// stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_of_the_switch_is_not_blamed_on_its_receivers() {
    let dir = std::env::temp_dir().join(format!("switch-overload-stall-{}", std::process::id()));
    // Group commits every 300 ms (a batch waits at most 600 ms): what was admitted in the
    // last few hundred ms before the stop is forwarded only after it, when its 1 s reply
    // deadline has passed by the clock.
    // Writes time out after 500 ms here: one in flight at the stop is not the reader's fault.
    let switch = start(
        &dir,
        "interval:300000",
        "reply_deadline_ms = 1000\nbreaker_failures = 1\nbreaker_open_ms = 60000\n\n[session]\nwrite_timeout_ms = 500",
    );
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(
        connect(switch.address, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));
    let Client { mut reader, mut writer, .. } = connect(switch.address, "ACQ0001").await;
    const PAYMENTS: u64 = 600;
    let sender = tokio::spawn(async move {
        for n in 0..PAYMENTS {
            let mut request = common::payment_code_request();
            request.details.originator_transaction_id = format!("STALL-{n}").parse().expect("valid");
            request.payment_code = format!("13{n:016}").parse().expect("valid");
            writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writer
    });
    // Stopped while payments are in flight, for longer than their reply deadline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = switch.process.0.id();
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    signal(pid, "CONT");
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..PAYMENTS {
        let reply = tokio::time::timeout(Duration::from_secs(10), common::next_payment_reply_from(&mut reader))
            .await
            .expect("every payment is answered");
        *codes.entry(format!("{:?}", ReplyCode::try_from(reply.code).expect("a table code"))).or_default() += 1;
    }
    let _writer = sender.await.expect("sender");
    assert_eq!(codes.get("Approved"), Some(&PAYMENTS), "{codes:?}");
    let (_, metrics) = common::http(switch.admin, "GET", "/metrics", None).expect("metrics");
    assert_eq!(metric(&metrics, "switch_replies_total{code=\"Timeout\"}"), 0, "{metrics}");
    let (_, participants) = {
        let token = std::fs::read_to_string(dir.join("data/admin.token")).expect("token");
        common::http(switch.admin, "GET", "/participants", Some(token.trim())).expect("participants")
    };
    assert!(!participants.contains("\"open\""), "no breaker opened: {participants}");
    issuer.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM under load drains: new requests are answered `SystemBusy`, what is in flight
/// gets its receiver's answer (the issuer takes 300 ms here, well within the drain
/// deadline), every request is answered exactly once, and the switch exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_what_is_in_flight_then_exits() {
    let dir = std::env::temp_dir().join(format!("switch-overload-drain-{}", std::process::id()));
    let mut switch = start(&dir, "always", "reply_deadline_ms = 5000");
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(
        connect(switch.address, "WECHATPAY").await,
        "latency=300ms".parse().expect("a behaviour"),
    ));
    let Client { mut reader, mut writer, .. } = connect(switch.address, "ACQ0001").await;
    const PAYMENTS: u64 = 400;
    // The acquirer answers the switch's sign-off at once, as PROTOCOL.md says a
    // participant does, and sends nothing after it.
    let (sign_off, mut signed_off) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        for n in 0..PAYMENTS {
            if signed_off.try_recv().is_ok() {
                let reply = codec::SignOff { code: 0, reserved: [0; 6] };
                let _ = writer.send(&Message::SignOffReply(reply)).await;
                return n;
            }
            let mut request = common::payment_code_request();
            request.details.originator_transaction_id = format!("DRAIN-{n}").parse().expect("valid");
            request.payment_code = format!("13{n:016}").parse().expect("valid");
            writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        PAYMENTS
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(switch.process.0.id(), "TERM");
    // Read every reply until the switch closes the session.
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    let mut answered = std::collections::HashSet::new();
    let mut sign_off = Some(sign_off);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), reader.next(|m| m.to_message())).await;
        match next.expect("the switch answers or closes in time") {
            Ok(Message::PaymentReply(reply)) => {
                assert!(answered.insert(reply.originator_transaction_id), "answered twice: {reply:?}");
                *codes.entry(format!("{:?}", ReplyCode::try_from(reply.code).expect("a code"))).or_default() += 1;
            }
            Ok(Message::SignOffRequest(_)) => {
                let _ = sign_off.take().map(|sign_off| sign_off.send(()));
            }
            Ok(other) => panic!("unexpected {:?}", other.kind()),
            Err(_) => break,
        }
    }
    let sent = sender.await.expect("sender");
    let exit = tokio::task::spawn_blocking(move || switch.process.0.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "the switch exits 0 after a drain: {exit:?}");
    assert_eq!(answered.len() as u64, sent, "every request sent was answered once: {codes:?}");
    assert!(codes.get("Approved").is_some_and(|&n| n > 0), "{codes:?}");
    assert_eq!(codes.get("Timeout"), None, "in flight at the signal, answered by the issuer: {codes:?}");
    assert_eq!(codes.len() - usize::from(codes.contains_key("SystemBusy")), 1, "{codes:?}");
    issuer.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A participant session that stops reading is closed once a write to it has waited a
/// write timeout (500 ms here), and its participant's other session takes everything
/// from then on: nothing is routed to a zombie. The switch goes on reading from every
/// connection meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_reading_is_closed_and_routed_around() {
    let dir = std::env::temp_dir().join(format!("switch-overload-zombie-{}", std::process::id()));
    // No breaker here: the zombie's timeouts would open WeChat Pay's, which is not the point.
    // Small socket send buffers, so that what a silent reader holds fills in a few hundred
    // requests.
    let switch = start(
        &dir,
        "never",
        "reply_deadline_ms = 2000\nbreaker_failures = 0\n\n[session]\nwrite_timeout_ms = 500\n\n\
         [connections]\nsocket_send_buffer_bytes = 8192",
    );
    // WeChat Pay's first session signs on and never reads again (a small receive buffer,
    // so the switch's writes to it stall soon); its second answers everything.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let stream = socket.connect(switch.address).await.expect("connect");
    let zombie = Client::sign_on_over(stream, id("WECHATPAY"), 1, &demo_key("WECHATPAY")).await.expect("sign on");
    let healthy =
        tokio::spawn(loadgen::issuer::run_issuer(connect(switch.address, "WECHATPAY").await, Default::default()));
    let Client { mut reader, mut writer, .. } = connect(switch.address, "ACQ0001").await;
    // Payments in two waves: the first, half of which meet the zombie (they time out:
    // it never answers), then, once it must have been closed, a second that all meet the
    // healthy session.
    let mut pay =
        async |first: u64, count: u64| pay_pipelined(&mut reader, &mut writer, "ZOMBIE", first..first + count).await;
    let first = pay(0, 4_000).await;
    assert!(first.contains_key("Timeout"), "some met the zombie: {first:?}");
    let second = pay(4_000, 1_000).await;
    assert_eq!(second.get("Approved"), Some(&1_000), "nothing goes to the closed session: {second:?}");
    let (_, metrics) = common::http(switch.admin, "GET", "/metrics", None).expect("metrics");
    assert!(metric(&metrics, "switch_sessions_closed_total{reason=\"Backlogged\"}") >= 1, "{metrics}");
    drop(zombie);
    healthy.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Shards whose inboxes hold only 64 new requests, under a flood of 20,000 pipelined
/// payments: the excess is shed `SystemBusy` at admission, and every answer of an
/// admitted payment reaches its owner: none times out, none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_never_dropped_when_inboxes_are_full() {
    use std::sync::Arc;
    use switch::edge::tcp::{Shared, serve};
    let config = switch::config::SwitchConfig::embedded_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let exchange = switch::core::exchange::ExchangeConfig {
        reply_deadline_ms: 1_000,
        breaker_failures: 0,
        ..config.exchange.clone()
    };
    let shared = Arc::new(
        Shared::new(config.session, switch::participant::Directory::new(config.participants))
            .with_exchange(exchange, switch::core::exchange::Routes::embedded_default())
            .with_shards(2)
            .with_request_lane(64),
    );
    tokio::spawn(serve(listener, Arc::clone(&shared), std::future::pending()));
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(connect(address, "WECHATPAY").await, Default::default()));
    let Client { mut reader, mut writer, .. } = connect(address, "ACQ0001").await;
    const PAYMENTS: u64 = 20_000;
    let codes = pay_pipelined(&mut reader, &mut writer, "FLOOD", 0..PAYMENTS).await;
    let approved = codes.get("Approved").copied().unwrap_or(0);
    assert!(approved > 0, "{codes:?}");
    assert_eq!(approved + codes.get("SystemBusy").copied().unwrap_or(0), PAYMENTS, "shed or approved: {codes:?}");
    let metrics = shared.metrics.render();
    assert!(metrics.contains("switch_shard_admitted_backlog "), "{metrics}");
    issuer.abort();
}

/// A write in flight when the switch stops is not timed out by the stop: the connection
/// is judged by time the switch was running (write timeout 1 s here, stopped 2 s), and
/// every reply arrives once it resumes. Four sessions, each with a write pending at the
/// stop (small socket buffers, a reader that pauses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_of_the_switch_does_not_time_out_its_writes() {
    let dir = std::env::temp_dir().join(format!("switch-overload-write-stall-{}", std::process::id()));
    let switch = start(
        &dir,
        "never",
        "reply_deadline_ms = 5000\n\n[session]\nwrite_timeout_ms = 1000\n\n[connections]\nsocket_send_buffer_bytes = 4096",
    );
    let issuer =
        tokio::spawn(loadgen::issuer::run_issuer(connect(switch.address, "WECHATPAY").await, Default::default()));
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("a small receive buffer");
        let stream = socket.connect(switch.address).await.expect("connect");
        sessions.push(Client::sign_on_over(stream, id("ACQ0001"), 1, &demo_key("ACQ0001")).await.expect("sign on"));
    }
    const PAYMENTS: u64 = 300;
    for (s, session) in sessions.iter_mut().enumerate() {
        for n in 0..PAYMENTS {
            let mut request = common::payment_code_request();
            request.details.originator_transaction_id = format!("WSTALL-{s}-{n}").parse().expect("valid");
            request.payment_code = format!("13{s}{n:015}").parse().expect("valid");
            session.writer.queue(&Message::PaymentCodeRequest(request)).expect("queue");
        }
        session.writer.flush().await.expect("send");
    }
    // Nobody reads for 300 ms: the replies fill the small buffers, writes wait. Then the
    // switch stops for twice its write timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = switch.process.0.id();
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    signal(pid, "CONT");
    // Every session reads again at once (a session not read for a write timeout after the
    // stop would rightly be closed).
    let readers = sessions.into_iter().map(|mut session| {
        tokio::spawn(async move {
            for _ in 0..PAYMENTS {
                let next = common::next_payment_reply_from(&mut session.reader);
                let reply = tokio::time::timeout(Duration::from_secs(10), next)
                    .await
                    .expect("every payment is answered on its session");
                assert_eq!(reply.code, ReplyCode::Approved.value(), "{reply:?}");
            }
            session
        })
    });
    let _sessions: Vec<Client> = futures_join(readers).await;
    let (_, metrics) = common::http(switch.admin, "GET", "/metrics", None).expect("metrics");
    assert_eq!(metric(&metrics, "switch_sessions_closed_total{reason=\"Backlogged\"}"), 0, "{metrics}");
    issuer.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Awaits every task, in order; a task's panic fails the test.
async fn futures_join<T>(tasks: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.into_iter().collect::<Vec<_>>() {
        results.push(task.await.expect("a reader"));
    }
    results
}

/// Pays WeChat Pay once per `numbers` (ids `PREFIX-N`, a code per N), sending in batches of
/// 64 while reading every reply; the replies' codes, counted.
async fn pay_pipelined(
    reader: &mut loadgen::client::FrameReader,
    writer: &mut loadgen::client::FrameWriter,
    prefix: &str,
    numbers: std::ops::Range<u64>,
) -> std::collections::BTreeMap<String, u64> {
    let count = numbers.end - numbers.start;
    let send = async {
        for n in numbers {
            let mut request = common::payment_code_request();
            request.details.originator_transaction_id = format!("{prefix}-{n}").parse().expect("valid");
            request.payment_code = format!("13{n:016}").parse().expect("valid");
            writer.queue(&Message::PaymentCodeRequest(request)).expect("queue");
            if n % 64 == 63 {
                writer.flush().await.expect("send");
            }
        }
        writer.flush().await.expect("send");
    };
    let receive = async {
        let mut codes = std::collections::BTreeMap::<String, u64>::new();
        for _ in 0..count {
            let reply = tokio::time::timeout(Duration::from_secs(10), common::next_payment_reply_from(reader))
                .await
                .expect("every payment is answered");
            *codes.entry(format!("{:?}", ReplyCode::try_from(reply.code).expect("a code"))).or_default() += 1;
        }
        codes
    };
    tokio::join!(send, receive).1
}
