//! Consumer payment codes (付款码): validation and the issuer table that routes them.
//!
//! A payment code is all digits; its leading digits name the issuer and each issuer issues
//! codes of known lengths (JR/T 0245). The table is data: shipped defaults below, replaced
//! from configuration. Lookup is longest-prefix over a digit trie, so a table of thousands
//! of prefixes (UnionPay BIN ranges) costs no more per lookup than one of three.
//!
//! Invariants: errors never carry the code itself (only its length and the offending
//! index), so they are safe to log; unknown prefix and wrong length are distinct errors.

use std::fmt;

use crate::field::InstitutionId;

/// The longest payment code accepted (the wire field holds 32 digits).
pub const PAYMENT_CODE_LENGTH_MAX: usize = 32;
/// The longest prefix an issuer table may hold.
pub const PREFIX_LENGTH_MAX: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PaymentCodeError {
    #[error("the payment code is empty")]
    Empty,
    #[error("the payment code has a non-digit at offset {offset}")]
    NotDigits { offset: u32 },
    #[error("the payment code has {length} digits, more than the {max} allowed")]
    TooLong { length: u32, max: u32 },
    #[error("no issuer serves this payment code's prefix")]
    UnknownPrefix,
    #[error("the payment code has {length} digits; {issuer} codes have {min} to {max}")]
    WrongLength { issuer: InstitutionId, length: u32, min: u8, max: u8 },
}

/// Why an issuer table could not be built. Names the entry (by position) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerTableError {
    #[error("entry {entry}: prefix {prefix:?} must be 1 to {PREFIX_LENGTH_MAX} digits")]
    BadPrefix { entry: usize, prefix: String },
    #[error(
        "entry {entry}: length range {min}..={max} must satisfy prefix length <= min <= max <= {PAYMENT_CODE_LENGTH_MAX}"
    )]
    BadLengths { entry: usize, min: u8, max: u8 },
    #[error("entry {entry}: prefix {prefix:?} is already in the table")]
    DuplicatePrefix { entry: usize, prefix: String },
}

/// One row of the issuer table: codes starting with `prefix`, of `length_min..=length_max`
/// digits, belong to `issuer`. Deserialises from configuration (TOML, JSON), e.g.
/// `{ prefix = "62", length_min = 19, length_max = 19, issuer = "UNIONPAY" }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPrefix {
    pub prefix: String,
    pub length_min: u8,
    pub length_max: u8,
    pub issuer: InstitutionId,
}

/// A digit trie node: children by digit, and the entry ending here, if any.
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    children: [u32; 10],
    entry: Option<u32>,
}

/// Longest-prefix issuer table.
#[derive(Debug, Clone)]
pub struct IssuerTable {
    entries: Vec<IssuerPrefix>,
    /// `nodes[0]` is the root; a child index of 0 means "none" (the root is nobody's child).
    nodes: Vec<Node>,
}

impl IssuerTable {
    /// Builds a table, checking every entry.
    pub fn new(entries: Vec<IssuerPrefix>) -> Result<Self, IssuerTableError> {
        let mut nodes = vec![Node::default()];
        for (index, entry) in entries.iter().enumerate() {
            let prefix = entry.prefix.as_bytes();
            if prefix.is_empty() || prefix.len() > PREFIX_LENGTH_MAX || !prefix.iter().all(u8::is_ascii_digit) {
                return Err(IssuerTableError::BadPrefix { entry: index, prefix: entry.prefix.clone() });
            }
            let (min, max) = (entry.length_min, entry.length_max);
            if usize::from(min) < prefix.len() || min > max || usize::from(max) > PAYMENT_CODE_LENGTH_MAX {
                return Err(IssuerTableError::BadLengths { entry: index, min, max });
            }
            let mut node = 0usize;
            for &digit in prefix {
                let slot = usize::from(digit - b'0');
                if nodes[node].children[slot] == 0 {
                    nodes.push(Node::default());
                    let child = u32::try_from(nodes.len() - 1).expect("trie fits u32");
                    nodes[node].children[slot] = child;
                }
                node = nodes[node].children[slot] as usize;
            }
            if nodes[node].entry.is_some() {
                return Err(IssuerTableError::DuplicatePrefix { entry: index, prefix: entry.prefix.clone() });
            }
            nodes[node].entry = Some(u32::try_from(index).expect("entries fit u32"));
        }
        Ok(Self { entries, nodes })
    }

