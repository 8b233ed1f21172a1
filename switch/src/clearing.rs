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
//!   checked again before any file is written.
//! - Timed-out transactions have no entry: they are reversed, whatever the receiver did.
//! - **Fees.** The `FeeSchedule` gives a participant a rate in basis points on every
//!   payment it is paid (rounded half up to a minor unit), owed to the switch operator,
//!   who appears among the positions. A reversal of the payment gives the fee back; refunds
//!   carry no fee. The schedule a window was closed with is written beside its files, and
//!   a rebuild uses it, so the files stay byte-identical when the configuration changes.
//!   A converted (cross-border) payment pays the payee's `cross_border_basis_points` too.
//! - **Currencies.** A converted transaction (its `Converted` record) has two sides: the
//!   payer's side moves the payer's settlement currency, the merchant's side the
//!   transaction's. The operator stands between them: it receives the payer's currency
//!   from the payer's side and pays the transaction's currency to the merchant's side (its
//!   FX position, margin included). So every currency still sums to zero.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use codec::field::FieldText;
use codec::{Conversion, InstitutionId};
use serde::Serialize;

use crate::core::record::{CodeKey, Record};
use crate::journal::{self, JournalError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Payment,
    Refund,
    Reversal,
}

/// One movement of value between two participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time_ms: i64,
    pub reference: u64,
    pub kind: EntryKind,
    pub originator_transaction_id: String,
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

    fn operator(&self) -> Option<InstitutionId> {
        InstitutionId::new(&self.operator).ok().filter(|id| !id.is_empty())
    }
}

/// What the journal says of one transaction, as clearing needs it.
#[derive(Debug, Clone, Copy)]
struct Known {
    payer: InstitutionId,
    payee: InstitutionId,
    amount_minor: u64,
    currency: u16,
    refund: bool,
    approved: bool,
    /// The payment's payer (a refund's payee), whose side a conversion is in.
    converted_party: InstitutionId,
    conversion: Conversion,
}

/// One shard's entries of a window, built record by record from its whole journal, in
/// order (streamed: the journal need not fit in memory). The fleet reader builds one per
/// node and shard from their published records, by the same rules.
pub(crate) struct ShardEntries<'a> {
    window: u64,
    fees: &'a FeeSchedule,
    known: HashMap<u64, (Known, codec::TransactionId)>,
    /// The window the records being read belong to.
    current: u64,
    entries: Vec<Entry>,
    /// The window's cut was read: it is closed in this shard.
    closed: bool,
    /// The sequence of the first record read (0: none yet): a journal retention shortened
    /// starts later than 1.
    first: u64,
    /// Every record the window's entries need was read: the journal starts at 1, or at or
    /// before the `low_water` of the last checkpoint before the window (retention keeps
    /// that much for the windows it keeps, `Record::Checkpoint`), and no outcome in the
    /// window named a transaction whose `Admitted` was not read.
    covered: bool,
}

impl<'a> ShardEntries<'a> {
    pub(crate) fn new(window: u64, fees: &'a FeeSchedule) -> Self {
        Self {
            window,
            fees,
            known: HashMap::new(),
            current: 1,
            entries: Vec::new(),
            closed: false,
            first: 0,
            covered: false,
        }
    }

    /// Whether the window's cut has been read (the shard closed it).
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    /// The window's entries, once every record of `source` (a journal or a published
    /// subject, for the error) has been added; refused when records the window needs were
    /// not among them (`covered`).
    pub(crate) fn into_entries(self, source: PathBuf) -> Result<Vec<Entry>, ClearingError> {
        if !self.covered {
            return Err(ClearingError::Removed { window: self.window, path: source, first: self.first });
        }
        Ok(self.entries)
    }

