//! A shard's thread: its own single-threaded runtime (tokio's, or tokio-uring's for the
//! io_uring data path) running the shard's loop (`edge::shard::run_shard`), its journal
//! thread's group commit (`edge::commit`) and the connections handed to it, until the
//! drain has ended.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::exchange::Exchange;
use crate::durability::journal::{EXIT_JOURNAL_FAILED, Journal};
use crate::edge::commit::Commit;
use crate::edge::shard::{Mesh, ShardLoop, run_shard};
use crate::edge::tcp::{Accepted, Connection, Protocol, Shared};
use crate::edge::transport::{Io, Transport};

/// What one shard's thread needs besides its exchange.
pub(crate) struct ShardThread {
    pub(crate) index: usize,
    /// Where this shard's journal thread reports its durable sequence.
    pub(crate) progress: Arc<crate::settlement::fleet::Progress>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) draining: watch::Receiver<bool>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl ShardThread {
    /// The shard's thread: its own single-threaded runtime (tokio's, or tokio-uring's for
    /// the io_uring data path) runs its loop and connections.
    pub(crate) fn run(
        self,
        exchange: Exchange,
        journal: Option<Journal>,
        accepted: mpsc::Receiver<Accepted>,
        drained: oneshot::Sender<()>,
    ) {
        match self.shared.io {
            Io::Uring => tokio_uring::start(async move {
                let local = tokio::task::LocalSet::new();
                local.run_until(self.serve::<tokio_uring::net::TcpStream>(exchange, journal, accepted, drained)).await;
            }),
            Io::Tokio => {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, shard = self.index, "cannot start a shard's runtime");
                        std::process::exit(1);
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, self.serve::<TcpStream>(exchange, journal, accepted, drained));
            }
        }
    }

    /// Runs the shard loop and this shard's connections until the drain has ended.
    async fn serve<T: Transport>(
        self,
        exchange: Exchange,
        journal: Option<Journal>,
        mut accepted: mpsc::Receiver<Accepted>,
        drained: oneshot::Sender<()>,
    ) {
        let shared = &self.shared;
        let commit = match journal.map(|journal| {
            let mesh = Arc::clone(&self.mesh);
            let progress = Arc::clone(&self.progress);
            let metrics = Arc::clone(&self.shared.metrics);
            let index = self.index;
            Commit::start(index, journal, move |done| {
                progress.set_durable(index, done.durable);
                metrics.journal_committed(done.records, done.took);
                mesh.wake_shard(index);
            })
        }) {
            None => None,
            Some(Ok(commit)) => Some(commit),
            Some(Err(error)) => {
                tracing::error!(%error, shard = self.index, "cannot start the journal thread");
                std::process::exit(EXIT_JOURNAL_FAILED);
            }
        };
        let shard_loop = tokio::spawn(run_shard(ShardLoop {
            index: self.index,
            exchange,
            commit,
            mesh: Arc::clone(&self.mesh),
            metrics: Arc::clone(&shared.metrics),
            status: Arc::clone(&shared.status),
            started: shared.started,
            stop: self.stop.clone(),
            retention: shared.control.retention.get().map(|(retention, _)| Arc::clone(retention)),
            restart_every: shared.journal.as_ref().map_or(u64::MAX, |settings| settings.restart_every),
        }));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                // Reap finished connection tasks so the set stays as small as the live sessions.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                handed = accepted.recv() => {
                    let Some((stream, peer, protocol, ticket)) = handed else { break };
                    let connection = Connection {
                        shared: Arc::clone(shared),
                        mesh: Arc::clone(&self.mesh),
                        home: self.index,
                        draining: self.draining.clone(),
                    };
                    if protocol == Protocol::Iso8583 {
                        connections.spawn_local(async move {
                            if let Err(error) = connection.serve_iso8583(stream, peer, ticket).await {
                                tracing::debug!(%peer, %error, "ISO 8583 connection ended with an I/O error");
                            }
                        });
                        continue;
                    }
                    if let Some(tls) = &shared.tls {
                        let acceptor = tls.acceptor();
                        connections.spawn_local(async move {
                            if let Err(error) = connection.serve_tls(acceptor, stream, peer, ticket).await {
                                tracing::debug!(%peer, %error, "TLS connection ended with an I/O error");
                            }
                        });
                        continue;
                    }
                    let stream = match stream.set_nodelay(true).and_then(|()| T::from_std(stream)) {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%peer, %error, "connection unusable");
                            continue;
                        }
                    };
                    connections.spawn_local(async move {
                        if let Err(error) = connection.serve(stream, peer, None, ticket).await {
                            tracing::debug!(%peer, %error, "connection ended with an I/O error");
                        }
                    });
                }
            }
        }
        // Each session closes by its own drain deadline; this bound only guards against
        // a task stuck in a write to a peer that stopped reading.
        let bound = Duration::from_millis(shared.session.drain_timeout_ms) + Duration::from_secs(1);
        if tokio::time::timeout(bound, async { while connections.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(sessions = connections.len(), "drain bound passed; closing the remaining connections");
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
        let _ = drained.send(());
        // The loop runs on until every shard has drained (`stop`).
        let _ = shard_loop.await;
    }
}
