//! The `loadgen` command line: flags, subcommands and exit codes, as a library so that
//! `switch demo` runs the same `run` a user would.
//!
//! Exit codes: 0 success; 1 the command failed (bad flag, refused connection, aborted
//! run); 2 the run was invalid (late or dropped sends, unanswered requests); 3/4/5 a
//! latency / error / throughput threshold failed; 6 reconciliation found differences.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::capacity::{PlanInput, Step, plan, render_plan, render_steps, search};
use crate::engine::{Outcome, RunSpec};
use crate::participants::{self, Participant};
use crate::profile::{BUILT_IN, Profile, format_clock, parse_clock};
use crate::report;
use crate::responder::{Behaviour, parse_duration, parse_fraction};
use crate::schedule::{Arrivals, Schedule, Shape};
use crate::threshold::{Threshold, Verdict, describe, exit_code};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use codec::InstitutionId;
use codec::field::FieldText;

pub const EXIT_INVALID: i32 = 2;
pub const EXIT_NOT_RECONCILED: i32 = 6;

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "Load generator for the clearing switch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a switch: open loop at a rate or along a holiday profile (or closed loop).
    Run(Box<RunArgs>),
    /// Find the highest constant rate a switch carries within the thresholds.
    Capacity(Box<CapacityArgs>),
    /// How many nodes a target day needs, from a measured per-node capacity.
    Plan(PlanArgs),
    /// Compare a run's `--record` with the switch's clearing files.
    Reconcile {
        #[arg(long)]
        record: PathBuf,
        /// The switch's data directory, its `clearing/` directory, or one window's.
        #[arg(long)]
        clearing: PathBuf,
    },
    /// List the built-in profiles.
    Profiles,
    /// A trivial switch that approves everything at once (to measure the generator).
    Sink {
        #[arg(long, default_value = "127.0.0.1:7500")]
        listen: SocketAddr,
        #[arg(long)]
        participants: Option<PathBuf>,
        /// Stop answering this long after start ...
        #[arg(long, value_parser = parse_duration)]
        stall_after: Option<Duration>,
        /// ... for this long.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        stall_for: Duration,
    },
}