    /// Adds record `sequence`; records come in journal order, without gaps.
    pub(crate) fn add(&mut self, sequence: u64, record: Record) {
        if self.first == 0 {
            self.first = sequence;
            // Which window a shortened journal's first records belong to is not known
            // before its first cut; none of them can be in a covered window.
            self.current = if sequence == 1 { 1 } else { 0 };
            self.covered = sequence == 1;
        }
        let Self { window, fees, known, current, entries, closed, first, covered } = self;
        let (window, fees) = (*window, *fees);
        match record {
            Record::Checkpoint { window: cut, low_water, .. } => {
                // Right after its cut, which a shortened journal may have lost: what
                // follows is the next window's.
                *current = cut + 1;
                if cut < window {
                    *covered = *first == 1 || low_water >= *first;
                }
            }
            Record::WindowCut { window: cut, .. } => {
                *closed |= cut == window;
                *current = cut + 1;
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
                    match known.get(&refund_of) {
                        Some((payment, _)) => (payment.payee, payment.payer),
                        None => return,
                    }
                } else if payment_code.is_some() {
                    (receiver, originator)
                } else {
                    (originator, receiver)
                };
                let refund = refund_of != 0;
                let converted_party = if refund { payee } else { payer };
                let conversion = Conversion::NONE;
                let transaction = Known {
                    payer,
                    payee,
                    amount_minor,
                    currency,
                    refund,
                    approved: false,
                    converted_party,
                    conversion,
                };
                known.insert(reference, (transaction, id));
            }
            Record::Converted { reference, conversion } => {
                if let Some((transaction, _)) = known.get_mut(&reference) {
                    transaction.conversion = conversion;
                }
            }
            Record::Answered { reference, code, time_ms, .. } => {
                let Some((transaction, id)) = known.get_mut(&reference) else {
                    // Only a shortened journal meets outcomes of transactions it never saw
                    // admitted; one in the window means the window cannot be rebuilt.
                    *covered &= !(*current == window && code == 0);
                    return;
                };
                if code != 0 || transaction.approved {
                    return;
                }
                transaction.approved = true;
                if *current == window {
                    let kind = if transaction.refund { EntryKind::Refund } else { EntryKind::Payment };
                    let converted = transaction.conversion.is_some();
                    let fee_minor = if transaction.refund {
                        0
                    } else {
                        fees.fee(transaction.payee, transaction.amount_minor, converted)
                    };
                    entries.push(Entry {
                        time_ms,
                        reference,
                        kind,
                        originator_transaction_id: id.as_str().to_string(),
                        payer: transaction.payer,
                        payee: transaction.payee,
                        amount_minor: transaction.amount_minor,
                        currency: transaction.currency,
                        fee_minor,
                        fee_payer: transaction.payee,
                        conversion: converted.then_some((transaction.converted_party, transaction.conversion)),
                    });
                }
            }
            Record::ReversalStarted { original, time_ms, .. } => {
                let Some((transaction, id)) = known.get_mut(&original) else {
                    *covered &= *current != window;
                    return;
                };
                if !transaction.approved {
                    return;
                }
                transaction.approved = false;
                if *current == window {
                    // The fee of a reversed payment is given back; a refund had none.
                    let converted = transaction.conversion.is_some();
                    let fee_minor = if transaction.refund {
                        0
                    } else {
                        -fees.fee(transaction.payee, transaction.amount_minor, converted)
                    };
                    entries.push(Entry {
                        time_ms,
                        reference: original,
                        kind: EntryKind::Reversal,
                        originator_transaction_id: id.as_str().to_string(),
                        payer: transaction.payee,
                        payee: transaction.payer,
                        amount_minor: transaction.amount_minor,
                        currency: transaction.currency,
                        fee_minor,
                        fee_payer: transaction.payee,
                        conversion: converted.then_some((transaction.converted_party, transaction.conversion)),
                    });
                }
            }
            Record::TimedOut { .. } | Record::ReversalAcknowledged { .. } | Record::Onboarding { .. } => {}
        }
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

/// A closed window: its entries (sorted) and every participant's totals per currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub window: u64,
    pub entries: Vec<Entry>,
    pub positions: BTreeMap<InstitutionId, BTreeMap<u16, Totals>>,
    /// Who collects the fees and takes the FX positions.
    pub operator: Option<InstitutionId>,
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
        "window {window}: {path} starts at record {first}, and records this window needs are older (journal \
         retention removed them, [journal] retain_windows); its files written at the close are the record"
    )]
    Removed { window: u64, path: PathBuf, first: u64 },
}

