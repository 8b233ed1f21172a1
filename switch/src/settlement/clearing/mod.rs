//! Clearing: a window's entries and net positions, derived from the journal alone, and the
//! files a window's close writes. Deterministic: the same journal gives the same bytes.
//!
//! Rules:
//! - **Which window.** An entry belongs to the window in which the shard journalled the
//!   decision that made it: an approval in the window of its `Answered` record (not of its
//!   request), a reversal of an approval in the window of its `ReversalStarted` record. A
//!   transaction in flight at a cut-off belongs to the window in which it completes.
//! - **Who pays.** Consumer-presented (a payment code): the payer's issuer (the receiver)
//!   pays the acquirer (the originator). Merchant-presented (QR): the payer's wallet (the
//!   originator) pays the merchant's acquirer (the receiver). A refund flows back the other
//!   way; a reversal of an approval (or of an approved refund) undoes it.
//! - **Positions.** For each entry the payee is credited and the payer debited the same
//!   amount in the same currency, so positions sum to zero in every currency; this is
//!   checked again before any file takes its name.
//! - Timed-out transactions have no entry: they are reversed, whatever the receiver did.
//! - **Fees.** The `FeeSchedule` gives a participant a rate in basis points on every
//!   payment it is paid (rounded half up to a minor unit), owed to the switch operator,
//!   who appears among the positions. A reversal of the payment gives the fee back; refunds
//!   carry no fee. The schedule a window is closed with is recorded before its cut
//!   (`close`), and every build of the window uses it, so the files stay byte-identical
//!   when the configuration changes. A converted (cross-border) payment pays the payee's
//!   `cross_border_basis_points` too.
//! - **Currencies.** A converted transaction (its `Converted` record) has two sides: the
//!   payer's side moves the payer's settlement currency, the merchant's side the
//!   transaction's. The operator stands between them: it receives the payer's currency
//!   from the payer's side and pays the transaction's currency to the merchant's side (its
//!   FX position, margin included). So every currency still sums to zero. The rate of each
//!   conversion is in its `Converted` record: no rate table is needed to clear.
//!
//! Code map: this module holds the rules (`ShardEntries`, `Positions`, the row format);
//! `remembered` holds what a shard's reader knows of each transaction, in memory fixed by
//! what the exchange remembers; `files` writes a window's files from its entries in
//! bounded memory; `close` is the durable, resumable close; `model` is the whole window in
//! memory, for tests and checks.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use codec::field::FieldText;
use codec::{Conversion, InstitutionId, TransactionId};
use foldhash::fast::RandomState;
use serde::Serialize;

use crate::core::record::Record;
use crate::durability::journal::JournalError;

pub mod close;
pub mod files;
pub mod model;
mod remembered;

use remembered::Remembered;

pub use close::{CloseInputs, close_offline, rebuild};
pub use model::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Payment,
    Refund,
    Reversal,
}

impl EntryKind {
    fn name(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Refund => "refund",
            Self::Reversal => "reversal",
        }
    }
}

/// One movement of value between two participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub time_ms: i64,
    pub reference: u64,
    pub kind: EntryKind,
    pub originator_transaction_id: TransactionId,
    pub payer: InstitutionId,
    pub payee: InstitutionId,
    pub amount_minor: u64,
    pub currency: u16,
    /// Fee owed to the operator for this entry by `fee_payer` (negative: given back).
    pub fee_minor: i64,
    pub fee_payer: InstitutionId,
    /// A converted transaction's payer side: who (`payer` or `payee`), and its amount in
    /// its settlement currency.
    pub conversion: Option<(InstitutionId, Conversion)>,
}

impl Entry {
    /// The order of a window's entries (and of every file's rows): unique per entry, since
    /// a reference has at most one entry of each kind in a window.
    pub fn order(&self) -> (i64, u64, EntryKind) {
        (self.time_ms, self.reference, self.kind)
    }
}

