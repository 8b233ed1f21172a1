//! Helpers shared by the switch's integration tests.
#![allow(dead_code)] // each test crate uses its own share

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// A child process (a switch, a nats-server), killed (SIGKILL) when dropped: also when a
/// test fails.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Now, as Unix milliseconds: requests carry it so the switch's replay window admits them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

/// The sample payment-code request, stamped with the current time.
pub fn payment_code_request() -> codec::PaymentCodeRequest {
    let mut request = codec::sample::payment_code_request();
    request.details.transaction_time_ms = now_ms();
    request
}

/// The sample QR payment request, stamped with the current time.
pub fn qr_payment_request() -> codec::QrPaymentRequest {
    let mut request = codec::sample::qr_payment_request();
    request.details.transaction_time_ms = now_ms();
    request
}

/// The approval `responder` sends for the forwarded payment `details`.
pub fn approval(details: &codec::TransactionDetails, responder: codec::InstitutionId) -> codec::Reply {
    codec::Reply {
        originator: details.originator,
        originator_transaction_id: details.originator_transaction_id,
        switch_reference: details.switch_reference,
        amount_minor: details.amount_minor,
        reply_time_ms: now_ms(),
        currency: details.currency,
        code: 0,
        reserved: [0; 4],
        authorization_code: "A00001".parse().expect("valid"),
        responder,
        conversion: codec::Conversion::NONE,
    }
}

/// The acknowledgement `responder` sends for the reversal `reversal` forwarded to it.
pub fn acknowledgement(reversal: &codec::LinkedRequest, responder: codec::InstitutionId) -> codec::Reply {
    codec::Reply {
        originator: reversal.originator,
        originator_transaction_id: reversal.originator_transaction_id,
        switch_reference: reversal.switch_reference,
        amount_minor: reversal.amount_minor,
        reply_time_ms: now_ms(),
        currency: reversal.currency,
        code: 0,
        reserved: [0; 4],
        authorization_code: codec::AuthorizationCode::EMPTY,
        responder,
        conversion: codec::Conversion::NONE,
    }
}

/// One admin API request (`Authorization: Bearer token` when given): its status and body;
/// `None` when the port does not answer.
pub fn http(address: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
    let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: switch\r\n{authorization}Content-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Fails, saying what to install, unless python3 can import pyiso8583 (the ISO 8583
/// interop tests' independent implementation; `.ci/test` installs it).
pub fn require_pyiso8583() {
    let pyiso = std::process::Command::new("python3").args(["-c", "import iso8583"]).status();
    assert!(
        pyiso.is_ok_and(|status| status.success()),
        "python3 with pyiso8583 is required: pip install pyiso8583==4.0.1 (.ci/test installs it)"
    );
}

/// `switch run --shards 2 --config CONFIG`, its log in `DIR/switch.log`; killed on drop.
pub fn start_switch(config: &std::path::Path, dir: &std::path::Path) -> Process {
    let log = std::fs::File::create(dir.join("switch.log")).expect("log");
    Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["run", "--shards", "2", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("switch starts"),
    )
}

/// A native participant of the demo keys (`demo_key(id)`), signed on at `port`.
pub async fn signed_on(port: u16, id: &str) -> loadgen::client::Client {
    let participant = codec::InstitutionId::new(id).expect("valid");
    let address = format!("127.0.0.1:{port}").parse().expect("address");
    loadgen::client::Client::connect(address, participant, 1, &switch::config::demo_key(id)).await.expect("sign on")
}

/// The head of a plaintext loopback configuration with an ISO 8583 listener (`profile`)
/// and a journal in `data` beside the file.
pub fn iso8583_switch(port: u16, admin_port: u16, iso_port: u16, profile: &str) -> String {
    format!(
        "[switch]\nid = \"CSWITCH\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nplaintext = true\n\n\
         [iso8583]\nlisten = \"127.0.0.1:{iso_port}\"\nprofile = \"{profile}\"\n\n\
         [journal]\ndata_dir = \"data\"\n\n"
    )
}

/// A `[[participant]]` table for `id` with its demo key, `roles` (TOML strings) and
/// `extra` lines.
pub fn demo_participant(id: &str, roles: &str, extra: &str) -> String {
    format!(
        "[[participant]]\nid = \"{id}\"\nname = \"{id}\"\nroles = [{roles}]\n{extra}\
         [[participant.key]]\nid = 1\nsecret_hex = \"{}\"\n\n",
        hex::encode(switch::config::demo_key(id))
    )
}

/// A `[[participant]]` table for an ISO 8583 participant `id` with `roles` (TOML strings):
/// no key, since it signs on without a proof.
pub fn iso8583_participant(id: &str, roles: &str) -> String {
    format!("[[participant]]\nid = \"{id}\"\nname = \"{id}\"\nroles = [{roles}]\nprotocol = \"iso8583\"\n\n")
}

/// The JSON lines of a helper's output (other lines skipped).
pub fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// The next message on `client`, which must be a payment reply.
pub async fn next_payment_reply(client: &mut loadgen::client::Client) -> codec::Reply {
    next_payment_reply_from(&mut client.reader).await
}

/// The next message `reader` reads, which must be a payment reply.
pub async fn next_payment_reply_from(reader: &mut loadgen::client::FrameReader) -> codec::Reply {
    reader
        .next(|m| match m.to_message() {
            codec::Message::PaymentReply(reply) => reply,
            other => panic!("expected a payment reply, got {:?}", other.kind()),
        })
        .await
        .expect("reply")
}

/// Runs the switch binary with `args`: whether it succeeded, and its stdout and stderr.
pub fn switch_cli(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switch")).args(args).output().expect("switch runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Every file of clearing window `window` under `data_dir`: (name, bytes), by name.
pub fn read_window(data_dir: &std::path::Path, window: u64) -> Vec<(String, Vec<u8>)> {
    let dir = data_dir.join("clearing").join(format!("window-{window:06}"));
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            (path.file_name().expect("name").to_string_lossy().to_string(), std::fs::read(&path).expect("file"))
        })
        .collect();
    files.sort();
    files
}
