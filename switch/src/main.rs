//! `switch`: the clearing message switch's command line.

use std::sync::Arc;

mod demo;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switch::config::SwitchConfig;
use switch::durability::journal::{Damage, JournalSettings, SyncPolicy};
use switch::edge::tcp::{Shared, serve};
use switch::edge::transport::Io;
use switch::participant::Directory;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "switch", version, about = "Clearing message switch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode a participant's message and print its fields as JSON (sensitive values
    /// masked). Exits 1 with the offset and field on stderr when the input is invalid.
    #[command(subcommand)]
    Inspect(Inspect),
    /// Check or read the journal in a data directory (the switch need not be running).
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Close a clearing window, or rebuild a closed window's files from the journal.
    #[command(subcommand)]
    Clearing(ClearingCommand),
    /// Start a switch on the embedded default, replay a holiday profile through it with
    /// the load generator, close the window and reconcile (about a minute).
    Demo(demo::DemoArgs),
    /// Run the switch. With no options: the embedded demo network on 127.0.0.1:7400.
    Run {
        /// A TOML configuration file (see deploy/switch.example.toml), validated at start.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Address for participant connections (overrides the file's switch.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Address of the admin HTTP port: /livez, /readyz, /metrics (default 127.0.0.1:7401).
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// Shards: event-loop threads, each owning its connections and transactions
        /// (overrides the file's switch.shards; default one per core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        shards: Option<u16>,
        /// The shards' data path: tokio (portable) or uring (io_uring; falls back to tokio,
        /// with a warning, where the kernel refuses it).
        #[arg(long, value_enum, default_value_t = Io::Tokio)]
        io: Io,
        /// Where the journal is kept (overrides the file's journal.data_dir; the embedded
        /// default uses ./switch-data).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// When the journal is synced: always (before any reply leaves), interval:MICROS,
        /// or never (overrides the file's journal.fsync). See ARCHITECTURE.md for the risks.
        #[arg(long)]
        fsync: Option<SyncPolicy>,
        /// Journal retention: keep this many closed windows rebuildable and remove older
        /// segments after each close; 0 keeps every segment (overrides the file's
        /// journal.retain_windows). See README, "Journal retention".
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000))]
        retain_windows: Option<u64>,
        /// Start even if the journal has damaged records followed by valid ones, cutting it
        /// at the damage (the records after it are lost; later segments are kept aside).
        #[arg(long)]
        accept_journal_damage: bool,
        /// This node's id in a fleet, 0 to 255 (overrides the file's switch.node), or `auto`:
        /// the ordinal ending the host name (a StatefulSet pod `switch-2` is node 2). It is
        /// carried in every switch reference, and a data directory keeps its node.
        #[arg(long)]
        node: Option<String>,
        /// Encrypt payment codes in the journal with this key (32 hex digits in a file;
        /// overrides the file's journal.code_key_file). Keep it apart from the data.
        #[arg(long)]
        code_key_file: Option<std::path::PathBuf>,
        /// Publish the journal's records to a fleet's NATS JetStream stream at this URL
        /// (nats://HOST:PORT; overrides the file's fleet.nats_url). See README, "A fleet".
        #[arg(long)]
        nats: Option<String>,
        /// A file holding the NATS server's authorization token (overrides the file's
        /// fleet.token_file).
        #[arg(long, requires = "nats")]
        nats_token_file: Option<std::path::PathBuf>,
    },
}

