//! A window wholly in memory: its entries, sorted, and the positions they make. For tests,
//! property checks and small tools; a close writes its files through `files::Builder`,
//! which gives the same bytes in bounded memory (checked in `files`' tests).

use std::collections::BTreeMap;
use std::path::PathBuf;

use codec::InstitutionId;
use codec::field::FieldText;

use super::{CSV_HEADER, ClearingError, Entry, FeeSchedule, Positions, ShardEntries, Totals, concerns, csv_row};
use crate::core::record::Record;

/// A closed window: its entries (sorted) and every participant's totals per currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub window: u64,
    pub entries: Vec<Entry>,
    pub positions: BTreeMap<InstitutionId, BTreeMap<u16, Totals>>,
    /// Who collects the fees and takes the FX positions.
    pub operator: Option<InstitutionId>,
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
            let mut shard = ShardEntries::new(window, fees, usize::MAX);
            entries.extend((first..).zip(records).filter_map(|(sequence, record)| shard.add(sequence, *record)));
            shard.finish(PathBuf::from(format!("shard {index}")))?;
        }
        Self::from_entries(window, entries, fees)
    }

    /// Window `window` from its entries (of every shard, in any order).
    pub fn from_entries(window: u64, mut entries: Vec<Entry>, fees: &FeeSchedule) -> Result<Self, ClearingError> {
        entries.sort_by_key(Entry::order);
        let mut positions = Positions::new(window, fees);
        for entry in &entries {
            positions.add(entry)?;
        }
        positions.check_balanced()?;
        Ok(Self { window, entries, positions: positions.totals, operator: fees.operator() })
    }

    fn positions(&self) -> Positions {
        Positions {
            window: self.window,
            operator: self.operator,
            totals: self.positions.clone(),
            entries: self.entries.len() as u64,
        }
    }

    /// Every currency's positions sum to zero.
    pub fn check_balanced(&self) -> Result<(), ClearingError> {
        self.positions().check_balanced()
    }

    /// The reconciliation file of `participant`: every entry it is party to, once.
    pub fn csv(&self, participant: InstitutionId) -> String {
        let mut text = String::from(CSV_HEADER);
        for entry in self.entries.iter().filter(|e| concerns(e, participant, self.operator)) {
            csv_row(entry, participant, &mut text);
        }
        text
    }

    /// The summary of `participant`: totals per currency.
    pub fn participant_json(&self, participant: InstitutionId) -> String {
        self.positions().participant_json(participant)
    }

    /// The all-participant summary: every position, and each currency's sum (zero).
    pub fn summary_json(&self) -> String {
        self.positions().summary_json()
    }

    /// Every file a close writes for this window, by name, in the order `files::Builder`
    /// lists them.
    pub fn files(&self, fees: &FeeSchedule) -> Vec<(String, String)> {
        let mut files = vec![("fee_schedule.json".to_string(), fees.to_json())];
        for &participant in self.positions.keys() {
            files.push((format!("{}.csv", participant.as_str()), self.csv(participant)));
            files.push((format!("{}.json", participant.as_str()), self.participant_json(participant)));
        }
        files.push(("summary.json".to_string(), self.summary_json()));
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::clearing::{ClearingError, EntryKind};
    use codec::{AuthorizationCode, Conversion, PaymentCode, TransactionId};

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
