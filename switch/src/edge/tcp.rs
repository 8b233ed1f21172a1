//! The TCP edge: accepts connections, hands each to a shard, and drives one [`Session`]
//! per connection on its shard's thread (over either data path, see `edge::transport`),
//! reading many frames per read and writing every reply of a read (and every message its
//! shard queued) in one write.
//!
//! Invariants:
//! - A connection is owned by exactly one task on one shard; its decoder, encoder and
//!   session are never shared, so nothing on the per-message path takes a lock.
//! - Per connection, memory is bounded by the decoder's and encoder's fixed buffers.
//! - Every frame's reply is written before the connection is closed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use codec::{FrameDecoder, FrameEncoder, InstitutionId, Message, ReplyCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::exchange::{Exchange, ExchangeConfig, Routes, SessionId, UsedCodes, switch_answer};
use crate::core::session::{CloseReason, Control, Now, Session, SessionConfig};
use crate::core::shard;
use crate::durability::journal::{self, Journal, JournalError, JournalSettings};
use crate::durability::retention::Retention;
use crate::edge::gate::{ConnectionLimits, Gate, Ticket};
use crate::edge::shard::{Event, Mesh, Touched};
use crate::edge::transport::{Io, Transport};
use crate::edge::writes::{self, Writes};
use crate::edge::{closing, recovery};
use crate::ops::log_limit::LogLimit;
use crate::ops::metrics::Metrics;
use crate::ops::status::{Link, Status};
use crate::participant::Directory;
use crate::settlement::clearing;

/// Most bytes one read asks for (the decoder's buffer bounds it too).
const READ_MAX: usize = 64 * 1024;
/// Messages moved from a connection's queue per wake-up, written in one write.
const OUTBOUND_BATCH_MAX: usize = 256;

/// What every connection task and the admin port share: settings fixed at start (every
/// public field), handles to the concurrent services (metrics, status, the gate), and the
/// control plane's state (`control`), which alone changes after start.
#[derive(Debug)]
pub struct Shared {
    pub session: SessionConfig,
    pub directory: Directory,
    pub exchange: ExchangeConfig,
    pub routes: Routes,
    /// Start of the monotonic clock the sessions use.
    pub started: Instant,
    pub metrics: Arc<Metrics>,
    /// Sessions and per-participant exchange state, for the admin port.
    pub status: Arc<Status>,
    /// Shards (threads with their own event loop and exchange); 1 unless set.
    pub shards: usize,
    /// The shards' data path.
    pub io: Io,
    /// The journal (none: decisions are kept in memory only, as in most tests).
    pub journal: Option<JournalSettings>,
    /// What changes after start: windows, onboarding, rates, the shards' inboxes.
    pub(crate) control: crate::edge::control::ControlPlane,
    /// The daily clearing cut-off (Asia/Shanghai), when there is a journal to cut.
    pub daily_cutoff: Option<jiff::civil::Time>,
    /// Touch the exchanges' reserved tables at start (`Exchange::prefault`); off in tests.
    pub prefault: bool,
    /// Fees charged in clearing windows.
    pub fees: clearing::FeeSchedule,
    /// Admin API tokens and audit log (none: only probes and metrics are served).
    pub admin: crate::ops::access::AdminAccess,
    /// Mutual TLS on participant links; `None`: plaintext (the configuration says so).
    pub tls: Option<crate::edge::tls::Tls>,
    /// Connection limits and the sign-on throttle (`edge::gate`).
    pub gate: Arc<crate::edge::gate::Gate>,
    /// New requests a shard's inbox holds before more are shed `SystemBusy`.
    pub request_lane: usize,
    /// Publish the journal's records to a fleet stream (`crate::settlement::fleet`); needs a journal.
    pub fleet: Option<crate::settlement::fleet::FleetSettings>,
    /// ISO 8583 participants' listener settings (`crate::edge::iso`), and the listener
    /// until `serve` takes it.
    pub iso8583: Option<crate::edge::iso::Iso8583Settings>,
    /// The FX rate table's file, read again by `reload_rates` (none: no reload).
    pub fx_rates_file: Option<PathBuf>,
}

