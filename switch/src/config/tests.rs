//! The configuration's unit tests: what a file may say, and how it is refused.

use super::participants::KEY_SIZE_MIN;
use super::*;
use codec::field::FieldText;

fn parse(text: &str) -> Result<SwitchConfig, String> {
    SwitchConfig::from_toml(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

const MINIMAL: &str = r#"
    [switch]
    id = "CSWITCH"
    listen = "127.0.0.1:7400"
    plaintext = true

    [[participant]]
    id = "ACQ0001"
    name = "Acquirer"
    roles = ["acquirer"]
    [[participant.key]]
    id = 1
    secret_hex = "00112233445566778899aabbccddeeff"
"#;

#[test]
fn connection_limits_are_read_and_checked() {
    let config = parse(&format!("{MINIMAL}\n[connections]\nunsigned_per_source_max = 8\n")).expect("valid");
    assert_eq!(config.connections.unsigned_per_source_max, 8);
    assert_eq!(config.connections.unsigned_max, crate::edge::gate::ConnectionLimits::default().unsigned_max);
    for (bad, expected) in [
        ("unsigned_per_source_max = 0", "connections.unsigned_per_source_max: must be 1 to unsigned_max"),
        ("fd_reserve = 2", "connections.fd_reserve: must be 16 to 65536"),
        ("sign_on_backoff_max_ms = 5", "connections.sign_on_backoff_max_ms: must be sign_on_backoff_ms to 300000"),
        ("backlog = 1", "unknown field `backlog`"),
    ] {
        let error = parse(&format!("{MINIMAL}\n[connections]\n{bad}\n")).expect_err(bad);
        assert!(error.contains(expected), "{bad}: {error}");
    }
}

#[test]
fn the_demo_keys_would_pass_in_a_file() {
    // A configuration file refuses keys under 16 bytes; the demo keys copied into one
    // must load (ALIPAY's is padded: demo-key-ALIPAY-).
    for participant in SwitchConfig::embedded_default().participants {
        assert!(participant.keys.iter().all(|k| k.secret.len() >= KEY_SIZE_MIN), "{}", participant.id);
    }
}

#[test]
fn only_native_participants_need_a_key() {
    let keyless = |protocol: &str| {
        format!(
            "{}\n[iso8583]\nlisten = \"127.0.0.1:7402\"\n\n[[participant]]\nid = \"ISO1\"\nname = \"x\"\nroles = [\"acquirer\"]\nprotocol = \"{protocol}\"\n",
            MINIMAL
        )
    };
    let config = parse(&keyless("iso8583")).expect("an ISO 8583 participant signs on without a proof");
    assert!(config.participants.iter().any(|p| p.iso8583 && p.keys.is_empty()));
    let error = parse(&keyless("native")).expect_err("a native participant proves its key");
    assert!(error.contains("participant[1] (ISO1).key: needs at least one [[participant.key]]"), "{error}");
}

#[test]
fn a_minimal_file_loads_with_default_timers() {
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(config.participants.len(), 1);
    assert_eq!(config.participants[0].keys[0].secret.len(), 16);
    assert_eq!(config.session.idle_timeout_ms, 90_000);
}

#[test]
fn a_fleet_table_names_the_nats_server_and_takes_defaults() {
    assert_eq!(parse(MINIMAL).expect("valid").fleet, None);
    let config = parse(&format!("{MINIMAL}\n[fleet]\nnats_url = \"nats://10.0.0.5:4222\"\n")).expect("valid");
    assert_eq!(config.fleet, Some(crate::settlement::fleet::FleetSettings::new("nats://10.0.0.5:4222")));
}

#[test]
fn errors_name_the_file_the_key_and_the_problem() {
    let cases = [
        (MINIMAL.replace("listen =", "lissen ="), "test.toml: "),
        (
            format!("{MINIMAL}\n[[fee]]\nparticipant = \"ACQ0001\"\nbasis_points = 10001\n"),
            "test.toml: fee[0] (ACQ0001).basis_points: must be 0..=10000",
        ),
        (
            MINIMAL.replace("roles = [\"acquirer\"]", "roles = [\"acquirer\"]\nstatus = \"pending\""),
            "test.toml: participant[0] (ACQ0001).status: \"pending\": expected one of admission, joint_testing, \
             production_verification, agreement, live, suspended, terminated",
        ),
        (
            MINIMAL.replace("roles = [\"acquirer\"]", "roles = [\"acquirer\"]\nprotocol = \"x25\""),
            "test.toml: participant[0] (ACQ0001).protocol: \"x25\": expected native or iso8583",
        ),
        (
            MINIMAL.replace("roles = [\"acquirer\"]", "roles = [\"acquirer\"]\nprotocol = \"iso8583\""),
            "test.toml: iso8583: a participant has protocol = \"iso8583\": give the [iso8583] listener",
        ),
        (
            format!("{MINIMAL}\n[iso8583]\nlisten = \"127.0.0.1:7402\"\nprofile = \"no-such-profile.json\"\n"),
            "test.toml: iso8583.profile: no-such-profile.json: not built in, and",
        ),
        (
            MINIMAL.replace("roles = [\"acquirer\"]", "roles = [\"acquirer\"]\nsettlement_currency = \"THB\""),
            "test.toml: participant[0] (ACQ0001).settlement_currency: needs an [fx] table",
        ),
        (
            MINIMAL.replace("roles = [\"acquirer\"]", "roles = [\"acquirer\"]\nsettlement_currency = \"XBT\""),
            "test.toml: participant[0] (ACQ0001).settlement_currency: \"XBT\" is not a known ISO 4217",
        ),
        (
            format!("{MINIMAL}\n[fx]\nrates = \"no-such-rates.toml\"\n"),
            "test.toml: fx.rates: no-such-rates.toml: cannot read",
        ),
        (
            format!("{MINIMAL}\n[fx]\nrates = \"r.toml\"\nmargin_basis_points = 1001\n"),
            "test.toml: fx.margin_basis_points: must be 0..=1000",
        ),
        (
            format!(
                "{MINIMAL}\n[[fee]]\nparticipant = \"ACQ0001\"\nbasis_points = 1\ncross_border_basis_points = 10001\n"
            ),
            "test.toml: fee[0] (ACQ0001).cross_border_basis_points: must be 0..=10000",
        ),
        (
            format!("{MINIMAL}\n[exchange]\nverification_rate_per_second = 0\n"),
            "test.toml: exchange.verification_rate_per_second: must be at least 1",
        ),
        (
            format!("{MINIMAL}\n[fleet]\nnats_url = \"localhost:4222\"\n"),
            "test.toml: fleet.nats_url: \"localhost:4222\": expected nats://HOST:PORT",
        ),
        (
            format!("{MINIMAL}\n[fleet]\nnats_url = \"nats://n:4222\"\nsubject_prefix = \"a.>\"\n"),
            "test.toml: fleet.subject_prefix: \"a.>\": dot-separated tokens of letters, digits, - and _",
        ),
        (
            format!("{MINIMAL}\n[fleet]\nnats_url = \"nats://n:4222\"\nstream = \"A.B\"\n"),
            "test.toml: fleet.stream: \"A.B\": letters, digits, - and _",
        ),
        (
            format!("{MINIMAL}\n[clearing]\ndaily_cutoff = \"25:00\"\n"),
            "test.toml: clearing.daily_cutoff: \"25:00\": expected HH:MM (Asia/Shanghai) or off",
        ),
        (
            format!("{MINIMAL}\n[journal]\nfsync = \"sometimes\"\n"),
            "test.toml: journal.fsync: \"sometimes\": expected always, never or interval:MICROSECONDS",
        ),
        (format!("{MINIMAL}\n[journal]\nsegment_mib = 0\n"), "test.toml: journal.segment_mib: must be 1..=1024"),
        (
            format!("{MINIMAL}\n[journal]\nretain_windows = 100001\n"),
            "test.toml: journal.retain_windows: must be 0 (keep every segment) to 100000 windows",
        ),
        (
            MINIMAL.replace("\"CSWITCH\"", "\"c switch\""),
            "InstitutionId \"c switch\" has a character outside its charset",
        ),
        (MINIMAL.replace("\"acquirer\"", "\"bank\""), "unknown variant `bank`"),
        (
            MINIMAL.replace("00112233445566778899aabbccddeeff", "0011"),
            "test.toml: participant[0] (ACQ0001).key[0].secret_hex: is 2 bytes; at least 16 are needed",
        ),
        (
            MINIMAL.replace("00112233445566778899aabbccddeeff", "zz"),
            "participant[0] (ACQ0001).key[0].secret_hex: is not hexadecimal",
        ),
        (MINIMAL.replace("roles = [\"acquirer\"]", "roles = []"), "participant[0] (ACQ0001).roles: needs at least one"),
        (
            format!(
                "{MINIMAL}\n[session]\nsign_on_timeout_ms = 10\necho_interval_ms = 30000\nidle_timeout_ms = 90000\n"
            ),
            "session.sign_on_timeout_ms: must be 1000..=300000",
        ),
        (
            format!(
                "{MINIMAL}\n[session]\nsign_on_timeout_ms = 10000\necho_interval_ms = 30000\nidle_timeout_ms = 40000\n"
            ),
            "session.idle_timeout_ms: must be at least twice",
        ),
        (
            MINIMAL.replace("secret_hex = \"00112233445566778899aabbccddeeff\"", "secret_file = \"missing.key\""),
            "key[0].secret_file: cannot read missing.key",
        ),
    ];
    for (text, expected) in cases {
        let error = parse(&text).expect_err("invalid");
        assert!(error.contains(expected), "expected {expected:?} in {error:?}");
    }
    let twice = format!("{MINIMAL}{}", &MINIMAL[MINIMAL.find("[[participant]]").expect("present")..]);
    assert!(parse(&twice).expect_err("duplicate").contains("participant[1] (ACQ0001).id: appears twice"));
}

#[test]
fn routes_must_lead_to_participants_with_the_right_role() {
    let with_route = format!(
        "{MINIMAL}\n[[issuer_prefix]]\nprefix = \"62\"\nlength_min = 19\nlength_max = 19\nissuer = \"ACQ0001\"\n"
    );
    let error = parse(&with_route).expect_err("ACQ0001 is no issuer");
    assert!(error.contains("issuer_prefix[0].issuer: ACQ0001 is not a participant with the issuer role"), "{error}");
    let with_qr = format!("{MINIMAL}\n[[qr_network]]\nguid = \"A000000333010101\"\nacquirer = \"ACQ0001\"\n");
    let config = parse(&with_qr).expect("valid");
    assert_eq!(
        config.routes.qr_networks.get("A000000333010101").map(|network| network.acquirer.to_string()).as_deref(),
        Some("ACQ0001")
    );
    assert_eq!(config.routes.qr_networks["A000000333010101"].merchant_id_tags, [1], "sub-tag 01 by default");
    let promptpay = format!(
        "{MINIMAL}\n[[qr_network]]\nguid = \"A000000677010111\"\nacquirer = \"ACQ0001\"\nmerchant_id_tags = [\"01\", \"02\", \"03\"]\n"
    );
    assert_eq!(parse(&promptpay).expect("valid").routes.qr_networks["A000000677010111"].merchant_id_tags, [1, 2, 3]);
    for bad in ["[]", "[\"00\"]", "[\"1\"]", "[\"100\"]", "[\"x1\"]"] {
        let text =
            format!("{MINIMAL}\n[[qr_network]]\nguid = \"G1\"\nacquirer = \"ACQ0001\"\nmerchant_id_tags = {bad}\n");
        let error = parse(&text).expect_err(bad);
        assert!(error.contains("qr_network[0].merchant_id_tags: must list one or more sub-tags"), "{bad}: {error}");
    }
    assert_eq!(config.routes.issuers.entries().len(), 13, "the built-in issuer table when none is given");
    let bad_code = format!("{MINIMAL}\n[[unionpay_institution]]\ncode = \"0001\"\nacquirer = \"ACQ0001\"\n");
    let error = parse(&bad_code).expect_err("4 digits");
    assert!(error.contains("unionpay_institution[0].code: must be 8 digits and appear once"), "{error}");
    let twice = format!("{with_qr}\n[[qr_network]]\nguid = \"A000000333010101\"\nacquirer = \"ACQ0001\"\n");
    let error = parse(&twice).expect_err("duplicate GUID");
    assert!(error.contains("qr_network[1].guid: must be 1 to 32 characters and appear once"), "{error}");
}

#[test]
fn the_example_in_deploy_is_valid() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/switch.example.toml"));
    let config = SwitchConfig::from_file(path).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.participants.len() >= 3);
    // Its secret files sit beside it, as the example explains.
    assert!(config.participants.iter().all(|p| !p.keys.is_empty()));
    let find = |id: &str| config.participants.iter().find(|p| p.id.as_str() == id).expect("in the example");
    assert_eq!(find("UNIONPAY").frame_mac, codec::MacAlgorithm::HmacSm3);
    assert_eq!(find("ACQ0001").frame_mac, codec::MacAlgorithm::HmacSha256);
    let rotating = find("WECHATPAY");
    assert!(rotating.keys[0].not_after_unix_ms.is_some() && rotating.keys[1].not_after_unix_ms.is_none());
    let acquirer = InstitutionId::new("ACQ0001").expect("valid");
    assert_eq!(config.exchange.counterparties[&acquirer].len(), 3);
    assert_eq!(config.session.replay_window_ms, Some(300_000));
    // Its TLS material (deploy/tls) loads.
    let tls = config.tls.clone().expect("the example uses TLS");
    crate::edge::tls::Tls::load(tls).unwrap_or_else(|e| panic!("{e}"));
    let roles: Vec<_> = config.admin_tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
    use crate::ops::access::AdminRole;
    assert_eq!(roles, [("sre-oncall", AdminRole::Operator), ("dashboard", AdminRole::Read)]);
    // Its FX: the example rate table, the margin, settlement currencies, fees.
    assert!(config.fx_rates_file.as_ref().is_some_and(|f| f.ends_with("rates.example.toml")));
    assert_eq!((config.exchange.fx_margin_basis_points, config.exchange.rates.version()), (50, 1));
    let wallet = InstitutionId::new("WAL0001").expect("valid");
    assert_eq!(config.exchange.policies[&wallet].settlement_currency, Some(764));
    assert_eq!(config.fees.cross_border_basis_points.get("ACQ0001"), Some(&20));
    assert_eq!(config.fees.fx_margin_basis_points, 50);
    // Its journal: a week of windows kept, 64 MiB segments.
    assert_eq!((config.retain_windows, config.segment_size), (7, 64 << 20));
}