/// Fee rates per participant, and who collects them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FeeSchedule {
    /// The switch operator's institution id (the fees' payee).
    pub operator: String,
    /// Basis points of every payment the participant is paid.
    pub basis_points: BTreeMap<String, u32>,
    /// Basis points added on a converted (cross-border) payment the participant is paid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cross_border_basis_points: BTreeMap<String, u32>,
    /// The FX margin conversions were made with (for the record: the payer amounts in the
    /// journal already include it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fx_margin_basis_points: u16,
}

fn is_zero(value: &u16) -> bool {
    *value == 0
}

impl FeeSchedule {
    fn fee(&self, payee: InstitutionId, amount_minor: u64, converted: bool) -> i64 {
        let mut rate = self.basis_points.get(payee.as_str()).copied().unwrap_or(0);
        if converted {
            rate += self.cross_border_basis_points.get(payee.as_str()).copied().unwrap_or(0);
        }
        ((u128::from(amount_minor) * u128::from(rate) + 5_000) / 10_000) as i64
    }

    pub fn operator(&self) -> Option<InstitutionId> {
        InstitutionId::new(&self.operator).ok().filter(|id| !id.is_empty())
    }

    /// The schedule as written beside a window's files (`fee_schedule.json`).
    pub fn to_json(&self) -> String {
        format!("{}\n", serde_json::to_string_pretty(self).unwrap_or_default())
    }
}

/// What the journal says of one transaction, as clearing needs it (participants as
/// indexes): about 100 bytes a transaction with its key and its index entry, since a
/// shard's reader holds as many as the exchange remembers.
#[derive(Debug, Clone, Copy)]
struct Known {
    payer: u32,
    payee: u32,
    amount_minor: u64,
    currency: u16,
    refund: bool,
    approved: bool,
    id: TransactionId,
    conversion: Option<Conversion>,
}

/// One shard's entries of a window, read record by record from its whole journal, in
/// order (streamed: neither the journal nor the window need fit in memory; each entry is
/// handed back as its record is added). The fleet reader builds one per node and shard
/// from their published records, by the same rules.
///
/// Memory: like the exchange, it remembers the transactions in flight and the last
/// `remember` completed ones (`ShardEntries::new`), forgetting the oldest completed first.
/// The exchange journals an outcome, a refund or a reversal only for a transaction it
/// still holds, and it holds no more than that; one met for a transaction forgotten here
/// makes the window refused (`covered`), never wrong.
pub(crate) struct ShardEntries<'a> {
    window: u64,
    fees: &'a FeeSchedule,
    known: Remembered<Known>,
    /// Participants by index, and the index of each.
    participants: Vec<InstitutionId>,
    indexes: HashMap<InstitutionId, u32, RandomState>,
    /// The window the records being read belong to.
    current: u64,
    /// The window's cut was read: it is closed in this shard.
    closed: bool,
    /// The sequence of the first record read (0: none yet): a journal retention shortened
    /// starts later than 1.
    first: u64,
    /// Every record the window's entries need was read: the journal starts at 1, or at or
    /// before the `low_water` of the last checkpoint before the window (retention keeps
    /// that much for the windows it keeps, `Record::Checkpoint`), and no outcome in the
    /// window named a transaction whose `Admitted` was not read (or was forgotten).
    covered: bool,
}

impl<'a> ShardEntries<'a> {
    /// A reader of window `window`'s entries that remembers `remember` completed
    /// transactions (at least the exchange's `completed_max` for the shard).
    pub(crate) fn new(window: u64, fees: &'a FeeSchedule, remember: usize) -> Self {
        Self {
            window,
            fees,
            known: Remembered::new(remember),
            participants: Vec::new(),
            indexes: HashMap::default(),
            current: 1,
            closed: false,
            first: 0,
            covered: false,
        }
    }

    /// Whether the window's cut has been read (the shard closed it).
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    /// Once every record of `source` (a journal or a published subject, for the error) has
    /// been added: refused when records the window needs were not among them (`covered`).
    pub(crate) fn finish(&self, source: PathBuf) -> Result<(), ClearingError> {
        if !self.covered {
            return Err(ClearingError::Removed { window: self.window, path: source, first: self.first });
        }
        Ok(())
    }

