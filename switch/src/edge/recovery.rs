//! Start-up: each shard's exchange rebuilt from its journal, and what a crash can leave
//! half done across shards settled before any shard serves: an onboarding change some
//! shards journaled (`converge_onboarding`), a window cut some shards journaled
//! (`converge_cuts`). Each settles by journaling, in the shards that miss it, what the
//! others have.

use std::collections::HashMap;

use crate::core::exchange::Exchange;
use crate::core::record::Record;
use crate::core::session::Now;
use crate::durability::journal::{self, Journal, JournalError, JournalSettings};
use crate::durability::retention::Retention;
use crate::edge::tcp::Shared;

/// Settles every participant's onboarding state after recovery. A change reaches the shards
/// one by one, so a crash can leave some without it: the latest change any shard journaled
/// wins, and the shards without it journal it now. The result is `Shared`'s view.
pub(crate) fn converge_onboarding(
    shared: &Shared,
    exchanges: &mut [Exchange],
    journals: &mut [Option<Journal>],
    now: Now,
) -> Result<(), JournalError> {
    let mut states = HashMap::new();
    for participant in shared.directory.iter().map(|p| p.id) {
        let views: Vec<_> = exchanges.iter().map(|exchange| exchange.onboarding(participant)).collect();
        let latest = views.iter().copied().max_by_key(|&(_, _, changed_ms)| changed_ms).unwrap_or_default();
        let (state, suspended_from, _) = latest;
        for (exchange, view) in exchanges.iter_mut().zip(&views) {
            if (view.0, view.1) != (state, suspended_from) {
                tracing::warn!(%participant, state = state.name(), "onboarding change completed on a shard that missed it");
                exchange.set_onboarding(participant, state, suspended_from.unwrap_or(state), now);
            }
        }
        states.insert(participant, (state, suspended_from));
    }
    for (index, (exchange, journal)) in exchanges.iter_mut().zip(journals.iter_mut()).enumerate() {
        let mut records = Vec::new();
        exchange.take_records(&mut records);
        if let (Some(journal), false) = (journal.as_mut(), records.is_empty()) {
            let dir = shared.journal.as_ref().map(|s| journal::shard_dir(&s.data_dir, index)).unwrap_or_default();
            journal.commit(&records, true).map_err(|source| JournalError::Io { path: dir, source })?;
        }
    }
    if let Ok(mut view) = shared.control.onboarding.try_lock() {
        *view = states;
    }
    Ok(())
}

/// Opens shard `index`'s journal and rebuilds `exchange` from it. What was in flight when
/// the switch stopped is timed out and reversed, and those decisions are made durable
/// before the shard starts.
pub(crate) fn recover(
    settings: &JournalSettings,
    retention: Option<&Retention>,
    index: usize,
    exchange: &mut Exchange,
    now: Now,
) -> Result<Journal, JournalError> {
    let dir = journal::shard_dir(&settings.data_dir, index);
    let (mut journal, recovery) =
        Journal::recover(&dir, settings.policy, settings.damage, settings.code_key.clone(), |sequence, record| {
            if let (Some(retention), Record::Checkpoint { window, low_water, .. }) = (retention, &record) {
                retention.checkpoint(index, *window, *low_water);
            }
            exchange.replay(sequence, &record);
        })?;
    // The journal numbers what the exchange decides from here on.
    exchange.set_journal_next(journal.last_sequence() + 1);
    journal.set_segment_size(settings.segment_size);
    if settings.io_uring {
        journal.use_io_uring();
    }
    if let Some((path, offset, bytes)) = &recovery.torn_tail {
        tracing::warn!(segment = %path.display(), offset, bytes, "journal: torn tail cut off (a write the crash interrupted)");
    }
    if let Some((path, offset, problem)) = &recovery.accepted_damage {
        tracing::error!(segment = %path.display(), offset, %problem, "journal: DAMAGED records dropped at the operator's request");
    }
    let mut out = Vec::new();
    exchange.abandon_in_flight(now, &mut out);
    let mut records = Vec::new();
    exchange.take_records(&mut records);
    let io = |source| JournalError::Io { path: dir.clone(), source };
    journal.commit(&records, true).map_err(io)?;
    tracing::info!(
        shard = index,
        records = recovery.records,
        first_sequence = recovery.first_sequence,
        replayed_from = recovery.replayed_from,
        timed_out = records.iter().filter(|r| matches!(r, Record::TimedOut { .. })).count(),
        "journal recovered"
    );
    Ok(journal)
}