impl Shared {
    pub fn new(session: SessionConfig, directory: Directory) -> Self {
        let exchange = ExchangeConfig { switch_id: session.switch_id, ..ExchangeConfig::default() };
        let metrics = Arc::new(Metrics::default());
        let gate = Arc::new(Gate::new(ConnectionLimits::default(), Arc::clone(&metrics)));
        Self {
            session,
            directory,
            exchange,
            routes: Routes::embedded_default(),
            started: Instant::now(),
            metrics,
            status: Arc::new(Status::default()),
            shards: 1,
            io: Io::Tokio,
            journal: None,
            control: crate::edge::control::ControlPlane::new(Arc::default()),
            daily_cutoff: None,
            prefault: false,
            fees: clearing::FeeSchedule::default(),
            admin: crate::ops::access::AdminAccess::default(),
            tls: None,
            gate,
            request_lane: crate::edge::shard::SHARD_INBOX,
            fleet: None,
            iso8583: None,
            fx_rates_file: None,
        }
    }

    /// Shards hold at most `requests` new requests waiting (tests make it tiny).
    pub fn with_request_lane(mut self, requests: usize) -> Self {
        assert!(requests > 0, "a request lane holds at least one request");
        self.request_lane = requests;
        self
    }

    /// Holds participant connections and sign-ons to `limits` (`edge::gate`).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.gate = Arc::new(Gate::new(limits, Arc::clone(&self.metrics)));
        self
    }

    /// Requires mutual TLS on participant links.
    pub fn with_tls(mut self, tls: crate::edge::tls::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves ISO 8583 participants on `listener` with `settings`' profile.
    pub fn with_iso8583(
        mut self,
        settings: crate::edge::iso::Iso8583Settings,
        listener: std::net::TcpListener,
    ) -> Self {
        self.iso8583 = Some(settings);
        self.control.iso8583_listener = std::sync::Mutex::new(Some(listener));
        self
    }

    pub fn with_fleet(mut self, fleet: Option<crate::settlement::fleet::FleetSettings>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Lets `POST /fx/rates/reload` read the rate table again from `file`.
    pub fn with_fx_rates_file(mut self, file: Option<PathBuf>) -> Self {
        self.fx_rates_file = file;
        self
    }

    /// Who may use the admin API, and where their actions are recorded.
    pub fn with_admin(mut self, admin: crate::ops::access::AdminAccess) -> Self {
        self.admin = admin;
        self
    }

    /// The exchange's settings and routes (the embedded default's unless given).
    pub fn with_exchange(mut self, exchange: ExchangeConfig, routes: Routes) -> Self {
        self.control.rates = tokio::sync::Mutex::new(exchange.rates.clone());
        self.exchange = exchange;
        self.routes = routes;
        self
    }

    /// Runs `shards` shards (1..=256).
    pub fn with_shards(mut self, shards: usize) -> Self {
        assert!((1..=shard::SHARDS_MAX).contains(&shards), "1 to {} shards", shard::SHARDS_MAX);
        self.shards = shards;
        self
    }

    /// Keeps a journal as `settings` say (recovering from it at start).
    pub fn with_journal(mut self, settings: JournalSettings) -> Self {
        self.journal = Some(settings);
        self
    }

    /// Charges `fees` in the clearing windows this switch closes.
    pub fn with_fees(mut self, fees: clearing::FeeSchedule) -> Self {
        self.fees = fees;
        self
    }

    /// Touches the reserved tables at start (a second or so), so the first traffic after a
    /// start does not pay for the kernel zeroing their pages.
    pub fn with_prefault(mut self, prefault: bool) -> Self {
        self.prefault = prefault;
        self
    }

    /// Closes a clearing window every day at `at`, Asia/Shanghai time.
    pub fn with_daily_cutoff(mut self, at: Option<jiff::civil::Time>) -> Self {
        self.daily_cutoff = at;
        self
    }

    /// Uses the `io` data path where the kernel allows it (see [`Io::usable`]).
    pub fn with_io(mut self, io: Io) -> Self {
        self.io = io.usable();
        self
    }

    pub(crate) fn now(&self) -> Now {
        super::now(self.started)
    }

    /// A session id, unique for this process.
    pub(crate) fn next_session_id(&self) -> SessionId {
        self.control.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A connection's receive and send buffers until it signs on: room for a sign-on.
const SIGN_ON_BUFFER: usize = 2 * codec::frame::WIRE_FRAME_MAX;

/// Connections accepted but not yet taken up by their shard.
const HANDOFF_QUEUE: usize = 1_024;

/// What a participant speaks on a connection: decided by the listener it came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Native,
    Iso8583,
}

/// A connection handed to a shard, with its place at the gate.
pub(crate) type Accepted = (std::net::TcpStream, SocketAddr, Protocol, Ticket);

/// Accepts connections until `shutdown` resolves, handing them round-robin to the shards
/// (`Shared::shards` threads, each with its own event loop and exchange). Then drains:
/// stops accepting, asks every signed-on session to sign off, and returns once each has
/// answered or reached its drain deadline (`SessionConfig::drain_timeout_ms`). The shard
/// loops keep running until every shard's connections are gone, so answers crossing shards
/// during the drain still find their transaction.
///
/// With a journal, each shard's exchange is first rebuilt from it (`recover`); an error
/// there (damage, a changed shard count, I/O) is returned before anything is accepted.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), JournalError> {
    tokio::pin!(shutdown);
    // One switch (or offline close) per data directory: held until `serve` returns.
    let _lock = match &shared.journal {
        Some(settings) => Some(clearing::lock(&settings.data_dir).map_err(|error| JournalError::Io {
            path: settings.data_dir.clone(),
            source: std::io::Error::other(error.to_string()),
        })?),
        None => None,
    };
    let shards = shared.shards;
    shared.metrics.set_shards(shards);
    let mesh = Arc::new(Mesh::with_request_lane(shards, shared.request_lane));
    // Room for every code the shards may remember, reserved up front like their tables.
    let used_codes =
        UsedCodes::with_capacity(shared.exchange.in_flight_max.saturating_add(shared.exchange.completed_max));
    let (draining_tx, draining) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let mut handoffs = Vec::with_capacity(shards);
    let mut drained = Vec::with_capacity(shards);
    let mut threads = Vec::with_capacity(shards);
    // Each shard's exchange, its tables touched once (`prefault`) and rebuilt from its
    // journal: the shards in parallel (one core each).
    let mut exchanges: Vec<Exchange> = (0..shards)
        .map(|index| {
            Exchange::new(shared.exchange.for_shard(index, shards), shared.routes.clone())
                .with_used_codes(used_codes.clone())
        })
        .collect();
    if let Some(settings) = &shared.journal {
        journal::check_shards(&settings.data_dir, shards)?;
        journal::check_node(&settings.data_dir, shared.exchange.node)?;
    }
    let (now, prefault, settings) = (shared.now(), shared.prefault, shared.journal.as_ref());
    if prefault {
        // First touch every reserved table, in parallel; only then recover. (The code set's
        // prefault ends by clearing it, so it must finish before replay claims any code.)
        std::thread::scope(|scope| {
            let records = shared.exchange.in_flight_max.saturating_add(shared.exchange.completed_max);
            let codes = &used_codes;
            scope.spawn(move || codes.prefault(records));
            for exchange in exchanges.iter_mut() {
                scope.spawn(move || exchange.prefault());
            }
        });
    }
    let recovering = recovery::Recovering::default();
    let retention = settings
        .filter(|settings| settings.retain_windows > 0)
        .map(|settings| Arc::new(Retention::new(settings.retain_windows, shards)));
    let mut journals: Vec<Option<Journal>> = std::thread::scope(|scope| {
        let retention = retention.as_deref();
        scope.spawn(|| recovery::extend_start_timeout(&recovering));
        // Ends the ticker however the recovery ends (a panic included).
        let _finished = recovering.finish_on_drop();
        let starts: Vec<_> = exchanges
            .iter_mut()
            .enumerate()
            .map(|(index, exchange)| {
                scope.spawn(move || {
                    settings.map(|settings| recovery::recover(settings, retention, index, exchange, now)).transpose()
                })
            })
            .collect();
        starts
            .into_iter()
            .map(|start| start.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect::<Result<Vec<_>, _>>()
    })?;
    recovery::converge_onboarding(&shared, &mut exchanges, &mut journals, now)?;
    recovery::converge_cuts(&shared, &mut exchanges, &mut journals, retention.as_deref(), now)?;
    // What each shard's journal holds durably, for the fleet publisher and its metrics.
    let progress = Arc::new(crate::settlement::fleet::Progress::new(shards));
    for (index, journal) in journals.iter().enumerate() {
        progress.set_durable(index, journal.as_ref().map_or(0, Journal::last_sequence));
    }
    let publisher = match (&shared.fleet, &shared.journal) {
        (Some(fleet), Some(settings)) => {
            shared.metrics.set_fleet(Arc::clone(&progress));
            let publisher = crate::settlement::fleet::Publisher {
                settings: fleet.clone(),
                node: shared.exchange.node,
                instance: journal::instance(&settings.data_dir)?,
                data_dir: settings.data_dir.clone(),
                key: settings.code_key.clone(),
                progress: Arc::clone(&progress),
            };
            let started = publisher.start(stop.clone());
            Some(started.map_err(|source| JournalError::Io { path: settings.data_dir.clone(), source })?)
        }
        _ => None,
    };
    if let Some(retention) = &retention {
        let progress = publisher.is_some().then(|| Arc::clone(&progress));
        let _ = shared.control.retention.set((Arc::clone(retention), progress));
    }
    for (index, (exchange, journal)) in exchanges.drain(..).zip(journals).enumerate() {
        let (handoff, accepted) = mpsc::channel(HANDOFF_QUEUE);
        let (drained_tx, drained_rx) = oneshot::channel();
        shared.control.next_window.fetch_max(exchange.last_window() + 1, Ordering::Relaxed);
        let shard = crate::edge::thread::ShardThread {
            index,
            progress: Arc::clone(&progress),
            shared: Arc::clone(&shared),
            mesh: Arc::clone(&mesh),
            draining: draining.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || shard.run(exchange, journal, accepted, drained_tx));
        match thread {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                // Without its threads the switch cannot run; nothing is accepted yet.
                tracing::error!(%error, shard = index, "cannot start a shard thread");
                std::process::exit(1);
            }
        }
        handoffs.push(handoff);
        drained.push(drained_rx);
    }
    let _ = shared.control.mesh.set(Arc::clone(&mesh));
    shared.metrics.set_serving();
    tracing::info!(shards, connections_max = shared.gate.connections_max(), "serving");
    crate::ops::notify::notify("READY=1\nSTATUS=serving");
    // Fed from the acceptor's runtime; participants have nothing to do with it.
    let watchdog = crate::ops::notify::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                crate::ops::notify::notify("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        })
    });
    if shared.journal.is_some() {
        tokio::spawn(closing::finish_interrupted_at_start(Arc::clone(&shared)));
    }
    let cutoffs = match (shared.daily_cutoff, &shared.journal) {
        (Some(at), Some(_)) => Some(tokio::spawn(closing::daily_cutoffs(Arc::clone(&shared), at))),
        _ => None,
    };
    let iso8583 = shared.control.iso8583_listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let iso8583 =
        match iso8583.map(|listener| listener.set_nonblocking(true).and_then(|()| TcpListener::from_std(listener))) {
            Some(Ok(listener)) => Some(listener),
            Some(Err(source)) => return Err(JournalError::Io { path: "iso8583 listener".into(), source }),
            None => None,
        };
    let iso8583_accept = async |listener: &Option<TcpListener>| match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    };
    let mut next = 0usize;
    loop {
        let (accepted, protocol) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => (accepted, Protocol::Native),
            accepted = iso8583_accept(&iso8583) => (accepted, Protocol::Iso8583),
        };
        match accepted {
            Ok((stream, peer)) => {
                // Past the connection limits it is closed at once (dropped), counted.
                let Some(ticket) = shared.gate.admit(peer.ip()) else { continue };
                if let Some(bytes) = shared.gate.limits().socket_send_buffer_bytes
                    && let Err(error) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes)
                {
                    tracing::debug!(%peer, %error, "the send buffer size was not set");
                }
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::debug!(%peer, %error, "accepted connection unusable");
                        continue;
                    }
                };
                next = (next + 1) % shards;
                if handoffs[next].try_send((stream, peer, protocol, ticket)).is_err() {
                    tracing::warn!(%peer, shard = next, "shard not taking connections; refused");
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(iso8583);
    drop(listener);
    if let Some(cutoffs) = cutoffs {
        cutoffs.abort();
    }
    shared.metrics.set_draining();
    crate::ops::notify::notify("STOPPING=1\nSTATUS=draining");
    drain_in_flight(&shared, &mesh).await;
    tracing::info!("draining: signing off every session");
    // Receivers only stop listening when their shard has ended, so a send error means none
    // is left to tell.
    let _ = draining_tx.send(true);
    drop(handoffs);
    for done in drained {
        let _ = done.await;
    }
    let _ = stop_tx.send(true);
    for thread in threads {
        // The thread has finished its work (its loop saw `stop`); joining only reaps it.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Some(publisher) = publisher {
        // It stops once what is durable is published, or after its grace period.
        let _ = tokio::task::spawn_blocking(move || publisher.join()).await;
    }
    Ok(())
}