    fn index(&mut self, participant: InstitutionId) -> u32 {
        if let Some(&index) = self.indexes.get(&participant) {
            return index;
        }
        let index = self.participants.len() as u32;
        self.participants.push(participant);
        self.indexes.insert(participant, index);
        index
    }

    /// The entry `known`'s transaction makes now: its approval (`reversal` false) or the
    /// reversal of its approval.
    fn entry(&self, reference: u64, known: &Known, time_ms: i64, reversal: bool) -> Entry {
        let (payer, payee) = (self.participants[known.payer as usize], self.participants[known.payee as usize]);
        let conversion = known.conversion;
        // A payment's fee; given back by its reversal. A refund has none.
        let fee = if known.refund { 0 } else { self.fees.fee(payee, known.amount_minor, conversion.is_some()) };
        // The payment's payer (a refund's payee) is the side a conversion is in.
        let converted_party = if known.refund { payee } else { payer };
        let (kind, payer, payee, fee_minor) = match (reversal, known.refund) {
            (true, _) => (EntryKind::Reversal, payee, payer, -fee),
            (false, true) => (EntryKind::Refund, payer, payee, fee),
            (false, false) => (EntryKind::Payment, payer, payee, fee),
        };
        let fee_payer = if reversal { payer } else { payee };
        Entry {
            time_ms,
            reference,
            kind,
            originator_transaction_id: known.id,
            payer,
            payee,
            amount_minor: known.amount_minor,
            currency: known.currency,
            fee_minor,
            fee_payer,
            conversion: conversion.map(|conversion| (converted_party, conversion)),
        }
    }

    /// Adds record `sequence` (records come in journal order, without gaps); returns the
    /// entry of the window it makes, if any.
    pub(crate) fn add(&mut self, sequence: u64, record: Record) -> Option<Entry> {
        if self.first == 0 {
            self.first = sequence;
            // Which window a shortened journal's first records belong to is not known
            // before its first cut; none of them can be in a covered window.
            self.current = if sequence == 1 { 1 } else { 0 };
            self.covered = sequence == 1;
        }
        let in_window = self.current == self.window;
        match record {
            Record::Checkpoint { window: cut, low_water, .. } => {
                // Right after its cut, which a shortened journal may have lost: what
                // follows is the next window's.
                self.current = cut + 1;
                if cut < self.window {
                    self.covered = self.first == 1 || low_water >= self.first;
                }
            }
            Record::WindowCut { window: cut, .. } => {
                self.closed |= cut == self.window;
                self.current = cut + 1;
            }
            Record::Admitted {
                reference,
                originator,
                receiver,
                id,
                amount_minor,
                currency,
                refund_of,
                payment_code,
                ..
            } => {
                let (payer, payee) = if refund_of != 0 {
                    // Back the way the payment came.
                    let payment = self.known.get(refund_of)?;
                    (payment.payee, payment.payer)
                } else if payment_code.is_some() {
                    (self.index(receiver), self.index(originator))
                } else {
                    (self.index(originator), self.index(receiver))
                };
                let refund = refund_of != 0;
                let known =
                    Known { payer, payee, amount_minor, currency, refund, approved: false, id, conversion: None };
                self.known.admit(reference, known);
            }
            Record::Converted { reference, conversion } => {
                if let Some((known, _)) = self.known.get_mut(reference) {
                    known.conversion = Some(conversion);
                }
            }
            Record::Answered { reference, code, time_ms, .. } => {
                let Some((known, completed)) = self.known.get_mut(reference) else {
                    // Only a shortened journal meets outcomes of transactions it never saw
                    // admitted; one in the window means the window cannot be rebuilt.
                    self.covered &= !(in_window && code == 0);
                    return None;
                };
                let approved = code == 0 && !known.approved;
                known.approved |= approved;
                let known = *known;
                if !completed {
                    self.known.complete(reference);
                }
                if approved && in_window {
                    return Some(self.entry(reference, &known, time_ms, false));
                }
            }
            Record::TimedOut { reference, .. } => {
                if let Some((_, false)) = self.known.get_mut(reference) {
                    self.known.complete(reference);
                }
            }
            Record::ReversalStarted { original, time_ms, .. } => {
                let Some((known, _)) = self.known.get_mut(original) else {
                    self.covered &= !in_window;
                    return None;
                };
                if !known.approved {
                    return None;
                }
                known.approved = false;
                let known = *known;
                if in_window {
                    return Some(self.entry(original, &known, time_ms, true));
                }
            }
            Record::ReversalAcknowledged { .. } | Record::Onboarding { .. } | Record::Restart { .. } => {}
        }
        None
    }
}

