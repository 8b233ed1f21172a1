//! The control plane: what changes after start besides the shards' own state (the
//! shards' inboxes once started, retention once recovered, the next window and the close
//! lock, the onboarding and rate tables), and the operations that change it through every
//! shard: onboarding changes and rate reloads here, window closes in `edge::closing`.
//!
//! Invariants: each operation runs one at a time (its lock is held until every shard has
//! applied it, and journaled it where it is journaled); nothing here is touched per
//! message (a session id: once per connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use codec::InstitutionId;
use tokio::sync::oneshot;

use crate::durability::retention::Retention;
use crate::edge::shard::{Event, Mesh};
use crate::edge::tcp::Shared;
use crate::participant::Onboarding;

/// Why an onboarding change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnboardingRefusal {
    /// No such participant in the configuration.
    Unknown,
    /// Its current state does not lead there (`Onboarding::may_become`).
    NotAllowed(String),
    /// The switch could not apply it (not serving, or a shard did not answer in time).
    Failed(String),
}

/// The control plane's state: all of `Shared` that changes after start, each part behind
/// its own cell or lock. Changes go through `Shared`'s control operations (`close_window`,
/// `change_onboarding`, `reload_rates`), one at a time each; nothing here is touched per
/// message (a session id: once per connection).
#[derive(Debug)]
pub(crate) struct ControlPlane {
    /// The shards' inboxes, once `serve` has started them (for closing windows).
    pub(crate) mesh: std::sync::OnceLock<Arc<Mesh>>,
    /// Journal retention, once `serve` has recovered the shards (with `retain_windows`),
    /// and the fleet publisher's progress it must wait for (when the node publishes).
    pub(crate) retention: std::sync::OnceLock<(Arc<Retention>, Option<Arc<crate::settlement::fleet::Progress>>)>,
    /// The next clearing window to close (after recovery: one past the last cut).
    pub(crate) next_window: AtomicU64,
    /// Held by a close, and by the start's finishing of an interrupted one: one at a time.
    pub(crate) closing: tokio::sync::Mutex<()>,
    /// Every participant's onboarding state and the state it was suspended from, as the
    /// shards hold it (set once recovered; changed only through `change_onboarding`, which
    /// holds the lock while every shard applies and journals the change).
    pub(crate) onboarding: tokio::sync::Mutex<HashMap<InstitutionId, (Onboarding, Option<Onboarding>)>>,
    /// The rate table the shards convert with (the lock also keeps reloads one at a time).
    pub(crate) rates: tokio::sync::Mutex<Arc<crate::fx::RateTable>>,
    /// The ISO 8583 listener, until `serve` takes it.
    pub(crate) iso8583_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// Session ids, unique for this process. Relaxed: only uniqueness matters.
    pub(crate) next_session_id: AtomicU64,
}

impl ControlPlane {
    pub(crate) fn new(rates: Arc<crate::fx::RateTable>) -> Self {
        Self {
            mesh: std::sync::OnceLock::new(),
            retention: std::sync::OnceLock::new(),
            next_window: AtomicU64::new(1),
            closing: tokio::sync::Mutex::new(()),
            onboarding: tokio::sync::Mutex::new(HashMap::new()),
            rates: tokio::sync::Mutex::new(rates),
            iso8583_listener: std::sync::Mutex::new(None),
            next_session_id: AtomicU64::new(1),
        }
    }
}

impl Shared {
    /// Every participant's onboarding state now.
    pub async fn onboarding_states(&self) -> HashMap<InstitutionId, (Onboarding, Option<Onboarding>)> {
        self.control.onboarding.lock().await.clone()
    }

    /// Moves `participant` to onboarding state `to`, if its current state allows it
    /// (`Onboarding::may_become`): every shard applies it to the next request and journals
    /// it; returns the state it left, once every shard's record is durable.
    pub async fn change_onboarding(
        &self,
        participant: InstitutionId,
        to: Onboarding,
    ) -> Result<Onboarding, OnboardingRefusal> {
        let mesh =
            self.control.mesh.get().ok_or_else(|| OnboardingRefusal::Failed("the switch is not serving yet".into()))?;
        let mut states = self.control.onboarding.lock().await;
        let &(from, suspended_from) = states.get(&participant).ok_or(OnboardingRefusal::Unknown)?;
        if !from.may_become(to, suspended_from) {
            let back = suspended_from.map(|s| format!(" (it may only go back to {})", s.name())).unwrap_or_default();
            return Err(OnboardingRefusal::NotAllowed(format!(
                "{participant} is {}: it cannot become {}{back}",
                from.name(),
                to.name()
            )));
        }
        let (dones, durable): (Vec<_>, Vec<_>) = (0..mesh.shards()).map(|_| oneshot::channel()).unzip();
        let mut dones = dones.into_iter();
        mesh.broadcast(|_| Event::Onboarding {
            participant,
            state: to,
            previous: from,
            done: dones.next().expect("one per shard"),
        })
        .await;
        for change in durable {
            if !matches!(tokio::time::timeout(Duration::from_secs(30), change).await, Ok(Ok(()))) {
                // Some shards may have it: the next start converges them on the latest.
                return Err(OnboardingRefusal::Failed(format!(
                    "{participant}: a shard did not make the change durable in 30 s"
                )));
            }
        }
        states.insert(participant, (to, (to == Onboarding::Suspended).then_some(from)));
        tracing::info!(%participant, from = from.name(), to = to.name(), "onboarding state changed");
        Ok(from)
    }

    /// The FX rate table the shards convert with now.
    pub async fn rates(&self) -> Arc<crate::fx::RateTable> {
        self.control.rates.lock().await.clone()
    }

    /// Reads the rate table file again and hands the table to every shard, which converts
    /// with it from its next request on; returns the previous and the new version once
    /// every shard has it. Refused, with the running table kept, when there is no file, it
    /// cannot be read or is invalid, or its version is not above the running one (so an
    /// old file is never reloaded by mistake, and a version names one table).
    pub async fn reload_rates(&self) -> Result<(u32, u32), String> {
        let path = self
            .fx_rates_file
            .as_ref()
            .ok_or("no [fx] rates file is configured: the table given at start is the only one")?;
        let mesh = self.control.mesh.get().ok_or("the switch is not serving yet")?;
        let mut running = self.control.rates.lock().await;
        let table = crate::fx::RateTable::read(path)?;
        let previous = running.version();
        if table.version() <= previous {
            return Err(format!(
                "{}: version {} is not above the running version {previous}",
                path.display(),
                table.version()
            ));
        }
        let table = Arc::new(table);
        let (dones, applied): (Vec<_>, Vec<_>) = (0..mesh.shards()).map(|_| oneshot::channel()).unzip();
        let mut dones = dones.into_iter();
        mesh.broadcast(|_| Event::Rates { rates: table.clone(), done: dones.next().expect("one per shard") }).await;
        for shard in applied {
            if !matches!(tokio::time::timeout(Duration::from_secs(30), shard).await, Ok(Ok(()))) {
                return Err("a shard did not take the new rates in 30 s; some shards may have them".into());
            }
        }
        *running = table.clone();
        tracing::info!(previous, version = table.version(), "FX rates reloaded");
        Ok((previous, table.version()))
    }
}