/// Where `switch clearing close` reads the records of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// This node's journal (through its admin port, or its stopped data directory).
    Journal,
    /// The fleet's NATS JetStream stream: every node's published records.
    Nats,
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Reads and checks every shard's journal without changing it. Exits 1 on damage,
    /// naming the segment and offset.
    Verify {
        #[arg(long, default_value = SwitchConfig::DATA_DIR_DEFAULT)]
        data_dir: std::path::PathBuf,
        /// The journal's payment-code key (32 hex digits), if its codes are encrypted.
        #[arg(long)]
        code_key_file: Option<std::path::PathBuf>,
    },
    /// Prints journal records, one per line (payment codes masked).
    Inspect {
        #[arg(long, default_value = SwitchConfig::DATA_DIR_DEFAULT)]
        data_dir: std::path::PathBuf,
        /// Only this shard's journal.
        #[arg(long)]
        shard: Option<usize>,
        /// At most this many records per shard, from the start.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// The journal's payment-code key (32 hex digits), if its codes are encrypted.
        #[arg(long)]
        code_key_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ClearingCommand {
    /// Closes the open window and writes its files under DATA_DIR/clearing/. Through a
    /// running switch's admin port (--admin), or on a stopped switch's data directory
    /// (--data-dir). With --source nats: builds a window every node of a fleet has cut
    /// from the fleet's stream, into --out.
    Close {
        #[arg(long, conflicts_with = "data_dir", required_unless_present_any = ["data_dir", "out"])]
        admin: Option<std::net::SocketAddr>,
        /// With --admin: a file holding an operator token (default: the embedded default's
        /// switch-data/admin.token).
        #[arg(long, requires = "admin")]
        token_file: Option<std::path::PathBuf>,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// With --data-dir or --source nats: the configuration whose fee schedule applies
        /// (none: the embedded default's); with --source nats, also its [fleet] stream
        /// settings.
        #[arg(long, conflicts_with = "admin")]
        config: Option<std::path::PathBuf>,
        /// With --data-dir: the journal's payment-code key, if its codes are encrypted.
        #[arg(long, requires = "data_dir")]
        code_key_file: Option<std::path::PathBuf>,
        /// Where the window's records come from.
        #[arg(long, value_enum, default_value_t = Source::Journal)]
        source: Source,
        /// With --source nats: the NATS server (default: the configuration's fleet.nats_url).
        #[arg(long)]
        nats: Option<String>,
        /// With --source nats: a file holding the NATS server's authorization token.
        #[arg(long)]
        nats_token_file: Option<std::path::PathBuf>,
        /// With --source nats: the window to build; every node must have cut it.
        #[arg(long, required_if_eq("source", "nats"))]
        window: Option<u64>,
        /// With --source nats: every node of the fleet (`0-2`, `0,1,2`); a node missing
        /// from the stream, or one not listed, is an error.
        #[arg(long, required_if_eq("source", "nats"))]
        nodes: Option<String>,
        /// With --source nats: the fleet's files go under OUT/clearing/window-N/.
        #[arg(long, conflicts_with_all = ["admin", "data_dir"], required_if_eq("source", "nats"))]
        out: Option<std::path::PathBuf>,
    },
    /// Writes a closed window's files again from the journal (byte-identical), with the
    /// inputs (fee schedule) its close recorded.
    Rebuild {
        #[arg(long, default_value = SwitchConfig::DATA_DIR_DEFAULT)]
        data_dir: std::path::PathBuf,
        #[arg(long)]
        window: u64,
        /// For a window closed before its close recorded its inputs, and without its
        /// fee_schedule.json: the configuration whose fee schedule applies (none: the
        /// embedded default's).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// The journal's payment-code key (32 hex digits), if its codes are encrypted.
        #[arg(long)]
        code_key_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum Inspect {
    /// An EMVCo merchant-presented QR payload, or a UnionPay QR URL.
    Qr { payload: String },
    /// An ISO 8583 message in hex (without its length header unless --framed).
    Iso8583 {
        hex: String,
        /// The participant profile: binary, ascii or binary-gbk.
        #[arg(long, default_value = "binary")]
        profile: String,
        /// The hex starts with the profile's TCP length header.
        #[arg(long)]
        framed: bool,
    },
    /// One native-protocol frame in hex.
    Frame { hex: String },
}

/// Prints a line on standard output; a reader that went away (`| head`) ends the program
/// quietly instead of with a panic.
macro_rules! emit {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(error) = writeln!(std::io::stdout().lock(), "{line}") {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("switch: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

fn main() {
    if let Err(error) = main_inner() {
        eprintln!("switch: error: {error:#}");
        std::process::exit(exit_code(&error));
    }
}

/// 3 (`EXIT_JOURNAL_FAILED`) when an operator must see to the journal or its disk before
/// the switch can run (its systemd unit does not restart it then); 1 otherwise.
fn exit_code(error: &anyhow::Error) -> i32 {
    let operator = error.chain().any(|cause| {
        cause.downcast_ref::<switch::durability::journal::JournalError>().is_some_and(|error| error.needs_operator())
            || cause.downcast_ref::<std::io::Error>().is_some_and(switch::durability::journal::storage_failed)
    });
    if operator { switch::durability::journal::EXIT_JOURNAL_FAILED } else { 1 }
}

fn inspect(command: Inspect) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let result = match command {
        Inspect::Qr { payload } => switch::inspect::qr(&payload),
        Inspect::Iso8583 { hex, profile, framed } => switch::inspect::iso8583(&hex, &profile, framed, now_ms),
        Inspect::Frame { hex } => switch::inspect::frame(&hex),
    };
    match result {
        Ok(value) => {
            emit!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Err(error) => {
            eprintln!("switch inspect: {error}");
            std::process::exit(1);
        }
    }
}

fn main_inner() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            listen,
            admin_listen,
            shards,
            io,
            data_dir,
            fsync,
            retain_windows,
            accept_journal_damage,
            node,
            code_key_file,
            nats,
            nats_token_file,
        } => {
            let mut config = match config {
                Some(path) => SwitchConfig::from_file(&path)?,
                None => SwitchConfig::embedded_default(),
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(admin_listen) = admin_listen {
                config.admin_listen = admin_listen;
            }
            if let Some(shards) = shards {
                config.shards = Some(usize::from(shards));
            }
            if let Some(data_dir) = data_dir {
                config.data_dir = data_dir;
            }
            if let Some(fsync) = fsync {
                config.fsync = fsync;
            }
            if let Some(retain_windows) = retain_windows {
                config.retain_windows = retain_windows;
            }
            if let Some(path) = code_key_file {
                config.code_key = Some(read_code_key(&path)?);
            }
            config.fleet = with_nats_overrides(config.fleet.take(), nats, nats_token_file)?;
            if let Some(node) = node {
                config.exchange.node = match node.as_str() {
                    "auto" => {
                        let hostname = std::env::var("HOSTNAME")
                            .ok()
                            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                            .unwrap_or_default();
                        switch::config::node_from_hostname(&hostname).with_context(|| {
                            format!("--node auto: the host name {:?} does not end in -N (0 to 255)", hostname.trim())
                        })?
                    }
                    number => {
                        number.parse().with_context(|| format!("--node {number:?}: expected 0 to 255 or auto"))?
                    }
                };
            }
            let damage = if accept_journal_damage { Damage::Truncate } else { Damage::Refuse };
            run(config, io, damage)
        }
        Command::Demo(args) => {
            let code = demo::demo(&args, close_via_admin)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Inspect(command) => inspect(command),
        Command::Journal(command) => journal_command(command),
        Command::Clearing(command) => clearing_command(command),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what systemd and Kubernetes send); never if
/// neither handler can be installed (then the switch runs until killed).
async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT: stopping"),
        () = terminate => tracing::info!("SIGTERM: stopping"),
    }
}

/// Closes the open window through a running switch's admin port, as the operator whose
/// token is in `token_file`: its number and files.
fn close_via_admin(
    admin: std::net::SocketAddr,
    token_file: &std::path::Path,
) -> anyhow::Result<(u64, Vec<std::path::PathBuf>)> {
    use std::io::{Read, Write};
    let token = switch::ops::access::read_token_file(token_file)
        .with_context(|| format!("cannot read the admin token {}", token_file.display()))?;
    let mut stream =
        std::net::TcpStream::connect(admin).with_context(|| format!("cannot reach the admin port {admin}"))?;
    let request = format!(
        "POST /clearing/close HTTP/1.1\r\nHost: switch\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("the switch refused: {}", body.trim());
    }
    let document: serde_json::Value = serde_json::from_str(body).context("the switch's answer")?;
    let files = document["files"]
        .as_array()
        .map(|files| files.iter().filter_map(|f| f.as_str().map(Into::into)).collect())
        .unwrap_or_default();
    Ok((document["window"].as_u64().unwrap_or(0), files))
}

fn clearing_command(command: ClearingCommand) -> anyhow::Result<()> {
    let print = |window: u64, files: &[std::path::PathBuf]| {
        emit!("window {window} closed: {} files", files.len());
        for file in files {
            emit!("  {}", file.display());
        }
    };
    match command {
        ClearingCommand::Close {
            source: Source::Nats,
            config,
            nats,
            nats_token_file,
            window,
            nodes,
            out,
            admin: None,
            ..
        } => {
            let (window, nodes, out) = match (window, nodes, out) {
                (Some(window), Some(nodes), Some(out)) => (window, nodes, out),
                _ => anyhow::bail!("--source nats needs --window, --nodes and --out"),
            };
            let nodes = switch::settlement::fleet::parse_nodes(&nodes)
                .map_err(|problem| anyhow::anyhow!("--nodes {problem}"))?;
            let config = match config {
                Some(path) => SwitchConfig::from_file(&path)?,
                None => SwitchConfig::embedded_default(),
            };
            let inputs = switch::settlement::clearing::CloseInputs::new(config.fees, config.exchange.completed_max);
            let fleet = with_nats_overrides(config.fleet, nats, nats_token_file)?
                .context("--source nats needs --nats URL (or --config with a [fleet] table)")?;
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
            let built =
                runtime.block_on(switch::settlement::fleet::read_window(&fleet, window, &nodes, &inputs, &out))?;
            let files = built.files;
            emit!("fleet window {window} (nodes {nodes:?}, stream {}): {} entries", fleet.stream, built.entries);
            print(window, &files);
            Ok(())
        }
        ClearingCommand::Close { admin: Some(admin), token_file, .. } => {
            let token_file = token_file
                .unwrap_or_else(|| std::path::Path::new(SwitchConfig::DATA_DIR_DEFAULT).join(ADMIN_TOKEN_FILE));
            let (window, files) = close_via_admin(admin, &token_file)?;
            print(window, &files);
            Ok(())
        }
        ClearingCommand::Close { data_dir, config, code_key_file, .. } => {
            let data_dir = data_dir.context("--admin or --data-dir")?;
            let config = match config {
                Some(path) => SwitchConfig::from_file(&path)?,
                None => SwitchConfig::embedded_default(),
            };
            let mut key = config.code_key;
            if let Some(path) = code_key_file {
                key = Some(read_code_key(&path)?);
            }
            let inputs = switch::settlement::clearing::CloseInputs::new(config.fees, config.exchange.completed_max);
            let built = switch::settlement::clearing::close_offline(&data_dir, &inputs, key.as_ref())?;
            print(built.window, &built.files);
            Ok(())
        }
        ClearingCommand::Rebuild { data_dir, window, config, code_key_file } => {
            let config = match config {
                Some(path) => SwitchConfig::from_file(&path)?,
                None => SwitchConfig::embedded_default(),
            };
            let fallback = switch::settlement::clearing::CloseInputs::new(config.fees, config.exchange.completed_max);
            let key = code_key_file.map(|path| read_code_key(&path)).transpose()?;
            let built = switch::settlement::clearing::rebuild(&data_dir, window, &fallback, key.as_ref())?;
            emit!("window {window} rebuilt: {} entries, {} files", built.entries, built.files.len());
            Ok(())
        }
    }
}

fn journal_command(command: JournalCommand) -> anyhow::Result<()> {
    match command {
        JournalCommand::Verify { data_dir, code_key_file } => {
            let key = code_key_file.map(|path| read_code_key(&path)).transpose()?;
            let mut damaged = false;
            for (index, dir) in switch::settlement::clearing::shard_dirs(&data_dir)? {
                let segments = switch::durability::journal::segments(&dir)?.len();
                let (mut records, mut first) = (0u64, None);
                match switch::durability::journal::read_with(&dir, key.as_ref(), |sequence, _| {
                    records += 1;
                    first.get_or_insert(sequence);
                }) {
                    Ok(torn_tail) => {
                        let tail = match torn_tail {
                            Some((path, offset)) => {
                                format!("; torn tail at {} offset {offset} (cut at next start)", path.display())
                            }
                            None => String::new(),
                        };
                        // Retention removed what comes before (journal `retained`).
                        let kept = match first {
                            Some(first) if first > 1 => {
                                format!(" (from record {first}; older ones removed by retention)")
                            }
                            _ => String::new(),
                        };
                        emit!("shard {index}: {records} records in {segments} segments{kept}, ok{tail}");
                    }
                    Err(error) => {
                        emit!("shard {index}: DAMAGED: {error}");
                        damaged = true;
                    }
                }
            }
            if damaged {
                std::process::exit(1);
            }
            Ok(())
        }
        JournalCommand::Inspect { data_dir, shard, limit, code_key_file } => {
            let key = code_key_file.map(|path| read_code_key(&path)).transpose()?;
            for (index, dir) in switch::settlement::clearing::shard_dirs(&data_dir)? {
                if shard.is_some_and(|wanted| wanted != index) {
                    continue;
                }
                emit!("# shard {index}");
                let mut count = 0usize;
                switch::durability::journal::read_with(&dir, key.as_ref(), |sequence, record| {
                    count += 1;
                    if count <= limit {
                        emit!("{sequence:>10} {record}");
                    }
                })?;
                emit!("# shard {index}: {count} records");
            }
            Ok(())
        }
    }
}

/// The configuration's `[fleet]` with `--nats` and `--nats-token-file` applied: a URL
/// given on the command line enables the fleet (with the defaults) or replaces the file's.
fn with_nats_overrides(
    fleet: Option<switch::settlement::fleet::FleetSettings>,
    nats: Option<String>,
    token_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<switch::settlement::fleet::FleetSettings>> {
    let mut fleet = match (fleet, nats) {
        (fleet, None) => fleet,
        (Some(mut fleet), Some(url)) => {
            fleet.nats_url = url;
            Some(fleet)
        }
        (None, Some(url)) => Some(switch::settlement::fleet::FleetSettings::new(&url)),
    };
    if let (Some(fleet), Some(path)) = (fleet.as_mut(), token_file) {
        fleet.token = Some(switch::settlement::fleet::NatsToken::read(&path).map_err(anyhow::Error::msg)?);
    }
    Ok(fleet)
}

fn read_code_key(path: &std::path::Path) -> anyhow::Result<switch::core::record::CodeKey> {
    switch::config::read_code_key(path).map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))
}

/// The admin API's tokens (the configuration's, or a fresh operator token written to
/// `DATA_DIR/admin.token`) and its audit log, `DATA_DIR/audit.log`.
fn admin_access(config: &SwitchConfig) -> anyhow::Result<switch::ops::access::AdminAccess> {
    let mut tokens = config.admin_tokens.clone();
    if tokens.is_empty() {
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        tokens.push(
            switch::ops::access::generate_token_file(&path)
                .with_context(|| format!("cannot write the admin token {}", path.display()))?,
        );
        tracing::info!(file = %path.display(), "no admin tokens configured: an operator token was written");
    }
    let audit = config.data_dir.join("audit.log");
    switch::ops::access::AdminAccess::new(tokens)
        .with_audit_log(&audit)
        .with_context(|| format!("cannot open the audit log {}", audit.display()))
}

/// Where `switch run` writes an operator token when the configuration names none.
const ADMIN_TOKEN_FILE: &str = "admin.token";

fn run(config: SwitchConfig, io: Io, damage: Damage) -> anyhow::Result<()> {
    // One core per shard by default; the shards run on their own threads, this runtime only
    // accepts connections, serves the admin port and waits for the signal.
    let shards = config.shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
        let admin_access = admin_access(&config)?;
        let mut shared = Shared::new(config.session.clone(), Directory::new(config.participants.clone()));
        if let Some(settings) = &config.tls {
            shared = shared.with_tls(switch::edge::tls::Tls::load(settings.clone())?);
        }
        if let Some(iso8583) = &config.iso8583 {
            let listener = std::net::TcpListener::bind(iso8583.listen)
                .with_context(|| format!("cannot listen on {} (iso8583)", iso8583.listen))?;
            tracing::info!(listen = %iso8583.listen, profile = %iso8583.profile.name, "ISO 8583 participants' listener");
            shared = shared.with_iso8583(iso8583.clone(), listener);
        }
        let shared = Arc::new(
            shared
                .with_admin(admin_access)
                .with_connection_limits(config.connections)
                .with_fleet(config.fleet.clone())
                .with_exchange(config.exchange.clone(), config.routes.clone())
                .with_shards(shards)
                .with_io(io)
                .with_journal(JournalSettings {
                    data_dir: config.data_dir.clone(),
                    policy: config.fsync,
                    segment_size: config.segment_size,
                    retain_windows: config.retain_windows,
                    restart_every: config.restart_every,
                    damage,
                    io_uring: io == Io::Uring,
                    code_key: config.code_key.clone(),
                })
                .with_daily_cutoff(config.daily_cutoff)
                .with_fees(config.fees.clone())
                .with_fx_rates_file(config.fx_rates_file.clone())
                .with_prefault(true),
        );
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(switch::edge::admin::serve_admin(admin, Arc::clone(&shared), async {
            let _ = admin_stopped.await;
        }));
        tracing::info!(
            listen = %listener.local_addr()?,
            admin = %config.admin_listen,
            participants = shared.directory.len(),
            shards,
            io = ?shared.io,
            switch_id = %config.session.switch_id,
            tls = shared.tls.is_some(),
            "switch running; Ctrl-C stops it"
        );
        let served = serve(listener, shared, stop_signal()).await;
        // The admin port answers (readyz 503) through the drain, and stops after it.
        let _ = admin_stop.send(());
        let _ = admin_task.await;
        served.with_context(|| format!("journal in {}", config.data_dir.display()))?;
        tracing::info!("switch stopped");
        Ok(())
    })
}
