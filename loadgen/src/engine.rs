//! An open-loop run from start to report: signs every participant on, starts the clock,
//! lets each connection keep its schedule, gathers one interval per `interval`, prints the
//! live view, drains, and hands back an [`Outcome`] the reports are made from.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use codec::InstitutionId;
use hdrhistogram::Histogram;

use crate::client::Client;
use crate::participants::Participant;
use crate::peer::{Peer, RunContext, Stop, run_peer};
use crate::profile::{Profile, format_clock};
use crate::responder::Behaviour;
use crate::rng::Rng;
use crate::schedule::{ArrivalStream, Arrivals, Schedule};
use crate::stats::{self, ConnStats, Counters, Responded, collect};
use crate::traffic::{Kind, Traffic, originations};

/// Connections signing on at once, before a run.
const SIGN_ONS_AT_ONCE: usize = 32;
/// Between spawning the connections' tasks and the schedule's time zero.
const START_LEAD: Duration = Duration::from_millis(200);

/// Connections per participant, at most.
pub const CONNECTIONS_MAX: usize = 64;

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub target: SocketAddr,
    pub participants: Vec<Participant>,
    /// The mix (and, for profile schedules, the curve).
    pub profile: Arc<Profile>,
    pub schedule: Schedule,
    pub arrivals: Arrivals,
    /// Connections per participant.
    pub connections: usize,
    pub behaviour: Behaviour,
    pub behaviour_for: Vec<(InstitutionId, Behaviour)>,
    /// Sends later than this are dropped (and the run is invalid).
    pub max_lag: Duration,
    /// How long to wait for outstanding replies after the last send.
    pub drain: Duration,
    pub seed: u64,
    pub interval: Duration,
    pub record: Option<PathBuf>,
    pub qr_guid: String,
    /// Print a progress line per interval on stderr.
    pub live: bool,
    /// The run's settings as shown in reports.
    pub settings: Vec<(String, String)>,
    /// The switch's admin address, to read its CPU time before and after.
    pub admin: Option<SocketAddr>,
}

impl RunSpec {
    /// A run of `schedule` against `target` with the defaults of `loadgen run`: the demo
    /// participants, one connection each, receivers answering at once, a 1 s lag bound.
    pub fn new(target: SocketAddr, profile: Arc<Profile>, schedule: Schedule) -> Self {
        Self {
            target,
            participants: crate::participants::demo(),
            profile,
            schedule,
            arrivals: Arrivals::Uniform,
            connections: 1,
            behaviour: Behaviour::default(),
            behaviour_for: Vec::new(),
            max_lag: Duration::from_secs(1),
            drain: Duration::from_secs(12),
            seed: 1,
            interval: Duration::from_secs(1),
            record: None,
            qr_guid: crate::traffic::QR_GUID_DEFAULT.to_string(),
            live: false,
            settings: Vec::new(),
            admin: None,
        }
    }
}

/// One interval of the run.
#[derive(Debug, Clone)]
pub struct IntervalRow {
    /// Seconds from the start to the interval's end.
    pub end_s: f64,
    pub seconds: f64,
    pub profile_time: Option<String>,
    /// The schedule's rate at the interval's middle.
    pub target_tps: f64,
    pub counters: Counters,
    /// In flight at the interval's end.
    pub in_flight: u64,
    pub histogram: Histogram<u64>,
}

impl IntervalRow {
    pub fn offered_tps(&self) -> f64 {
        self.counters.scheduled as f64 / self.seconds
    }

    pub fn achieved_tps(&self) -> f64 {
        self.counters.answered as f64 / self.seconds
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: u32,
    pub settings: Vec<(String, String)>,
    pub intervals: Vec<IntervalRow>,
    pub total: Histogram<u64>,
    pub counters: Counters,
    pub codes: BTreeMap<(Kind, u16), u64>,
    pub responded: Responded,
    pub rejects: u64,
    /// From the start to the last scheduled send.
    pub send_seconds: f64,
    pub elapsed_seconds: f64,
    pub started_unix_s: f64,
    /// Why the run ended early, if it did.
    pub aborted: Option<String>,
    /// CPU seconds the generator used from sign-on to the end.
    pub loadgen_cpu_seconds: Option<f64>,
    /// CPU seconds the switch used over the same span (with `admin`).
    pub switch_cpu_seconds: Option<f64>,
}

impl Outcome {
    pub fn offered_tps(&self) -> f64 {
        self.counters.scheduled as f64 / self.send_seconds.max(1e-9)
    }

