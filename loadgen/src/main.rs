//! `loadgen`: drives the switch over the wire as participants do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use codec::InstitutionId;
use loadgen::client::Client;
use loadgen::issuer::{IssuerBehaviour, run_issuer};
use loadgen::run::{RunConfig, run_closed_loop, run_open_loop};

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "Load generator for the clearing switch")]
struct Cli {
    /// The switch's participant address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    switch: SocketAddr,
    /// The acquirer to sign on as.
    #[arg(long, default_value = "ACQ0001")]
    participant: String,
    /// Its shared key (the embedded demo network's key by default).
    #[arg(long)]
    key: Option<String>,
    /// Key id of that key.
    #[arg(long, default_value_t = 1)]
    key_id: u16,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Run closed loop instead: keep this many requests outstanding and measure throughput
    /// (`--rate` is then ignored).
    #[arg(long)]
    in_flight: Option<usize>,
    /// The switch's admin address: read its CPU time before and after the run and report
    /// the switch's CPU per transaction.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Issuers to play, comma-separated, each signed on with its demo key (`demo-key-{ID}`);
    /// empty to play only the acquirer.
    #[arg(long, default_value = "WECHATPAY,ALIPAY,UNIONPAY", value_delimiter = ',')]
    issuers: Vec<String>,
    /// Issuers decline every Nth request (0: approve all).
    #[arg(long, default_value_t = 0)]
    decline_every: u64,
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(valid) => std::process::exit(if valid { 0 } else { 2 }),
        Err(error) => {
            eprintln!("loadgen: error: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the command; `Ok(false)` when the run was invalid (exit code 2).
fn run(cli: Cli) -> anyhow::Result<bool> {
    let participant = InstitutionId::new(&cli.participant)
        .map_err(|problem| anyhow::anyhow!("--participant {:?} {problem}", cli.participant))?;
    let key = cli.key.clone().unwrap_or_else(|| format!("demo-key-{}", cli.participant));
    anyhow::ensure!(cli.duration_s > 0.0 && cli.duration_s <= 86_400.0, "--duration-s must be in (0, 86400]");
    let config = RunConfig {
        rate_per_second: cli.rate,
        duration: Duration::from_secs_f64(cli.duration_s),
        drain_timeout: Duration::from_secs(5),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let behaviour = IssuerBehaviour { decline_every: cli.decline_every, silent: false };
    let report = runtime.block_on(async {
        let mut issuers = Vec::new();
        for issuer in cli.issuers.iter().filter(|name| !name.is_empty()) {
            let id = InstitutionId::new(issuer).map_err(|problem| anyhow::anyhow!("--issuers {issuer:?} {problem}"))?;
            let client = Client::connect(cli.switch, id, 1, format!("demo-key-{issuer}").as_bytes()).await?;
            issuers.push((id, tokio::spawn(run_issuer(client, behaviour))));
        }
        let client = Client::connect(cli.switch, participant, cli.key_id, key.as_bytes()).await?;
        println!(
            "signed on to {} as {} (session {}); playing issuers {:?}",
            cli.switch, participant, client.session_id, cli.issuers
        );
        let cpu_before = match cli.admin {
            Some(admin) => Some(switch_cpu_seconds(admin).await?),
            None => None,
        };
        let (text, valid, transactions) = match cli.in_flight {
            Some(in_flight) => {
                let report = run_closed_loop(client, in_flight, config.duration, config.drain_timeout).await?;
                let valid = report.answered == report.sent;
                (report.render(), valid, report.answered)
            }
            None => {
                let report = run_open_loop(client, &config).await?;
                (report.render(), report.is_valid(), report.sent)
            }
        };
        let cpu = match (cli.admin, cpu_before) {
            (Some(admin), Some(before)) => Some(switch_cpu_seconds(admin).await? - before),
            _ => None,
        };
        for (_, task) in issuers {
            task.abort();
            let _ = task.await;
        }
        anyhow::Ok((text, valid, transactions, cpu))
    })?;
    let (text, valid, transactions, cpu) = report;
    print!("{text}");
    if let Some(cpu) = cpu {
        println!(
            "switch CPU: {cpu:.2} s for {transactions} transactions: {:.2} us per transaction",
            cpu * 1e6 / transactions.max(1) as f64
        );
    }
    Ok(valid)
}

/// The switch's `process_cpu_seconds_total`, from its admin port's `/metrics`.
async fn switch_cpu_seconds(admin: SocketAddr) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.with_context(|| format!("admin port {admin}"))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: switch\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    response
        .lines()
        .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
        .and_then(|value| value.trim().parse().ok())
        .context("the switch's /metrics has no process_cpu_seconds_total")
}
