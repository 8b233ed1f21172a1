//! `switch`: the clearing message switch's command line.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switch::config::SwitchConfig;
use switch::edge::tcp::{Shared, serve};
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
    /// Run the switch. With no options: the embedded demo network on 127.0.0.1:7400.
    Run {
        /// Address for participant connections.
        #[arg(long, default_value = SwitchConfig::LISTEN_DEFAULT)]
        listen: std::net::SocketAddr,
    },
}

fn main() {
    if let Err(error) = main_inner() {
        eprintln!("switch: error: {error:#}");
        std::process::exit(1);
    }
}

fn main_inner() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { listen } => run(SwitchConfig { listen, ..SwitchConfig::embedded_default() }),
    }
}

fn run(config: SwitchConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let shared = Arc::new(Shared::new(config.session.clone(), Directory::new(config.participants.clone())));
        tracing::info!(
            listen = %listener.local_addr()?,
            participants = shared.directory.len(),
            switch_id = %config.session.switch_id,
            "switch running; Ctrl-C stops it"
        );
        serve(listener, shared, async {
            // If the signal handler cannot be installed, run until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await;
        tracing::info!("switch stopped");
        Ok(())
    })
}
