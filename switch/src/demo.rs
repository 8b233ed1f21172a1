//! `switch demo`: the whole story on one machine in about a minute. Starts this binary as
//! a switch on its embedded default (fresh data directory, free loopback ports), replays
//! a holiday profile through it with the load generator (live view, final table, HTML
//! report), closes the clearing window, and reconciles the generator's record of every
//! reply with the clearing files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What the demo plays.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// A built-in profile (`loadgen profiles`) or a profile file.
    #[arg(long, default_value = "new-years-eve")]
    pub profile: String,
    /// The part of the profile to play.
    #[arg(long, default_value = "d0 20:00")]
    pub from: String,
    #[arg(long, default_value = "d1 02:00")]
    pub to: String,
    /// Wall-clock length of the replay.
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// The replay's peak rate (requests per second).
    #[arg(long, default_value_t = 20_000.0)]
    pub peak_tps: f64,
    /// How the demo's issuers answer (loadgen's --respond).
    #[arg(long, default_value = "latency=lognormal:1ms:10ms,decline=2%")]
    pub respond: String,
    /// Each demo run gets a fresh directory under this one.
    #[arg(long, default_value = "switch-demo")]
    pub dir: PathBuf,
}

/// A free loopback port (bound, then released for the switch to take).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

fn ready(admin: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: switch\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// The switch child, stopped (SIGTERM, then SIGKILL) when dropped.
struct SwitchProcess(Child);

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let asked = Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        while asked && Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Runs the demo; returns the exit code (the load generator's, or 6 if reconciliation
/// found a difference).
pub fn demo(
    args: &DemoArgs,
    close_window: impl Fn(SocketAddr, &Path) -> anyhow::Result<(u64, Vec<PathBuf>)>,
) -> anyhow::Result<i32> {
    let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
    let out = args.dir.join(format!("run-{stamp}"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let data_dir = out.join("data");
    let (listen, admin) = (free_port()?, free_port()?);
    let log_path = out.join("switch.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating this binary")?;
    println!("demo: starting the switch on {listen} (admin {admin}), journal and clearing in {}", data_dir.display());
    let child = Command::new(exe)
        .args(["run", "--listen", &listen.to_string(), "--admin-listen", &admin.to_string(), "--data-dir"])
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the switch")?;
    let mut switch = SwitchProcess(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(admin) {
        if let Ok(Some(status)) = switch.0.try_wait() {
            bail!("the switch exited ({status}) before it was ready:\n{}", tail(&log_path));
        }
        if Instant::now() > deadline {
            bail!("the switch was not ready within 30 s:\n{}", tail(&log_path));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let path = |name: &str| out.join(name).to_string_lossy().to_string();
    let (report, record) = (path("report.html"), path("record.csv"));
    println!(
        "demo: replaying {} from {} to {} in {} (peak {}/s); the live view follows",
        args.profile, args.from, args.to, args.duration, args.peak_tps
    );
    let loadgen_args: Vec<String> = vec![
        "loadgen".into(),
        "run".into(),
        "--target".into(),
        listen.to_string(),
        "--profile".into(),
        args.profile.clone(),
        "--from".into(),
        args.from.clone(),
        "--to".into(),
        args.to.clone(),
        "--duration".into(),
        args.duration.clone(),
        "--peak-tps".into(),
        args.peak_tps.to_string(),
        "--respond".into(),
        args.respond.clone(),
        "--report".into(),
        report.clone(),
        "--summary-json".into(),
        path("summary.json"),
        "--hgrm".into(),
        path("latency.hgrm"),
        "--hlog".into(),
        path("latency.hlog"),
        "--record".into(),
        record.clone(),
    ];
    let code = loadgen::cli::main_with(loadgen_args);
    if code == 1 {
        bail!("the load generator failed (see above); the switch's log: {}", log_path.display());
    }

    // As the operator whose token the switch wrote into its data directory.
    let (window, files) = close_window(admin, &data_dir.join("admin.token")).context("closing the clearing window")?;
    println!("demo: closed clearing window {window}: {} files in {}", files.len(), data_dir.join("clearing").display());
    let found = loadgen::reconcile::reconcile(Path::new(&record), &data_dir)?;
    print!("{}", found.render());
    drop(switch);
    println!("demo: report {report}\ndemo: everything else in {}", out.display());
    Ok(if code != 0 {
        code
    } else if !found.is_clean() {
        loadgen::cli::EXIT_NOT_RECONCILED
    } else {
        0
    })
}