/// The first half of a drain: every shard refuses new requests (`SystemBusy`) and waits
/// for what is in flight to be answered, up to the drain deadline (then it is timed out
/// and reversed); then every answer another shard handed on is queued at its connection.
/// Only then are sessions signed off, so nothing in flight at the signal goes unanswered.
async fn drain_in_flight(shared: &Shared, mesh: &Mesh) {
    let deadline_ms = shared.exchange.drain_deadline_ms;
    tracing::info!(deadline_ms, "draining: refusing new requests, answering what is in flight");
    // Generous: the shards time out what is left at the deadline themselves.
    let bound = Duration::from_millis(deadline_ms) + Duration::from_secs(30);
    for event in [|done| Event::Drain { done }, |done| Event::Flush { done }] {
        let (dones, waits): (Vec<_>, Vec<_>) = (0..mesh.shards()).map(|_| oneshot::channel()).unzip();
        let mut dones = dones.into_iter();
        mesh.broadcast(|_| event(dones.next().expect("one per shard"))).await;
        for wait in waits {
            if !matches!(tokio::time::timeout(bound, wait).await, Ok(Ok(()))) {
                tracing::error!("draining: a shard did not finish its share in time; signing off regardless");
            }
        }
    }
}

/// Counts a connection open for as long as it lives, and its close reason, whichever way
/// its task ends.
pub(crate) struct ConnectionGuard<'a> {
    pub(crate) metrics: &'a Metrics,
    /// Whether this connection was counted in `switch_sessions_signed_on`.
    pub(crate) signed_on: bool,
    pub(crate) reason: Option<CloseReason>,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.metrics.connection_closed(self.signed_on, self.reason);
    }
}

