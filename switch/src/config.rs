//! The switch's configuration: the embedded default, and TOML files validated at start-up.
//!
//! The embedded default is a demo network on loopback: a switch on 127.0.0.1:7400 and a few
//! participants whose demo keys are printed in the README. It lets `switch run` work with no
//! file at all; production configuration never uses these keys.
//!
//! A file is read whole and checked before anything starts: unknown keys, bad values and
//! inconsistencies are refused with the file, the key and what is wrong
//! (`deploy/switch.example.toml` documents every key). Secrets come from hex in the file or,
//! better, from a separate file (`secret_file`), so the main file can be shared.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use codec::InstitutionId;
use codec::field::FieldText;
use serde::Deserialize;

use crate::core::exchange::{ExchangeConfig, Routes};
use crate::core::session::SessionConfig;
use crate::journal::SyncPolicy;
use crate::participant::{Onboarding, Participant, Role, SharedKey};

#[derive(Debug, Clone)]
pub struct SwitchConfig {
    pub listen: SocketAddr,
    /// The admin HTTP port (`/livez`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// Shards (event-loop threads); `None`: one per core.
    pub shards: Option<usize>,
    /// Where the journal (and, next, clearing output) lives, relative to the working
    /// directory unless absolute.
    pub data_dir: PathBuf,
    pub fsync: SyncPolicy,
    /// A journal segment's size before the next one starts (`[journal] segment_mib`).
    pub segment_size: u64,
    /// Journal retention: closed windows kept rebuildable (`[journal] retain_windows`; 0:
    /// every segment is kept, as by default).
    pub retain_windows: u64,
    /// Records between a shard's restart points (`[journal] restart_point_records`): a
    /// restart replays from the latest one.
    pub restart_every: u64,
    /// Encrypts payment codes in the journal (`None`: kept in clear; protect the directory).
    pub code_key: Option<crate::core::record::CodeKey>,
    /// The daily clearing cut-off, Asia/Shanghai wall-clock time; `None`: on demand only.
    pub daily_cutoff: Option<jiff::civil::Time>,
    /// Fees charged in clearing windows (none in the embedded default).
    pub fees: crate::clearing::FeeSchedule,
    pub session: SessionConfig,
    /// Connection limits and the sign-on throttle (`[connections]`).
    pub connections: crate::edge::gate::ConnectionLimits,
    pub exchange: ExchangeConfig,
    pub routes: Routes,
    pub participants: Vec<Participant>,
    /// Admin API tokens; none: `switch run` makes an operator token in the data directory.
    pub admin_tokens: Vec<crate::access::AdminToken>,
    /// Mutual TLS on participant links; `None` only where the configuration says
    /// `plaintext = true` (the embedded default, on loopback).
    pub tls: Option<crate::edge::tls::TlsSettings>,
    /// Publish the journal's records to a fleet's NATS JetStream stream (`crate::fleet`).
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// The FX rate table's file (`[fx] rates`), read again by `POST /fx/rates/reload`;
    /// `None`: the table given at start is the only one (the embedded default's demo
    /// rates, or no rates at all).
    pub fx_rates_file: Option<PathBuf>,
    /// Where ISO 8583 participants connect, and the profile their messages follow.
    pub iso8583: Option<crate::edge::iso::Iso8583Settings>,
}