    pub fn achieved_tps(&self) -> f64 {
        self.counters.answered as f64 / self.send_seconds.max(1e-9)
    }

    /// Requests sent and never answered.
    pub fn missing(&self) -> u64 {
        self.counters.in_flight()
    }

    /// The run kept its schedule and every request was answered, exactly once: only then
    /// are its numbers the switch's and not the generator's.
    pub fn valid(&self) -> bool {
        self.exact() && self.counters.late == 0 && self.counters.dropped == 0
    }

    /// Every request the run sent was answered exactly once and nothing aborted it; the
    /// switch's side of validity, whether or not the generator kept its own schedule
    /// (tests on a shared box check this, and accept late sends).
    pub fn exact(&self) -> bool {
        self.aborted.is_none() && self.missing() == 0 && self.counters.unexpected == 0
    }

    /// Why the run is invalid, in words.
    pub fn invalid_reasons(&self) -> Vec<String> {
        let c = &self.counters;
        let mut reasons = Vec::new();
        if let Some(error) = &self.aborted {
            reasons.push(format!("aborted: {error}"));
        }
        if c.late > 0 {
            reasons.push(format!("{} sends left more than 10 ms after their intended time", c.late));
        }
        if c.dropped > 0 {
            reasons.push(format!("{} sends dropped: the generator fell too far behind its schedule", c.dropped));
        }
        if self.missing() > 0 {
            reasons.push(format!("{} requests never answered", self.missing()));
        }
        if c.unexpected > 0 {
            reasons.push(format!("{} replies named no request of this run, or answered one twice", c.unexpected));
        }
        reasons
    }

    /// CPU microseconds per answered request: (generator, switch).
    pub fn cpu_us_per_request(&self) -> (Option<f64>, Option<f64>) {
        let per = |seconds: f64| seconds * 1e6 / self.counters.answered.max(1) as f64;
        (self.loadgen_cpu_seconds.map(per), self.switch_cpu_seconds.map(per))
    }

