//! A fleet on loopback: three switch processes publishing to one `nats-server` (JetStream),
//! a load generator on each node; one node killed with SIGKILL mid-run and restarted, NATS
//! killed for a while and restarted. The fleet's clearing, built from the stream alone,
//! must reconcile exactly with every generator's record and hold exactly the rows the
//! nodes' own clearing holds.
//!
//! Needs `nats-server` on the PATH (`.ci/test` installs Debian's); without it the test fails
//! and says so.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Process, free_port, http};

/// The NATS server asks every client for this token.
const NATS_TOKEN: &str = "fleet-test-token-5f0c";

fn nats_server(store: &Path, port: u16, log: &Path) -> Process {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "--auth", NATS_TOKEN, "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect(
            "nats-server is required by the fleet test (Debian: apt-get install nats-server; .ci/test installs it)",
        );
    // Ready when the port greets with NATS's INFO line: a bare TCP connect could reach
    // another test's listener that briefly held the same port (`free_port`).
    let greets = || -> Option<()> {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut banner = [0u8; 4];
        stream.read_exact(&mut banner).ok()?;
        (&banner == b"INFO").then_some(())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while greets().is_none() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Process(child)
}

/// One switch node of the fleet.
struct Node {
    id: u8,
    shards: u16,
    listen: SocketAddr,
    admin: SocketAddr,
    data_dir: PathBuf,
    nats: String,
    token_file: PathBuf,
}

impl Node {
    /// Node `id` with `shards` shards on free loopback ports, its data in DIR/node-ID.
    fn new(id: u8, shards: u16, dir: &Path, nats: &str, token_file: &Path) -> Self {
        Self {
            id,
            shards,
            listen: format!("127.0.0.1:{}", free_port()).parse().expect("address"),
            admin: format!("127.0.0.1:{}", free_port()).parse().expect("address"),
            data_dir: dir.join(format!("node-{id}")),
            nats: nats.to_string(),
            token_file: token_file.to_path_buf(),
        }
    }

    fn start(&self) -> Process {
        self.start_with(&[])
    }

