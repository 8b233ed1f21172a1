//! The configuration file's shape, as TOML gives it (serde): every table and key, with
//! its default. `deny_unknown_fields` everywhere, so a misspelt key is an error, never
//! ignored. What the values must be is checked by the section modules.

use std::net::SocketAddr;
use std::path::PathBuf;

use codec::InstitutionId;
use serde::Deserialize;

use super::SwitchConfig;
use crate::core::exchange::ExchangeConfig;
use crate::core::session::SessionConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) switch: FileSwitch,
    #[serde(default)]
    pub(super) session: FileSession,
    #[serde(default)]
    pub(super) connections: crate::edge::gate::ConnectionLimits,
    #[serde(default)]
    pub(super) exchange: FileExchange,
    #[serde(default)]
    pub(super) journal: FileJournal,
    #[serde(default)]
    pub(super) clearing: FileClearing,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    #[serde(default)]
    pub(super) tls: Option<FileTls>,
    #[serde(default)]
    pub(super) fleet: Option<FileFleet>,
    #[serde(default)]
    pub(super) iso8583: Option<FileIso8583>,
    #[serde(default)]
    pub(super) fx: Option<FileFx>,
    /// Fee rates, per participant.
    #[serde(default)]
    pub(super) fee: Vec<FileFee>,
    #[serde(default, rename = "participant")]
    pub(super) participants: Vec<FileParticipant>,
    /// Payment-code prefixes to issuers; the built-in table when absent.
    #[serde(default)]
    pub(super) issuer_prefix: Vec<codec::payment_code::IssuerPrefix>,
    /// QR network GUIDs to acquirers.
    #[serde(default)]
    pub(super) qr_network: Vec<FileQrNetwork>,
    /// UnionPay URL institution codes to acquirers.
    #[serde(default)]
    pub(super) unionpay_institution: Vec<FileUnionPayInstitution>,
}

/// Mutual TLS on participant links; paths relative to the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
    pub(super) client_ca_file: PathBuf,
    #[serde(default)]
    pub(super) crl_files: Vec<PathBuf>,
}

/// The fleet stream this node publishes its journal to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFleet {
    pub(super) nats_url: String,
    #[serde(default = "fleet_stream_default")]
    pub(super) stream: String,
    #[serde(default = "fleet_subject_prefix_default")]
    pub(super) subject_prefix: String,
    #[serde(default = "fleet_replicas_default")]
    pub(super) replicas: usize,
    /// A file holding the NATS server's authorization token; relative to the configuration
    /// file's directory unless absolute.
    pub(super) token_file: Option<PathBuf>,
}

fn fleet_stream_default() -> String {
    crate::settlement::fleet::FleetSettings::STREAM_DEFAULT.into()
}

fn fleet_subject_prefix_default() -> String {
    crate::settlement::fleet::FleetSettings::SUBJECT_PREFIX_DEFAULT.into()
}

fn fleet_replicas_default() -> usize {
    1
}

/// Admin API tokens, by their SHA-256 (or a file holding the token itself).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    #[serde(default, rename = "token")]
    pub(super) tokens: Vec<FileAdminToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdminToken {
    pub(super) name: String,
    pub(super) role: String,
    #[serde(default)]
    pub(super) sha256: Option<String>,
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
}

/// Each setting may be left out, keeping its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileExchange {
    pub(super) reply_deadline_ms: u64,
    pub(super) reversal_retry_ms: u64,
    pub(super) in_flight_max: usize,
    pub(super) in_flight_per_participant_max: usize,
    pub(super) completed_max: usize,
    pub(super) breaker_failures: u32,
    pub(super) breaker_open_ms: u64,
    pub(super) verification_amount_max_minor: u64,
    pub(super) verification_rate_per_second: u32,
    /// Absent: the reply deadline.
    pub(super) drain_deadline_ms: Option<u64>,
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
pub(super) struct FileQrNetwork {
    pub(super) guid: String,
    pub(super) acquirer: InstitutionId,
    /// The template's sub-tags that carry the merchant's id, in order of preference, as
    /// two-digit strings ("01" to "99"; 00 is the GUID).
    #[serde(default = "merchant_id_tags_default")]
    pub(super) merchant_id_tags: Vec<String>,
}