/// One accepted connection, owned by its home shard's runtime.
pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) home: usize,
    pub(crate) draining: watch::Receiver<bool>,
}

impl Connection {
    /// The TLS handshake (within the sign-on deadline), then the session; a client without
    /// a certificate the participant CA issued, valid now and not revoked, never gets one.
    pub(crate) async fn serve_tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
    ) -> std::io::Result<()> {
        match self.handshake(acceptor, stream, peer, &ticket).await? {
            Some((stream, names)) => {
                self.serve(crate::edge::tls::TlsTransport::new(stream), peer, Some(names), ticket).await
            }
            None => Ok(()),
        }
    }

    /// The TLS handshake within the sign-on deadline: the stream and the participants its
    /// certificate names, or `None` (refused, counted and logged; or evicted by the gate).
    pub(crate) async fn handshake(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        ticket: &Ticket,
    ) -> std::io::Result<Option<(tokio_rustls::server::TlsStream<TcpStream>, Vec<InstitutionId>)>> {
        let metrics = &self.shared.metrics;
        stream.set_nodelay(true)?;
        let tcp = TcpStream::from_std(stream)?;
        let deadline = Duration::from_millis(self.shared.session.sign_on_timeout_ms);
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(deadline, acceptor.accept(tcp)) => handshake,
            () = ticket.evicted() => return Ok(None),
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                metrics.tls_handshake(false);
                static REFUSED: LogLimit = LogLimit::per_second();
                if let Some(suppressed) = REFUSED.allow(self.shared.now().monotonic_ms) {
                    tracing::info!(suppressed, %peer, %error, "TLS handshake refused");
                }
                return Ok(None);
            }
            Err(_) => {
                metrics.tls_handshake(false);
                tracing::info!(%peer, "TLS handshake not finished within the sign-on deadline");
                return Ok(None);
            }
        };
        metrics.tls_handshake(true);
        let names = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
            Some(certificate) => crate::edge::tls::participants_named(certificate, &self.shared.directory),
            None => Vec::new(),
        };
        Ok(Some((stream, names)))
    }

    /// `certified`: on a TLS link, the participants its certificate names (only they may
    /// sign on); `None` on a plaintext link.
    pub(crate) async fn serve<T: Transport>(
        self,
        stream: T,
        peer: SocketAddr,
        certified: Option<Vec<InstitutionId>>,
        mut ticket: Ticket,
    ) -> std::io::Result<()> {
        let shared = &*self.shared;
        shared.metrics.connection_opened();
        let mut guard = ConnectionGuard { metrics: &shared.metrics, signed_on: false, reason: None };
        let session_id = shared.next_session_id();
        let mut registered = None;
        let result = self.run(stream, peer, session_id, certified, &mut ticket, &mut registered, &mut guard).await;
        // Whichever way the connection ended, no shard sends to it any more.
        if let Some(participant) = registered {
            self.unregister(participant, session_id).await;
        }
        result
    }

    // Each argument is the connection's own; grouping them would only move the list.
    #[allow(clippy::too_many_arguments)]
    async fn run<T: Transport>(
        &self,
        stream: T,
        peer: SocketAddr,
        session_id: u64,
        certified: Option<Vec<InstitutionId>>,
        ticket: &mut Ticket,
        registered: &mut Option<InstitutionId>,
        guard: &mut ConnectionGuard<'_>,
    ) -> std::io::Result<()> {
        let shared = &*self.shared;
        let mut draining = self.draining.clone();
        let stream = Rc::new(stream);
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
        let mut session = Session::new(shared.session.clone(), shared.now(), session_id, nonce);
        if let Some(names) = certified {
            session.require_certificate_for(names);
        }
        // Room for a sign-on only: a connection that never signs on costs little. The full
        // buffers come with the session.
        let mut decoder = FrameDecoder::with_capacity(SIGN_ON_BUFFER);
        let mut encoder = FrameEncoder::with_capacity(SIGN_ON_BUFFER);
        // The switch's frame MAC between the sign-on approval and the approving result's
        // encoding: every frame after the result carries a tag.
        let mut send_mac = None;
        let mut outgoing: Vec<Message> = Vec::with_capacity(64);
        let mut to_exchange: Vec<Message> = Vec::with_capacity(64);
        let mut outbound: Option<mpsc::UnboundedReceiver<Message>> = None;
        let mut touched = Touched::default();
        // Owned buffers for the transport: the read in flight holds one; a write in flight
        // goes on while the loop reads (`edge::writes`).
        let mut read_buffer = Some(Vec::new());
        let mut reading: Option<PendingRead> = None;
        let mut writes = Writes::new(Duration::from_millis(shared.session.write_timeout_ms));

        encoder.encode(&session.challenge()).expect("the challenge is valid");
        writes.start(&stream, &mut encoder);

        let mut drain_seen = false;
        loop {
            // A connection with a full backlog reads nothing more (its own new requests would
            // only add answers) until its peer reads what it was sent, or the write times
            // out. It still takes its queue: what the shards queue for it is admitted work,
            // bounded by its participant's in-flight allowance, and is never dropped for a
            // backlog of its own making.
            let backlogged = writes::backlogged(&encoder);
            // Nor does it read while a shard is crowded with admitted work: what it would
            // read would only wait longer (checked again every millisecond).
            let crowded = self.mesh.crowded();
            // Start a read if none is in flight: at most what the decoder has room for.
            if reading.is_none() && !backlogged && !crowded {
                let mut buffer = read_buffer.take().unwrap_or_default();
                buffer.resize(decoder.spare().len().min(READ_MAX), 0);
                reading = Some(Box::pin(stream.read(buffer)));
            }
            writes.look(Instant::now());
            let session_deadline = shared.started + Duration::from_millis(session.deadline_ms());
            let mut wake = writes.wake().map_or(session_deadline, |write| write.min(session_deadline));
            if crowded && reading.is_none() {
                wake = wake.min(Instant::now() + Duration::from_millis(1));
            }
            let mut control = Control::Continue;
            let mut frames = 0u64;
            let read = tokio::select! {
                // Once seen, the drain signal is not waited for again.
                changed = draining.wait_for(|draining| *draining), if !drain_seen => {
                    drain_seen = true;
                    if changed.is_ok() {
                        // What the shards queued for it goes out before the sign-off.
                        if let Some(receiver) = &mut outbound {
                            while let Ok(message) = receiver.try_recv() {
                                outgoing.push(message);
                            }
                        }
                        control = session.handle_shutdown(shared.now(), &mut outgoing);
                    }
                    None
                }
                received = next_outbound(&mut outbound, &mut outgoing) => {
                    if !received {
                        // The shard dropped this session's queue: it could not keep up.
                        control = Control::Close(CloseReason::Backlogged);
                    }
                    None
                }
                // Not signed on, and room was needed for a newer connection (`edge::gate`).
                () = ticket.evicted(), if registered.is_none() => {
                    control = Control::Close(CloseReason::Evicted);
                    None
                }
                written = writes.completed(), if writes.in_flight() => {
                    written?;
                    None
                }
                // A read stays in flight (kept in `reading`) across turns, never dropped.
                read = async { reading.as_mut().expect("a read is in flight").await }, if reading.is_some() => Some(read),
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    // A stall of the switch itself first gives the write its time back.
                    writes.look(now);
                    if now < session_deadline && !writes.expired(now) {
                        // Only a look: at the writes, or whether the shards are still crowded.
                    } else if writes.expired(now) {
                        // The peer has not read what it was sent for a whole write timeout.
                        control = Control::Close(CloseReason::Backlogged);
                    } else {
                        control = session.handle_timeout(shared.now(), &mut outgoing);
                    }
                    None
                }
            };
            let read = match read {
                Some((result, buffer)) => {
                    reading = None;
                    let result = result.inspect(|&count| decoder.spare()[..count].copy_from_slice(&buffer[..count]));
                    read_buffer = Some(buffer);
                    Some(result)
                }
                None => None,
            };
            match read {
                None => {}
                Some(Ok(0)) => return Ok(()),
                Some(Ok(count)) => {
                    decoder.commit(count);
                    let mut now = shared.now();
                    while control == Control::Continue {
                        match decoder.decode() {
                            Ok(Some(frame)) => {
                                frames += 1;
                                let claimed = match (&frame.message, session.participant()) {
                                    (codec::MessageRef::SignOnRequest(request), None) => Some(request.participant),
                                    _ => None,
                                };
                                if let Some(claimed) = claimed {
                                    // After failed sign-ons from here or for it, it waits its turn.
                                    let deadline = shared.started + Duration::from_millis(session.deadline_ms());
                                    if !self.sign_on_turn(deadline, peer, Some(claimed)).await {
                                        control = Control::Close(CloseReason::SignOnTimeout);
                                        break;
                                    }
                                    now = shared.now();
                                }
                                control = session.handle_message(
                                    now,
                                    frame.message,
                                    &shared.directory,
                                    &mut outgoing,
                                    &mut to_exchange,
                                );
                                if let Some(claimed) = claimed {
                                    control = self.sign_on_evaluated(
                                        &mut session,
                                        ticket,
                                        peer,
                                        claimed,
                                        control,
                                        &mut outgoing,
                                    );
                                }
                                // Signed on with frame MACs: the participant's next frame
                                // carries a tag.
                                if let Some(macs) = session.take_macs() {
                                    decoder.set_mac(Some(macs.to_switch));
                                    send_mac = Some(macs.to_participant);
                                }
                            }
                            Ok(None) => break,
                            Err(error) => {
                                frames += 1;
                                // Counted (frames_rejected{reason}) and logged without any of
                                // the frame's content, a line a second at most.
                                static REFUSED: LogLimit = LogLimit::per_second();
                                if let Some(suppressed) = REFUSED.allow(now.monotonic_ms) {
                                    if matches!(error, codec::DecodeError::BadMac { .. }) {
                                        let participant = session.participant();
                                        tracing::warn!(suppressed, %peer, ?participant, "bad frame MAC");
                                    } else {
                                        tracing::info!(suppressed, %peer, %error, "frame refused");
                                    }
                                }
                                control = session.handle_decode_error(
                                    now,
                                    &error,
                                    decoder.last_kind(),
                                    decoder.last_frame(),
                                    &mut outgoing,
                                );
                            }
                        }
                    }
                }
                Some(Err(error)) => return Err(error),
            }
            // Signed on: every shard learns of the session before it hands any shard anything.
            if let (None, Some(participant)) = (&*registered, session.participant()) {
                outbound = Some(self.register(participant, session_id, peer).await);
                *registered = Some(participant);
                decoder.grow(FrameDecoder::BUFFER_SIZE_DEFAULT);
            }
            if !to_exchange.is_empty() {
                self.hand_off(session_id, *registered, &mut to_exchange, &mut outgoing, &mut touched);
            }
            let batch_started = Instant::now();
            for message in outgoing.drain(..) {
                shared.metrics.sent(&message);
                // Counted as signed on from the approving result until the connection ends.
                // Messages the session and exchange build are valid by construction.
                encoder.encode(&message).expect("the switch built an invalid message");
                if matches!(&message, Message::SignOnResult(result) if result.code == 0) {
                    // Signed on from the approving result until the connection ends; every
                    // frame after it carries a tag.
                    guard.signed_on = true;
                    encoder.set_mac(send_mac.take());
                }
            }
            if frames > 0 {
                shared.metrics.frames_received(frames);
                shared.metrics.batch_processed(batch_started.elapsed());
            }
            writes.start(&stream, &mut encoder);
            if let Control::Close(reason) = control {
                guard.reason = Some(reason);
                // Every reply queued so far leaves before the close, within a write timeout
                // (not for a peer already too slow to read).
                if reason != CloseReason::Backlogged {
                    writes.finish(&stream, &mut encoder).await?;
                }
                // Counted by reason (switch_sessions_closed_total); a flood of closes is one line a second.
                static CLOSING: LogLimit = LogLimit::per_second();
                if let Some(suppressed) = CLOSING.allow(shared.now().monotonic_ms) {
                    tracing::info!(suppressed, %peer, participant = ?session.participant(), ?reason, "closing session");
                }
                stream.shutdown().await?;
                return Ok(());
            }
        }
    }

    /// A session of `participant` signed on: every shard learns of it (the home shard gets
    /// its outbound queue, returned here) before it hands any shard anything.
    pub(crate) async fn register(
        &self,
        participant: InstitutionId,
        session_id: SessionId,
        peer: SocketAddr,
    ) -> mpsc::UnboundedReceiver<Message> {
        let shared = &self.shared;
        let (sender, receiver) = mpsc::unbounded_channel();
        shared.status.link_up(Link {
            session: session_id,
            participant,
            shard: self.home,
            peer,
            signed_on_unix_ms: shared.now().unix_ms,
        });
        let (home, mut sender) = (self.home, Some(sender));
        self.mesh
            .broadcast(|shard| Event::SessionUp {
                participant,
                session: session_id,
                home,
                outbound: if shard == home { sender.take() } else { None },
            })
            .await;
        receiver
    }

    /// The session ended: no shard sends to it any more.
    pub(crate) async fn unregister(&self, participant: InstitutionId, session_id: SessionId) {
        self.shared.status.link_down(session_id);
        self.mesh.broadcast(|_| Event::SessionDown { participant, session: session_id }).await;
    }

    /// Hands a read's requests and answers to the shards that own them, waking each shard
    /// once. A request whose owner's request lane is full is answered `SystemBusy` here and
    /// now; an answer is always taken (admitted work is never dropped).
    pub(crate) fn hand_off(
        &self,
        session: SessionId,
        registered: Option<InstitutionId>,
        messages: &mut Vec<Message>,
        outgoing: &mut Vec<Message>,
        touched: &mut Touched,
    ) {
        let shards = self.mesh.shards();
        for message in messages.drain(..) {
            let owner = shard::owner(&message, shards);
            let event = match (&message, registered) {
                (Message::PaymentReply(_) | Message::ReversalReply(_) | Message::RefundReply(_), Some(participant)) => {
                    Event::Answer { participant, message }
                }
                _ => Event::Request { session, message },
            };
            // Only a new request is ever given back (its owner's request lane is full): it is
            // shed here and now, before any work is spent on it. Answers are always taken.
            if let Err(Event::Request { message, .. }) = self.mesh.try_push(owner, event, touched) {
                let now = self.shared.now();
                if let Some(busy) = switch_answer(&message, ReplyCode::SystemBusy, self.shared.session.switch_id, now) {
                    outgoing.push(busy);
                }
            }
        }
        self.mesh.wake(touched);
    }
}

/// A read in flight: it owns its buffer until it completes.
type PendingRead = Pin<Box<dyn Future<Output = (std::io::Result<usize>, Vec<u8>)>>>;

/// Moves what the shard queued for this connection into `outgoing`, waiting for at least
/// one message; pending until the session has signed on. `false` when the shard dropped
/// the queue.
pub(crate) async fn next_outbound(
    outbound: &mut Option<mpsc::UnboundedReceiver<Message>>,
    outgoing: &mut Vec<Message>,
) -> bool {
    match outbound {
        Some(receiver) => receiver.recv_many(outgoing, OUTBOUND_BATCH_MAX).await > 0,
        None => std::future::pending().await,
    }
}
