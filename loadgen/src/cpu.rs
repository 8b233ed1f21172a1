//! CPU time, so a reader can tell whose limit a figure is: the load generator's own (from
//! `/proc/self/stat`) and the switch's (its admin port's `process_cpu_seconds_total`).

use std::net::SocketAddr;

use anyhow::Context;

/// This process's user plus system CPU seconds; `None` where `/proc` is unavailable.
pub fn own_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields overall, in USER_HZ ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The switch's `process_cpu_seconds_total`, from its admin port's `/metrics`.
pub async fn switch_seconds(admin: SocketAddr) -> anyhow::Result<f64> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn own_cpu_time_grows() {
        let before = super::own_seconds().expect("/proc/self/stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(super::own_seconds().unwrap() > before);
    }
}
