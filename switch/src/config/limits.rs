//! `[session]`, `[exchange]` and `[connections]`: the timers and limits a file may set,
//! each checked against its bounds.

use codec::InstitutionId;

use super::file::{FileExchange, FileSession};
use super::{ConfigError, Source};
use crate::core::session::SessionConfig;

/// Bounds on the session timers a file may set (milliseconds).
const SIGN_ON_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;
const ECHO_INTERVAL_MS: std::ops::RangeInclusive<u32> = 1_000..=600_000;
const DRAIN_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 0..=600_000;
const REPLAY_WINDOW_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;
const WRITE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

/// `[session]`: the session timers of switch `switch_id`.
pub(super) fn session(
    session: &FileSession,
    switch_id: InstitutionId,
    source: Source<'_>,
) -> Result<SessionConfig, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    if !SIGN_ON_TIMEOUT_MS.contains(&session.sign_on_timeout_ms) {
        return Err(invalid("session.sign_on_timeout_ms".into(), format!("must be {SIGN_ON_TIMEOUT_MS:?}")));
    }
    if !ECHO_INTERVAL_MS.contains(&session.echo_interval_ms) {
        return Err(invalid("session.echo_interval_ms".into(), format!("must be {ECHO_INTERVAL_MS:?}")));
    }
    if session.idle_timeout_ms < session.echo_interval_ms.saturating_mul(2) {
        return Err(invalid(
            "session.idle_timeout_ms".into(),
            "must be at least twice session.echo_interval_ms, or idle sessions are cut between echoes".into(),
        ));
    }
    if !DRAIN_TIMEOUT_MS.contains(&session.drain_timeout_ms) {
        return Err(invalid("session.drain_timeout_ms".into(), format!("must be {DRAIN_TIMEOUT_MS:?}")));
    }
    if !WRITE_TIMEOUT_MS.contains(&session.write_timeout_ms) {
        return Err(invalid("session.write_timeout_ms".into(), format!("must be {WRITE_TIMEOUT_MS:?}")));
    }
    if session.replay_window_ms != 0 && !REPLAY_WINDOW_MS.contains(&session.replay_window_ms) {
        return Err(invalid(
            "session.replay_window_ms".into(),
            format!("must be 0 (no window) or {REPLAY_WINDOW_MS:?}"),
        ));
    }
    Ok(SessionConfig {
        switch_id,
        sign_on_timeout_ms: session.sign_on_timeout_ms,
        echo_interval_ms: session.echo_interval_ms,
        idle_timeout_ms: session.idle_timeout_ms,
        drain_timeout_ms: session.drain_timeout_ms,
        replay_window_ms: (session.replay_window_ms != 0).then_some(session.replay_window_ms),
        write_timeout_ms: session.write_timeout_ms,
    })
}

/// `[connections]`.
pub(super) fn connections(
    connections: &crate::edge::gate::ConnectionLimits,
    source: Source<'_>,
) -> Result<(), ConfigError> {
    connections.check().map_err(|(key, problem)| source.invalid(format!("connections.{key}"), problem))
}

/// `[exchange]`: checked here, taken into `ExchangeConfig` by the caller.
pub(super) fn exchange(exchange: &FileExchange, source: Source<'_>) -> Result<(), ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    if !(100..=600_000).contains(&exchange.reply_deadline_ms) {
        return Err(invalid("exchange.reply_deadline_ms".into(), "must be 100..=600000".into()));
    }
    if !(100..=3_600_000).contains(&exchange.reversal_retry_ms) {
        return Err(invalid("exchange.reversal_retry_ms".into(), "must be 100..=3600000".into()));
    }
    if exchange.in_flight_max == 0 || exchange.in_flight_per_participant_max == 0 || exchange.completed_max == 0 {
        return Err(invalid(
            "exchange".into(),
            "in_flight_max, in_flight_per_participant_max and completed_max must be at least 1".into(),
        ));
    }
    if exchange.verification_rate_per_second == 0 {
        return Err(invalid("exchange.verification_rate_per_second".into(), "must be at least 1".into()));
    }
    if exchange.drain_deadline_ms.is_some_and(|ms| ms > 600_000) {
        return Err(invalid("exchange.drain_deadline_ms".into(), "must be 0..=600000".into()));
    }
    Ok(())
}
