//! Who may use the admin API, and the audit log of what they did.
//!
//! Callers present a bearer token (`Authorization: Bearer TOKEN`). The switch keeps only
//! each token's SHA-256, with a name (who) and a role: `read` may read participant and
//! link state; `operator` may also change state (close a clearing window). Probes and
//! metrics (`/livez`, `/readyz`, `/metrics`) need no token: they carry nothing sensitive
//! and orchestrators must reach them.
//!
//! Every state-changing call, and every refused call, is appended to the audit log
//! ([`crate::ops::audit`]): one JSON line (time, peer, who, action, outcome), synced before the
//! answer leaves when it is attributable; refusals with no known token are aggregated.
//!
//! Invariants: a token is never stored, logged or echoed; comparison is constant-time over
//! the hashes.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::ops::audit::AuditLog;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdminRole {
    /// Reads participant and link state.
    Read,
    /// Reads, and changes state: closes clearing windows.
    Operator,
}

impl AdminRole {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operator => "operator",
        }
    }
}

/// One admin token, by its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: AdminRole,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken {{ name: {:?}, role: {:?} }}", self.name, self.role)
    }
}

impl AdminToken {
    pub fn new(name: &str, role: AdminRole, token: &str) -> Self {
        Self { name: name.to_string(), role, sha256: hash(token) }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Why a call was refused (the HTTP status follows from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the switch does not know: 401.
    Unauthenticated,
    /// A known token whose role is too low: 403.
    Forbidden { who: String, role: AdminRole },
}

/// The admin API's tokens and audit log.
#[derive(Debug, Default)]
pub struct AdminAccess {
    tokens: Vec<AdminToken>,
    audit: Option<Mutex<AuditLog>>,
}

impl AdminAccess {
    pub fn new(tokens: Vec<AdminToken>) -> Self {
        Self { tokens, audit: None }
    }

    /// Appends the audit trail to `path` (created if missing), rotated past 16 MiB.
    pub fn with_audit_log(self, path: &Path) -> std::io::Result<Self> {
        Ok(self.with_audit(AuditLog::open(path, crate::ops::audit::MAX_BYTES_DEFAULT)?))
    }

    /// Records the audit trail in `log`.
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(Mutex::new(log));
        self
    }

    /// Who presented `authorization` (the header's value), if they may act as `needed`.
    pub fn authorise(&self, authorization: Option<&str>, needed: AdminRole) -> Result<String, Refusal> {
        let token = authorization.and_then(|value| value.trim().strip_prefix("Bearer ")).map(str::trim);
        let Some(token) = token else { return Err(Refusal::Unauthenticated) };
        let presented = hash(token);
        // Every token is compared, whatever matched, so timing tells nothing.
        let mut found: Option<&AdminToken> = None;
        for candidate in &self.tokens {
            let same = candidate.sha256.iter().zip(&presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(candidate);
            }
        }
        match found {
            None => Err(Refusal::Unauthenticated),
            Some(token) if token.role < needed => Err(Refusal::Forbidden { who: token.name.clone(), role: token.role }),
            Some(token) => Ok(token.name.clone()),
        }
    }

    fn log(&self) -> Option<std::sync::MutexGuard<'_, AuditLog>> {
        self.audit.as_ref().map(|log| log.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Records one attributable admin call (`who` known); an audit log that cannot be
    /// written is an error the caller must not hide (the action is refused).
    pub fn audit(&self, peer: &str, who: Option<&str>, action: &str, outcome: &str) -> std::io::Result<()> {
        self.log().map_or(Ok(()), |mut log| log.record(peer, who, action, outcome))
    }

    /// Records a call with no known token: aggregated per source and action.
    pub fn audit_unauthenticated(&self, peer: &str, action: &str, outcome: &str) {
        if let Some(mut log) = self.log() {
            log.refused_unauthenticated(peer, action, outcome);
        }
    }

    /// Writes the aggregated refusals counted so far (the admin port does so every
    /// interval, and when it stops).
    pub fn flush_refusals(&self) {
        if let Some(mut log) = self.log() {
            log.flush_refusals();
        }
    }

    /// How often aggregated refusals are written (none without an audit log).
    pub fn refusal_interval(&self) -> Option<std::time::Duration> {
        self.log().map(|log| log.refusal_interval())
    }
}

/// A fresh random operator token, written to `path` readable by the owner only. The
/// switch does this when its configuration names no admin tokens, so the admin API is
/// never open; the operator reads the file.
pub fn generate_token_file(path: &Path) -> std::io::Result<AdminToken> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    let token = hex::encode(secret);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    Ok(AdminToken::new("local-operator", AdminRole::Operator, &token))
}

/// Reads a token file (the token on its first line).
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is empty", path.display())));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_tokens_decide() {
        let access = AdminAccess::new(vec![
            AdminToken::new("viewer", AdminRole::Read, "read-token"),
            AdminToken::new("oncall", AdminRole::Operator, "operator-token"),
        ]);
        assert_eq!(access.authorise(Some("Bearer read-token"), AdminRole::Read), Ok("viewer".into()));
        assert_eq!(
            access.authorise(Some("Bearer read-token"), AdminRole::Operator),
            Err(Refusal::Forbidden { who: "viewer".into(), role: AdminRole::Read })
        );
        assert_eq!(access.authorise(Some("Bearer operator-token"), AdminRole::Operator), Ok("oncall".into()));
        for bad in
            [None, Some(""), Some("Bearer"), Some("Bearer nope"), Some("Basic operator-token"), Some("operator-token")]
        {
            assert_eq!(access.authorise(bad, AdminRole::Read), Err(Refusal::Unauthenticated), "{bad:?}");
        }
        assert!(!format!("{access:?}").contains("token\""), "tokens are not printed");
    }

    #[test]
    fn generated_tokens_are_private_and_work() {
        let dir = std::env::temp_dir().join(format!("switch-access-{}", std::process::id()));
        let path = dir.join("admin.token");
        let token = generate_token_file(&path).unwrap();
        let secret = read_token_file(&path).unwrap();
        assert_eq!(secret.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let access = AdminAccess::new(vec![token]).with_audit_log(&dir.join("audit.log")).unwrap();
        assert!(access.authorise(Some(&format!("Bearer {secret}")), AdminRole::Operator).is_ok());
        access.audit("127.0.0.1:1", Some("local-operator"), "POST /clearing/close", "200").unwrap();
        let log = std::fs::read_to_string(dir.join("audit.log")).unwrap();
        let line: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(line["who"], "local-operator");
        assert!(!log.contains(&secret));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
