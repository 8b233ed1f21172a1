//! `[[participant]]`: each participant's identity, roles, keys and policy (onboarding
//! state, reply deadline, rate, settlement currency), and whom it may deal with.

use std::collections::{HashMap, HashSet};

use codec::InstitutionId;

use super::file::{FileParticipant, FileRole};
use super::{ConfigError, Source};
use crate::core::exchange::ParticipantPolicy;
use crate::participant::{Onboarding, Participant, Role, SharedKey};

/// The shortest shared key accepted, in bytes (HMAC-SHA256 wants at least 16; 32 is better).
pub(super) const KEY_SIZE_MIN: usize = 16;

/// What `[[participant]]` gives: the participants, their policies, and the admitted
/// counterparties of those that list them.
pub(super) struct Participants {
    pub(super) participants: Vec<Participant>,
    pub(super) policies: HashMap<InstitutionId, ParticipantPolicy>,
    pub(super) counterparties: HashMap<InstitutionId, Vec<InstitutionId>>,
}

/// Reads every `[[participant]]` (`fx_configured`: the file has an `[fx]` table, which a
/// settlement currency needs).
pub(super) fn read(
    file_participants: Vec<FileParticipant>,
    fx_configured: bool,
    source: Source<'_>,
) -> Result<Participants, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let beside = |file: &std::path::Path| source.beside(file);
    if file_participants.is_empty() {
        return Err(invalid("participant".into(), "at least one [[participant]] is needed".into()));
    }

    let mut seen = HashSet::new();
    let mut participants = Vec::with_capacity(file_participants.len());
    let mut policies = HashMap::new();
    let mut counterparties = HashMap::new();
    for (index, participant) in file_participants.into_iter().enumerate() {
        let key = |field: &str| format!("participant[{index}] ({}).{field}", participant.id);
        if !seen.insert(participant.id) {
            return Err(invalid(key("id"), "appears twice".into()));
        }
        if participant.roles.is_empty() {
            return Err(invalid(key("roles"), "needs at least one of issuer, acquirer, network".into()));
        }
        // An ISO 8583 participant signs on without a proof (its TLS certificate, or a
        // private link, names it): it needs no key.
        if participant.keys.is_empty() && participant.protocol.as_deref() != Some("iso8583") {
            return Err(invalid(key("key"), "needs at least one [[participant.key]]".into()));
        }
        if participant.rate_per_second == Some(0) {
            return Err(invalid(key("rate_per_second"), "must be at least 1 (leave it out for no limit)".into()));
        }
        if participant.reply_deadline_ms.is_some_and(|ms| !(100..=600_000).contains(&ms)) {
            return Err(invalid(key("reply_deadline_ms"), "must be 100..=600000".into()));
        }
        let state = match participant.status.as_deref() {
            None | Some("active") => Onboarding::Live,
            Some(text) => text.parse().map_err(|problem| invalid(key("status"), problem))?,
        };
        let settlement_currency = match participant.settlement_currency.as_deref() {
            None => None,
            Some(code) => Some(codec::currency::numeric(code).ok_or_else(|| {
                invalid(key("settlement_currency"), format!("{code:?} is not a known ISO 4217 alphabetic code"))
            })?),
        };
        if settlement_currency.is_some() && !fx_configured {
            return Err(invalid(
                key("settlement_currency"),
                "needs an [fx] table with the rates to convert into it".into(),
            ));
        }
        policies.insert(
            participant.id,
            ParticipantPolicy {
                state,
                // Suspended in the file: back to live when resumed.
                suspended_from: (state == Onboarding::Suspended).then_some(Onboarding::Live),
                state_changed_ms: 0,
                test: participant.test,
                reply_deadline_ms: participant.reply_deadline_ms,
                rate_per_second: participant.rate_per_second,
                settlement_currency,
            },
        );
        let mut key_ids = HashSet::new();
        let mut keys = Vec::with_capacity(participant.keys.len());
        for (key_index, file_key) in participant.keys.iter().enumerate() {
            let name = |field: &str| key(&format!("key[{key_index}].{field}"));
            if !key_ids.insert(file_key.id) {
                return Err(invalid(name("id"), format!("key id {} appears twice", file_key.id)));
            }
            let secret = match (&file_key.secret_hex, &file_key.secret_file) {
                (Some(secret_hex), None) => hex::decode(secret_hex)
                    .ok()
                    .ok_or_else(|| invalid(name("secret_hex"), "is not hexadecimal".into()))?,
                (None, Some(secret_path)) => {
                    let resolved = beside(secret_path);
                    let text = std::fs::read_to_string(&resolved).map_err(|error| {
                        invalid(name("secret_file"), format!("cannot read {}: {error}", resolved.display()))
                    })?;
                    hex::decode(text.trim()).ok().ok_or_else(|| {
                        invalid(
                            name("secret_file"),
                            format!("{} does not hold one hexadecimal key", resolved.display()),
                        )
                    })?
                }
                _ => {
                    return Err(invalid(name("secret_hex"), "give exactly one of secret_hex and secret_file".into()));
                }
            };
            if secret.len() < KEY_SIZE_MIN {
                return Err(invalid(
                    name("secret_hex"),
                    format!("is {} bytes; at least {KEY_SIZE_MIN} are needed", secret.len()),
                ));
            }
            let not_after_unix_ms = match &file_key.not_after {
                None => None,
                Some(text) => Some(
                    text.parse::<jiff::Timestamp>()
                        .map_err(|error| {
                            invalid(name("not_after"), format!("{text:?}: expected an RFC 3339 instant ({error})"))
                        })?
                        .as_millisecond(),
                ),
            };
            keys.push(SharedKey { key_id: file_key.id, secret, not_after_unix_ms });
        }
        if let Some(protocol) = participant.protocol.as_deref().filter(|p| !matches!(*p, "native" | "iso8583")) {
            return Err(invalid(key("protocol"), format!("{protocol:?}: expected native or iso8583")));
        }
        let frame_mac = match participant.frame_mac.as_deref() {
            None => codec::MacAlgorithm::HmacSha256,
            Some(name) => codec::MacAlgorithm::from_name(name).ok_or_else(|| {
                invalid(key("frame_mac"), format!("{name:?}: expected hmac-sha256, hmac-sm3 or none"))
            })?,
        };
        participants.push(Participant {
            id: participant.id,
            name: participant.name,
            roles: participant
                .roles
                .iter()
                .map(|role| match role {
                    FileRole::Issuer => Role::Issuer,
                    FileRole::Acquirer => Role::Acquirer,
                    FileRole::Network => Role::Network,
                })
                .collect(),
            keys,
            frame_mac,
            iso8583: participant.protocol.as_deref() == Some("iso8583"),
        });
        if let Some(list) = participant.counterparties {
            counterparties.insert(participant.id, list);
        }
    }
    Ok(Participants { participants, policies, counterparties })
}

/// Every listed counterparty is a configured participant.
pub(super) fn check_counterparties(read: &Participants, source: Source<'_>) -> Result<(), ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let (counterparties, participants) = (&read.counterparties, &read.participants);
    for (id, list) in counterparties {
        for other in list {
            if !participants.iter().any(|p| p.id == *other) {
                return Err(invalid(
                    format!("participant ({id}).counterparties"),
                    format!("{other} is not a configured participant"),
                ));
            }
        }
    }
    Ok(())
}