/// A participant's totals in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub debits_minor: u64,
    pub credits_minor: u64,
    /// Credits minus debits.
    pub net_minor: i128,
    /// Fees paid to the operator (the operator's own totals: collected), included in net.
    pub fees_minor: i128,
    pub entries: u64,
}

/// Every participant's totals per currency, entry by entry (in any order: the sums do not
/// depend on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    pub window: u64,
    /// Who collects the fees and takes the FX positions.
    pub operator: Option<InstitutionId>,
    pub totals: BTreeMap<InstitutionId, BTreeMap<u16, Totals>>,
    /// Entries added.
    pub entries: u64,
}

impl Positions {
    pub fn new(window: u64, fees: &FeeSchedule) -> Self {
        Self { window, operator: fees.operator(), ..Self::default() }
    }

    fn transfer(&mut self, from: InstitutionId, to: InstitutionId, amount_minor: u64, currency: u16) {
        let payer = self.totals.entry(from).or_default().entry(currency).or_default();
        payer.debits_minor += amount_minor;
        payer.net_minor -= i128::from(amount_minor);
        payer.entries += 1;
        let payee = self.totals.entry(to).or_default().entry(currency).or_default();
        payee.credits_minor += amount_minor;
        payee.net_minor += i128::from(amount_minor);
        payee.entries += 1;
    }

    /// Adds `entry`: its transfer (through the operator when converted) and its fee.
    pub fn add(&mut self, entry: &Entry) -> Result<(), ClearingError> {
        self.entries += 1;
        match entry.conversion {
            None => self.transfer(entry.payer, entry.payee, entry.amount_minor, entry.currency),
            Some((party, conversion)) => {
                // The operator buys the payer side's currency and pays the other's.
                let operator = self.operator.ok_or(ClearingError::NoOperator(self.window))?;
                let converted = (conversion.payer_amount_minor, conversion.payer_currency);
                let plain = (entry.amount_minor, entry.currency);
                let (paid, received) = if party == entry.payer { (converted, plain) } else { (plain, converted) };
                self.transfer(entry.payer, operator, paid.0, paid.1);
                self.transfer(operator, entry.payee, received.0, received.1);
            }
        }
        if entry.fee_minor != 0
            && let Some(operator) = self.operator
        {
            let fee = i128::from(entry.fee_minor);
            let payer = self.totals.entry(entry.fee_payer).or_default().entry(entry.currency).or_default();
            payer.fees_minor += fee;
            payer.net_minor -= fee;
            let collector = self.totals.entry(operator).or_default().entry(entry.currency).or_default();
            collector.fees_minor += fee;
            collector.net_minor += fee;
        }
        Ok(())
    }

    /// Every currency's positions sum to zero.
    pub fn check_balanced(&self) -> Result<(), ClearingError> {
        match self.sums().into_iter().find(|(_, sum)| *sum != 0) {
            Some((currency, sum)) => Err(ClearingError::Unbalanced { window: self.window, currency, sum }),
            None => Ok(()),
        }
    }

    fn sums(&self) -> BTreeMap<u16, i128> {
        let mut sums: BTreeMap<u16, i128> = BTreeMap::new();
        for totals in self.totals.values() {
            for (&currency, t) in totals {
                *sums.entry(currency).or_default() += t.net_minor;
            }
        }
        sums
    }