fn merchant_id_tags_default() -> Vec<String> {
    vec![format!("{:02}", crate::core::exchange::QrNetwork::MERCHANT_ID_TAG_DEFAULT)]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUnionPayInstitution {
    pub(super) code: String,
    pub(super) acquirer: InstitutionId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSwitch {
    pub(super) id: InstitutionId,
    pub(super) listen: SocketAddr,
    #[serde(default = "admin_listen_default")]
    pub(super) admin_listen: SocketAddr,
    /// Absent: one shard per core.
    pub(super) shards: Option<usize>,
    /// This node's id in a fleet (0 to 255), carried in every switch reference.
    #[serde(default)]
    pub(super) node: u8,
    /// Participant links without TLS: only when said, for loopback tests.
    #[serde(default)]
    pub(super) plaintext: bool,
}

/// The listener for ISO 8583 participants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIso8583 {
    pub(super) listen: SocketAddr,
    /// A built-in profile ("binary", "ascii", "binary-gbk") or a profile file (JSON, relative to the
    /// configuration file), read by every participant on this listener.
    #[serde(default = "iso8583_profile_default")]
    pub(super) profile: String,
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
pub(super) struct FileJournal {
    /// Relative to the configuration file's directory unless absolute.
    pub(super) data_dir: PathBuf,
    pub(super) fsync: String,
    /// Segment size in MiB (1 to 1024).
    pub(super) segment_mib: u64,
    /// Closed windows kept rebuildable; older segments are removed after each close
    /// (0: keep every segment).
    pub(super) retain_windows: u64,
    /// Records a shard writes between restart points (10,000 to 100,000,000).
    pub(super) restart_point_records: u64,
    /// A file holding the 16-byte key (32 hex digits) that encrypts payment codes in the
    /// journal; relative to the configuration file's directory unless absolute.
    pub(super) code_key_file: Option<PathBuf>,
}

impl Default for FileJournal {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(SwitchConfig::DATA_DIR_DEFAULT),
            fsync: "always".into(),
            segment_mib: crate::durability::journal::SEGMENT_SIZE_MAX >> 20,
            retain_windows: 0,
            restart_point_records: crate::durability::journal::RESTART_EVERY_DEFAULT,
            code_key_file: None,
        }
    }
}

/// A participant's fee rate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFee {
    pub(super) participant: InstitutionId,
    /// Of every payment the participant is paid; at most 10000 (100%).
    pub(super) basis_points: u32,
    /// Added to `basis_points` on a converted (cross-border) payment.
    #[serde(default)]
    pub(super) cross_border_basis_points: u32,
}

/// Foreign exchange: the rate table and the margin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFx {
    /// The rate table file (format: `switch/src/fx.rs`), relative to this file.
    pub(super) rates: PathBuf,
    /// Added to the mid rate on every conversion; at most 1000 (10%).
    #[serde(default)]
    pub(super) margin_basis_points: u16,
}

/// Clearing windows; the key may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileClearing {
    /// "HH:MM" in Asia/Shanghai, or "off".
    pub(super) daily_cutoff: String,
}

impl Default for FileClearing {
    fn default() -> Self {
        Self { daily_cutoff: "23:00".into() }
    }
}

/// Each timer may be left out, keeping its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSession {
    pub(super) sign_on_timeout_ms: u64,
    pub(super) echo_interval_ms: u32,
    pub(super) idle_timeout_ms: u32,
    pub(super) drain_timeout_ms: u64,
    /// 0: no replay window.
    pub(super) replay_window_ms: u64,
    pub(super) write_timeout_ms: u64,
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
pub(super) struct FileParticipant {
    pub(super) id: InstitutionId,
    pub(super) name: String,
    pub(super) roles: Vec<FileRole>,
    /// The onboarding state it starts in (`Onboarding` names; "active" is "live"). The
    /// journal's later changes (made through the admin API) take precedence.
    #[serde(default)]
    pub(super) status: Option<String>,
    /// One of the network's test counterparts (see `Onboarding`).
    #[serde(default)]
    pub(super) test: bool,
    #[serde(default)]
    pub(super) reply_deadline_ms: Option<u64>,
    #[serde(default)]
    pub(super) rate_per_second: Option<u32>,
    #[serde(default, rename = "key")]
    pub(super) keys: Vec<FileKey>,
    /// "hmac-sha256" (the default), "hmac-sm3" or "none".
    #[serde(default)]
    pub(super) frame_mac: Option<String>,
    /// "native" (the default) or "iso8583" (it connects to the [iso8583] listener).
    #[serde(default)]
    pub(super) protocol: Option<String>,
    /// Admitted counterparties; absent: every participant.
    #[serde(default)]
    pub(super) counterparties: Option<Vec<InstitutionId>>,
    /// ISO 4217 alphabetic code of the currency it settles in as a payer ("THB"); its
    /// payments in other currencies are converted into it. Absent: it pays in the
    /// transaction's currency.
    #[serde(default)]
    pub(super) settlement_currency: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FileRole {
    Issuer,
    Acquirer,
    Network,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKey {
    pub(super) id: u16,
    #[serde(default)]
    pub(super) secret_hex: Option<String>,
    #[serde(default)]
    pub(super) secret_file: Option<PathBuf>,
    /// RFC 3339 instant from which the key is refused (the end of a rotation's overlap).
    #[serde(default)]
    pub(super) not_after: Option<String>,
}