impl Window {
    /// Window `window` from every shard's records, with `fees`.
    pub fn from_shards(window: u64, shards: &[Vec<Record>], fees: &FeeSchedule) -> Result<Self, ClearingError> {
        let whole: Vec<(u64, &[Record])> = shards.iter().map(|records| (1, records.as_slice())).collect();
        Self::from_journal_tails(window, &whole, fees)
    }

    /// Window `window` from what is left of every shard's journal: (the first record's
    /// sequence, the records from it on). Refused (`Removed`) when records the window
    /// needs are not there, as `rebuild` refuses a journal retention shortened.
    pub fn from_journal_tails(
        window: u64,
        shards: &[(u64, &[Record])],
        fees: &FeeSchedule,
    ) -> Result<Self, ClearingError> {
        let mut entries = Vec::new();
        for (index, &(first, records)) in shards.iter().enumerate() {
            let mut shard = ShardEntries::new(window, fees);
            for (sequence, record) in (first..).zip(records) {
                shard.add(sequence, *record);
            }
            entries.append(&mut shard.into_entries(format!("shard {index}").into())?);
        }
        Self::from_entries(window, entries, fees)
    }

    /// Window `window` from its entries (of every shard, in any order).
    pub(crate) fn from_entries(
        window: u64,
        mut entries: Vec<Entry>,
        fees: &FeeSchedule,
    ) -> Result<Self, ClearingError> {
        entries.sort_by_key(|e| (e.time_ms, e.reference, e.kind));
        let mut positions: BTreeMap<InstitutionId, BTreeMap<u16, Totals>> = BTreeMap::new();
        let mut transfer = |from: InstitutionId, to: InstitutionId, amount_minor: u64, currency: u16| {
            let payer = positions.entry(from).or_default().entry(currency).or_default();
            payer.debits_minor += amount_minor;
            payer.net_minor -= i128::from(amount_minor);
            payer.entries += 1;
            let payee = positions.entry(to).or_default().entry(currency).or_default();
            payee.credits_minor += amount_minor;
            payee.net_minor += i128::from(amount_minor);
            payee.entries += 1;
        };
        for entry in &entries {
            match entry.conversion {
                None => transfer(entry.payer, entry.payee, entry.amount_minor, entry.currency),
                Some((party, conversion)) => {
                    // The operator buys the payer side's currency and pays the other's.
                    let operator = fees.operator().ok_or(ClearingError::NoOperator(window))?;
                    let converted = (conversion.payer_amount_minor, conversion.payer_currency);
                    let plain = (entry.amount_minor, entry.currency);
                    let (paid, received) = if party == entry.payer { (converted, plain) } else { (plain, converted) };
                    transfer(entry.payer, operator, paid.0, paid.1);
                    transfer(operator, entry.payee, received.0, received.1);
                }
            }
        }
        for entry in &entries {
            if entry.fee_minor != 0
                && let Some(operator) = fees.operator()
            {
                let fee = i128::from(entry.fee_minor);
                let payer = positions.entry(entry.fee_payer).or_default().entry(entry.currency).or_default();
                payer.fees_minor += fee;
                payer.net_minor -= fee;
                let collector = positions.entry(operator).or_default().entry(entry.currency).or_default();
                collector.fees_minor += fee;
                collector.net_minor += fee;
            }
        }
        let built = Self { window, entries, positions, operator: fees.operator() };
        built.check_balanced()?;
        Ok(built)
    }

