//! The admin HTTP port: `/livez`, `/readyz`, `/metrics` and `/participants` (JSON:
//! each participant's sessions, in-flight counts, pending reversals and breaker), and one
//! action, `POST /clearing/close`, which closes the open clearing window and answers with
//! its number and files.
//!
//! Four read-only GET endpoints and one POST do not justify a web framework: this is a small, bounded
//! HTTP/1.1 responder (one request per connection, request head at most 8 KiB, 5 s to send
//! it). The authenticated, state-changing admin API (issue 8) may replace it.
//!
//! Invariants: liveness never depends on participants or load; readiness is "listening and
//! not draining"; nothing here touches the per-message path except reading atomics.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::edge::tcp::Shared;

/// Longest request head read.
const REQUEST_HEAD_MAX: usize = 8192;
/// Time a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin port until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        if let Err(error) = respond(stream, &shared).await {
                            tracing::debug!(%error, "admin request failed");
                        }
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
        Ok(Ok(())) if head.starts_with(b"POST /clearing/close ") => match shared.close_window().await {
            Ok((window, files)) => {
                let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                let body = serde_json::json!({ "window": window, "files": files });
                ("200 OK", "application/json", format!("{body}\n"))
            }
            Err(problem) => ("409 Conflict", "text/plain", format!("{problem}\n")),
        },
        Ok(Ok(())) => route(&head, shared),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(head: &[u8], shared: &Shared) -> (&'static str, &'static str, String) {
    let metrics = &shared.metrics;
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != b"GET" {
        return ("405 Method Not Allowed", "text/plain", "only GET is served here\n".into());
    }
    match path {
        b"/livez" => ("200 OK", "text/plain", "ok\n".into()),
        b"/readyz" if metrics.is_draining() => ("503 Service Unavailable", "text/plain", "draining\n".into()),
        b"/readyz" if !metrics.is_serving() => {
            ("503 Service Unavailable", "text/plain", "starting: recovering the journal\n".into())
        }
        b"/readyz" => ("200 OK", "text/plain", "ready\n".into()),
        b"/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        b"/participants" => ("200 OK", "application/json", shared.status.render(&shared.directory, &shared.exchange)),
        _ => ("404 Not Found", "text/plain", "try /livez, /readyz, /metrics or /participants\n".into()),
    }
}