    /// The summary of `participant`: totals per currency.
    pub fn participant_json(&self, participant: InstitutionId) -> String {
        let totals = self.totals.get(&participant).cloned().unwrap_or_default();
        let currencies: Vec<_> =
            totals.into_iter().map(|(currency, t)| serde_json::json!({ "currency": currency, "totals": t })).collect();
        let document = serde_json::json!({
            "window": self.window,
            "participant": participant.as_str(),
            "currencies": currencies,
        });
        format!("{}\n", serde_json::to_string_pretty(&document).unwrap_or_default())
    }

    /// The all-participant summary: every position, and each currency's sum (zero).
    pub fn summary_json(&self) -> String {
        let participants: Vec<_> = self
            .totals
            .iter()
            .map(|(participant, totals)| {
                let nets: BTreeMap<String, i128> = totals.iter().map(|(c, t)| (c.to_string(), t.net_minor)).collect();
                serde_json::json!({ "participant": participant.as_str(), "net_minor": nets })
            })
            .collect();
        let document = serde_json::json!({
            "window": self.window,
            "entries": self.entries,
            "participants": participants,
            "sum_minor_by_currency": self.sums().iter().map(|(c, s)| (c.to_string(), *s)).collect::<BTreeMap<_, _>>(),
        });
        format!("{}\n", serde_json::to_string_pretty(&document).unwrap_or_default())
    }
}

/// The first line of every participant's reconciliation file.
pub const CSV_HEADER: &str = "switch_reference,originator_transaction_id,time_ms,type,direction,amount_minor,currency,counterparty,fee_minor,settlement_amount_minor,settlement_currency,rate,margin_basis_points,rate_version\n";

/// Whether `entry` is a row of `participant`'s file: it pays or is paid, or it is the
/// operator and the entry is converted.
pub fn concerns(entry: &Entry, participant: InstitutionId, operator: Option<InstitutionId>) -> bool {
    entry.payer == participant
        || entry.payee == participant
        || (operator == Some(participant) && entry.conversion.is_some())
}

/// Appends `entry`'s row of `participant`'s reconciliation file (one it `concerns`).
///
/// `amount_minor` and `currency` are the transaction's; `settlement_amount_minor` and
/// `settlement_currency` what the participant itself moves (they differ on the payer side
/// of a converted transaction); `rate` (mid), `margin_basis_points` and `rate_version`
/// describe the conversion, empty when there was none. The operator's file has one
/// `exchange` row per converted entry: it paid the transaction's amount to one side and
/// received the settlement amount from the other (`counterparty`, the payer side).
pub fn csv_row(entry: &Entry, participant: InstitutionId, text: &mut String) {
    let fee = if entry.fee_payer == participant { entry.fee_minor } else { 0 };
    let (direction, counterparty) = if entry.payee == participant {
        ("credit", entry.payer)
    } else if entry.payer == participant {
        ("debit", entry.payee)
    } else {
        ("exchange", entry.conversion.map_or(entry.payer, |(party, _)| party))
    };
    let (settlement, conversion) = match entry.conversion {
        Some((party, c)) => {
            let settled = if party == participant || direction == "exchange" {
                (c.payer_amount_minor, c.payer_currency)
            } else {
                (entry.amount_minor, entry.currency)
            };
            let terms = format!("{},{},{}", codec::fx::format_rate(c.rate), c.margin_basis_points, c.rate_version);
            (settled, terms)
        }
        None => ((entry.amount_minor, entry.currency), ",,".to_string()),
    };
    // Transaction ids are printable ASCII: quoted, with quotes doubled (RFC 4180).
    let _ = writeln!(
        text,
        "{},\"{}\",{},{},{direction},{},{},{},{fee},{},{},{conversion}",
        codec::SwitchReference(entry.reference),
        entry.originator_transaction_id.as_str().replace('"', "\"\""),
        entry.time_ms,
        entry.kind.name(),
        entry.amount_minor,
        entry.currency,
        counterparty.as_str(),
        settlement.0,
        settlement.1,
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ClearingError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("window {window}: positions in currency {currency} sum to {sum}, not zero; nothing written")]
    Unbalanced { window: u64, currency: u16, sum: i128 },
    #[error("window {0} has not been closed in this journal")]
    NotClosed(u64),
    #[error(
        "window {0} has converted transactions but the fee schedule names no operator to take their FX positions; nothing written"
    )]
    NoOperator(u64),
    #[error("{0} is in use by a running switch (close the window through its admin port: --admin ADDR)")]
    Locked(PathBuf),
    #[error(
        "window {window}: {path} starts at record {first}, and records this window needs are older or were \
         forgotten (journal retention removed them, [journal] retain_windows, or a refund or reversal names a \
         transaction older than the last [exchange] completed_max); its files written at the close are the record"
    )]
    Removed { window: u64, path: PathBuf, first: u64 },
}

