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
//!
//! Code map: `file` is the file's shape (serde); one module per group of sections checks
//! its values and builds what the switch runs with: `limits` ([session], [exchange],
//! [connections]), `participants`, `routes`, `storage` ([journal], [clearing], [[fee]],
//! [fx]) and `links` ([tls], [iso8583], [admin], [fleet]). `from_toml` calls them in
//! order and assembles `SwitchConfig`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use codec::InstitutionId;

use crate::core::exchange::{ExchangeConfig, Routes};
use crate::core::session::SessionConfig;
use crate::durability::journal::SyncPolicy;
use crate::participant::{Participant, Role, SharedKey};

mod file;
mod limits;
mod links;
mod participants;
mod routes;
mod storage;

pub use storage::read_code_key;

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
    pub fees: crate::settlement::clearing::FeeSchedule,
    pub session: SessionConfig,
    /// Connection limits and the sign-on throttle (`[connections]`).
    pub connections: crate::edge::gate::ConnectionLimits,
    pub exchange: ExchangeConfig,
    pub routes: Routes,
    pub participants: Vec<Participant>,
    /// Admin API tokens; none: `switch run` makes an operator token in the data directory.
    pub admin_tokens: Vec<crate::ops::access::AdminToken>,
    /// Mutual TLS on participant links; `None` only where the configuration says
    /// `plaintext = true` (the embedded default, on loopback).
    pub tls: Option<crate::edge::tls::TlsSettings>,
    /// Publish the journal's records to a fleet's NATS JetStream stream (`crate::settlement::fleet`).
    pub fleet: Option<crate::settlement::fleet::FleetSettings>,
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
            segment_size: crate::durability::journal::SEGMENT_SIZE_MAX,
            retain_windows: 0,
            restart_every: crate::durability::journal::RESTART_EVERY_DEFAULT,
            code_key: None,
            daily_cutoff: Some(Self::DAILY_CUTOFF_DEFAULT),
            fees: crate::settlement::clearing::FeeSchedule {
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

/// A configuration file being read: where its errors are reported, and what its relative
/// paths are relative to.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    path: &'a Path,
}

impl Source<'_> {
    fn invalid(&self, key: String, problem: String) -> ConfigError {
        ConfigError::Invalid { file: self.path.into(), key, problem }
    }

    /// `file`, relative to the configuration file's directory unless absolute.
    fn beside(&self, file: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(file)
    }
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
        let file: file::FileConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            file: path.into(),
            detail: error.to_string().trim_end().to_string(),
        })?;
        let source = Source { path };
        let session = limits::session(&file.session, file.switch.id, source)?;
        let read = participants::read(file.participants, file.fx.is_some(), source)?;
        limits::connections(&file.connections, source)?;
        if file.switch.shards.is_some_and(|shards| !(1..=crate::core::shard::SHARDS_MAX).contains(&shards)) {
            let problem = format!("must be 1..={}", crate::core::shard::SHARDS_MAX);
            return Err(source.invalid("switch.shards".into(), problem));
        }
        let journal = storage::journal(&file.journal, source)?;
        let mut fees = storage::fees(&file.fee, &read.participants, file.switch.id, source)?;
        let (rates, fx_rates_file, fx_margin_basis_points) = storage::fx(file.fx.as_ref(), source)?;
        fees.fx_margin_basis_points = fx_margin_basis_points;
        let iso8583 = links::iso8583(file.iso8583.as_ref(), &read.participants, source)?;
        let fleet = links::fleet(file.fleet, source)?;
        let daily_cutoff = storage::daily_cutoff(&file.clearing, source)?;
        let tls = links::tls(file.tls.as_ref(), file.switch.plaintext, source)?;
        let admin_tokens = links::admin_tokens(&file.admin, source)?;
        let exchange = &file.exchange;
        limits::exchange(exchange, source)?;
        participants::check_counterparties(&read, source)?;
        let routes =
            routes::read(file.issuer_prefix, file.qr_network, file.unionpay_institution, &read.participants, source)?;
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
                policies: read.policies,
                counterparties: read.counterparties,
                breaker_failures: exchange.breaker_failures,
                breaker_open_ms: exchange.breaker_open_ms,
                verification_amount_max_minor: exchange.verification_amount_max_minor,
                verification_rate_per_second: exchange.verification_rate_per_second,
                drain_deadline_ms: exchange.drain_deadline_ms.unwrap_or(exchange.reply_deadline_ms),
                rates: std::sync::Arc::new(rates),
                fx_margin_basis_points,
            },
            routes,
            listen: file.switch.listen,
            admin_listen: file.switch.admin_listen,
            shards: file.switch.shards,
            data_dir: journal.data_dir,
            fsync: journal.fsync,
            segment_size: journal.segment_size,
            retain_windows: journal.retain_windows,
            restart_every: journal.restart_every,
            code_key: journal.code_key,
            daily_cutoff,
            fees,
            session,
            connections: file.connections,
            participants: read.participants,
            admin_tokens,
            tls,
            fleet,
            fx_rates_file,
            iso8583,
        })
    }
}

#[cfg(test)]
mod tests;