    /// Replies per code, over all kinds.
    pub fn replies_by_code(&self) -> BTreeMap<u16, u64> {
        let mut by_code = BTreeMap::new();
        for (&(_, code), &count) in &self.codes {
            *by_code.entry(code).or_insert(0) += count;
        }
        by_code
    }
}

fn behaviour_of(spec: &RunSpec, id: InstitutionId) -> Behaviour {
    spec.behaviour_for.iter().find(|(p, _)| *p == id).map_or(spec.behaviour, |(_, b)| *b)
}

/// Runs `spec` to its end and reports. Errors only before the clock starts (a refused
/// connection or sign-on, a bad mix); later failures end the run early with `aborted` set.
pub async fn run(spec: RunSpec) -> anyhow::Result<Outcome> {
    anyhow::ensure!((1..=CONNECTIONS_MAX).contains(&spec.connections), "connections must be 1..={CONNECTIONS_MAX}");
    let origins = originations(&spec.profile, &spec.participants)?;
    let mix = Arc::new(spec.profile.mix.clone());
    let schedule = Arc::new(spec.schedule.clone());
    let mut run_id_bytes = [0u8; 4];
    getrandom::fill(&mut run_id_bytes).context("drawing a run id")?;
    let run_id = u32::from_le_bytes(run_id_bytes) & 0x00FF_FFFF;

    let loadgen_cpu_before = crate::cpu::own_seconds();
    let switch_cpu_before = match spec.admin {
        Some(admin) => Some(crate::cpu::switch_seconds(admin).await?),
        None => None,
    };
    // Sign everyone on before the clock starts.
    let mut plans = Vec::new();
    for participant in &spec.participants {
        for _ in 0..spec.connections {
            plans.push(participant.clone());
        }
    }
    // A few at a time: a switch holds only so many connections from one address before
    // they sign on (its `[connections] unsigned_per_source_max`, 64 by default).
    let signing_on = Arc::new(tokio::sync::Semaphore::new(SIGN_ONS_AT_ONCE));
    let mut connecting = Vec::new();
    for participant in &plans {
        let (target, participant, signing_on) = (spec.target, participant.clone(), Arc::clone(&signing_on));
        connecting.push(tokio::spawn(async move {
            let _turn = signing_on.acquire_owned().await.context("sign-on turn")?;
            Client::connect_as(target, &participant).await.with_context(|| format!("signing on as {}", participant.id))
        }));
    }
    let mut clients = Vec::new();
    for task in connecting {
        clients.push(task.await.context("sign-on task")??);
    }

    let record = match &spec.record {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("creating the record {}", path.display()))?,
            );
            use std::io::Write;
            writeln!(file, "# loadgen record v1 run={run_id:x}")?;
            writeln!(
                file,
                "switch_reference,originator,originator_transaction_id,kind,code,amount_minor,currency,responder"
            )?;
            Some(Mutex::new(file))
        }
        None => None,
    };

    let mut peers = Vec::new();
    let mut originating = 0;
    for (index, participant) in plans.iter().enumerate() {
        let connection = index as u16;
        let origination = match origins.iter().find(|o| o.participant == participant.id) {
            Some(o) => {
                originating += 1;
                let share = o.share() / spec.connections as f64;
                let rng = Rng::split(spec.seed, u64::from(connection));
                let stream = ArrivalStream::new(Arc::clone(&schedule), share, spec.arrivals, rng.clone());
                let traffic = Traffic::new(
                    run_id,
                    connection,
                    o,
                    Arc::clone(&mix),
                    &spec.qr_guid,
                    Rng::split(!spec.seed, index as u64),
                )?;
                Some((stream, traffic))
            }
            None => None,
        };
        peers.push(Peer {
            participant: participant.clone(),
            connection,
            behaviour: behaviour_of(&spec, participant.id),
            origination,
        });
    }

    let started_unix_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let ctx = Arc::new(RunContext {
        target: spec.target,
        run_id,
        seed: spec.seed,
        // The clock starts a moment after the tasks do, so that no send is late because
        // its task was still being spawned.
        start: Instant::now() + START_LEAD,
        stop: Stop::default(),
        max_lag: spec.max_lag,
        originating: AtomicUsize::new(originating),
        record,
    });
    let stats: Vec<Arc<ConnStats>> = peers.iter().map(|_| Arc::new(ConnStats::default())).collect();
    let mut tasks = Vec::new();
    for ((peer, client), stats) in peers.into_iter().zip(clients).zip(&stats) {
        tasks.push(tokio::spawn(run_peer(Arc::clone(&ctx), peer, Arc::clone(stats), client)));
    }

    let terminal = std::io::stderr().is_terminal();
    let mut intervals: Vec<IntervalRow> = Vec::new();
    let mut before = Counters::default();
    let mut aborted = None;
    let mut send_seconds = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut next = ctx.start + spec.interval;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let mut histogram = stats::histogram();
        let now = collect(&stats, &mut histogram);
        let end_s = ctx.start.elapsed().as_secs_f64();
        let start_s = intervals.last().map_or(0.0, |r| r.end_s);
        let seconds = (end_s - start_s).max(1e-6);
        let middle = (start_s + end_s) / 2.0;
        let row = IntervalRow {
            end_s,
            seconds,
            profile_time: schedule.profile_time(middle).map(format_clock),
            target_tps: if send_seconds.is_none() { schedule.rate_at(middle) } else { 0.0 },
            counters: now.delta(&before),
            in_flight: now.in_flight(),
            histogram,
        };
        if spec.live {
            let line = live_line(&row, &now);
            if terminal {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
        intervals.push(row);
        before = now;
        next += spec.interval;

        if let Some(task) = tasks.iter_mut().find(|t| t.is_finished()) {
            let error = match task.await {
                Ok(Ok(())) => anyhow::anyhow!("a connection ended early"),
                Ok(Err(error)) => error,
                Err(join) => anyhow::anyhow!("connection task: {join}"),
            };
            aborted = Some(format!("{error:#}"));
            send_seconds.get_or_insert(end_s);
            tasks.retain(|t| !t.is_finished());
            break;
        }
        if send_seconds.is_none() && ctx.originating.load(std::sync::atomic::Ordering::Acquire) == 0 {
            send_seconds = Some(end_s.min(spec.schedule.duration.as_secs_f64()).max(1e-3));
            drain_deadline = Some(Instant::now() + spec.drain);
        }
        if let Some(deadline) = drain_deadline
            && (now.in_flight() == 0 || Instant::now() >= deadline)
        {
            break;
        }
    }
    if spec.live && terminal {
        eprintln!();
    }
    ctx.stop.set();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Err(error))) if aborted.is_none() => aborted = Some(format!("{error:#}")),
            _ => {}
        }
    }
    // Whatever arrived after the last interval.
    let mut histogram = stats::histogram();
    let last = collect(&stats, &mut histogram);
    if last != before || !histogram.is_empty() {
        let end_s = ctx.start.elapsed().as_secs_f64();
        let start_s = intervals.last().map_or(0.0, |r| r.end_s);
        intervals.push(IntervalRow {
            end_s,
            seconds: (end_s - start_s).max(1e-6),
            profile_time: None,
            target_tps: 0.0,
            counters: last.delta(&before),
            in_flight: last.in_flight(),
            histogram,
        });
    }
    if let Some(record) = &ctx.record {
        use std::io::Write;
        record.lock().unwrap_or_else(|e| e.into_inner()).flush().context("writing the reply record")?;
    }

    let switch_cpu_seconds = match (spec.admin, switch_cpu_before) {
        (Some(admin), Some(before)) => crate::cpu::switch_seconds(admin).await.ok().map(|after| after - before),
        _ => None,
    };
    let loadgen_cpu_seconds = crate::cpu::own_seconds().zip(loadgen_cpu_before).map(|(after, before)| after - before);
    let mut total = stats::histogram();
    let mut codes = BTreeMap::new();
    let mut responded = Responded::default();
    let mut rejects = 0;
    for conn in &stats {
        let replies = conn.replies.lock().unwrap_or_else(|e| e.into_inner());
        let _ = total.add(&replies.total);
        for (&key, &count) in &replies.codes {
            *codes.entry(key).or_insert(0) += count;
        }
        rejects += replies.rejects;
        responded.add(&conn.responder.lock().unwrap_or_else(|e| e.into_inner()));
    }
    Ok(Outcome {
        run_id,
        settings: spec.settings.clone(),
        intervals,
        total,
        counters: last,
        codes,
        responded,
        rejects,
        send_seconds: send_seconds.unwrap_or(spec.schedule.duration.as_secs_f64()),
        elapsed_seconds: ctx.start.elapsed().as_secs_f64(),
        started_unix_s,
        aborted,
        loadgen_cpu_seconds,
        switch_cpu_seconds,
    })
}

/// The live view: elapsed time, profile clock, target and achieved rate, in flight, p99
/// of the last interval, errors and late sends.
fn live_line(row: &IntervalRow, total: &Counters) -> String {
    let p99 = if row.histogram.is_empty() {
        "-".to_string()
    } else {
        format!("{:.1} ms", row.histogram.value_at_quantile(0.99) as f64 / 1000.0)
    };
    format!(
        "[{:>7.1}s]{} target {:>9.0}/s  achieved {:>9.0}/s  in flight {:>6}  p99 {:>9}  errors {}  late {}  dropped {}",
        row.end_s,
        row.profile_time.as_deref().map(|t| format!(" {t} ")).unwrap_or_default(),
        row.target_tps,
        row.achieved_tps(),
        row.in_flight,
        p99,
        total.errors,
        total.late,
        total.dropped,
    )
}