pub fn window_dir(data_dir: &Path, window: u64) -> PathBuf {
    data_dir.join("clearing").join(format!("window-{window:06}"))
}

/// The shard directories of a data directory's journal, with their shard, in shard order.
pub fn shard_dirs(data_dir: &Path) -> Result<Vec<(usize, PathBuf)>, ClearingError> {
    let root = data_dir.join("journal");
    let entries = std::fs::read_dir(&root).map_err(|source| ClearingError::Io { path: root.clone(), source })?;
    let mut shards: Vec<(usize, PathBuf)> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| {
            let index = path.file_name()?.to_str()?.strip_prefix("shard-")?.parse().ok()?;
            Some((index, path))
        })
        .collect();
    shards.sort();
    Ok(shards)
}

/// The time zone cut-offs are given in: China's clearing day.
pub const CUTOFF_TIME_ZONE: &str = "Asia/Shanghai";

/// The first daily cut-off at `at` (Asia/Shanghai wall-clock time) strictly after `now`.
pub fn next_cutoff(now: jiff::Timestamp, at: jiff::civil::Time) -> Result<jiff::Timestamp, jiff::Error> {
    let zone = jiff::tz::TimeZone::get(CUTOFF_TIME_ZONE)?;
    let today = now.to_zoned(zone.clone()).date();
    let mut cutoff = today.to_datetime(at).to_zoned(zone.clone())?;
    if cutoff.timestamp() <= now {
        cutoff = today.tomorrow()?.to_datetime(at).to_zoned(zone)?;
    }
    Ok(cutoff.timestamp())
}

/// The data directory's lock: held by a running switch, and by an offline close.
pub fn lock(data_dir: &Path) -> Result<std::fs::File, ClearingError> {
    let path = data_dir.join("LOCK");
    let io = |source| ClearingError::Io { path: path.clone(), source };
    std::fs::create_dir_all(data_dir).map_err(|source| ClearingError::Io { path: data_dir.to_path_buf(), source })?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ClearingError::Locked(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_cutoff_is_in_beijing_time() {
        let at: jiff::civil::Time = "23:00".parse().expect("valid");
        // 23:30 in Shanghai (15:30 UTC): the next cut-off is tomorrow's.
        let now: jiff::Timestamp = "2026-11-22T15:30:00Z".parse().expect("valid");
        assert_eq!(next_cutoff(now, at).expect("computed").to_string(), "2026-11-23T15:00:00Z");
        // 22:59:59 there: an instant away.
        let now: jiff::Timestamp = "2026-11-22T14:59:59Z".parse().expect("valid");
        assert_eq!(next_cutoff(now, at).expect("computed").to_string(), "2026-11-22T15:00:00Z");
        // Exactly at the cut-off: that one has happened; the next is a day on.
        let now: jiff::Timestamp = "2026-11-22T15:00:00Z".parse().expect("valid");
        assert_eq!(next_cutoff(now, at).expect("computed").to_string(), "2026-11-23T15:00:00Z");
    }
}