    /// The shipped defaults: WeChat Pay 10-15 with 18 digits, Alipay 25-30 with 16 to 24
    /// digits, UnionPay 62 with 19 digits.
    pub fn china_default() -> Self {
        let row = |prefix: &str, length_min, length_max, issuer: &str| IssuerPrefix {
            prefix: prefix.to_string(),
            length_min,
            length_max,
            issuer: InstitutionId::new(issuer).expect("default issuer id is valid"),
        };
        let mut entries = Vec::new();
        for prefix in 10..=15 {
            entries.push(row(&prefix.to_string(), 18, 18, "WECHATPAY"));
        }
        for prefix in 25..=30 {
            entries.push(row(&prefix.to_string(), 16, 24, "ALIPAY"));
        }
        entries.push(row("62", 19, 19, "UNIONPAY"));
        Self::new(entries).expect("the default table is valid")
    }

    pub fn entries(&self) -> &[IssuerPrefix] {
        &self.entries
    }

    /// Validates `code` and finds its issuer by the longest matching prefix.
    pub fn lookup(&self, code: &str) -> Result<&IssuerPrefix, PaymentCodeError> {
        let digits = check_digits(code)?;
        let mut node = 0usize;
        let mut found = None;
        for &digit in digits.iter().take(PREFIX_LENGTH_MAX) {
            let child = self.nodes[node].children[usize::from(digit - b'0')];
            if child == 0 {
                break;
            }
            node = child as usize;
            if let Some(entry) = self.nodes[node].entry {
                found = Some(entry);
            }
        }
        let entry = &self.entries[found.ok_or(PaymentCodeError::UnknownPrefix)? as usize];
        let length = digits.len();
        if length < usize::from(entry.length_min) || length > usize::from(entry.length_max) {
            return Err(PaymentCodeError::WrongLength {
                issuer: entry.issuer,
                length: length as u32,
                min: entry.length_min,
                max: entry.length_max,
            });
        }
        Ok(entry)
    }
}

/// Checks that `code` is 1 to 32 ASCII digits.
pub fn check_digits(code: &str) -> Result<&[u8], PaymentCodeError> {
    let digits = code.as_bytes();
    if digits.is_empty() {
        return Err(PaymentCodeError::Empty);
    }
    if digits.len() > PAYMENT_CODE_LENGTH_MAX {
        return Err(PaymentCodeError::TooLong { length: digits.len() as u32, max: PAYMENT_CODE_LENGTH_MAX as u32 });
    }
    if let Some(offset) = digits.iter().position(|b| !b.is_ascii_digit()) {
        return Err(PaymentCodeError::NotDigits { offset: offset as u32 });
    }
    Ok(digits)
}

