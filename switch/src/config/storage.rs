//! `[journal]`, `[clearing]`, `[[fee]]` and `[fx]`: where decisions are kept and how
//! windows are cleared.

use std::path::{Path, PathBuf};

use codec::InstitutionId;
use codec::field::FieldText;

use super::file::{FileClearing, FileFee, FileFx, FileJournal};
use super::{ConfigError, Source};
use crate::core::record::CodeKey;
use crate::durability::journal::SyncPolicy;
use crate::participant::Participant;

/// What `[journal]` gives.
pub(super) struct Journal {
    pub(super) data_dir: PathBuf,
    pub(super) fsync: SyncPolicy,
    pub(super) segment_size: u64,
    pub(super) retain_windows: u64,
    pub(super) restart_every: u64,
    pub(super) code_key: Option<CodeKey>,
}

/// `[journal]`.
pub(super) fn journal(journal: &FileJournal, source: Source<'_>) -> Result<Journal, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let fsync: SyncPolicy = journal.fsync.parse().map_err(|problem| invalid("journal.fsync".into(), problem))?;
    if !(1..=1024).contains(&journal.segment_mib) {
        return Err(invalid("journal.segment_mib".into(), "must be 1..=1024".into()));
    }
    if journal.retain_windows > 100_000 {
        return Err(invalid(
            "journal.retain_windows".into(),
            "must be 0 (keep every segment) to 100000 windows".into(),
        ));
    }
    if !(10_000..=100_000_000).contains(&journal.restart_point_records) {
        return Err(invalid("journal.restart_point_records".into(), "must be 10000..=100000000".into()));
    }
    let code_key = match &journal.code_key_file {
        None => None,
        Some(key_file) => {
            let resolved = source.beside(key_file);
            Some(read_code_key(&resolved).map_err(|problem| {
                invalid("journal.code_key_file".into(), format!("{}: {problem}", resolved.display()))
            })?)
        }
    };
    Ok(Journal {
        data_dir: source.beside(&journal.data_dir),
        fsync,
        segment_size: journal.segment_mib << 20,
        retain_windows: journal.retain_windows,
        restart_every: journal.restart_point_records,
        code_key,
    })
}

/// Reads a journal code key: 32 hexadecimal digits (16 bytes), surrounding space ignored.
pub fn read_code_key(path: &Path) -> Result<CodeKey, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
    let bytes: [u8; 16] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("expected 32 hexadecimal digits (a 16-byte SM4 key)")?;
    Ok(CodeKey::new(bytes))
}

/// `[[fee]]`: the schedule, collected by `operator` (the switch).
pub(super) fn fees(
    fee: &[FileFee],
    participants: &[Participant],
    operator: InstitutionId,
    source: Source<'_>,
) -> Result<crate::settlement::clearing::FeeSchedule, ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let mut fees =
        crate::settlement::clearing::FeeSchedule { operator: operator.as_str().to_string(), ..Default::default() };
    for (index, fee) in fee.iter().enumerate() {
        let key = format!("fee[{index}] ({})", fee.participant.as_str());
        if !participants.iter().any(|p| p.id == fee.participant) {
            return Err(invalid(format!("{key}.participant"), "is not a configured participant".into()));
        }
        if fee.basis_points > 10_000 {
            return Err(invalid(format!("{key}.basis_points"), "must be 0..=10000".into()));
        }
        if fee.cross_border_basis_points > 10_000 {
            return Err(invalid(format!("{key}.cross_border_basis_points"), "must be 0..=10000".into()));
        }
        if fees.basis_points.insert(fee.participant.as_str().to_string(), fee.basis_points).is_some() {
            return Err(invalid(format!("{key}.participant"), "has a fee already".into()));
        }
        if fee.cross_border_basis_points != 0 {
            fees.cross_border_basis_points.insert(fee.participant.as_str().to_string(), fee.cross_border_basis_points);
        }
    }
    Ok(fees)
}

/// `[fx]`: the rate table, its file (for reloads) and the margin; none without the table.
pub(super) fn fx(
    fx: Option<&FileFx>,
    source: Source<'_>,
) -> Result<(crate::fx::RateTable, Option<PathBuf>, u16), ConfigError> {
    let invalid = |key: String, problem: String| source.invalid(key, problem);
    let Some(fx) = fx else { return Ok((crate::fx::RateTable::default(), None, 0)) };
    if fx.margin_basis_points > codec::fx::MARGIN_BASIS_POINTS_MAX {
        return Err(invalid(
            "fx.margin_basis_points".into(),
            format!("must be 0..={}", codec::fx::MARGIN_BASIS_POINTS_MAX),
        ));
    }
    let resolved = source.beside(&fx.rates);
    let rates = crate::fx::RateTable::read(&resolved).map_err(|problem| invalid("fx.rates".into(), problem))?;
    Ok((rates, Some(resolved), fx.margin_basis_points))
}

/// `[clearing] daily_cutoff`: a time of day in Asia/Shanghai, or none ("off").
pub(super) fn daily_cutoff(
    clearing: &FileClearing,
    source: Source<'_>,
) -> Result<Option<jiff::civil::Time>, ConfigError> {
    match clearing.daily_cutoff.as_str() {
        "off" => Ok(None),
        text => text.parse::<jiff::civil::Time>().map(Some).map_err(|_| {
            source.invalid("clearing.daily_cutoff".into(), format!("{text:?}: expected HH:MM (Asia/Shanghai) or off"))
        }),
    }
}
