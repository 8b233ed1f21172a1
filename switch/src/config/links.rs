//! `[tls]`, `[iso8583]`, `[admin]` and `[fleet]`: how participants, operators and the
//! fleet's stream are reached, and with which credentials.

use std::path::Path;

use super::file::{FileAdmin, FileFleet, FileIso8583, FileTls};
use super::{ConfigError, Source};
use crate::ops::access::{AdminRole, AdminToken};
use crate::participant::Participant;

/// `[tls]`, or plaintext when `[switch] plaintext = true` says so (exactly one of them).
pub(super) fn tls(
    tls: Option<&FileTls>,
    plaintext: bool,
    source: Source<'_>,
) -> Result<Option<crate::edge::tls::TlsSettings>, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let beside = |file: &Path| source.beside(file);
    match (tls, plaintext) {
        (Some(tls), false) => Ok(Some(crate::edge::tls::TlsSettings {
            cert_file: beside(&tls.cert_file),
            key_file: beside(&tls.key_file),
            client_ca_file: beside(&tls.client_ca_file),
            crl_files: tls.crl_files.iter().map(|f| beside(f)).collect(),
        })),
        (None, true) => Ok(None),
        (Some(_), true) => Err(invalid("switch.plaintext".into(), "is true, but [tls] is given: choose one".into())),
        (None, false) => Err(invalid(
            "tls".into(),
            "participant links need [tls] (mutual TLS), or `plaintext = true` under [switch] for loopback tests".into(),
        )),
    }
}

/// `[iso8583]`: the listener and its profile (built in, or a JSON file); required when a
/// participant speaks ISO 8583.
pub(super) fn iso8583(
    iso: Option<&FileIso8583>,
    participants: &[Participant],
    source: Source<'_>,
) -> Result<Option<crate::edge::iso::Iso8583Settings>, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let Some(iso) = iso else {
        if participants.iter().any(|p| p.iso8583) {
            return Err(invalid(
                "iso8583".into(),
                "a participant has protocol = \"iso8583\": give the [iso8583] listener".into(),
            ));
        }
        return Ok(None);
    };
    let profile = match codec::iso8583::Profile::builtin(&iso.profile) {
        Some(profile) => profile,
        None => {
            let resolved = source.beside(Path::new(&iso.profile));
            let text = std::fs::read_to_string(&resolved).map_err(|error| {
                invalid("iso8583.profile".into(), format!("{}: not built in, and {error}", resolved.display()))
            })?;
            codec::iso8583::Profile::from_json(&text)
                .map_err(|error| invalid("iso8583.profile".into(), error.to_string()))?
        }
    };
    Ok(Some(crate::edge::iso::Iso8583Settings { listen: iso.listen, profile: std::sync::Arc::new(profile) }))
}

/// `[fleet]`: the NATS server, the stream and its subjects.
pub(super) fn fleet(
    fleet: Option<FileFleet>,
    source: Source<'_>,
) -> Result<Option<crate::settlement::fleet::FleetSettings>, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let Some(fleet) = fleet else { return Ok(None) };
    let name_ok = |text: &str, dots: bool| {
        !text.is_empty()
            && text.split('.').all(|token| {
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            && (dots || !text.contains('.'))
    };
    if !fleet.nats_url.starts_with("nats://") && !fleet.nats_url.starts_with("tls://") {
        return Err(invalid("fleet.nats_url".into(), format!("{:?}: expected nats://HOST:PORT", fleet.nats_url)));
    }
    if !name_ok(&fleet.stream, false) {
        return Err(invalid("fleet.stream".into(), format!("{:?}: letters, digits, - and _", fleet.stream)));
    }
    if !name_ok(&fleet.subject_prefix, true) {
        return Err(invalid(
            "fleet.subject_prefix".into(),
            format!("{:?}: dot-separated tokens of letters, digits, - and _", fleet.subject_prefix),
        ));
    }
    if !(1..=5).contains(&fleet.replicas) {
        return Err(invalid("fleet.replicas".into(), format!("{}: 1 to 5", fleet.replicas)));
    }
    let token = match &fleet.token_file {
        Some(file) => {
            let resolved = source.beside(file);
            let token = crate::settlement::fleet::NatsToken::read(&resolved);
            Some(token.map_err(|problem| invalid("fleet.token_file".into(), problem))?)
        }
        None => None,
    };
    Ok(Some(crate::settlement::fleet::FleetSettings {
        nats_url: fleet.nats_url,
        stream: fleet.stream,
        subject_prefix: fleet.subject_prefix,
        replicas: fleet.replicas,
        token,
    }))
}

/// `[[admin.token]]`: each token's name, role and SHA-256 (given, or of the token a file
/// holds).
pub(super) fn admin_tokens(admin: &FileAdmin, source: Source<'_>) -> Result<Vec<AdminToken>, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let mut admin_tokens = Vec::with_capacity(admin.tokens.len());
    for (index, token) in admin.tokens.iter().enumerate() {
        let key = |field: &str| format!("admin.token[{index}] ({}).{field}", token.name);
        let role = AdminRole::from_name(&token.role)
            .ok_or_else(|| invalid(key("role"), format!("{:?}: expected read or operator", token.role)))?;
        let sha256: [u8; 32] = match (&token.sha256, &token.token_file) {
            (Some(text), None) => hex::decode(text)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| invalid(key("sha256"), "is not 64 hexadecimal digits".into()))?,
            (None, Some(file)) => {
                let resolved = source.beside(file);
                let secret = crate::ops::access::read_token_file(&resolved).map_err(|error| {
                    invalid(key("token_file"), format!("cannot read {}: {error}", resolved.display()))
                })?;
                AdminToken::new(&token.name, role, &secret).sha256
            }
            _ => return Err(invalid(key("sha256"), "give exactly one of sha256 and token_file".into())),
        };
        if admin_tokens.iter().any(|t: &AdminToken| t.name == token.name) {
            return Err(invalid(key("name"), "appears twice".into()));
        }
        admin_tokens.push(AdminToken { name: token.name.clone(), role, sha256 });
    }
    Ok(admin_tokens)
}