impl fmt::Display for IssuerPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}* ({}-{} digits) -> {}", self.prefix, self.length_min, self.length_max, self.issuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: &IssuerTable, code: &str, expected: Result<&str, PaymentCodeError>) {
        let got = table.lookup(code).map(|entry| entry.issuer.to_string());
        assert_eq!(got, expected.map(str::to_string), "{}", crate::field::masked(code));
    }

    #[test]
    fn default_table_routes_by_prefix_and_length() {
        let table = IssuerTable::china_default();
        check(&table, "134567890123451234", Ok("WECHATPAY"));
        check(&table, "104567890123451234", Ok("WECHATPAY"));
        check(&table, "2812345678901234", Ok("ALIPAY"));
        check(&table, "281234567890123456789012", Ok("ALIPAY"));
        check(&table, "6212345678901234567", Ok("UNIONPAY"));
        check(&table, "16456789012345123", Err(PaymentCodeError::UnknownPrefix));
        check(&table, "9", Err(PaymentCodeError::UnknownPrefix));
        let wechat = InstitutionId::new("WECHATPAY").expect("valid");
        check(
            &table,
            "1345678901234512345",
            Err(PaymentCodeError::WrongLength { issuer: wechat, length: 19, min: 18, max: 18 }),
        );
        check(&table, "", Err(PaymentCodeError::Empty));
        check(&table, "13456789a", Err(PaymentCodeError::NotDigits { offset: 8 }));
        check(&table, &"1".repeat(33), Err(PaymentCodeError::TooLong { length: 33, max: 32 }));
    }

    #[test]
    fn longest_prefix_wins() {
        let row = |prefix: &str, issuer: &str| IssuerPrefix {
            prefix: prefix.into(),
            length_min: 16,
            length_max: 19,
            issuer: InstitutionId::new(issuer).expect("valid"),
        };
        let table = IssuerTable::new(vec![row("62", "UNIONPAY"), row("622848", "ABCBANK")]).expect("valid");
        check(&table, "6228481234567890123", Ok("ABCBANK"));
        check(&table, "6228471234567890123", Ok("UNIONPAY"));
    }

    #[test]
    fn bad_tables_are_refused_with_the_entry() {
        let row = |prefix: &str, min, max| IssuerPrefix {
            prefix: prefix.into(),
            length_min: min,
            length_max: max,
            issuer: InstitutionId::new("X").expect("valid"),
        };
        assert!(matches!(IssuerTable::new(vec![row("6a", 16, 19)]), Err(IssuerTableError::BadPrefix { entry: 0, .. })));
        assert!(matches!(IssuerTable::new(vec![row("", 16, 19)]), Err(IssuerTableError::BadPrefix { .. })));
        assert!(matches!(IssuerTable::new(vec![row("62", 19, 16)]), Err(IssuerTableError::BadLengths { .. })));
        assert!(matches!(IssuerTable::new(vec![row("62", 16, 40)]), Err(IssuerTableError::BadLengths { .. })));
        assert!(matches!(
            IssuerTable::new(vec![row("62", 16, 19), row("62", 18, 19)]),
            Err(IssuerTableError::DuplicatePrefix { entry: 1, .. })
        ));
    }

    #[test]
    fn tables_load_from_configuration() {
        let rows: Vec<IssuerPrefix> = serde_json::from_str(
            r#"[{"prefix": "62", "length_min": 16, "length_max": 19, "issuer": "UNIONPAY"},
                {"prefix": "9", "length_min": 18, "length_max": 18, "issuer": "WAL0001"}]"#,
        )
        .expect("valid rows");
        let table = IssuerTable::new(rows).expect("valid table");
        check(&table, "912345678901234567", Ok("WAL0001"));
        let error = serde_json::from_str::<Vec<IssuerPrefix>>(
            r#"[{"prefix": "62", "length_min": 16, "length_max": 19, "issuer": "union pay"}]"#,
        )
        .expect_err("bad id");
        assert!(
            error.to_string().contains("InstitutionId \"union pay\" has a character outside its charset"),
            "{error}"
        );
    }

    #[test]
    fn errors_never_show_the_code() {
        let table = IssuerTable::china_default();
        let error = table.lookup("1345678901234512345").expect_err("wrong length");
        assert!(!error.to_string().contains("134567"), "{error}");
    }

    proptest::proptest! {
        /// Arbitrary text never panics; a found issuer's prefix and length rules hold.
        #[test]
        fn lookup_is_total(code in "[0-9]{0,34}|\\PC{0,20}") {
            let table = IssuerTable::china_default();
            if let Ok(entry) = table.lookup(&code) {
                proptest::prop_assert!(code.starts_with(&entry.prefix));
                proptest::prop_assert!((usize::from(entry.length_min)..=usize::from(entry.length_max)).contains(&code.len()));
            }
        }
    }
}
