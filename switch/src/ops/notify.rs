//! systemd's service notification protocol (`sd_notify`), without libsystemd: one datagram
//! per state change to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). With the variable absent (not under systemd) every call is a
//! no-op. The unit in `deploy/systemd/switch.service` is `Type=notify` with a watchdog.
//!
//! What the switch says: `READY=1` once it serves (the journal recovered, every shard
//! running: the moment `/readyz` turns 200), `WATCHDOG=1` at half the watchdog interval
//! while its acceptor's runtime is running, `STOPPING=1` when it starts to drain.
//! Liveness never depends on participants: the watchdog is fed whether or not anyone is
//! connected.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd; false when not under
/// systemd or when the datagram could not be sent (never fatal: a switch outside systemd
/// serves the same).
pub fn notify(state: &str) -> bool {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let Ok(socket) = UnixDatagram::unbound() else { return false };
    let target = target.to_string_lossy().to_string();
    let sent = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|address| socket.send_to_addr(state.as_bytes(), &address))
        }
        None => socket.send_to(state.as_bytes(), &target),
    };
    if let Err(error) = &sent {
        tracing::warn!(%error, socket = %target, "cannot notify systemd");
    }
    sent.is_ok()
}

/// How often to feed the watchdog: half of `$WATCHDOG_USEC`, if the watchdog is meant for
/// this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}