    /// Every currency's positions sum to zero.
    fn check_balanced(&self) -> Result<(), ClearingError> {
        let mut sums: BTreeMap<u16, i128> = BTreeMap::new();
        for totals in self.positions.values() {
            for (&currency, t) in totals {
                *sums.entry(currency).or_default() += t.net_minor;
            }
        }
        match sums.into_iter().find(|(_, sum)| *sum != 0) {
            Some((currency, sum)) => Err(ClearingError::Unbalanced { window: self.window, currency, sum }),
            None => Ok(()),
        }
    }

    /// The reconciliation file of `participant`: every entry it is party to, once.
    ///
    /// `amount_minor` and `currency` are the transaction's; `settlement_amount_minor` and
    /// `settlement_currency` what the participant itself moves (they differ on the payer
    /// side of a converted transaction); `rate` (mid), `margin_basis_points` and
    /// `rate_version` describe the conversion, empty when there was none. The operator's
    /// file has one `exchange` row per converted entry: it paid the transaction's amount
    /// to one side and received the settlement amount from the other (`counterparty`, the
    /// payer side).
    pub fn csv(&self, participant: InstitutionId) -> String {
        let mut text = String::from(
            "switch_reference,originator_transaction_id,time_ms,type,direction,amount_minor,currency,counterparty,fee_minor,settlement_amount_minor,settlement_currency,rate,margin_basis_points,rate_version\n",
        );
        let operator = self.operator == Some(participant);
        for entry in self
            .entries
            .iter()
            .filter(|e| e.payer == participant || e.payee == participant || (operator && e.conversion.is_some()))
        {
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
                    let terms =
                        format!("{},{},{}", codec::fx::format_rate(c.rate), c.margin_basis_points, c.rate_version);
                    (settled, terms)
                }
                None => ((entry.amount_minor, entry.currency), ",,".to_string()),
            };
            let kind = match entry.kind {
                EntryKind::Payment => "payment",
                EntryKind::Refund => "refund",
                EntryKind::Reversal => "reversal",
            };
            // Transaction ids are printable ASCII: quoted, with quotes doubled (RFC 4180).
            let _ = writeln!(
                text,
                "{},\"{}\",{},{kind},{direction},{},{},{},{fee},{},{},{conversion}",
                codec::SwitchReference(entry.reference),
                entry.originator_transaction_id.replace('"', "\"\""),
                entry.time_ms,
                entry.amount_minor,
                entry.currency,
                counterparty.as_str(),
                settlement.0,
                settlement.1,
            );
        }
        text
    }

    /// The summary of `participant`: totals per currency.
    pub fn participant_json(&self, participant: InstitutionId) -> String {
        let totals = self.positions.get(&participant).cloned().unwrap_or_default();
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
        let mut sums: BTreeMap<u16, i128> = BTreeMap::new();
        let participants: Vec<_> = self
            .positions
            .iter()
            .map(|(participant, totals)| {
                for (&currency, t) in totals {
                    *sums.entry(currency).or_default() += t.net_minor;
                }
                let nets: BTreeMap<String, i128> = totals.iter().map(|(c, t)| (c.to_string(), t.net_minor)).collect();
                serde_json::json!({ "participant": participant.as_str(), "net_minor": nets })
            })
            .collect();
        let document = serde_json::json!({
            "window": self.window,
            "entries": self.entries.len(),
            "participants": participants,
            "sum_minor_by_currency": sums.iter().map(|(c, s)| (c.to_string(), *s)).collect::<BTreeMap<_, _>>(),
        });
        format!("{}\n", serde_json::to_string_pretty(&document).unwrap_or_default())
    }

    /// Writes every file of this window under `DATA_DIR/clearing/window-NNNNNN/`, each
    /// atomically: a CSV and a JSON for every participant with entries, and the summary.
    /// Returns the paths.
    pub fn write(&self, data_dir: &Path, fees: &FeeSchedule) -> Result<Vec<PathBuf>, ClearingError> {
        let dir = window_dir(data_dir, self.window);
        std::fs::create_dir_all(&dir).map_err(|source| ClearingError::Io { path: dir.clone(), source })?;
        let schedule = format!("{}\n", serde_json::to_string_pretty(fees).unwrap_or_default());
        let mut files = vec![write_file(&dir.join("fee_schedule.json"), schedule.as_bytes())?];
        for &participant in self.positions.keys() {
            for (name, bytes) in [
                (format!("{}.csv", participant.as_str()), self.csv(participant)),
                (format!("{}.json", participant.as_str()), self.participant_json(participant)),
            ] {
                files.push(write_file(&dir.join(name), bytes.as_bytes())?);
            }
        }
        files.push(write_file(&dir.join("summary.json"), self.summary_json().as_bytes())?);
        Ok(files)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<PathBuf, ClearingError> {
    journal::write_atomically(path, bytes).map_err(|source| ClearingError::Io { path: path.to_path_buf(), source })?;
    Ok(path.to_path_buf())
}

pub fn window_dir(data_dir: &Path, window: u64) -> PathBuf {
    data_dir.join("clearing").join(format!("window-{window:06}"))
}

/// The fee schedule window `window` was closed with (none written: no fees).
pub fn recorded_fees(data_dir: &Path, window: u64) -> Result<FeeSchedule, ClearingError> {
    let path = window_dir(data_dir, window).join("fee_schedule.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| ClearingError::Io { path, source: std::io::Error::other(error) }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(FeeSchedule::default()),
        Err(source) => Err(ClearingError::Io { path, source }),
    }
}

/// Reads every shard's journal in `data_dir` and builds window `window`, which must have
/// been cut in each, with `fees`. `key` reads a journal whose payment codes are encrypted.
pub fn rebuild(
    data_dir: &Path,
    window: u64,
    fees: &FeeSchedule,
    key: Option<&CodeKey>,
) -> Result<Window, ClearingError> {
    let mut entries = Vec::new();
    for (_, dir) in shard_dirs(data_dir)? {
        let mut shard = ShardEntries::new(window, fees);
        journal::read_with(&dir, key, |sequence, record| shard.add(sequence, record))?;
        if !shard.closed {
            return Err(ClearingError::NotClosed(window));
        }
        entries.append(&mut shard.into_entries(dir)?);
    }
    Window::from_entries(window, entries, fees)
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

/// Closes the open window of a stopped switch's data directory: takes the directory's lock
/// (refused while a switch runs on it), cuts every shard's journal, and writes the files.
pub fn close_offline(
    data_dir: &Path,
    fees: &FeeSchedule,
    key: Option<&CodeKey>,
) -> Result<(u64, Vec<PathBuf>), ClearingError> {
    let _lock = lock(data_dir)?;
    let mut journals = Vec::new();
    let mut last = 0;
    for (_, dir) in shard_dirs(data_dir)? {
        let (journal, _) = journal::Journal::open(
            &dir,
            journal::SyncPolicy::Always,
            journal::Damage::Refuse,
            key.cloned(),
            |_, record| {
                if let Record::WindowCut { window, .. } = record {
                    last = last.max(window);
                }
            },
        )?;
        journals.push((dir, journal));
    }
    let window = last + 1;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    for (dir, journal) in &mut journals {
        journal
            .commit(&[Record::WindowCut { window, time_ms: now_ms }], true)
            .map_err(|source| ClearingError::Io { path: dir.clone(), source })?;
    }
    drop(journals);
    let built = rebuild(data_dir, window, fees, key)?;
    Ok((window, built.write(data_dir, fees)?))
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
    use codec::{AuthorizationCode, PaymentCode, TransactionId};

    fn id(text: &str) -> InstitutionId {
        InstitutionId::new(text).expect("valid")
    }

    fn admitted(reference: u64, originator: &str, receiver: &str, amount: u64, code: bool, refund_of: u64) -> Record {
        Record::Admitted {
            reference,
            time_ms: reference as i64,
            originator: id(originator),
            receiver: id(receiver),
            id: TransactionId::new(&format!("T{reference}")).expect("valid"),
            amount_minor: amount,
            currency: 156,
            refund_of,
            payment_code: code.then(|| PaymentCode::new(&format!("13{reference:016}")).expect("valid")),
        }
    }

    fn answered(reference: u64, code: u16) -> Record {
        Record::Answered {
            reference,
            time_ms: 100 + reference as i64,
            code,
            authorization_code: AuthorizationCode::EMPTY,
        }
    }

    fn net(window: &Window, participant: &str) -> i128 {
        window.positions.get(&id(participant)).and_then(|t| t.get(&156)).map_or(0, |t| t.net_minor)
    }

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

    #[test]
    fn who_pays_whom_and_what_nets_out() {
        let records = vec![
            // Consumer-presented: WeChat Pay (issuer) pays ACQ0001.
            admitted(1, "ACQ0001", "WECHATPAY", 1_000, true, 0),
            answered(1, 0),
            // Merchant-presented: the wallet WAL0001 pays the acquirer UNIONPAY.
            admitted(2, "WAL0001", "UNIONPAY", 500, false, 0),
            answered(2, 0),
            // A partial refund of 1: back from ACQ0001 to WeChat Pay.
            admitted(3, "ACQ0001", "WECHATPAY", 300, false, 1),
            answered(3, 0),
            // Declined and timed out: nothing moves.
            admitted(4, "ACQ0001", "WECHATPAY", 7_000, true, 0),
            answered(4, 2),
            admitted(5, "ACQ0001", "WECHATPAY", 9_000, true, 0),
            Record::TimedOut { reference: 5, time_ms: 200 },
            Record::ReversalStarted { reversal: 6, original: 5, reason: 1, time_ms: 200 },
            // Approved, then reversed (the approval could not be delivered): nets to zero.
            admitted(7, "ACQ0002", "ALIPAY", 4_000, true, 0),
            answered(7, 0),
            Record::ReversalStarted { reversal: 8, original: 7, reason: 4, time_ms: 300 },
        ];
        let window = Window::from_shards(1, &[records], &FeeSchedule::default()).expect("balanced");
        assert_eq!(net(&window, "ACQ0001"), 1_000 - 300);
        assert_eq!(net(&window, "WECHATPAY"), -1_000 + 300);
        assert_eq!(net(&window, "WAL0001"), -500);
        assert_eq!(net(&window, "UNIONPAY"), 500);
        assert_eq!((net(&window, "ACQ0002"), net(&window, "ALIPAY")), (0, 0));
        let kinds: Vec<_> = window.entries.iter().map(|e| (e.reference, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (1, EntryKind::Payment),
                (2, EntryKind::Payment),
                (3, EntryKind::Refund),
                (7, EntryKind::Payment),
                (7, EntryKind::Reversal)
            ]
        );
        let csv = window.csv(id("ACQ0001"));
        assert_eq!(csv.lines().count(), 3, "{csv}");
        assert!(csv.contains(",\"T3\",103,refund,debit,300,156,WECHATPAY,0"), "{csv}");
    }

    fn converted(reference: u64, payer_amount_minor: u64, payer_currency: u16) -> Record {
        let conversion = Conversion {
            payer_amount_minor,
            rate: 49_123_000_000,
            rate_version: 2,
            payer_currency,
            margin_basis_points: 50,
        };
        Record::Converted { reference, conversion }
    }

    #[test]
    fn converted_transactions_clear_per_currency_through_the_operator() {
        const THB: u16 = 764;
        let fees = FeeSchedule {
            operator: "CSWITCH".into(),
            basis_points: [("UNIONPAY".to_string(), 30)].into_iter().collect(),
            cross_border_basis_points: [("UNIONPAY".to_string(), 20)].into_iter().collect(),
            fx_margin_basis_points: 50,
        };
        let records = vec![
            // A THB wallet pays a CNY merchant at UNIONPAY 100.00 CNY: 493.69 THB.
            admitted(1, "WALTH01", "UNIONPAY", 10_000, false, 0),
            converted(1, 49_369, THB),
            answered(1, 0),
            // A THB issuer's code scanned by ACQ0001 for 20.00 CNY (98.74 THB), then
            // refunded 5.00 CNY (24.69 THB back to the issuer).
            admitted(2, "ACQ0001", "WALTH01", 2_000, true, 0),
            converted(2, 9_874, THB),
            answered(2, 0),
            admitted(3, "ACQ0001", "WALTH01", 500, false, 2),
            converted(3, 2_469, THB),
            answered(3, 0),
            // Converted, approved and reversed: nothing moves in either currency.
            admitted(4, "WALTH01", "UNIONPAY", 3_000, false, 0),
            converted(4, 14_811, THB),
            answered(4, 0),
            Record::ReversalStarted { reversal: 5, original: 4, reason: 4, time_ms: 300 },
            // Domestic beside them.
            admitted(6, "ACQ0001", "WECHATPAY", 700, true, 0),
            answered(6, 0),
        ];
        let window = Window::from_shards(1, std::slice::from_ref(&records), &fees).expect("balanced");
        let net_in = |participant: &str, currency: u16| {
            window.positions.get(&id(participant)).and_then(|t| t.get(&currency)).map_or(0, |t| t.net_minor)
        };
        // The payer side in THB only; the merchant side in CNY only.
        assert_eq!(net_in("WALTH01", THB), -49_369 - 9_874 + 2_469);
        assert_eq!(net_in("WALTH01", 156), 0);
        // UNIONPAY: 100.00 less 0.50% (30 + 20 bp cross-border) = 50 fen.
        assert_eq!(net_in("UNIONPAY", 156), 10_000 - 50);
        assert_eq!(net_in("UNIONPAY", THB), 0);
        assert_eq!(net_in("ACQ0001", 156), 2_000 - 500 + 700);
        // The operator holds the FX position: THB in, CNY out, plus the fee.
        assert_eq!(net_in("CSWITCH", THB), 49_369 + 9_874 - 2_469);
        assert_eq!(net_in("CSWITCH", 156), -10_000 - 2_000 + 500 + 50);
        for currency in [156, THB] {
            let sum: i128 = window.positions.values().filter_map(|t| t.get(&currency)).map(|t| t.net_minor).sum();
            assert_eq!(sum, 0, "currency {currency}");
        }
        // The files: each side sees its own money, and the rate.
        let wallet = window.csv(id("WALTH01"));
        assert!(wallet.contains(",payment,debit,10000,156,UNIONPAY,0,49369,764,4.9123,50,2\n"), "{wallet}");
        assert!(wallet.contains(",refund,credit,500,156,ACQ0001,0,2469,764,4.9123,50,2\n"), "{wallet}");
        let acquirer = window.csv(id("UNIONPAY"));
        assert!(acquirer.contains(",payment,credit,10000,156,WALTH01,50,10000,156,4.9123,50,2\n"), "{acquirer}");
        let operator = window.csv(id("CSWITCH"));
        assert!(operator.contains(",payment,exchange,10000,156,WALTH01,0,49369,764,4.9123,50,2\n"), "{operator}");
        assert_eq!(operator.lines().count(), 1 + 5, "every converted entry once: {operator}");
        let domestic = window.csv(id("WECHATPAY"));
        assert!(domestic.contains(",payment,debit,700,156,ACQ0001,0,700,156,,,\n"), "{domestic}");
        // No operator to take the FX positions: refused, not written wrong.
        let no_operator = FeeSchedule { operator: String::new(), ..fees };
        assert!(matches!(Window::from_shards(1, &[records], &no_operator), Err(ClearingError::NoOperator(1))));
    }

    #[test]
    fn fees_go_to_the_operator_and_come_back_with_a_reversal() {
        let fees = FeeSchedule {
            operator: "CSWITCH".into(),
            basis_points: [("ACQ0001".to_string(), 55)].into_iter().collect(),
            ..FeeSchedule::default()
        };
        let records = vec![
            admitted(1, "ACQ0001", "WECHATPAY", 1_000, true, 0),
            answered(1, 0),
            admitted(2, "ACQ0001", "WECHATPAY", 2_001, true, 0),
            answered(2, 0),
            Record::ReversalStarted { reversal: 3, original: 2, reason: 2, time_ms: 300 },
            admitted(4, "ACQ0001", "WECHATPAY", 400, false, 1),
            answered(4, 0),
        ];
        let window = Window::from_shards(1, &[records], &fees).expect("balanced");
        // 1000 x 0.55% = 5.5, rounded half up to 6; the reversed payment's 11 came back.
        assert_eq!(net(&window, "CSWITCH"), 6);
        assert_eq!(net(&window, "ACQ0001"), 1_000 - 6 - 400);
        let csv = window.csv(id("ACQ0001"));
        assert!(csv.contains(",payment,credit,2001,156,WECHATPAY,11"), "{csv}");
        assert!(csv.contains(",reversal,debit,2001,156,WECHATPAY,-11"), "{csv}");
        assert!(csv.contains(",refund,debit,400,156,WECHATPAY,0"), "{csv}");
    }

    #[test]
    fn entries_fall_in_the_window_of_their_outcome() {
        let records = vec![
            admitted(1, "ACQ0001", "WECHATPAY", 10, true, 0),
            answered(1, 0),
            // In flight at the cut-off: completes, and counts, in window 2.
            admitted(2, "ACQ0001", "WECHATPAY", 20, true, 0),
            Record::WindowCut { window: 1, time_ms: 150 },
            answered(2, 0),
            // Approved in window 2, reversed in window 3.
            admitted(3, "ACQ0001", "WECHATPAY", 40, true, 0),
            answered(3, 0),
            Record::WindowCut { window: 2, time_ms: 250 },
            Record::ReversalStarted { reversal: 4, original: 3, reason: 2, time_ms: 260 },
        ];
        let shards = [records];
        let nets: Vec<i128> = (1..=3)
            .map(|w| net(&Window::from_shards(w, &shards, &FeeSchedule::default()).expect("balanced"), "ACQ0001"))
            .collect();
        assert_eq!(nets, [10, 60, -40]);
    }

    #[test]
    fn files_are_balanced_and_identical_when_rebuilt() {
        let shards = [
            vec![admitted(1, "ACQ0001", "WECHATPAY", 10, true, 0), answered(1, 0)],
            vec![admitted(2, "ACQ0002", "ALIPAY", 20, true, 0), answered(2, 0)],
        ];
        let fees = FeeSchedule::default();
        let first = Window::from_shards(1, &shards, &fees).expect("balanced");
        let second = Window::from_shards(1, &shards, &fees).expect("balanced");
        assert_eq!(first.summary_json(), second.summary_json());
        assert_eq!(first.csv(id("ALIPAY")), second.csv(id("ALIPAY")));
        let summary: serde_json::Value = serde_json::from_str(&first.summary_json()).expect("JSON");
        assert_eq!(summary["sum_minor_by_currency"]["156"], 0);
        // An unbalanced window is refused.
        let mut broken = first.clone();
        broken.positions.get_mut(&id("ALIPAY")).and_then(|t| t.get_mut(&156)).expect("there").net_minor += 1;
        assert!(matches!(broken.check_balanced(), Err(ClearingError::Unbalanced { currency: 156, sum: 1, .. })));
    }
}
