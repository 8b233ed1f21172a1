//! The participants the generator plays: the embedded demo network by default (the same
//! ids and keys as `switch run` with no configuration), or the `[[participant]]` tables
//! of a switch configuration file, so both sides read one shared file.

use std::path::Path;

use anyhow::{Context, bail};
use codec::InstitutionId;
use serde::Deserialize;

/// A participant's role, as the switch's configuration file writes it. It mirrors the
/// switch's own `Role` on purpose: the generator reads the same file but never depends on
/// the switch crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Issuer,
    Acquirer,
    Network,
}

/// One participant the generator can sign on as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub id: InstitutionId,
    pub roles: Vec<Role>,
    pub key_id: u16,
    pub key: Vec<u8>,
    /// Its TLS client, when the switch requires mutual TLS (`crate::tls::attach`).
    pub tls: Option<crate::tls::TlsIdentity>,
}

impl Participant {
    /// An acquirer that is not also a wallet: it originates consumer-presented payments.
    pub fn is_plain_acquirer(&self) -> bool {
        self.roles.contains(&Role::Acquirer) && !self.roles.contains(&Role::Issuer)
    }
}

/// The demo network of the switch's embedded default: ids, roles and demo keys
/// (`codec::signon::demo_key`).
pub fn demo() -> Vec<Participant> {
    let demo = |id: &str, roles: &[Role]| Participant {
        id: InstitutionId::new(id).expect("demo id is valid"),
        roles: roles.to_vec(),
        key_id: 1,
        key: codec::signon::demo_key(id),
        tls: None,
    };
    vec![
        demo("ACQ0001", &[Role::Acquirer]),
        demo("ACQ0002", &[Role::Acquirer]),
        demo("WECHATPAY", &[Role::Issuer, Role::Acquirer]),
        demo("ALIPAY", &[Role::Issuer, Role::Acquirer]),
        demo("UNIONPAY", &[Role::Issuer, Role::Network]),
        demo("WAL0001", &[Role::Issuer]),
        demo("WALKR01", &[Role::Issuer]),
        demo("WALSG01", &[Role::Issuer]),
        demo("WALTH01", &[Role::Issuer]),
        demo("WALMY01", &[Role::Issuer]),
        demo("WALHK01", &[Role::Issuer]),
        demo("WALMO01", &[Role::Issuer]),
    ]
}

#[derive(Debug, Deserialize)]
struct SharedFile {
    #[serde(default, rename = "participant")]
    participants: Vec<FileParticipant>,
}

#[derive(Debug, Deserialize)]
struct FileParticipant {
    id: String,
    roles: Vec<Role>,
    #[serde(default, rename = "key")]
    keys: Vec<FileKey>,
    /// "iso8583": it speaks ISO 8583 on the switch's other listener, which the generator
    /// does not play.
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileKey {
    id: u16,
    #[serde(default)]
    secret_hex: Option<String>,
    #[serde(default)]
    secret_file: Option<std::path::PathBuf>,
}

fn hex_key(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The participants of a switch configuration file (its other tables are ignored). Each
/// participant signs on with its highest key id.
pub fn from_file(path: &Path) -> anyhow::Result<Vec<Participant>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file: SharedFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
    })?;
    if file.participants.is_empty() {
        bail!("{}: no [[participant]] tables", path.display());
    }
    let mut participants = Vec::new();
    for entry in file.participants.into_iter().filter(|p| p.protocol.as_deref() != Some("iso8583")) {
        let where_ = format!("{}: participant {:?}", path.display(), entry.id);
        let id = InstitutionId::new(&entry.id).map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
        let key = entry.keys.iter().max_by_key(|k| k.id).with_context(|| format!("{where_}: no key"))?;
        let secret = match (&key.secret_hex, &key.secret_file) {
            (Some(hex), None) => {
                hex_key(hex).with_context(|| format!("{where_}: key {} is not hexadecimal", key.id))?
            }
            (None, Some(file)) => {
                let resolved = path.parent().unwrap_or(Path::new(".")).join(file);
                let text = std::fs::read_to_string(&resolved)
                    .with_context(|| format!("{where_}: cannot read {}", resolved.display()))?;
                hex_key(&text)
                    .with_context(|| format!("{where_}: {} is not one hexadecimal key", resolved.display()))?
            }
            _ => bail!("{where_}: key {} needs exactly one of secret_hex and secret_file", key.id),
        };
        participants.push(Participant { id, roles: entry.roles, key_id: key.id, key: secret, tls: None });
    }
    Ok(participants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shared_example_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/switch.example.toml");
        let participants = from_file(&path).unwrap();
        assert!(participants.iter().any(|p| p.is_plain_acquirer()));
        assert!(participants.iter().all(|p| p.key.len() >= 16));
    }

    #[test]
    fn bad_files_say_where() {
        let dir = std::env::temp_dir().join(format!("loadgen-participants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "[[participant]]\nid = \"A\"\nroles = [\"issuer\"]\nkey = [{ id = 1, secret_hex = \"zz\" }]\n",
        )
        .unwrap();
        let error = from_file(&path).unwrap_err().to_string();
        assert!(error.contains("bad.toml: participant \"A\": key 1 is not hexadecimal"), "{error}");
        std::fs::write(&path, "[[participant]]\nid = \"A\"\nroles = [\"king\"]\n").unwrap();
        let error = from_file(&path).unwrap_err().to_string();
        assert!(error.contains("bad.toml:3"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
