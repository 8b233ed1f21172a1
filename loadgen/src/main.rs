//! `loadgen`: drives the switch over the wire as participants do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use codec::InstitutionId;
use loadgen::client::Client;
use loadgen::issuer::{IssuerBehaviour, run_issuer};
use loadgen::run::{RunConfig, run_open_loop};

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
        let report = run_open_loop(client, &config).await?;
        for (id, task) in issuers {
            task.abort();
            let _ = task.await;
            let _ = id;
        }
        anyhow::Ok(report)
    })?;
    print!("{}", report.render());
    Ok(report.is_valid())
}