/// A node id from a host name ending in `-N` (a StatefulSet pod: `switch-2` is node 2).
pub fn node_from_hostname(hostname: &str) -> Option<u8> {
    let (_, ordinal) = hostname.trim().rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

/// The demo key of a participant in the embedded default (`codec::signon::demo_key`:
/// `demo-key-{ID}`, padded with `-` to 16 bytes).
pub use codec::signon::demo_key;

impl SwitchConfig {
    pub const LISTEN_DEFAULT: &'static str = "127.0.0.1:7400";
    pub const ADMIN_LISTEN_DEFAULT: &'static str = "127.0.0.1:7401";
    /// The embedded default's data directory, in the working directory.
    pub const DATA_DIR_DEFAULT: &'static str = "switch-data";
    /// The default daily cut-off: 23:00 Beijing time.
    pub const DAILY_CUTOFF_DEFAULT: jiff::civil::Time = jiff::civil::time(23, 0, 0, 0);

    /// The embedded default's settlement currencies.
    const DEMO_SETTLEMENT: &'static [(&'static str, &'static str)] = &[
        ("WECHATPAY", "CNY"),
        ("ALIPAY", "CNY"),
        ("UNIONPAY", "CNY"),
        ("WALKR01", "KRW"),
        ("WALSG01", "SGD"),
        ("WALTH01", "THB"),
        ("WALMY01", "MYR"),
        ("WALHK01", "HKD"),
        ("WALMO01", "MOP"),
    ];

    /// The embedded default's FX margin: 0.50% on top of the mid rate.
    pub const FX_MARGIN_DEFAULT: u16 = 50;

    /// The embedded default: demo participants on loopback. The Chinese wallets and
    /// UnionPay settle in CNY; one foreign wallet per visa-free market settles in its own
    /// currency (WALKR01 in KRW, ...); WAL0001 stands for any other foreign wallet and pays
    /// in the transaction's currency. Conversions use the demo rates
    /// (`switch/config/demo-rates.toml`, indicative, not market data).
    pub fn embedded_default() -> Self {
        let demo = |id: &str, name: &str, roles: &[Role]| Participant {
            id: InstitutionId::new(id).expect("demo id is valid"),
            name: name.to_string(),
            roles: roles.to_vec(),
            keys: vec![SharedKey::new(1, demo_key(id))],
            frame_mac: codec::MacAlgorithm::HmacSha256,
            iso8583: false,
        };
        Self {
            listen: Self::LISTEN_DEFAULT.parse().expect("valid address"),
            admin_listen: Self::ADMIN_LISTEN_DEFAULT.parse().expect("valid address"),
            shards: None,
            data_dir: PathBuf::from(Self::DATA_DIR_DEFAULT),
            fsync: SyncPolicy::Always,
            segment_size: crate::journal::SEGMENT_SIZE_MAX,
            retain_windows: 0,
            restart_every: crate::journal::RESTART_EVERY_DEFAULT,
            code_key: None,
            daily_cutoff: Some(Self::DAILY_CUTOFF_DEFAULT),
            fees: crate::clearing::FeeSchedule {
                operator: "CSWITCH".into(),
                fx_margin_basis_points: Self::FX_MARGIN_DEFAULT,
                ..Default::default()
            },
            session: SessionConfig::default(),
            connections: crate::edge::gate::ConnectionLimits::default(),
            exchange: ExchangeConfig {
                policies: Self::DEMO_SETTLEMENT
                    .iter()
                    .map(|&(id, currency)| {
                        let settlement_currency = codec::currency::numeric(currency);
                        let policy =
                            crate::core::exchange::ParticipantPolicy { settlement_currency, ..Default::default() };
                        (InstitutionId::new(id).expect("demo id is valid"), policy)
                    })
                    .collect(),
                rates: std::sync::Arc::new(
                    crate::fx::RateTable::parse(crate::fx::DEMO_RATES).expect("the demo rates are valid"),
                ),
                fx_margin_basis_points: Self::FX_MARGIN_DEFAULT,
                ..ExchangeConfig::default()
            },
            routes: Routes::embedded_default(),
            participants: vec![
                demo("ACQ0001", "Demo acquirer 1", &[Role::Acquirer]),
                demo("ACQ0002", "Demo acquirer 2", &[Role::Acquirer]),
                demo("WECHATPAY", "WeChat Pay (demo)", &[Role::Issuer, Role::Acquirer]),
                demo("ALIPAY", "Alipay (demo)", &[Role::Issuer, Role::Acquirer]),
                demo("UNIONPAY", "UnionPay (demo)", &[Role::Issuer, Role::Network]),
                demo("WAL0001", "Demo foreign wallet", &[Role::Issuer]),
                demo("WALKR01", "Demo Korean wallet (KRW)", &[Role::Issuer]),
                demo("WALSG01", "Demo Singapore wallet (SGD)", &[Role::Issuer]),
                demo("WALTH01", "Demo Thai wallet (THB)", &[Role::Issuer]),
                demo("WALMY01", "Demo Malaysian wallet (MYR)", &[Role::Issuer]),
                demo("WALHK01", "Demo Hong Kong wallet (HKD)", &[Role::Issuer]),
                demo("WALMO01", "Demo Macao wallet (MOP)", &[Role::Issuer]),
            ],
            admin_tokens: Vec::new(),
            // The demo network on loopback: plaintext, said explicitly.
            tls: None,
            fleet: None,
            fx_rates_file: None,
            iso8583: None,
        }
    }
}

/// A configuration file that cannot be used: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {detail}")]
    Syntax { file: PathBuf, detail: String },
    #[error("{file}: {key}: {problem}")]
    Invalid { file: PathBuf, key: String, problem: String },
}

/// Bounds on the session timers a file may set (milliseconds).
const SIGN_ON_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;
const ECHO_INTERVAL_MS: std::ops::RangeInclusive<u32> = 1_000..=600_000;
const DRAIN_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 0..=600_000;
const REPLAY_WINDOW_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;
const WRITE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
/// The shortest shared key accepted, in bytes (HMAC-SHA256 wants at least 16; 32 is better).
const KEY_SIZE_MIN: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    switch: FileSwitch,
    #[serde(default)]
    session: FileSession,
    #[serde(default)]
    connections: crate::edge::gate::ConnectionLimits,
    #[serde(default)]
    exchange: FileExchange,
    #[serde(default)]
    journal: FileJournal,
    #[serde(default)]
    clearing: FileClearing,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    tls: Option<FileTls>,
    #[serde(default)]
    fleet: Option<FileFleet>,
    #[serde(default)]
    iso8583: Option<FileIso8583>,
    #[serde(default)]
    fx: Option<FileFx>,
    /// Fee rates, per participant.
    #[serde(default)]
    fee: Vec<FileFee>,
    #[serde(default, rename = "participant")]
    participants: Vec<FileParticipant>,
    /// Payment-code prefixes to issuers; the built-in table when absent.
    #[serde(default)]
    issuer_prefix: Vec<codec::payment_code::IssuerPrefix>,
    /// QR network GUIDs to acquirers.
    #[serde(default)]
    qr_network: Vec<FileQrNetwork>,
    /// UnionPay URL institution codes to acquirers.
    #[serde(default)]
    unionpay_institution: Vec<FileUnionPayInstitution>,
}

