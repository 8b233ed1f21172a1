//! The admin HTTP port: `/livez`, `/readyz`, `/metrics` (open: probes and scrapers),
//! `/participants` (JSON: each participant's sessions, in-flight counts, pending reversals
//! and breaker; role `read`), `/fx/rates` (the FX rate table in force; role `read`), and
//! four actions (role `operator`): `POST /clearing/close`, which closes the open clearing
//! window and answers with its number and files; `POST /tls/reload`, which reads the TLS
//! certificates, CA and CRLs again; `POST /fx/rates/reload`, which reads the rate table
//! file again (its version must rise) and hands it to every shard; and
//! `POST /participants/ID/state/STATE`, which moves a participant through onboarding
//! (`Onboarding`), journaled by every shard. Tokens, roles and the audit log are
//! [`crate::ops::access`]'s.
//!
//! Nine endpoints do not justify a web framework: this is a small, bounded
//! HTTP/1.1 responder (one request per connection, request head at most 8 KiB, 5 s to send
//! it).
//!
//! Invariants: liveness never depends on participants or load; readiness is "listening and
//! not draining"; nothing here touches the per-message path except reading atomics.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ops::access::{AdminRole, Refusal};
use codec::InstitutionId;
use codec::field::FieldText;

use crate::edge::control::OnboardingRefusal;
use crate::edge::tcp::Shared;
use crate::participant::Onboarding;

/// Longest request head read.
const REQUEST_HEAD_MAX: usize = 8192;
/// Time a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Admin requests served at once; a connection beyond is closed at once, so a flood of
/// the admin port cannot take the descriptors the switch keeps for it.
const CONNECTIONS_MAX: usize = 64;

/// Serves the admin port until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let serving = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    // Aggregated refusals are written once per interval.
    let interval = shared.admin.refusal_interval().unwrap_or(crate::ops::audit::REFUSAL_INTERVAL_DEFAULT);
    let mut flushes = tokio::time::interval(interval);
    flushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                shared.admin.flush_refusals();
                return;
            }
            _ = flushes.tick() => shared.admin.flush_refusals(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(turn) = Arc::clone(&serving).try_acquire_owned() else {
                        tracing::debug!(%peer, "admin port busy: connection closed");
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        if let Err(error) = respond(stream, &shared).await {
                            tracing::debug!(%error, "admin request failed");
                        }
                        drop(turn);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn respond(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_MAX {
            let count = stream.read(&mut chunk).await?;
            if count == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..count]);
        }
        std::io::Result::Ok(())
    })
    .await;
    let (status, content_type, body) = match read {
        Err(_) => ("408 Request Timeout", "text/plain", "request head not received in time\n".to_string()),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(())) => route(&Request::parse(&head), &peer, shared).await,
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The parts of a request head the admin port looks at.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    authorization: Option<&'a str>,
}

impl<'a> Request<'a> {
    fn parse(head: &'a [u8]) -> Self {
        let text = std::str::from_utf8(head).unwrap_or_default();
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (method, path) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
        let authorization = lines.find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case("authorization").then_some(value.trim())
        });
        Self { method, path, authorization }
    }
}

type Response = (&'static str, &'static str, String);

async fn route(request: &Request<'_>, peer: &str, shared: &Shared) -> Response {
    let metrics = &shared.metrics;
    let action = format!("{} {}", request.method, request.path);
    match (request.method, request.path) {
        ("GET", "/livez") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/readyz") if metrics.is_draining() => ("503 Service Unavailable", "text/plain", "draining\n".into()),
        ("GET", "/readyz") if !metrics.is_serving() => {
            ("503 Service Unavailable", "text/plain", "starting: recovering the journal\n".into())
        }
        ("GET", "/readyz") => ("200 OK", "text/plain", "ready\n".into()),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        ("GET", "/participants") => match authorise(request, peer, &action, AdminRole::Read, shared) {
            Ok(_) => {
                let states = shared.onboarding_states().await;
                ("200 OK", "application/json", shared.status.render(&shared.directory, &states))
            }
            Err(refused) => refused,
        },
        ("POST", path) if path.starts_with("/participants/") => {
            let who = match authorise(request, peer, &action, AdminRole::Operator, shared) {
                Ok(who) => who,
                Err(refused) => return refused,
            };
            audited(change_onboarding(path, shared).await, peer, &who, &action, shared)
        }
        ("POST", "/clearing/close") => {
            let who = match authorise(request, peer, &action, AdminRole::Operator, shared) {
                Ok(who) => who,
                Err(refused) => return refused,
            };
            let done = match shared.close_window().await {
                Ok((window, files)) => {
                    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                    let body = serde_json::json!({ "window": window, "files": files });
                    (("200 OK", "application/json", format!("{body}\n")), format!("closed window {window}"))
                }
                Err(problem) => (("409 Conflict", "text/plain", format!("{problem}\n")), format!("refused: {problem}")),
            };
            audited(done, peer, &who, &action, shared)
        }
        ("GET", "/fx/rates") => match authorise(request, peer, &action, AdminRole::Read, shared) {
            Ok(_) => {
                let rates = shared.rates().await;
                let body = serde_json::json!({
                    "version": rates.version(),
                    "margin_basis_points": shared.exchange.fx_margin_basis_points,
                    "file": shared.fx_rates_file.as_ref().map(|f| f.display().to_string()),
                    "rates": rates.shown(),
                });
                ("200 OK", "application/json", format!("{body}\n"))
            }
            Err(refused) => refused,
        },
        ("POST", "/fx/rates/reload") => {
            let who = match authorise(request, peer, &action, AdminRole::Operator, shared) {
                Ok(who) => who,
                Err(refused) => return refused,
            };
            let done = match shared.reload_rates().await {
                Ok((previous, version)) => {
                    let body = serde_json::json!({ "previous": previous, "version": version });
                    (("200 OK", "application/json", format!("{body}\n")), format!("rates version {previous} -> {version}"))
                }
                Err(problem) => (
                    ("409 Conflict", "text/plain", format!("kept the running rates: {problem}\n")),
                    format!("refused: {problem}"),
                ),
            };
            audited(done, peer, &who, &action, shared)
        }
        ("POST", "/tls/reload") => {
            let who = match authorise(request, peer, &action, AdminRole::Operator, shared) {
                Ok(who) => who,
                Err(refused) => return refused,
            };
            let done = match shared.tls.as_ref().map(|tls| tls.reload()) {
                None => (
                    ("409 Conflict", "text/plain", "participant links are plaintext\n".into()),
                    "refused: no TLS".into(),
                ),
                Some(Ok(())) => (("200 OK", "text/plain", "reloaded\n".into()), "reloaded".into()),
                Some(Err(error)) => (
                    ("422 Unprocessable Entity", "text/plain", format!("kept the running configuration: {error}\n")),
                    format!("refused: {error}"),
                ),
            };
            audited(done, peer, &who, &action, shared)
        }
        (
            _,
            "/livez" | "/readyz" | "/metrics" | "/participants" | "/fx/rates" | "/clearing/close" | "/tls/reload"
            | "/fx/rates/reload",
        ) => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /livez /readyz /metrics /participants /fx/rates; POST /clearing/close /tls/reload /fx/rates/reload\n"
                .into(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /livez, /readyz, /metrics, /participants, /fx/rates, POST /clearing/close, POST /tls/reload or POST /fx/rates/reload\n".into(),
        ),
    }
}