#[derive(Debug, Args, Clone)]
struct TargetArgs {
    /// The switch's participant address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    target: SocketAddr,
    /// A switch configuration file whose [[participant]] tables (ids, roles, keys) to play;
    /// the embedded demo network's when absent.
    #[arg(long)]
    participants: Option<PathBuf>,
    /// Connections per participant.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Mutual TLS: each participant presents DIR/ID.crt with DIR/ID.key (as in deploy/tls).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// With --tls-dir: the CA that issued the switch's certificate (default
    /// DIR/participants-ca.crt).
    #[arg(long, requires = "tls_dir")]
    tls_ca: Option<PathBuf>,
    /// With --tls-dir: the name the switch's certificate must carry.
    #[arg(long, requires = "tls_dir", default_value = "localhost")]
    tls_server_name: String,
    /// How receivers answer (see `loadgen/README.md`): e.g.
    /// `latency=lognormal:2ms:20ms,decline=2%,silent=0.1%,slow=1%:500ms,disconnect=30s`.
    #[arg(long, default_value = "", value_parser = parse_behaviour)]
    respond: Behaviour,
    /// One participant's behaviour, `ID=SPEC` (repeatable).
    #[arg(long, value_parser = parse_behaviour_for)]
    respond_for: Vec<(InstitutionId, Behaviour)>,
    #[arg(long, default_value = "uniform")]
    arrivals: Arrivals,
    /// Sends later than this are dropped and counted (the run is then invalid).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    max_lag: Duration,
    /// Wait at most this long for outstanding replies after the last send (the run ends
    /// as soon as none is outstanding). Above the switch's reply deadline (10 s by
    /// default), so that a request a silent issuer held is answered Timeout, not missing.
    #[arg(long, value_parser = parse_duration, default_value = "12s")]
    drain: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The QR network GUID merchant-presented payments carry.
    #[arg(long, default_value = crate::traffic::QR_GUID_DEFAULT)]
    qr_guid: String,
    /// Pass/fail gates, e.g. `p99<20ms`, `errors<0.1%`, `achieved>=95%` (repeatable).
    #[arg(long)]
    threshold: Vec<Threshold>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Constant rate, requests per second (the mix still comes from --profile, weekday by
    /// default).
    #[arg(long)]
    rate: Option<f64>,
    /// A built-in profile (see `loadgen profiles`) or a profile file: its curve drives the
    /// rate unless --rate is given.
    #[arg(long)]
    profile: Option<String>,
    /// How long to send (default 10s at a constant rate; the profile's span compressed
    /// into 60s for a profile).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Time compression: play one profile day in this long (overrides the fit to
    /// --duration).
    #[arg(long, value_parser = parse_duration)]
    day_in: Option<Duration>,
    /// Play the profile from this time (`HH:MM` or `dN HH:MM`; default its start).
    #[arg(long)]
    from: Option<String>,
    /// ... to this time (default its end).
    #[arg(long)]
    to: Option<String>,
    /// Scale the profile so its peak is this rate (default 20000).
    #[arg(long, conflicts_with = "scale")]
    peak_tps: Option<f64>,
    /// Scale the profile to this fraction of its national volume (e.g. 0.1).
    #[arg(long)]
    scale: Option<f64>,
    /// Run closed loop instead: keep this many requests outstanding from one acquirer.
    #[arg(long, conflicts_with_all = ["profile", "day_in", "from", "to", "peak_tps", "scale"])]
    in_flight: Option<usize>,
    /// The switch's admin address: report the switch's CPU per transaction (its CPU time
    /// over the run, from /metrics), beside the generator's own.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Seconds per interval of the live view, the interval log and the report.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
    #[arg(long)]
    summary_json: Option<PathBuf>,
    #[arg(long)]
    hgrm: Option<PathBuf>,
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// A self-contained HTML report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Record every reply seen, for `loadgen reconcile`.
    #[arg(long)]
    record: Option<PathBuf>,
    /// No live view.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct CapacityArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The mix (weekday by default).
    #[arg(long, default_value = "weekday")]
    profile: String,
    #[arg(long, default_value_t = 5000.0)]
    start: f64,
    #[arg(long, default_value_t = 1_000_000.0)]
    max: f64,
    /// Stop bisecting when the pass and fail rates are this close (fraction or %).
    #[arg(long, value_parser = parse_fraction, default_value = "5%")]
    precision: f64,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    step_duration: Duration,
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PlanArgs {
    #[arg(long, default_value = "new-years-eve")]
    profile: String,
    /// The target day's transactions (e.g. 4.931e9); the profile's day when absent.
    #[arg(long)]
    day_transactions: Option<f64>,
    /// The target peak; derived from the profile's curve when absent.
    #[arg(long)]
    peak_tps: Option<f64>,
    /// Requests per second one node carries within the SLO (from `loadgen capacity`).
    #[arg(long)]
    node_capacity: f64,
    #[arg(long, value_parser = parse_fraction, default_value = "30%")]
    headroom: f64,
    /// Spare nodes (N+1: 1).
    #[arg(long, default_value_t = 1)]
    redundancy: u32,
}

fn parse_behaviour(text: &str) -> Result<Behaviour, String> {
    text.parse()
}

fn parse_behaviour_for(text: &str) -> Result<(InstitutionId, Behaviour), String> {
    let (id, spec) = text.split_once('=').ok_or_else(|| format!("{text:?}: write ID=SPEC"))?;
    let id = InstitutionId::new(id).map_err(|e| format!("{id:?}: {e}"))?;
    Ok((id, spec.parse()?))
}

/// Parses `args` (the program name first) and runs the command; returns the exit code.
/// Usage errors exit 1 (clap's usual 2 means an invalid run here); help and version 0.
pub fn main_with<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { 1 } else { 0 };
        }
    };
    match execute(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadgen: error: {error:#}");
            1
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")
}

fn load_participants(args: &TargetArgs) -> anyhow::Result<Vec<Participant>> {
    let mut participants = match &args.participants {
        Some(path) => participants::from_file(path)?,
        None => participants::demo(),
    };
    if let Some(dir) = &args.tls_dir {
        let ca = args.tls_ca.clone().unwrap_or_else(|| dir.join("participants-ca.crt"));
        crate::tls::attach(&mut participants, dir, &ca, &args.tls_server_name)?;
    }
    Ok(participants)
}

fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Capacity(args) => capacity(*args),
        Command::Plan(args) => {
            let input = PlanInput {
                profile: Profile::load(&args.profile)?,
                day_transactions: args.day_transactions.map(|d| d.round() as u64),
                peak_tps: args.peak_tps,
                node_capacity: args.node_capacity,
                headroom: args.headroom,
                redundancy: args.redundancy,
            };
            print!("{}", render_plan(&input, &plan(&input)?));
            Ok(0)
        }
        Command::Reconcile { record, clearing } => {
            let found = crate::reconcile::reconcile(&record, &clearing)?;
            print!("{}", found.render());
            Ok(if found.is_clean() { 0 } else { EXIT_NOT_RECONCILED })
        }
        Command::Profiles => {
            for (name, _) in BUILT_IN {
                let p = Profile::load(name)?;
                println!(
                    "{name:<16} {} to {}, peak {:.2}x average at {} ({:.0}/s at national scale)\n{:<16} {}",
                    format_clock(p.start_s()),
                    format_clock(p.end_s()),
                    p.max_level(),
                    format_clock(p.peak_at_s()),
                    p.max_level() * p.average_tps(),
                    "",
                    p.title
                );
            }
            Ok(0)
        }
        Command::Sink { listen, participants, stall_after, stall_for } => {
            let participants = match participants {
                Some(path) => participants::from_file(&path)?,
                None => participants::demo(),
            };
            let stall = stall_after.map(|after| crate::sink::Stall { after, length: stall_for });
            runtime()?.block_on(async {
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
                println!("sink listening on {}", listener.local_addr()?);
                crate::sink::serve(listener, participants, stall).await
            })?;
            Ok(0)
        }
    }
}