    fn start_with(&self, extra: &[&str]) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["run", "--node", &self.id.to_string(), "--shards", &self.shards.to_string()])
            .args(["--listen", &self.listen.to_string(), "--admin-listen", &self.admin.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--nats", &self.nats, "--nats-token-file"])
            .arg(&self.token_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("switch starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(self.admin, "GET", "/readyz", None).map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "node {} did not become ready", self.id);
            std::thread::sleep(Duration::from_millis(50));
        }
        Process(child)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http(self.admin, "GET", "/metrics", None)?;
        body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn close_window(&self) -> String {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token")).expect("token");
        let (status, body) =
            http(self.admin, "POST", "/clearing/close", Some(token.trim())).expect("the admin port answers");
        assert_eq!(status, 200, "node {}: {body}", self.id);
        body
    }
}

/// Runs the load generator (in this process) against `target` with `profile`'s mix,
/// recording every reply.
fn load(target: SocketAddr, profile: &str, seconds: u32, record: &Path) -> std::thread::JoinHandle<i32> {
    let args: Vec<String> = vec![
        "loadgen".into(),
        "run".into(),
        "--target".into(),
        target.to_string(),
        "--profile".into(),
        profile.into(),
        "--rate".into(),
        "120".into(),
        "--duration".into(),
        format!("{seconds}s"),
        "--record".into(),
        record.display().to_string(),
        "--quiet".into(),
    ];
    std::thread::spawn(move || loadgen::cli::main_with(args))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn close_from_nats(url: &str, token_file: Option<&Path>, window: u64, nodes: &str, out: &Path) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switch"));
    command
        .args(["clearing", "close", "--source", "nats", "--nats", url, "--window", &window.to_string()])
        .args(["--nodes", nodes, "--out"])
        .arg(out);
    if let Some(token_file) = token_file {
        command.arg("--nats-token-file").arg(token_file);
    }
    let output = command.output().expect("switch runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Every CSV of a window directory: file name to its rows (header left out), sorted.
fn csv_rows(window_dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(window_dir).expect("window directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "csv") {
            let text = std::fs::read_to_string(&path).expect("read");
            let mut rows: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
            rows.sort();
            files.insert(path.file_name().expect("name").to_string_lossy().to_string(), rows);
        }
    }
    files
}

#[test]
fn a_three_node_fleet_clears_exactly_after_a_node_and_nats_fail() {
    let dir = std::env::temp_dir().join(format!("switch-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let nats_port = free_port();
    let url = format!("nats://127.0.0.1:{nats_port}");
    let (store, nats_log) = (dir.join("jetstream"), dir.join("nats.log"));
    let token_file = dir.join("nats.token");
    std::fs::write(&token_file, format!("{NATS_TOKEN}\n")).expect("token");
    let nats = nats_server(&store, nats_port, &nats_log);
    let nodes: Vec<Node> =
        (0..3u8).map(|id| Node::new(id, if id == 0 { 2 } else { 1 }, &dir, &url, &token_file)).collect();
    let mut running: Vec<Option<Process>> = nodes.iter().map(|node| Some(node.start())).collect();
    let records: Vec<PathBuf> = (0..4).map(|n| dir.join(format!("record-{n}.csv"))).collect();

    // A generator per node; node 1 is killed under its load, restarted, and loaded again.
    // Node 2 carries the visa-free surge's mix: every payment cross-border, converted into
    // the payer's currency, so the fleet's close clears conversions through the operator.
    let started = Instant::now();
    let profiles = ["weekday", "weekday", "visa-free-surge"];
    let mut loads: Vec<_> = (0..3).map(|n| load(nodes[n].listen, profiles[n], 12, &records[n])).collect();
    std::thread::sleep(Duration::from_secs(4));
    running[1] = None; // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    running[1] = Some(nodes[1].start());
    loads.push(load(nodes[1].listen, "weekday", 5, &records[3]));
    // NATS goes away while the nodes carry traffic; their publication lags, then catches up.
    std::thread::sleep(Duration::from_secs(1));
    drop(nats); // SIGKILL
    // Longer than a publish waits for its acknowledgement: the publisher gives up, and
    // starts again from the stream's end once NATS is back.
    std::thread::sleep(Duration::from_secs(6));
    let lag_while_away = nodes[0].metric("switch_fleet_lag_records").expect("node 0 exports its lag");
    assert!(lag_while_away > 0.0, "node 0 published with NATS down");
    let _nats = nats_server(&store, nats_port, &nats_log);
    let exits: Vec<i32> = loads.into_iter().map(|load| load.join().expect("load thread")).collect();
    eprintln!("loads ended after {:.1} s: exit codes {exits:?}", started.elapsed().as_secs_f64());
    // The generators on nodes that stayed up ran to the end (2: some sends were late on a
    // busy box, which says nothing of the fleet); the one whose node was killed aborted.
    for n in [0, 2, 3] {
        assert!(exits[n] == 0 || exits[n] == 2, "load {n} failed: {}", exits[n]);
    }
    assert_ne!(exits[1], 0, "the load on the killed node saw it die");

    // Each node cuts window 1 (as a daily cut-off would), and publishes the cut.
    let caught_up = |node: &Node| {
        node.metric("switch_fleet_lag_records") == Some(0.0) && node.metric("switch_fleet_nats_connected") == Some(1.0)
    };
    for node in &nodes {
        wait_until(&format!("node {} caught up", node.id), Duration::from_secs(60), || caught_up(node));
        node.close_window();
    }
    for node in &nodes {
        wait_until(&format!("node {} published its cut", node.id), Duration::from_secs(30), || caught_up(node));
    }
    let failures: f64 = nodes.iter().filter_map(|n| n.metric("switch_fleet_publish_failures_total")).sum();
    eprintln!("lag with NATS away: {lag_while_away} records; publication interruptions: {failures}");
    assert!(failures >= 1.0, "the outage interrupted publication");

    // Refusals: no token, a node that never published, a node left out, a window not cut.
    let out = dir.join("fleet");
    let token = Some(token_file.as_path());
    let (ok, text) = close_from_nats(&url, None, 1, "0-2", &out);
    assert!(!ok && text.contains("NATS (nats://127.0.0.1"), "{text}");
    let (ok, text) = close_from_nats(&url, token, 1, "0-3", &out);
    assert!(!ok && text.contains("node 3 has published nothing"), "{text}");
    let (ok, text) = close_from_nats(&url, token, 1, "0,1", &out);
    assert!(!ok && text.contains("node 2 publishes to the stream but is not in --nodes"), "{text}");
    let (ok, text) = close_from_nats(&url, token, 2, "0-2", &out);
    assert!(!ok && text.contains("window 2 is not cut"), "{text}");
    assert!(!out.join("clearing").exists(), "a refused close writes nothing");

    let (ok, text) = close_from_nats(&url, token, 1, "0-2", &out);
    assert!(ok, "{text}");
    let fleet_window = out.join("clearing/window-000001");

    // Every generator's record reconciles with the fleet's files: nothing lost, nothing
    // doubled, in doubt (sent to the killed node, never answered) at most once.
    let mut approved = 0;
    for record in &records {
        let found = loadgen::reconcile::reconcile(record, &out).expect("reconcile");
        assert!(found.is_clean(), "{}: {}", record.display(), found.render());
        approved += found.approved;
        eprint!("{}", found.render());
    }
    assert!(approved > 2_000, "{approved} approvals");

    // The fleet's rows are exactly the nodes' own rows for window 1, and sum to zero.
    let mut union: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in &nodes {
        for (file, rows) in csv_rows(&node.data_dir.join("clearing/window-000001")) {
            union.entry(file).or_default().extend(rows);
        }
    }
    union.values_mut().for_each(|rows| rows.sort());
    assert_eq!(csv_rows(&fleet_window), union);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fleet_window.join("summary.json")).expect("summary"))
            .expect("json");
    let sums = summary["sum_minor_by_currency"].as_object().expect("sums");
    assert!(sums.len() > 1 && sums.values().all(|sum| sum.as_i64() == Some(0)), "several currencies: {summary}");
    let operator = std::fs::read_to_string(fleet_window.join("CSWITCH.csv")).expect("the operator's file");
    let exchanges = operator.lines().filter(|row| row.contains(",exchange,")).count();
    assert!(exchanges > 100, "conversions cleared through the operator: {exchanges}");

    // Built again from the stream, the files are byte-identical.
    let again = dir.join("fleet-again");
    assert!(close_from_nats(&url, token, 1, "0-2", &again).0);
    for file in std::fs::read_dir(&fleet_window).expect("files") {
        let path = file.expect("file").path();
        let twin = again.join("clearing/window-000001").join(path.file_name().expect("name"));
        assert_eq!(std::fs::read(&path).expect("read"), std::fs::read(twin).expect("read"), "{}", path.display());
    }
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `records` (numbered from `first`) to `subject` as a node would, with
/// `instance` as its data directory.
async fn publish(
    context: &async_nats::jetstream::Context,
    subject: &str,
    instance: &str,
    first: u64,
    records: &[switch::core::record::Record],
) {
    let mut payload = Vec::new();
    for (offset, record) in records.iter().enumerate() {
        record.encode_published(first + offset as u64, &mut payload);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Switch-Instance", instance);
    headers.insert("Switch-Shards", "1");
    headers.insert("Switch-Last-Sequence", (first + records.len() as u64 - 1).to_string().as_str());
    let ack = context.publish_with_headers(subject.to_string(), headers, payload.into()).await.expect("publish");
    ack.await.expect("acknowledged");
}

/// The fleet close refuses a stream that lost records, holds two histories for one node, or
/// lacks a cut; and a node refuses to continue a subject another data directory wrote.
#[tokio::test]
async fn a_damaged_or_mixed_stream_is_refused_by_the_close_and_by_the_publisher() {
    use switch::core::record::Record;
    use switch::settlement::fleet::{FleetError, FleetSettings, NatsToken};
    let dir = std::env::temp_dir().join(format!("switch-fleet-refusals-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = free_port();
    let _nats = nats_server(&dir.join("jetstream"), port, &dir.join("nats.log"));
    let url = format!("nats://127.0.0.1:{port}");
    let client =
        async_nats::ConnectOptions::with_token(NATS_TOKEN.into()).connect(url.as_str()).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    let cut = |window| Record::WindowCut { window, time_ms: 1 };
    let inputs =
        switch::settlement::clearing::CloseInputs::new(switch::settlement::clearing::FeeSchedule::default(), 1_000);
    let out = dir.join("out");
    let mut settings = FleetSettings::new(&url);
    settings.token = Some(NatsToken(NATS_TOKEN.into()));
    // One stream per case: the close stops at the first problem.
    let mut refusal = async |stream: &str, publishes: &[(&str, &str, u64, Vec<Record>)]| {
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.into(),
                subjects: vec![format!("{stream}.>")],
                ..Default::default()
            })
            .await
            .expect("stream");
        for (subject, instance, first, records) in publishes {
            publish(&context, &format!("{stream}.{subject}"), instance, *first, records).await;
        }
        settings.stream = stream.into();
        settings.subject_prefix = stream.into();
        match switch::settlement::fleet::read_window(&settings, 1, &[0], &inputs, &out).await {
            Ok(window) => panic!("{stream}: built a window of {} entries", window.entries),
            Err(error) => error,
        }
    };
    let lost =
        refusal("LOST", &[("0.0", "aaaa000000000001", 1, vec![cut(1)]), ("0.0", "aaaa000000000001", 3, vec![cut(2)])])
            .await;
    assert!(
        matches!(&lost, FleetError::Message { .. })
            && lost.to_string().contains("holds record 3 where record 2 was due"),
        "{lost}"
    );
    let trimmed = refusal("TRIMMED", &[("0.0", "aaaa000000000001", 2, vec![cut(1)])]).await;
    assert!(
        trimmed
            .to_string()
            .contains("the subject starts at record 2: its earlier messages were removed from the stream"),
        "{trimmed}"
    );
    let mixed =
        refusal("MIXED", &[("0.0", "aaaa000000000001", 1, vec![cut(1)]), ("0.0", "bbbb000000000002", 2, vec![cut(2)])])
            .await;
    assert!(mixed.to_string().contains("two nodes published as node 0"), "{mixed}");
    let uncut = refusal("UNCUT", &[("0.0", "aaaa000000000001", 1, vec![cut(7)])]).await;
    assert!(uncut.to_string().contains("window 1 is not cut"), "{uncut}");

    // A node whose subject holds another data directory's records publishes nothing there.
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: FleetSettings::STREAM_DEFAULT.into(),
            subjects: vec![format!("{}.>", FleetSettings::SUBJECT_PREFIX_DEFAULT)],
            ..Default::default()
        })
        .await
        .expect("stream");
    let subject = format!("{}.0.0", FleetSettings::SUBJECT_PREFIX_DEFAULT);
    publish(&context, &subject, "cccc000000000003", 1, &[cut(1)]).await;
    let token_file = dir.join("nats.token");
    std::fs::write(&token_file, NATS_TOKEN).expect("token");
    let node = Node::new(0, 1, &dir, &url, &token_file);
    let running = tokio::task::spawn_blocking(move || {
        let process = node.start();
        node.close_window(); // a record to publish
        wait_until("the publisher refused", Duration::from_secs(30), || {
            node.metric("switch_fleet_publish_failures_total").is_some_and(|failures| failures >= 1.0)
        });
        let lag = node.metric("switch_fleet_lag_records");
        drop(process);
        (lag, std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap_or_default())
    });
    let (lag, log) = running.await.expect("node");
    assert_eq!(lag, Some(2.0), "the cut and its checkpoint stay unpublished");
    assert!(log.contains("holds records of another data directory"), "{log}");
    let last = context
        .get_stream(FleetSettings::STREAM_DEFAULT)
        .await
        .expect("stream")
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("last");
    assert_eq!(last.headers.get("Switch-Instance").map(|v| v.as_str()), Some("cccc000000000003"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node whose journal lost records it had published (an older copy of its segment put
/// back, the loss accepted with --accept-journal-damage) numbers a new history from there:
/// its publisher never publishes it over the old one, however far the journal grows, and
/// says why.
#[test]
fn a_node_whose_journal_lost_published_records_publishes_nothing_over_them() {
    let dir = std::env::temp_dir().join(format!("switch-fleet-rewound-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let nats_port = free_port();
    let _nats = nats_server(&dir.join("jetstream"), nats_port, &dir.join("nats.log"));
    let token_file = dir.join("nats.token");
    std::fs::write(&token_file, NATS_TOKEN).expect("token");
    let node = Node::new(0, 1, &dir, &format!("nats://127.0.0.1:{nats_port}"), &token_file);
    let published = |node: &Node| node.metric("switch_fleet_lag_records") == Some(0.0);
    let process = node.start();
    node.close_window(); // records 1 and 2: window 1's cut and checkpoint
    wait_until("window 1 published", Duration::from_secs(30), || published(&node));
    let segment = node.data_dir.join("journal/shard-0/00000000000000000001.journal");
    let older = std::fs::read(&segment).expect("segment");
    node.close_window();
    node.close_window(); // records 3 to 6
    wait_until("windows 2 and 3 published", Duration::from_secs(30), || published(&node));
    std::thread::sleep(Duration::from_millis(1_500)); // the head catches up
    drop(process);
    std::fs::write(&segment, &older).expect("roll back");

    let mut node = node;
    let refused = {
        let log = node.data_dir.with_extension("log");
        let _ = std::fs::remove_file(&log);
        // Refused without the operator's word; with it, the node goes on from record 2.
        let output = Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["run", "--node", "0", "--shards", "1", "--listen", &node.listen.to_string()])
            .args(["--admin-listen", &node.admin.to_string(), "--data-dir"])
            .arg(&node.data_dir)
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
        node.listen = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    assert!(refused.contains("older copy of a segment was put back"), "{refused}");
    let process = node.start_with(&["--accept-journal-damage"]);
    for _ in 0..4 {
        node.close_window(); // records 3 to 10 of another history
    }
    wait_until("the publisher refused", Duration::from_secs(30), || {
        node.metric("switch_fleet_publish_failures_total").is_some_and(|failures| failures >= 1.0)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.metric("switch_fleet_lag_records"), Some(10.0), "nothing of the new history is published");
    drop(process);
    let log = std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap_or_default();
    assert!(log.contains("this journal was cut at record 3"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