/// Mutual TLS on participant links; paths relative to the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: PathBuf,
    #[serde(default)]
    crl_files: Vec<PathBuf>,
}

/// The fleet stream this node publishes its journal to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFleet {
    nats_url: String,
    #[serde(default = "fleet_stream_default")]
    stream: String,
    #[serde(default = "fleet_subject_prefix_default")]
    subject_prefix: String,
    #[serde(default = "fleet_replicas_default")]
    replicas: usize,
    /// A file holding the NATS server's authorization token; relative to the configuration
    /// file's directory unless absolute.
    token_file: Option<PathBuf>,
}

fn fleet_stream_default() -> String {
    crate::fleet::FleetSettings::STREAM_DEFAULT.into()
}

fn fleet_subject_prefix_default() -> String {
    crate::fleet::FleetSettings::SUBJECT_PREFIX_DEFAULT.into()
}

fn fleet_replicas_default() -> usize {
    1
}

/// Admin API tokens, by their SHA-256 (or a file holding the token itself).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    #[serde(default, rename = "token")]
    tokens: Vec<FileAdminToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdminToken {
    name: String,
    role: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

/// Each setting may be left out, keeping its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileExchange {
    reply_deadline_ms: u64,
    reversal_retry_ms: u64,
    in_flight_max: usize,
    in_flight_per_participant_max: usize,
    completed_max: usize,
    breaker_failures: u32,
    breaker_open_ms: u64,
    verification_amount_max_minor: u64,
    verification_rate_per_second: u32,
    /// Absent: the reply deadline.
    drain_deadline_ms: Option<u64>,
}

impl Default for FileExchange {
    fn default() -> Self {
        let defaults = ExchangeConfig::default();
        Self {
            reply_deadline_ms: defaults.reply_deadline_ms,
            reversal_retry_ms: defaults.reversal_retry_ms,
            in_flight_max: defaults.in_flight_max,
            in_flight_per_participant_max: defaults.in_flight_per_participant_max,
            completed_max: defaults.completed_max,
            breaker_failures: defaults.breaker_failures,
            breaker_open_ms: defaults.breaker_open_ms,
            verification_amount_max_minor: defaults.verification_amount_max_minor,
            verification_rate_per_second: defaults.verification_rate_per_second,
            drain_deadline_ms: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQrNetwork {
    guid: String,
    acquirer: InstitutionId,
    /// The template's sub-tags that carry the merchant's id, in order of preference, as
    /// two-digit strings ("01" to "99"; 00 is the GUID).
    #[serde(default = "merchant_id_tags_default")]
    merchant_id_tags: Vec<String>,
}

fn merchant_id_tags_default() -> Vec<String> {
    vec![format!("{:02}", crate::core::exchange::QrNetwork::MERCHANT_ID_TAG_DEFAULT)]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUnionPayInstitution {
    code: String,
    acquirer: InstitutionId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSwitch {
    id: InstitutionId,
    listen: SocketAddr,
    #[serde(default = "admin_listen_default")]
    admin_listen: SocketAddr,
    /// Absent: one shard per core.
    shards: Option<usize>,
    /// This node's id in a fleet (0 to 255), carried in every switch reference.
    #[serde(default)]
    node: u8,
    /// Participant links without TLS: only when said, for loopback tests.
    #[serde(default)]
    plaintext: bool,
}

/// The listener for ISO 8583 participants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIso8583 {
    listen: SocketAddr,
    /// A built-in profile ("binary", "ascii", "binary-gbk") or a profile file (JSON, relative to the
    /// configuration file), read by every participant on this listener.
    #[serde(default = "iso8583_profile_default")]
    profile: String,
}

fn iso8583_profile_default() -> String {
    "binary".into()
}

fn admin_listen_default() -> SocketAddr {
    SwitchConfig::ADMIN_LISTEN_DEFAULT.parse().expect("valid address")
}

/// The journal; every key may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileJournal {
    /// Relative to the configuration file's directory unless absolute.
    data_dir: PathBuf,
    fsync: String,
    /// Segment size in MiB (1 to 1024).
    segment_mib: u64,
    /// Closed windows kept rebuildable; older segments are removed after each close
    /// (0: keep every segment).
    retain_windows: u64,
    /// Records a shard writes between restart points (10,000 to 100,000,000).
    restart_point_records: u64,
    /// A file holding the 16-byte key (32 hex digits) that encrypts payment codes in the
    /// journal; relative to the configuration file's directory unless absolute.
    code_key_file: Option<PathBuf>,
}

impl Default for FileJournal {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(SwitchConfig::DATA_DIR_DEFAULT),
            fsync: "always".into(),
            segment_mib: crate::journal::SEGMENT_SIZE_MAX >> 20,
            retain_windows: 0,
            restart_point_records: crate::journal::RESTART_EVERY_DEFAULT,
            code_key_file: None,
        }
    }
}

/// Reads a journal code key: 32 hexadecimal digits (16 bytes), surrounding space ignored.
pub fn read_code_key(path: &Path) -> Result<crate::core::record::CodeKey, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
    let bytes: [u8; 16] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("expected 32 hexadecimal digits (a 16-byte SM4 key)")?;
    Ok(crate::core::record::CodeKey::new(bytes))
}