/// The run's schedule from the flags.
fn schedule_of(args: &RunArgs, profile: &Arc<Profile>) -> anyhow::Result<(Schedule, Vec<(String, String)>)> {
    let mut settings = Vec::new();
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate <= 5_000_000.0, "--rate {rate}: must be in (0, 5000000]");
        let duration = args.duration.unwrap_or(Duration::from_secs(10));
        anyhow::ensure!(!duration.is_zero(), "--duration must be above zero");
        settings.push(("rate".into(), format!("{rate}/s constant")));
        return Ok((Schedule::constant(rate, duration), settings));
    }
    let clock = |flag: &str, text: &Option<String>, default: f64| -> anyhow::Result<f64> {
        match text {
            Some(t) => parse_clock(t).map_err(|e| anyhow::anyhow!("--{flag}: {e}")),
            None => Ok(default),
        }
    };
    let from_s = clock("from", &args.from, profile.start_s())?;
    let to_s = clock("to", &args.to, profile.end_s())?;
    anyhow::ensure!(to_s > from_s, "--to must be after --from ({} to {})", format_clock(from_s), format_clock(to_s));
    let (speed, duration) = match (args.day_in, args.duration) {
        (Some(day), duration) => {
            anyhow::ensure!(!day.is_zero(), "--day-in must be above zero");
            let speed = 86_400.0 / day.as_secs_f64();
            (speed, duration.unwrap_or(Duration::from_secs_f64((to_s - from_s) / speed)))
        }
        (None, duration) => {
            let duration = duration.unwrap_or(Duration::from_secs(60));
            anyhow::ensure!(!duration.is_zero(), "--duration must be above zero");
            ((to_s - from_s) / duration.as_secs_f64(), duration)
        }
    };
    let tps_per_level = match (args.peak_tps, args.scale) {
        (_, Some(scale)) => {
            anyhow::ensure!(scale > 0.0 && scale <= 10.0, "--scale {scale}: must be in (0, 10]");
            profile.average_tps() * scale
        }
        (peak, None) => {
            let peak = peak.unwrap_or(20_000.0);
            anyhow::ensure!(peak > 0.0 && peak <= 5_000_000.0, "--peak-tps {peak}: must be in (0, 5000000]");
            peak / profile.max_level()
        }
    };
    settings.push(("window".into(), format!("{} to {}", format_clock(from_s), format_clock(to_s))));
    settings.push(("compression".into(), format!("{speed:.1}x (a day in {:.1} s)", 86_400.0 / speed)));
    settings.push((
        "scale".into(),
        format!("{:.0}/s at level 1.0, peak {:.0}/s", tps_per_level, tps_per_level * profile.max_level()),
    ));
    Ok((
        Schedule { shape: Shape::Profile { profile: Arc::clone(profile), from_s, speed, tps_per_level }, duration },
        settings,
    ))
}

