//! `[[issuer_prefix]]`, `[[qr_network]]` and `[[unionpay_institution]]`: where payments
//! are routed. Every route leads to a configured participant with the role that receives
//! it.

use std::collections::HashMap;

use codec::InstitutionId;

use super::file::{FileQrNetwork, FileUnionPayInstitution};
use super::{ConfigError, Source};
use crate::core::exchange::Routes;
use crate::participant::{Participant, Role};

/// The routing tables (the built-in issuer table when the file gives no prefixes).
pub(super) fn read(
    issuer_prefix: Vec<codec::payment_code::IssuerPrefix>,
    qr_network: Vec<FileQrNetwork>,
    unionpay_institution: Vec<FileUnionPayInstitution>,
    participants: &[Participant],
    source: Source<'_>,
) -> Result<Routes, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    // Routes lead only to configured participants with the role that receives them.
    let has_role = |id: &InstitutionId, role: Role| participants.iter().any(|p| p.id == *id && p.roles.contains(&role));
    for (index, row) in issuer_prefix.iter().enumerate() {
        if !has_role(&row.issuer, Role::Issuer) {
            return Err(invalid(
                format!("issuer_prefix[{index}].issuer"),
                format!("{} is not a participant with the issuer role", row.issuer),
            ));
        }
    }
    let issuers = if issuer_prefix.is_empty() {
        codec::payment_code::IssuerTable::china_default()
    } else {
        codec::payment_code::IssuerTable::new(issuer_prefix)
            .map_err(|error| invalid("issuer_prefix".into(), error.to_string()))?
    };
    // QR GUIDs and UnionPay institution codes both lead to acquirers (or networks):
    // one check for both tables.
    let acquirer_routes = |table: &str,
                           field: &str,
                           rows: Vec<(String, InstitutionId)>,
                           key_ok: fn(&str) -> bool,
                           rule: &str|
     -> Result<HashMap<String, InstitutionId>, ConfigError> {
        let mut routes = HashMap::new();
        for (index, (key, acquirer)) in rows.into_iter().enumerate() {
            if !has_role(&acquirer, Role::Acquirer) && !has_role(&acquirer, Role::Network) {
                return Err(invalid(
                    format!("{table}[{index}].acquirer"),
                    format!("{acquirer} is not a participant with the acquirer or network role"),
                ));
            }
            if !key_ok(&key) || routes.insert(key, acquirer).is_some() {
                return Err(invalid(format!("{table}[{index}].{field}"), format!("must be {rule} and appear once")));
            }
        }
        Ok(routes)
    };
    let mut merchant_id_tags = HashMap::new();
    for (index, row) in qr_network.iter().enumerate() {
        let tags: Option<Vec<u8>> = row
            .merchant_id_tags
            .iter()
            .map(|tag| tag.parse().ok().filter(|t| tag.len() == 2 && (1..=99).contains(t)))
            .collect();
        match tags.filter(|tags| !tags.is_empty()) {
            Some(tags) => merchant_id_tags.insert(row.guid.clone(), tags),
            None => {
                return Err(invalid(
                    format!("qr_network[{index}].merchant_id_tags"),
                    "must list one or more sub-tags, each two digits from \"01\" to \"99\"".into(),
                ));
            }
        };
    }
    let qr_networks = acquirer_routes(
        "qr_network",
        "guid",
        qr_network.into_iter().map(|row| (row.guid, row.acquirer)).collect(),
        |guid| !guid.is_empty() && guid.len() <= 32,
        "1 to 32 characters",
    )?
    .into_iter()
    .map(|(guid, acquirer)| {
        let merchant_id_tags = merchant_id_tags.remove(&guid).unwrap_or_default();
        (guid, crate::core::exchange::QrNetwork { acquirer, merchant_id_tags })
    })
    .collect();
    let unionpay_institutions = acquirer_routes(
        "unionpay_institution",
        "code",
        unionpay_institution.into_iter().map(|row| (row.code, row.acquirer)).collect(),
        |code| code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()),
        "8 digits",
    )?;
    Ok(Routes { issuers, qr_networks, unionpay_institutions })
}