/// A participant's fee rate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFee {
    participant: InstitutionId,
    /// Of every payment the participant is paid; at most 10000 (100%).
    basis_points: u32,
    /// Added to `basis_points` on a converted (cross-border) payment.
    #[serde(default)]
    cross_border_basis_points: u32,
}

/// Foreign exchange: the rate table and the margin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFx {
    /// The rate table file (format: `switch/src/fx.rs`), relative to this file.
    rates: PathBuf,
    /// Added to the mid rate on every conversion; at most 1000 (10%).
    #[serde(default)]
    margin_basis_points: u16,
}

/// Clearing windows; the key may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileClearing {
    /// "HH:MM" in Asia/Shanghai, or "off".
    daily_cutoff: String,
}

impl Default for FileClearing {
    fn default() -> Self {
        Self { daily_cutoff: "23:00".into() }
    }
}

/// Each timer may be left out, keeping its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileSession {
    sign_on_timeout_ms: u64,
    echo_interval_ms: u32,
    idle_timeout_ms: u32,
    drain_timeout_ms: u64,
    /// 0: no replay window.
    replay_window_ms: u64,
    write_timeout_ms: u64,
}

impl Default for FileSession {
    fn default() -> Self {
        let defaults = SessionConfig::default();
        Self {
            sign_on_timeout_ms: defaults.sign_on_timeout_ms,
            echo_interval_ms: defaults.echo_interval_ms,
            idle_timeout_ms: defaults.idle_timeout_ms,
            drain_timeout_ms: defaults.drain_timeout_ms,
            replay_window_ms: defaults.replay_window_ms.unwrap_or(0),
            write_timeout_ms: defaults.write_timeout_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParticipant {
    id: InstitutionId,
    name: String,
    roles: Vec<FileRole>,
    /// The onboarding state it starts in (`Onboarding` names; "active" is "live"). The
    /// journal's later changes (made through the admin API) take precedence.
    #[serde(default)]
    status: Option<String>,
    /// One of the network's test counterparts (see `Onboarding`).
    #[serde(default)]
    test: bool,
    #[serde(default)]
    reply_deadline_ms: Option<u64>,
    #[serde(default)]
    rate_per_second: Option<u32>,
    #[serde(default, rename = "key")]
    keys: Vec<FileKey>,
    /// "hmac-sha256" (the default), "hmac-sm3" or "none".
    #[serde(default)]
    frame_mac: Option<String>,
    /// "native" (the default) or "iso8583" (it connects to the [iso8583] listener).
    #[serde(default)]
    protocol: Option<String>,
    /// Admitted counterparties; absent: every participant.
    #[serde(default)]
    counterparties: Option<Vec<InstitutionId>>,
    /// ISO 4217 alphabetic code of the currency it settles in as a payer ("THB"); its
    /// payments in other currencies are converted into it. Absent: it pays in the
    /// transaction's currency.
    #[serde(default)]
    settlement_currency: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileRole {
    Issuer,
    Acquirer,
    Network,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    id: u16,
    #[serde(default)]
    secret_hex: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    /// RFC 3339 instant from which the key is refused (the end of a rotation's overlap).
    #[serde(default)]
    not_after: Option<String>,
}

impl SwitchConfig {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.into(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates `text`, reporting errors against `path` (relative secret files
    /// are found beside it).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            file: path.into(),
            detail: error.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, problem: String| ConfigError::Invalid { file: path.into(), key, problem };
        // Paths in the file are relative to the file's directory unless absolute.
        let beside = |file: &Path| path.parent().unwrap_or(Path::new(".")).join(file);

        let session = &file.session;
        if !SIGN_ON_TIMEOUT_MS.contains(&session.sign_on_timeout_ms) {
            return Err(invalid("session.sign_on_timeout_ms".into(), format!("must be {SIGN_ON_TIMEOUT_MS:?}")));
        }
        if !ECHO_INTERVAL_MS.contains(&session.echo_interval_ms) {
            return Err(invalid("session.echo_interval_ms".into(), format!("must be {ECHO_INTERVAL_MS:?}")));
        }
        if session.idle_timeout_ms < session.echo_interval_ms.saturating_mul(2) {
            return Err(invalid(
                "session.idle_timeout_ms".into(),
                "must be at least twice session.echo_interval_ms, or idle sessions are cut between echoes".into(),
            ));
        }
        if !DRAIN_TIMEOUT_MS.contains(&session.drain_timeout_ms) {
            return Err(invalid("session.drain_timeout_ms".into(), format!("must be {DRAIN_TIMEOUT_MS:?}")));
        }
        if !WRITE_TIMEOUT_MS.contains(&session.write_timeout_ms) {
            return Err(invalid("session.write_timeout_ms".into(), format!("must be {WRITE_TIMEOUT_MS:?}")));
        }
        if session.replay_window_ms != 0 && !REPLAY_WINDOW_MS.contains(&session.replay_window_ms) {
            return Err(invalid(
                "session.replay_window_ms".into(),
                format!("must be 0 (no window) or {REPLAY_WINDOW_MS:?}"),
            ));
        }
        if file.participants.is_empty() {
            return Err(invalid("participant".into(), "at least one [[participant]] is needed".into()));
        }

        let mut seen = HashSet::new();
        let mut participants = Vec::with_capacity(file.participants.len());
        let mut policies = std::collections::HashMap::new();
        let mut counterparties = std::collections::HashMap::new();
        for (index, participant) in file.participants.into_iter().enumerate() {
            let key = |field: &str| format!("participant[{index}] ({}).{field}", participant.id);
            if !seen.insert(participant.id) {
                return Err(invalid(key("id"), "appears twice".into()));
            }
            if participant.roles.is_empty() {
                return Err(invalid(key("roles"), "needs at least one of issuer, acquirer, network".into()));
            }
            // An ISO 8583 participant signs on without a proof (its TLS certificate, or a
            // private link, names it): it needs no key.
            if participant.keys.is_empty() && participant.protocol.as_deref() != Some("iso8583") {
                return Err(invalid(key("key"), "needs at least one [[participant.key]]".into()));
            }
            if participant.rate_per_second == Some(0) {
                return Err(invalid(key("rate_per_second"), "must be at least 1 (leave it out for no limit)".into()));
            }
            if participant.reply_deadline_ms.is_some_and(|ms| !(100..=600_000).contains(&ms)) {
                return Err(invalid(key("reply_deadline_ms"), "must be 100..=600000".into()));
            }
            let state = match participant.status.as_deref() {
                None | Some("active") => Onboarding::Live,
                Some(text) => text.parse().map_err(|problem| invalid(key("status"), problem))?,
            };
            let settlement_currency = match participant.settlement_currency.as_deref() {
                None => None,
                Some(code) => Some(codec::currency::numeric(code).ok_or_else(|| {
                    invalid(key("settlement_currency"), format!("{code:?} is not a known ISO 4217 alphabetic code"))
                })?),
            };
            if settlement_currency.is_some() && file.fx.is_none() {
                return Err(invalid(
                    key("settlement_currency"),
                    "needs an [fx] table with the rates to convert into it".into(),
                ));
            }
            policies.insert(
                participant.id,
                crate::core::exchange::ParticipantPolicy {
                    state,
                    // Suspended in the file: back to live when resumed.
                    suspended_from: (state == Onboarding::Suspended).then_some(Onboarding::Live),
                    state_changed_ms: 0,
                    test: participant.test,
                    reply_deadline_ms: participant.reply_deadline_ms,
                    rate_per_second: participant.rate_per_second,
                    settlement_currency,
                },
            );
            let mut key_ids = HashSet::new();
            let mut keys = Vec::with_capacity(participant.keys.len());
            for (key_index, file_key) in participant.keys.iter().enumerate() {
                let name = |field: &str| key(&format!("key[{key_index}].{field}"));
                if !key_ids.insert(file_key.id) {
                    return Err(invalid(name("id"), format!("key id {} appears twice", file_key.id)));
                }
                let secret = match (&file_key.secret_hex, &file_key.secret_file) {
                    (Some(secret_hex), None) => hex::decode(secret_hex)
                        .ok()
                        .ok_or_else(|| invalid(name("secret_hex"), "is not hexadecimal".into()))?,
                    (None, Some(secret_path)) => {
                        let resolved = beside(secret_path);
                        let text = std::fs::read_to_string(&resolved).map_err(|error| {
                            invalid(name("secret_file"), format!("cannot read {}: {error}", resolved.display()))
                        })?;
                        hex::decode(text.trim()).ok().ok_or_else(|| {
                            invalid(
                                name("secret_file"),
                                format!("{} does not hold one hexadecimal key", resolved.display()),
                            )
                        })?
                    }
                    _ => {
                        return Err(invalid(
                            name("secret_hex"),
                            "give exactly one of secret_hex and secret_file".into(),
                        ));
                    }
                };
                if secret.len() < KEY_SIZE_MIN {
                    return Err(invalid(
                        name("secret_hex"),
                        format!("is {} bytes; at least {KEY_SIZE_MIN} are needed", secret.len()),
                    ));
                }
                let not_after_unix_ms = match &file_key.not_after {
                    None => None,
                    Some(text) => Some(
                        text.parse::<jiff::Timestamp>()
                            .map_err(|error| {
                                invalid(name("not_after"), format!("{text:?}: expected an RFC 3339 instant ({error})"))
                            })?
                            .as_millisecond(),
                    ),
                };
                keys.push(SharedKey { key_id: file_key.id, secret, not_after_unix_ms });
            }
            if let Some(protocol) = participant.protocol.as_deref().filter(|p| !matches!(*p, "native" | "iso8583")) {
                return Err(invalid(key("protocol"), format!("{protocol:?}: expected native or iso8583")));
            }
            let frame_mac = match participant.frame_mac.as_deref() {
                None => codec::MacAlgorithm::HmacSha256,
                Some(name) => codec::MacAlgorithm::from_name(name).ok_or_else(|| {
                    invalid(key("frame_mac"), format!("{name:?}: expected hmac-sha256, hmac-sm3 or none"))
                })?,
            };
            participants.push(Participant {
                id: participant.id,
                name: participant.name,
                roles: participant
                    .roles
                    .iter()
                    .map(|role| match role {
                        FileRole::Issuer => Role::Issuer,
                        FileRole::Acquirer => Role::Acquirer,
                        FileRole::Network => Role::Network,
                    })
                    .collect(),
                keys,
                frame_mac,
                iso8583: participant.protocol.as_deref() == Some("iso8583"),
            });
            if let Some(list) = participant.counterparties {
                counterparties.insert(participant.id, list);
            }
        }
        file.connections.check().map_err(|(key, problem)| invalid(format!("connections.{key}"), problem))?;
        if file.switch.shards.is_some_and(|shards| !(1..=crate::core::shard::SHARDS_MAX).contains(&shards)) {
            return Err(invalid("switch.shards".into(), format!("must be 1..={}", crate::core::shard::SHARDS_MAX)));
        }
        let fsync: SyncPolicy =
            file.journal.fsync.parse().map_err(|problem| invalid("journal.fsync".into(), problem))?;
        if !(1..=1024).contains(&file.journal.segment_mib) {
            return Err(invalid("journal.segment_mib".into(), "must be 1..=1024".into()));
        }
        if file.journal.retain_windows > 100_000 {
            return Err(invalid(
                "journal.retain_windows".into(),
                "must be 0 (keep every segment) to 100000 windows".into(),
            ));
        }
        if !(10_000..=100_000_000).contains(&file.journal.restart_point_records) {
            return Err(invalid("journal.restart_point_records".into(), "must be 10000..=100000000".into()));
        }
        let code_key = match &file.journal.code_key_file {
            None => None,
            Some(key_file) => {
                let resolved = beside(key_file);
                Some(read_code_key(&resolved).map_err(|problem| {
                    invalid("journal.code_key_file".into(), format!("{}: {problem}", resolved.display()))
                })?)
            }
        };
        let mut fees =
            crate::clearing::FeeSchedule { operator: file.switch.id.as_str().to_string(), ..Default::default() };
        for (index, fee) in file.fee.iter().enumerate() {
            let key = format!("fee[{index}] ({})", fee.participant.as_str());
            if !participants.iter().any(|p| p.id == fee.participant) {
                return Err(invalid(format!("{key}.participant"), "is not a configured participant".into()));
            }
            if fee.basis_points > 10_000 {
                return Err(invalid(format!("{key}.basis_points"), "must be 0..=10000".into()));
            }
            if fee.cross_border_basis_points > 10_000 {
                return Err(invalid(format!("{key}.cross_border_basis_points"), "must be 0..=10000".into()));
            }
            if fees.basis_points.insert(fee.participant.as_str().to_string(), fee.basis_points).is_some() {
                return Err(invalid(format!("{key}.participant"), "has a fee already".into()));
            }
            if fee.cross_border_basis_points != 0 {
                fees.cross_border_basis_points
                    .insert(fee.participant.as_str().to_string(), fee.cross_border_basis_points);
            }
        }
        let (rates, fx_rates_file, fx_margin_basis_points) = match &file.fx {
            None => (crate::fx::RateTable::default(), None, 0),
            Some(fx) => {
                if fx.margin_basis_points > codec::fx::MARGIN_BASIS_POINTS_MAX {
                    return Err(invalid(
                        "fx.margin_basis_points".into(),
                        format!("must be 0..={}", codec::fx::MARGIN_BASIS_POINTS_MAX),
                    ));
                }
                let resolved = beside(&fx.rates);
                let rates =
                    crate::fx::RateTable::read(&resolved).map_err(|problem| invalid("fx.rates".into(), problem))?;
                (rates, Some(resolved), fx.margin_basis_points)
            }
        };
        fees.fx_margin_basis_points = fx_margin_basis_points;
        let iso8583 = match &file.iso8583 {
            None => None,
            Some(iso) => {
                let profile = match codec::iso8583::Profile::builtin(&iso.profile) {
                    Some(profile) => profile,
                    None => {
                        let resolved = beside(Path::new(&iso.profile));
                        let text = std::fs::read_to_string(&resolved).map_err(|error| {
                            invalid(
                                "iso8583.profile".into(),
                                format!("{}: not built in, and {error}", resolved.display()),
                            )
                        })?;
                        codec::iso8583::Profile::from_json(&text)
                            .map_err(|error| invalid("iso8583.profile".into(), error.to_string()))?
                    }
                };
                Some(crate::edge::iso::Iso8583Settings { listen: iso.listen, profile: std::sync::Arc::new(profile) })
            }
        };
        if iso8583.is_none() && participants.iter().any(|p| p.iso8583) {
            return Err(invalid(
                "iso8583".into(),
                "a participant has protocol = \"iso8583\": give the [iso8583] listener".into(),
            ));
        }
        let fleet = match file.fleet {
            None => None,
            Some(fleet) => {
                let name_ok = |text: &str, dots: bool| {
                    !text.is_empty()
                        && text.split('.').all(|token| {
                            !token.is_empty()
                                && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                        })
                        && (dots || !text.contains('.'))
                };
                if !fleet.nats_url.starts_with("nats://") && !fleet.nats_url.starts_with("tls://") {
                    return Err(invalid(
                        "fleet.nats_url".into(),
                        format!("{:?}: expected nats://HOST:PORT", fleet.nats_url),
                    ));
                }
                if !name_ok(&fleet.stream, false) {
                    return Err(invalid(
                        "fleet.stream".into(),
                        format!("{:?}: letters, digits, - and _", fleet.stream),
                    ));
                }
                if !name_ok(&fleet.subject_prefix, true) {
                    return Err(invalid(
                        "fleet.subject_prefix".into(),
                        format!("{:?}: dot-separated tokens of letters, digits, - and _", fleet.subject_prefix),
                    ));
                }
                if !(1..=5).contains(&fleet.replicas) {
                    return Err(invalid("fleet.replicas".into(), format!("{}: 1 to 5", fleet.replicas)));
                }
                let token = match &fleet.token_file {
                    Some(file) => {
                        let resolved = beside(file);
                        let token = crate::fleet::NatsToken::read(&resolved);
                        Some(token.map_err(|problem| invalid("fleet.token_file".into(), problem))?)
                    }
                    None => None,
                };
                Some(crate::fleet::FleetSettings {
                    nats_url: fleet.nats_url,
                    stream: fleet.stream,
                    subject_prefix: fleet.subject_prefix,
                    replicas: fleet.replicas,
                    token,
                })
            }
        };
        let daily_cutoff = match file.clearing.daily_cutoff.as_str() {
            "off" => None,
            text => Some(text.parse::<jiff::civil::Time>().map_err(|_| {
                invalid("clearing.daily_cutoff".into(), format!("{text:?}: expected HH:MM (Asia/Shanghai) or off"))
            })?),
        };
        let tls = match (&file.tls, file.switch.plaintext) {
            (Some(tls), false) => Some(crate::edge::tls::TlsSettings {
                cert_file: beside(&tls.cert_file),
                key_file: beside(&tls.key_file),
                client_ca_file: beside(&tls.client_ca_file),
                crl_files: tls.crl_files.iter().map(|f| beside(f)).collect(),
            }),
            (None, true) => None,
            (Some(_), true) => {
                return Err(invalid("switch.plaintext".into(), "is true, but [tls] is given: choose one".into()));
            }
            (None, false) => {
                return Err(invalid(
                    "tls".into(),
                    "participant links need [tls] (mutual TLS), or `plaintext = true` under [switch] for loopback tests"
                        .into(),
                ));
            }
        };
        let mut admin_tokens = Vec::with_capacity(file.admin.tokens.len());
        for (index, token) in file.admin.tokens.iter().enumerate() {
            let key = |field: &str| format!("admin.token[{index}] ({}).{field}", token.name);
            let role = crate::access::AdminRole::from_name(&token.role)
                .ok_or_else(|| invalid(key("role"), format!("{:?}: expected read or operator", token.role)))?;
            let sha256: [u8; 32] = match (&token.sha256, &token.token_file) {
                (Some(text), None) => hex::decode(text)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| invalid(key("sha256"), "is not 64 hexadecimal digits".into()))?,
                (None, Some(file)) => {
                    let resolved = beside(file);
                    let secret = crate::access::read_token_file(&resolved).map_err(|error| {
                        invalid(key("token_file"), format!("cannot read {}: {error}", resolved.display()))
                    })?;
                    crate::access::AdminToken::new(&token.name, role, &secret).sha256
                }
                _ => return Err(invalid(key("sha256"), "give exactly one of sha256 and token_file".into())),
            };
            if admin_tokens.iter().any(|t: &crate::access::AdminToken| t.name == token.name) {
                return Err(invalid(key("name"), "appears twice".into()));
            }
            admin_tokens.push(crate::access::AdminToken { name: token.name.clone(), role, sha256 });
        }
        let exchange = &file.exchange;
        if !(100..=600_000).contains(&exchange.reply_deadline_ms) {
            return Err(invalid("exchange.reply_deadline_ms".into(), "must be 100..=600000".into()));
        }
        if !(100..=3_600_000).contains(&exchange.reversal_retry_ms) {
            return Err(invalid("exchange.reversal_retry_ms".into(), "must be 100..=3600000".into()));
        }
        if exchange.in_flight_max == 0 || exchange.in_flight_per_participant_max == 0 || exchange.completed_max == 0 {
            return Err(invalid(
                "exchange".into(),
                "in_flight_max, in_flight_per_participant_max and completed_max must be at least 1".into(),
            ));
        }
        if exchange.verification_rate_per_second == 0 {
            return Err(invalid("exchange.verification_rate_per_second".into(), "must be at least 1".into()));
        }
        if exchange.drain_deadline_ms.is_some_and(|ms| ms > 600_000) {
            return Err(invalid("exchange.drain_deadline_ms".into(), "must be 0..=600000".into()));
        }
        for (id, list) in &counterparties {
            for other in list {
                if !participants.iter().any(|p| p.id == *other) {
                    return Err(invalid(
                        format!("participant ({id}).counterparties"),
                        format!("{other} is not a configured participant"),
                    ));
                }
            }
        }
        // Routes lead only to configured participants with the role that receives them.
        let has_role =
            |id: &InstitutionId, role: Role| participants.iter().any(|p| p.id == *id && p.roles.contains(&role));
        for (index, row) in file.issuer_prefix.iter().enumerate() {
            if !has_role(&row.issuer, Role::Issuer) {
                return Err(invalid(
                    format!("issuer_prefix[{index}].issuer"),
                    format!("{} is not a participant with the issuer role", row.issuer),
                ));
            }
        }
        let issuers = if file.issuer_prefix.is_empty() {
            codec::payment_code::IssuerTable::china_default()
        } else {
            codec::payment_code::IssuerTable::new(file.issuer_prefix)
                .map_err(|error| invalid("issuer_prefix".into(), error.to_string()))?
        };
        // QR GUIDs and UnionPay institution codes both lead to acquirers (or networks):
        // one check for both tables.
        let acquirer_routes = |table: &str,
                               field: &str,
                               rows: Vec<(String, InstitutionId)>,
                               key_ok: fn(&str) -> bool,
                               rule: &str|
         -> Result<std::collections::HashMap<String, InstitutionId>, ConfigError> {
            let mut routes = std::collections::HashMap::new();
            for (index, (key, acquirer)) in rows.into_iter().enumerate() {
                if !has_role(&acquirer, Role::Acquirer) && !has_role(&acquirer, Role::Network) {
                    return Err(invalid(
                        format!("{table}[{index}].acquirer"),
                        format!("{acquirer} is not a participant with the acquirer or network role"),
                    ));
                }
                if !key_ok(&key) || routes.insert(key, acquirer).is_some() {
                    return Err(invalid(
                        format!("{table}[{index}].{field}"),
                        format!("must be {rule} and appear once"),
                    ));
                }
            }
            Ok(routes)
        };
        let mut merchant_id_tags = std::collections::HashMap::new();
        for (index, row) in file.qr_network.iter().enumerate() {
            let tags: Option<Vec<u8>> = row
                .merchant_id_tags
                .iter()
                .map(|tag| tag.parse().ok().filter(|t| tag.len() == 2 && (1..=99).contains(t)))
                .collect();
            match tags.filter(|tags| !tags.is_empty()) {
                Some(tags) => merchant_id_tags.insert(row.guid.clone(), tags),
                None => {
                    return Err(invalid(
                        format!("qr_network[{index}].merchant_id_tags"),
                        "must list one or more sub-tags, each two digits from \"01\" to \"99\"".into(),
                    ));
                }
            };
        }
        let qr_networks = acquirer_routes(
            "qr_network",
            "guid",
            file.qr_network.into_iter().map(|row| (row.guid, row.acquirer)).collect(),
            |guid| !guid.is_empty() && guid.len() <= 32,
            "1 to 32 characters",
        )?
        .into_iter()
        .map(|(guid, acquirer)| {
            let merchant_id_tags = merchant_id_tags.remove(&guid).unwrap_or_default();
            (guid, crate::core::exchange::QrNetwork { acquirer, merchant_id_tags })
        })
        .collect();
        let unionpay_institutions = acquirer_routes(
            "unionpay_institution",
            "code",
            file.unionpay_institution.into_iter().map(|row| (row.code, row.acquirer)).collect(),
            |code| code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()),
            "8 digits",
        )?;
        Ok(Self {
            exchange: ExchangeConfig {
                switch_id: file.switch.id,
                node: file.switch.node,
                shard: 0,
                reply_deadline_ms: exchange.reply_deadline_ms,
                reversal_retry_ms: exchange.reversal_retry_ms,
                in_flight_max: exchange.in_flight_max,
                in_flight_per_participant_max: exchange.in_flight_per_participant_max,
                completed_max: exchange.completed_max,
                policies,
                counterparties,
                breaker_failures: exchange.breaker_failures,
                breaker_open_ms: exchange.breaker_open_ms,
                verification_amount_max_minor: exchange.verification_amount_max_minor,
                verification_rate_per_second: exchange.verification_rate_per_second,
                drain_deadline_ms: exchange.drain_deadline_ms.unwrap_or(exchange.reply_deadline_ms),
                rates: std::sync::Arc::new(rates),
                fx_margin_basis_points,
            },
            routes: Routes { issuers, qr_networks, unionpay_institutions },
            listen: file.switch.listen,
            admin_listen: file.switch.admin_listen,
            shards: file.switch.shards,
            data_dir: beside(&file.journal.data_dir),
            fsync,
            segment_size: file.journal.segment_mib << 20,
            retain_windows: file.journal.retain_windows,
            restart_every: file.journal.restart_point_records,
            code_key,
            daily_cutoff,
            fees,
            session: SessionConfig {
                switch_id: file.switch.id,
                sign_on_timeout_ms: session.sign_on_timeout_ms,
                echo_interval_ms: session.echo_interval_ms,
                idle_timeout_ms: session.idle_timeout_ms,
                drain_timeout_ms: session.drain_timeout_ms,
                replay_window_ms: (session.replay_window_ms != 0).then_some(session.replay_window_ms),
                write_timeout_ms: session.write_timeout_ms,
            },
            connections: file.connections,
            participants,
            admin_tokens,
            tls,
            fleet,
            fx_rates_file,
            iso8583,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(config.fleet, Some(crate::fleet::FleetSettings::new("nats://10.0.0.5:4222")));
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
            (
                MINIMAL.replace("roles = [\"acquirer\"]", "roles = []"),
                "participant[0] (ACQ0001).roles: needs at least one",
            ),
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
        assert!(
            error.contains("issuer_prefix[0].issuer: ACQ0001 is not a participant with the issuer role"),
            "{error}"
        );
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
        assert_eq!(
            parse(&promptpay).expect("valid").routes.qr_networks["A000000677010111"].merchant_id_tags,
            [1, 2, 3]
        );
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
        use crate::access::AdminRole;
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
            (
                format!("{}counterparties = [\"NOBODY\"]\n{key}", participant("")),
                "NOBODY is not a configured participant",
            ),
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
}