fn spec_of(target: &TargetArgs, profile: Arc<Profile>, schedule: Schedule) -> anyhow::Result<RunSpec> {
    let participants = load_participants(target)?;
    let mut settings = vec![
        ("target".to_string(), target.target.to_string()),
        ("profile".to_string(), format!("{} ({})", profile.name, profile.source)),
        ("duration".to_string(), format!("{:.1} s", schedule.duration.as_secs_f64())),
        ("arrivals".to_string(), format!("{:?}", target.arrivals).to_lowercase()),
        ("participants".to_string(), participants.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")),
        ("connections per participant".to_string(), target.connections.to_string()),
        ("receivers".to_string(), format!("{:?}", target.respond)),
        ("seed".to_string(), target.seed.to_string()),
    ];
    for (id, behaviour) in &target.respond_for {
        settings.push((format!("receiver {id}"), format!("{behaviour:?}")));
    }
    Ok(RunSpec {
        participants,
        connections: target.connections,
        arrivals: target.arrivals,
        behaviour: target.respond,
        behaviour_for: target.respond_for.clone(),
        max_lag: target.max_lag,
        drain: target.drain,
        seed: target.seed,
        qr_guid: target.qr_guid.clone(),
        settings,
        ..RunSpec::new(target.target, profile, schedule)
    })
}

fn verdicts(thresholds: &[Threshold], outcome: &Outcome) -> Vec<Verdict> {
    thresholds.iter().map(|t| t.check(outcome)).collect()
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    if let Some(in_flight) = args.in_flight {
        return closed_loop(&args, in_flight);
    }
    anyhow::ensure!(
        args.rate.is_some() || args.profile.is_some(),
        "give --rate N (constant) or --profile NAME (see `loadgen profiles`)"
    );
    let profile = Arc::new(Profile::load(args.profile.as_deref().unwrap_or("weekday"))?);
    let (schedule, extra) = schedule_of(&args, &profile)?;
    let mut spec = spec_of(&args.target, profile, schedule)?;
    spec.settings.extend(extra);
    spec.interval = args.interval;
    spec.record = args.record.clone();
    spec.live = !args.quiet;
    spec.admin = args.admin;
    let expected = spec.schedule.expected_requests();
    anyhow::ensure!(expected <= 2e9, "the run schedules {expected:.0} requests; at most 2 billion");
    println!(
        "loadgen: {} requests over {:.1} s (peak {:.0}/s) against {}",
        expected.round(),
        spec.schedule.duration.as_secs_f64(),
        spec.schedule.peak_rate(),
        spec.target
    );
    let outcome = runtime()?.block_on(crate::engine::run(spec))?;
    let verdicts = verdicts(&args.target.threshold, &outcome);
    let table = report::table(&outcome);
    print!("{table}");
    for verdict in &verdicts {
        println!("{}", describe(verdict));
    }
    if let Some(path) = &args.summary_json {
        report::write_file(path, report::summary_json(&outcome, &verdicts).as_bytes())?;
    }
    if let Some(path) = &args.hgrm {
        report::write_file(path, report::hgrm(&outcome.total).as_bytes())?;
    }
    if let Some(path) = &args.hlog {
        report::write_file(path, &report::hlog(&outcome)?)?;
    }
    if let Some(path) = &args.report {
        report::write_file(path, report::html(&outcome, &table).as_bytes())?;
        println!("report: {}", path.display());
    }
    if let Some(path) = &args.record {
        println!(
            "record: {} (check it: loadgen reconcile --record {} --clearing DATA_DIR)",
            path.display(),
            path.display()
        );
    }
    if let Some(error) = &outcome.aborted {
        anyhow::bail!("the run ended early: {error}");
    }
    if !outcome.valid() {
        return Ok(EXIT_INVALID);
    }
    Ok(exit_code(&verdicts))
}

fn capacity(args: CapacityArgs) -> anyhow::Result<i32> {
    let profile = Arc::new(Profile::load(&args.profile)?);
    anyhow::ensure!(!args.target.threshold.is_empty(), "give the SLO as --threshold (e.g. --threshold 'p99<5ms')");
    anyhow::ensure!(args.start > 0.0 && args.max >= args.start, "need 0 < --start <= --max");
    let slo = args.target.threshold.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ");
    let runtime = runtime()?;
    let (answer, steps) = runtime.block_on(search(args.start, args.max, args.precision, |rate| {
        let spec = spec_of(&args.target, Arc::clone(&profile), Schedule::constant(rate, args.step_duration));
        let thresholds = args.target.threshold.clone();
        async move {
            let outcome = crate::engine::run(spec?).await?;
            let verdicts = verdicts(&thresholds, &outcome);
            let passed = outcome.valid() && verdicts.iter().all(|v| v.passed);
            let mut note: Vec<String> = verdicts.iter().filter(|v| !v.passed).map(describe).collect();
            note.extend(outcome.invalid_reasons());
            let step = Step {
                rate,
                achieved: outcome.achieved_tps(),
                p99_ms: if outcome.total.is_empty() {
                    f64::NAN
                } else {
                    outcome.total.value_at_quantile(0.99) as f64 / 1000.0
                },
                valid: outcome.valid(),
                passed,
                note: note.join("; "),
            };
            eprintln!("step {rate:.0}/s: {}", if passed { "pass" } else { "FAIL" });
            // Let the switch settle between steps.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(step)
        }
    }))?;
    print!("{}", render_steps(&steps, answer, &slo));
    if let Some(path) = &args.summary_json {
        let document = serde_json::json!({
            "capacity_tps": answer,
            "slo": slo,
            "steps": steps.iter().map(|s| serde_json::json!({
                "rate": s.rate, "achieved_tps": s.achieved.round(), "p99_ms": s.p99_ms, "valid": s.valid, "passed": s.passed,
            })).collect::<Vec<_>>(),
        });
        report::write_file(path, format!("{}\n", serde_json::to_string_pretty(&document)?).as_bytes())?;
    }
    Ok(if answer.is_some() { 0 } else { EXIT_INVALID })
}

fn closed_loop(args: &RunArgs, in_flight: usize) -> anyhow::Result<i32> {
    use crate::client::Client;
    use crate::issuer::run_issuer;
    let participants = load_participants(&args.target)?;
    let acquirer = participants.iter().find(|p| p.is_plain_acquirer()).context("no plain acquirer to send from")?;
    let duration = args.duration.unwrap_or(Duration::from_secs(10));
    let target = args.target.target;
    runtime()?.block_on(async {
        let mut receivers = Vec::new();
        for p in participants.iter().filter(|p| !p.is_plain_acquirer()) {
            let client = Client::connect_as(target, p).await?;
            receivers.push(tokio::spawn(run_issuer(client, args.target.respond)));
        }
        let client = Client::connect_as(target, acquirer).await?;
        let cpu_before = match args.admin {
            Some(admin) => Some(crate::cpu::switch_seconds(admin).await?),
            None => None,
        };
        let report = crate::run::run_closed_loop(client, in_flight, duration, args.target.drain).await?;
        print!("{}", report.render());
        if let (Some(admin), Some(before)) = (args.admin, cpu_before) {
            let cpu = crate::cpu::switch_seconds(admin).await? - before;
            println!(
                "switch CPU: {cpu:.2} s for {} transactions: {:.2} us per transaction",
                report.answered,
                cpu * 1e6 / report.answered.max(1) as f64
            );
        }
        for task in receivers {
            task.abort();
        }
        Ok(if report.answered == report.sent { 0 } else { EXIT_INVALID })
    })
}
