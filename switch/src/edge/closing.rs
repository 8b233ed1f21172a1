//! Clearing windows closed by a running switch, by the steps and with the invariants of
//! `clearing::close`: one close at a time, each finishing what an interrupted one left
//! before it cuts a new window, and the daily cut-off that asks for them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::edge::shard::Event;
use crate::edge::tcp::Shared;
use crate::settlement::clearing::{self, CloseInputs, close::fault_point};

impl Shared {
    /// Closes the open clearing window: what an interrupted close left is finished first;
    /// then the close's inputs are recorded, every shard journals a cut (in order with its
    /// decisions), and once every cut is durable the window's files are built from the
    /// journal, outside the shards, and written under the data directory; then retention.
    /// See `clearing` for the rules.
    pub async fn close_window(&self) -> Result<(u64, Vec<PathBuf>), String> {
        let settings = self.journal.as_ref().ok_or("this switch keeps no journal: there is nothing to clear")?;
        let mesh = self.control.mesh.get().ok_or("the switch is not serving yet")?;
        let _closing = self.control.closing.lock().await;
        let window = self.control.next_window.load(Ordering::Relaxed);
        self.finish_interrupted(window - 1).await?;
        let (data_dir, key) = (settings.data_dir.clone(), settings.code_key.clone());
        let inputs = CloseInputs::new(self.fees.clone(), self.exchange.completed_max);
        {
            let (data_dir, inputs) = (data_dir.clone(), inputs.clone());
            blocking(move || clearing::close::record_inputs(&data_dir, window, &inputs)).await?;
        }
        fault_point("close-after-inputs");
        let (dones, durable): (Vec<_>, Vec<_>) = (0..mesh.shards()).map(|_| oneshot::channel()).unzip();
        let mut dones = dones.into_iter();
        mesh.broadcast(|_| Event::Cut { window, done: dones.next().expect("one per shard") }).await;
        for (index, cut) in durable.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(30), cut).await {
                Ok(Ok(())) => {}
                // The next close cuts this window again: a shard that has it already
                // journals a second cut of it, which changes nothing.
                _ => return Err(format!("window {window}: a shard did not make its cut durable in 30 s")),
            }
            if index == 0 {
                fault_point("close-after-first-cut");
            }
        }
        self.control.next_window.store(window + 1, Ordering::Relaxed);
        fault_point("close-after-cuts");
        let retention = self.control.retention.get().cloned();
        let metrics = Arc::clone(&self.metrics);
        blocking(move || {
            let checkpoints = retention.as_ref().map(|(retention, _)| Arc::clone(retention));
            let built = clearing::close::build(&data_dir, window, &inputs, key.as_ref(), |shard, cut, low_water| {
                if let Some(retention) = &checkpoints {
                    retention.checkpoint(shard, cut, low_water);
                }
            });
            let built = built.inspect_err(|_| metrics.set_clearing_incomplete(1))?;
            metrics.set_clearing_incomplete(0);
            tracing::info!(window, entries = built.entries, files = built.files.len(), "clearing window closed");
            fault_point("close-after-files");
            if let Some((retention, progress)) = retention {
                // The files are written: only now may what they were built from go. A
                // failure here costs disk, not the close.
                let published = progress.map(|progress| progress.published());
                match retention.apply(&data_dir, window, published.as_deref()) {
                    Ok(removed) => {
                        for (shard, removed) in removed.iter().enumerate().filter(|(_, r)| r.segments > 0) {
                            metrics.journal_removed(removed.segments, removed.bytes);
                            tracing::info!(
                                window,
                                shard,
                                segments = removed.segments,
                                bytes = removed.bytes,
                                first_sequence = removed.first_sequence,
                                "journal retention removed old segments"
                            );
                        }
                    }
                    Err(error) => tracing::error!(window, %error, "journal retention failed; segments kept"),
                }
            }
            Ok((window, built.files))
        })
        .await
    }

    /// Finishes every window up to `last` whose close was interrupted (`clearing::resume`).
    /// While one cannot be finished, no later window closes.
    pub(crate) async fn finish_interrupted(&self, last: u64) -> Result<(), String> {
        let Some(settings) = &self.journal else { return Ok(()) };
        let (data_dir, key) = (settings.data_dir.clone(), settings.code_key.clone());
        let metrics = Arc::clone(&self.metrics);
        blocking(move || {
            let pending = clearing::close::incomplete(&data_dir, last);
            metrics.set_clearing_incomplete(pending.len() as u64);
            if pending.is_empty() {
                return Ok(());
            }
            match clearing::close::resume(&data_dir, last, key.as_ref()) {
                Ok(_) => {
                    metrics.set_clearing_incomplete(0);
                    Ok(())
                }
                Err(error) => {
                    let text = format!(
                        "window {}: an interrupted close cannot be finished ({error}); no later window closes until it is",
                        pending[0]
                    );
                    tracing::error!("clearing: {text}");
                    Err(clearing::ClearingError::Io { path: data_dir, source: std::io::Error::other(text) })
                }
            }
        })
        .await
        .map(|_| ())
    }
}

/// Runs `work` (file I/O) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, clearing::ClearingError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// At start: finishes what an interrupted close left (in the background: the switch serves
/// meanwhile, and a close waits for it).
pub(crate) async fn finish_interrupted_at_start(shared: Arc<Shared>) {
    let _closing = shared.control.closing.lock().await;
    let last = shared.control.next_window.load(Ordering::Relaxed) - 1;
    if let Err(problem) = shared.finish_interrupted(last).await {
        tracing::error!(%problem, "clearing: interrupted close not finished at start");
    }
}
/// Closes a clearing window at every daily cut-off, for as long as the switch serves.
pub(crate) async fn daily_cutoffs(shared: Arc<Shared>, at: jiff::civil::Time) {
    loop {
        let now = jiff::Timestamp::now();
        let next = match clearing::next_cutoff(now, at) {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "cannot compute the next cut-off; daily windows stop");
                return;
            }
        };
        tracing::info!(cutoff = %next, "next daily clearing cut-off");
        let wait = std::time::Duration::try_from(next.duration_since(now)).unwrap_or_default();
        tokio::time::sleep(wait).await;
        match shared.close_window().await {
            Ok((window, files)) => tracing::info!(window, files = files.len(), "daily cut-off: window closed"),
            Err(problem) => tracing::error!(%problem, "daily cut-off failed"),
        }
    }
}