/// Whether recovery still runs (for `extend_start_timeout`).
#[derive(Debug, Default)]
pub(crate) struct Recovering {
    done: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Recovering {
    /// Recovery is over when the returned guard is dropped.
    pub(crate) fn finish_on_drop(&self) -> impl Drop + '_ {
        struct Finish<'a>(&'a Recovering);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                *self.0.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
                self.0.changed.notify_all();
            }
        }
        Finish(self)
    }
}

/// How long each `EXTEND_TIMEOUT_USEC` asks systemd to wait, and how often it is sent.
const EXTEND_BY: std::time::Duration = std::time::Duration::from_secs(30);
const EXTEND_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// While recovery runs, asks systemd (when under it) every 10 s to extend the start
/// timeout by 30 s: a long replay is progress, not a hung start.
pub(crate) fn extend_start_timeout(recovering: &Recovering) {
    let mut done = recovering.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while !*done {
        crate::ops::notify::notify(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS=recovering the journal",
            EXTEND_BY.as_micros()
        ));
        done = recovering.changed.wait_timeout(done, EXTEND_EVERY).unwrap_or_else(std::sync::PoisonError::into_inner).0;
    }
}

/// Settles the clearing cuts after recovery: a close journals its cut shard by shard, so a
/// crash can leave some shards without the last one. They journal it now, before serving,
/// so every shard's journal says the window is closed and what follows is the next one's
/// (`clearing::close`). Returns the last window cut.
pub(crate) fn converge_cuts(
    shared: &Shared,
    exchanges: &mut [Exchange],
    journals: &mut [Option<Journal>],
    retention: Option<&Retention>,
    now: Now,
) -> Result<u64, JournalError> {
    let last = exchanges.iter().map(Exchange::last_window).max().unwrap_or(0);
    for (index, (exchange, journal)) in exchanges.iter_mut().zip(journals.iter_mut()).enumerate() {
        let Some(journal) = journal.as_mut() else { continue };
        for window in exchange.last_window() + 1..=last {
            tracing::warn!(
                shard = index,
                window,
                "clearing: a cut the other shards journaled before the stop is journaled now"
            );
            let low_water = exchange.cut(window, now);
            if let Some(retention) = retention {
                retention.checkpoint(index, window, low_water);
            }
        }
        let mut records = Vec::new();
        exchange.take_records(&mut records);
        if !records.is_empty() {
            let dir = shared.journal.as_ref().map(|s| journal::shard_dir(&s.data_dir, index)).unwrap_or_default();
            journal.commit(&records, true).map_err(|source| JournalError::Io { path: dir, source })?;
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use codec::InstitutionId;

    use super::*;
    use crate::config::SwitchConfig;
    use crate::core::exchange::{Exchange, Routes};
    use crate::core::session::Now;
    use crate::edge::tcp::Shared;
    use crate::participant::{Directory, Onboarding};

    #[test]
    fn a_change_some_shards_missed_is_completed_at_start() {
        let config = SwitchConfig::embedded_default();
        let shared = Shared::new(config.session.clone(), Directory::new(config.participants.clone()));
        let wechat = InstitutionId::new("WECHATPAY").expect("valid");
        let alipay = InstitutionId::new("ALIPAY").expect("valid");
        let mut exchanges: Vec<Exchange> = (0..3)
            .map(|index| Exchange::new(config.exchange.for_shard(index, 3), Routes::embedded_default()))
            .collect();
        let at = |unix_ms| Now { monotonic_ms: 0, unix_ms };
        // A crash between shards: WeChat Pay's suspension reached shards 0 and 2 only; a
        // later resumption of Alipay reached shard 1 only, after all three had suspended it.
        exchanges[0].set_onboarding(wechat, Onboarding::Suspended, Onboarding::Live, at(10));
        exchanges[2].set_onboarding(wechat, Onboarding::Suspended, Onboarding::Live, at(10));
        for exchange in &mut exchanges {
            exchange.set_onboarding(alipay, Onboarding::Suspended, Onboarding::Live, at(20));
        }
        exchanges[1].set_onboarding(alipay, Onboarding::Live, Onboarding::Suspended, at(30));
        for exchange in &mut exchanges {
            exchange.take_records(&mut Vec::new());
        }
        let mut journals: Vec<Option<Journal>> = (0..3).map(|_| None).collect();
        converge_onboarding(&shared, &mut exchanges, &mut journals, at(40)).expect("converges");
        for exchange in &exchanges {
            assert_eq!(exchange.onboarding(wechat).0, Onboarding::Suspended);
            assert_eq!(exchange.onboarding(alipay).0, Onboarding::Live);
        }
        let states = shared.control.onboarding.try_lock().expect("free").clone();
        assert_eq!(states[&wechat], (Onboarding::Suspended, Some(Onboarding::Live)));
        assert_eq!(states[&alipay], (Onboarding::Live, None));
        assert_eq!(states.len(), config.participants.len());
    }
}