#[test]
fn node_ids_come_from_the_file_or_a_pod_name() {
    let config = SwitchConfig::from_toml(
        &MINIMAL.replace("plaintext = true", "plaintext = true\nnode = 7"),
        Path::new("t.toml"),
    )
    .expect("valid");
    assert_eq!(config.exchange.node, 7);
    let error = SwitchConfig::from_toml(
        &MINIMAL.replace("plaintext = true", "plaintext = true\nnode = 256"),
        Path::new("t.toml"),
    )
    .expect_err("out of range")
    .to_string();
    assert!(error.contains("node"), "{error}");
    assert_eq!(node_from_hostname("switch-2"), Some(2));
    assert_eq!(node_from_hostname("clearing-switch-17\n"), Some(17));
    for bad in ["switch", "switch-", "switch-a1", "switch-300", ""] {
        assert_eq!(node_from_hostname(bad), None, "{bad:?}");
    }
}

#[test]
fn security_settings_are_checked() {
    let participant = |extra: &str| {
        format!(
            "[switch]\nid = \"S\"\nlisten = \"127.0.0.1:1\"\nplaintext = true\n{extra}\n[[participant]]\nid = \"A\"\nname = \"A\"\nroles = [\"acquirer\"]\n"
        )
    };
    let key = "[[participant.key]]\nid = 1\nsecret_hex = \"00112233445566778899aabbccddeeff\"\n";
    let without_tls = format!(
        "[switch]\nid = \"S\"\nlisten = \"127.0.0.1:1\"\n[[participant]]\nid = \"A\"\nname = \"A\"\nroles = [\"acquirer\"]\n{key}"
    );
    let cases = [
        (without_tls, "tls: participant links need [tls] (mutual TLS), or `plaintext = true`"),
        (format!("{}frame_mac = \"md5\"\n{key}", participant("")), "frame_mac: \"md5\": expected"),
        (format!("{}counterparties = [\"NOBODY\"]\n{key}", participant("")), "NOBODY is not a configured participant"),
        (
            format!("{}{key}not_after = \"next week\"\n", participant("")),
            "not_after: \"next week\": expected an RFC 3339",
        ),
        (
            format!("{}{key}", participant("[session]\nreplay_window_ms = 10\n")),
            "session.replay_window_ms: must be 0 (no window) or",
        ),
        (
            format!("{}{key}", participant("[[admin.token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n")),
            "admin.token[0] (x).role: \"root\": expected read or operator",
        ),
        (
            format!("{}{key}", participant("[[admin.token]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"00\"\n")),
            "admin.token[0] (x).sha256: is not 64 hexadecimal digits",
        ),
    ];
    for (text, expected) in cases {
        let error = SwitchConfig::from_toml(&text, Path::new("t.toml")).expect_err(expected).to_string();
        assert!(error.contains(expected), "{error}\nexpected: {expected}\n{text}");
    }
}