/// `POST /participants/ID/state/STATE`: the response, and the outcome for the audit log.
async fn change_onboarding(path: &str, shared: &Shared) -> (Response, String) {
    let parts: Vec<&str> = path.trim_start_matches("/participants/").split('/').collect();
    let usage = "POST /participants/ID/state/STATE (admission, joint_testing, production_verification, agreement, live, suspended, terminated)";
    let (participant, to) = match parts[..] {
        [id, "state", state] => match (InstitutionId::new(id), state.parse::<Onboarding>()) {
            (Ok(id), Ok(state)) => (id, state),
            (Err(_), _) => {
                return (
                    ("404 Not Found", "text/plain", format!("{id:?} is not a participant id\n")),
                    "refused: bad id".into(),
                );
            }
            (_, Err(problem)) => {
                return (("400 Bad Request", "text/plain", format!("{problem}\n")), "refused: bad state".into());
            }
        },
        _ => return (("404 Not Found", "text/plain", format!("{usage}\n")), "refused: bad path".into()),
    };
    match shared.change_onboarding(participant, to).await {
        Ok(from) => {
            let body = serde_json::json!({ "participant": participant.as_str(), "from": from.name(), "to": to.name() });
            (
                ("200 OK", "application/json", format!("{body}\n")),
                format!("{participant} {} -> {}", from.name(), to.name()),
            )
        }
        Err(OnboardingRefusal::Unknown) => (
            ("404 Not Found", "text/plain", format!("{participant} is not a configured participant\n")),
            "refused: unknown participant".into(),
        ),
        Err(OnboardingRefusal::NotAllowed(problem)) => {
            (("409 Conflict", "text/plain", format!("{problem}\n")), format!("refused: {problem}"))
        }
        Err(OnboardingRefusal::Failed(problem)) => {
            (("503 Service Unavailable", "text/plain", format!("{problem}\n")), format!("failed: {problem}"))
        }
    }
}

/// Records an operator action's `outcome` in the audit log before its response leaves. The
/// action has happened either way; if its record cannot be written, the caller is told.
fn audited((response, outcome): (Response, String), peer: &str, who: &str, action: &str, shared: &Shared) -> Response {
    match shared.admin.audit(peer, Some(who), action, &outcome) {
        Ok(()) => response,
        Err(error) => {
            tracing::error!(%error, "audit log write failed");
            ("500 Internal Server Error", "text/plain", format!("{outcome}, but the audit log failed: {error}\n"))
        }
    }
}

/// Checks the caller's token for `needed`; a refusal is audited and answered.
fn authorise(
    request: &Request<'_>,
    peer: &str,
    action: &str,
    needed: AdminRole,
    shared: &Shared,
) -> Result<String, Response> {
    let refusal = match shared.admin.authorise(request.authorization, needed) {
        Ok(who) => return Ok(who),
        Err(refusal) => refusal,
    };
    let (response, who, outcome): (Response, Option<String>, String) = match refusal {
        Refusal::Unauthenticated => {
            // Nobody to attribute it to: aggregated, so a flood cannot fill the disk.
            shared.admin.audit_unauthenticated(peer, action, "refused: no known token");
            let body = "send Authorization: Bearer TOKEN (see deploy/README.md)\n";
            return Err(("401 Unauthorized", "text/plain", body.into()));
        }
        Refusal::Forbidden { who, role } => (
            ("403 Forbidden", "text/plain", format!("role {} may not {action}\n", role.name())),
            Some(who),
            format!("refused: role {}", role.name()),
        ),
    };
    if let Err(error) = shared.admin.audit(peer, who.as_deref(), action, &outcome) {
        tracing::error!(%error, "audit log write failed");
    }
    Err(response)
}
