//! EMVCo merchant-presented QR codes (主扫): parse, validate, generate; and UnionPay's
//! domestic URL form.
//!
//! The payload is a list of TLV data objects: a 2-digit tag, a 2-digit length, the value.
//! Lengths count characters (UTF-8 names in any script count one per character). Templates
//! nest one more list: 26-51 and 80-99 (a GUID in sub-tag 00 names the network), 62
//! (additional data; its sub-tags 50-99 are payment-system templates, one level further),
//! 64 (merchant name and city in another language). Tag 63 closes the payload with the
//! CRC-16/CCITT-FALSE of everything before its 4 hex digits, "6304" included.
//!
//! Parsing allocates nothing: [`MerchantQr`] keeps byte spans into the payload, and
//! templates (validated during the parse) are read lazily through [`Tlv`] iterators.
//!
//! Invariants: every error names the byte offset in the payload where the problem is; the
//! parser never reads past the payload and never panics on any input; the grammar nests at
//! most three levels (62 → 50-99 → primitives), so recursion is bounded by construction.

use std::fmt::Write as _;

/// EMVCo's maximum payload length, in characters.
pub const QR_LENGTH_MAX: usize = 512;

/// Tags EMVCo makes mandatory (beyond one merchant account, 02-51).
const MANDATORY_TAGS: [u8; 7] = [0, 52, 53, 58, 59, 60, 63];

/// National networks whose real codes leave out tags EMVCo makes mandatory, by the GUID in
/// their merchant account template, with the tags they may omit. A gateway must accept the
/// codes those networks really issue; every other payload is held to EMVCo.
pub const NATIONAL_DEVIATIONS: &[(&str, &[u8])] = &[
    // Thailand's PromptPay (credit transfer, bill payment, e-wallet): no MCC, name or city.
    ("A000000677010111", &[52, 59, 60]),
    ("A000000677010112", &[52, 59, 60]),
    ("A000000677010113", &[52, 59, 60]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("the QR payload is empty")]
    Empty,
    #[error("the QR payload has {length} characters, more than {QR_LENGTH_MAX}")]
    TooLong { length: u32 },
    #[error("a data object at offset {offset} is cut short (a tag and length need 4 characters)")]
    Truncated { offset: u32 },
    #[error("the tag at offset {offset} is not two digits")]
    BadTag { offset: u32 },
    #[error("the length of tag {tag:02} at offset {offset} is not two digits")]
    BadLength { offset: u32, tag: u8 },
    #[error("tag {tag:02} at offset {offset} declares {declared} characters but only {available} remain")]
    LengthOverrun { offset: u32, tag: u8, declared: u32, available: u32 },
    #[error("tag {tag:02} at offset {offset} appears twice")]
    DuplicateTag { offset: u32, tag: u8 },
    #[error("mandatory tag {tag:02} is missing{}", if *.offset > 0 { format!(" in the template at offset {}", .offset) } else { String::new() })]
    MissingTag { offset: u32, tag: u8 },
    #[error("the payload must start with tag 00 (payload format indicator); offset {offset}")]
    FormatIndicatorNotFirst { offset: u32 },
    #[error("tag 63 (CRC) must be the last data object, with length 04; offset {offset}")]
    CrcNotLast { offset: u32 },
    #[error("the CRC at offset {offset} is {declared:04X} but the payload's is {computed:04X}")]
    BadCrc { offset: u32, declared: u16, computed: u16 },
    #[error("tag {tag:02} at offset {offset} {problem}")]
    BadValue { offset: u32, tag: u8, problem: &'static str },
    #[error("not a UnionPay QR URL at offset {offset}: {problem}")]
    BadUrl { offset: u32, problem: &'static str },
}

impl QrError {
    /// Byte offset in the payload (0 for whole-payload problems).
    pub fn offset(&self) -> u32 {
        match *self {
            Self::Empty | Self::TooLong { .. } => 0,
            Self::Truncated { offset }
            | Self::BadTag { offset }
            | Self::BadLength { offset, .. }
            | Self::LengthOverrun { offset, .. }
            | Self::DuplicateTag { offset, .. }
            | Self::MissingTag { offset, .. }
            | Self::FormatIndicatorNotFirst { offset }
            | Self::CrcNotLast { offset }
            | Self::BadCrc { offset, .. }
            | Self::BadValue { offset, .. }
            | Self::BadUrl { offset, .. } => offset,
        }
    }
}

/// CRC-16/CCITT-FALSE (CRC-16/IBM-3740): poly 0x1021, init 0xFFFF, no reflection.
pub fn crc16(bytes: &[u8]) -> u16 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc16Ibm3740, bytes) as u16
}

/// One data object: its tag, value and the byte offset of its tag in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a str,
    pub offset: u32,
}

fn two_digits(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

/// Reads the data object at byte `position` of `list` (whose first byte is at payload
/// offset `base`). Returns it and the position after it.
fn next_tlv(list: &str, position: usize, base: usize, ascii: bool) -> Result<(Tlv<'_>, usize), QrError> {
    let offset = (base + position) as u32;
    let bytes = list.as_bytes();
    let Some(header) = bytes.get(position..position + 4) else {
        return Err(QrError::Truncated { offset });
    };
    let tag = two_digits(&header[..2]).ok_or(QrError::BadTag { offset })?;
    let declared = two_digits(&header[2..]).ok_or(QrError::BadLength { offset, tag })?;
    let start = position + 4;
    // The header is ASCII, so `start` is a char boundary.
    let rest = &list[start..];
    // `ascii` is known for the whole payload: checking the rest again at every object
    // would make parsing quadratic.
    let end = if ascii {
        Some(usize::from(declared)).filter(|&n| n <= rest.len())
    } else {
        rest.char_indices().map(|(i, _)| i).chain(std::iter::once(rest.len())).nth(usize::from(declared))
    };
    let Some(length) = end else {
        let available = rest.chars().count() as u32;
        return Err(QrError::LengthOverrun { offset, tag, declared: u32::from(declared), available });
    };
    Ok((Tlv { tag, value: &rest[..length], offset }, start + length))
}

/// Iterates over a list already validated by the parser (stops early on anything else).
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    list: &'a str,
    base: usize,
    position: usize,
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;
    fn next(&mut self) -> Option<Tlv<'a>> {
        if self.position >= self.list.len() {
            return None;
        }
        let (tlv, next) = next_tlv(self.list, self.position, self.base, self.list.is_ascii()).ok()?;
        self.position = next;
        Some(tlv)
    }
}

fn iter_list(list: &str, base: usize) -> TlvIter<'_> {
    TlvIter { list, base, position: 0 }
}

/// Parses a whole list, refusing duplicates, and calls `check` on each object.
fn check_list<'a>(
    list: &'a str,
    base: usize,
    mut check: impl FnMut(Tlv<'a>) -> Result<(), QrError>,
) -> Result<u128, QrError> {
    let mut seen = 0u128;
    let mut position = 0;
    let ascii = list.is_ascii();
    while position < list.len() {
        let (tlv, next) = next_tlv(list, position, base, ascii)?;
        if seen & (1 << tlv.tag) != 0 {
            return Err(QrError::DuplicateTag { offset: tlv.offset, tag: tlv.tag });
        }
        seen |= 1 << tlv.tag;
        check(tlv)?;
        position = next;
    }
    Ok(seen)
}

/// A merchant account information object (tags 02-51): a card network's primitive id
/// (02-25) or a template whose sub-tag 00 is the network's GUID (26-51).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MerchantAccount<'a> {
    pub tlv: Tlv<'a>,
}

impl<'a> MerchantAccount<'a> {
    pub fn is_template(&self) -> bool {
        (26..=51).contains(&self.tlv.tag)
    }

    /// The template's sub-objects (empty for a primitive account).
    pub fn fields(&self) -> TlvIter<'a> {
        let list = if self.is_template() { self.tlv.value } else { "" };
        iter_list(list, self.tlv.offset as usize + 4)
    }

    /// The network's GUID (sub-tag 00) of a template account.
    pub fn guid(&self) -> Option<&'a str> {
        self.field(0)
    }

    /// A sub-object by tag (sub-tag 01 usually carries the merchant's id at the network).
    pub fn field(&self, tag: u8) -> Option<&'a str> {
        self.fields().find(|f| f.tag == tag).map(|f| f.value)
    }
}

/// Static (reusable) or dynamic (one transaction) code, from tag 01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiation {
    Static,
    Dynamic,
}

/// Where a top-level value lies in the payload. Its tag is 4 bytes before `start`, so a
/// present value never starts at 0: `start == 0` means absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u16,
    end: u16,
}

impl Span {
    fn present(self) -> bool {
        self.start != 0
    }

    fn offset(self) -> u32 {
        u32::from(self.start) - 4
    }
}

/// A parsed, validated EMVCo merchant-presented payload, borrowing from it.
#[derive(Debug, Clone)]
pub struct MerchantQr<'a> {
    payload: &'a str,
    spans: [Span; 100],
    pub crc: u16,
}

impl<'a> MerchantQr<'a> {
    /// Parses and validates `payload`: structure, mandatory tags, value formats and CRC.
    pub fn parse(payload: &'a str) -> Result<Self, QrError> {
        if payload.is_empty() {
            return Err(QrError::Empty);
        }
        let characters = if payload.is_ascii() { payload.len() } else { payload.chars().count() };
        if characters > QR_LENGTH_MAX {
            return Err(QrError::TooLong { length: characters as u32 });
        }
        let mut spans = [Span::default(); 100];
        let mut first = true;
        let mut crc_seen_at = None;
        let seen = check_list(payload, 0, |tlv| {
            if first && tlv.tag != 0 {
                return Err(QrError::FormatIndicatorNotFirst { offset: tlv.offset });
            }
            first = false;
            if crc_seen_at.is_some() {
                return Err(QrError::CrcNotLast { offset: tlv.offset });
            }
            if tlv.tag == 63 {
                crc_seen_at = Some(tlv.offset);
            }
            check_top_level(tlv)?;
            let start = tlv.offset as usize + 4;
            // The payload is at most 512 characters (2 KiB of UTF-8), so offsets fit u16.
            spans[usize::from(tlv.tag)] = Span { start: start as u16, end: (start + tlv.value.len()) as u16 };
            Ok(())
        })?;
        if seen & (((1u128 << 52) - 1) & !0b11) == 0 {
            // No merchant account information (tags 02-51) at all.
            return Err(QrError::MissingTag { offset: 0, tag: 26 });
        }
        let parsed = Self { payload, spans, crc: 0 };
        let optional: &[u8] = NATIONAL_DEVIATIONS
            .iter()
            .find(|(guid, _)| parsed.guids().any(|g| g == *guid))
            .map_or(&[], |(_, tags)| tags);
        for tag in MANDATORY_TAGS {
            if seen & (1 << tag) == 0 && !optional.contains(&tag) {
                return Err(QrError::MissingTag { offset: 0, tag });
            }
        }
        let crc_offset = crc_seen_at.expect("tag 63 was seen") as usize;
        let crc_span = spans[63];
        let declared = u16::from_str_radix(&payload[usize::from(crc_span.start)..usize::from(crc_span.end)], 16)
            .map_err(|_| QrError::BadValue { offset: crc_offset as u32, tag: 63, problem: "is not 4 hex digits" })?;
        let computed = crc16(&payload.as_bytes()[..crc_offset + 4]);
        if declared != computed {
            return Err(QrError::BadCrc { offset: crc_offset as u32, declared, computed });
        }
        Ok(Self { crc: declared, ..parsed })
    }

    /// The whole payload.
    pub fn payload(&self) -> &'a str {
        self.payload
    }

    /// The value of top-level tag `tag`, if present.
    pub fn get(&self, tag: u8) -> Option<&'a str> {
        let span = self.spans.get(usize::from(tag)).filter(|s| s.present())?;
        self.payload.get(usize::from(span.start)..usize::from(span.end))
    }

    fn list(&self, tag: u8) -> TlvIter<'a> {
        let base = self.spans.get(usize::from(tag)).map_or(0, |s| usize::from(s.start));
        iter_list(self.get(tag).unwrap_or(""), base)
    }

    pub fn initiation(&self) -> Option<Initiation> {
        match self.get(1)? {
            "11" => Some(Initiation::Static),
            _ => Some(Initiation::Dynamic),
        }
    }

    /// Merchant account information objects, tags 02-51, in tag order.
    pub fn merchant_accounts(&self) -> impl Iterator<Item = MerchantAccount<'a>> + '_ {
        (2u8..=51).filter_map(move |tag| {
            let span = self.spans[usize::from(tag)];
            span.present().then(|| MerchantAccount {
                tlv: Tlv { tag, value: self.get(tag).unwrap_or(""), offset: span.offset() },
            })
        })
    }

    /// GUIDs of the template accounts (26-51): the networks that can take this payment.
    pub fn guids(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.merchant_accounts().filter_map(|account| account.guid())
    }

    pub fn merchant_category_code(&self) -> u16 {
        self.get(52).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// ISO 4217 numeric currency.
    pub fn currency(&self) -> u16 {
        self.get(53).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The amount as written (`"38.00"`), for dynamic codes or fixed-price static ones.
    pub fn amount(&self) -> Option<&'a str> {
        self.get(54)
    }

    /// The amount in minor units of the payload's currency, if an amount is present.
    pub fn amount_minor(&self) -> Option<Result<u64, AmountError>> {
        let amount = self.amount()?;
        Some(crate::currency::minor_units(amount, self.currency()))
    }

    /// ISO 3166-1 alpha-2 country code.
    pub fn country(&self) -> &'a str {
        self.get(58).unwrap_or("")
    }

    pub fn merchant_name(&self) -> &'a str {
        self.get(59).unwrap_or("")
    }

    pub fn merchant_city(&self) -> &'a str {
        self.get(60).unwrap_or("")
    }

    pub fn postal_code(&self) -> Option<&'a str> {
        self.get(61)
    }

    /// Additional data (tag 62) sub-objects: bill number 01, store label 03, terminal 07, ...
    pub fn additional_data(&self) -> TlvIter<'a> {
        self.list(62)
    }

    /// Merchant information in another language (tag 64): (language, name, city).
    pub fn alternate_language(&self) -> Option<(&'a str, &'a str, Option<&'a str>)> {
        self.get(64)?;
        let field = |tag| self.list(64).find(|f: &Tlv<'_>| f.tag == tag).map(|f| f.value);
        Some((field(0)?, field(1)?, field(2)))
    }

    /// Unreserved templates (80-99), each with its GUID in sub-tag 00.
    pub fn unreserved_templates(&self) -> impl Iterator<Item = MerchantAccount<'a>> + '_ {
        (80u8..=99).filter_map(move |tag| {
            let span = self.spans[usize::from(tag)];
            span.present().then(|| MerchantAccount {
                tlv: Tlv { tag, value: self.get(tag).unwrap_or(""), offset: span.offset() },
            })
        })
    }

    /// Every top-level data object, in tag order.
    pub fn objects(&self) -> impl Iterator<Item = Tlv<'a>> + '_ {
        (0u8..100).filter_map(move |tag| {
            let span = self.spans[usize::from(tag)];
            span.present().then(|| Tlv { tag, value: self.get(tag).unwrap_or(""), offset: span.offset() })
        })
    }
}

pub use crate::currency::AmountError;

fn bad(tlv: Tlv<'_>, problem: &'static str) -> QrError {
    QrError::BadValue { offset: tlv.offset, tag: tlv.tag, problem }
}

fn characters(value: &str) -> usize {
    if value.is_ascii() { value.len() } else { value.chars().count() }
}

/// Printable text without control characters (names may be in any script).
fn check_text(tlv: Tlv<'_>, length_max: usize) -> Result<(), QrError> {
    if tlv.value.is_empty() {
        return Err(bad(tlv, "is empty"));
    }
    if characters(tlv.value) > length_max {
        return Err(bad(tlv, "is longer than the EMV maximum"));
    }
    if tlv.value.chars().any(char::is_control) {
        return Err(bad(tlv, "contains a control character"));
    }
    Ok(())
}

fn check_digits(tlv: Tlv<'_>, length: usize) -> Result<(), QrError> {
    if tlv.value.len() != length || !tlv.value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(tlv, "has the wrong number of digits"));
    }
    Ok(())
}

/// A template whose sub-tag 00 (GUID) is mandatory: 26-51 and 80-99.
fn check_guid_template(tlv: Tlv<'_>) -> Result<(), QrError> {
    let base = tlv.offset as usize + 4;
    let seen = check_list(
        tlv.value,
        base,
        |field| {
            if field.tag == 0 { check_text(field, 32) } else { check_text(field, 99) }
        },
    )?;
    if seen & 1 == 0 {
        return Err(QrError::MissingTag { offset: tlv.offset, tag: 0 });
    }
    Ok(())
}

fn check_top_level(tlv: Tlv<'_>) -> Result<(), QrError> {
    match tlv.tag {
        0 if tlv.value != "01" => Err(bad(tlv, "(payload format indicator) must be \"01\"")),
        1 if tlv.value != "11" && tlv.value != "12" => Err(bad(tlv, "(point of initiation) must be 11 or 12")),
        2..=25 => check_text(tlv, 99),
        26..=51 | 80..=99 => check_guid_template(tlv),
        52 => check_digits(tlv, 4),
        53 => check_digits(tlv, 3),
        54 => {
            let value = tlv.value;
            let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            if value.is_empty() || value.len() > 13 || whole.is_empty() || !digits(whole) || !digits(fraction) {
                return Err(bad(tlv, "(amount) must be digits with an optional decimal point, at most 13"));
            }
            Ok(())
        }
        55 if !matches!(tlv.value, "01" | "02" | "03") => Err(bad(tlv, "(tip indicator) must be 01, 02 or 03")),
        58 if tlv.value.len() != 2 || !tlv.value.bytes().all(|b| b.is_ascii_uppercase()) => {
            Err(bad(tlv, "(country) must be two upper-case letters"))
        }
        59 => check_text(tlv, 25),
        60 => check_text(tlv, 15),
        61 => check_text(tlv, 10),
        62 => {
            let base = tlv.offset as usize + 4;
            check_list(tlv.value, base, |field| match field.tag {
                50..=99 => check_guid_template(field),
                _ => check_text(field, 99),
            })
            .map(|_| ())
        }
        63 if tlv.value.len() != 4 => Err(QrError::CrcNotLast { offset: tlv.offset }),
        64 => {
            let base = tlv.offset as usize + 4;
            let seen = check_list(tlv.value, base, |field| match field.tag {
                0 if field.value.len() == 2 && field.value.bytes().all(|b| b.is_ascii_lowercase()) => Ok(()),
                0 => Err(bad(field, "(language preference) must be an ISO 639 code like \"zh\"")),
                1 => check_text(field, 25),
                2 => check_text(field, 15),
                _ => check_text(field, 99),
            })?;
            for tag in [0, 1] {
                if seen & (1 << tag) == 0 {
                    return Err(QrError::MissingTag { offset: tlv.offset, tag });
                }
            }
            Ok(())
        }
        _ => check_text(tlv, 99),
    }
}

/// UnionPay's domestic QR form: `https://qr.95516.com/{8-digit institution code}/{voucher}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnionPayUrl<'a> {
    pub institution_code: &'a str,
    pub voucher: &'a str,
}

impl<'a> UnionPayUrl<'a> {
    pub const PREFIX: &'static str = "https://qr.95516.com/";
    /// Longest voucher accepted.
    pub const VOUCHER_LENGTH_MAX: usize = 64;

    pub fn parse(url: &'a str) -> Result<Self, QrError> {
        let Some(rest) = url.strip_prefix(Self::PREFIX) else {
            return Err(QrError::BadUrl { offset: 0, problem: "does not start with https://qr.95516.com/" });
        };
        let at = Self::PREFIX.len() as u32;
        let Some((institution_code, voucher)) = rest.split_once('/') else {
            return Err(QrError::BadUrl { offset: at, problem: "needs /{institution code}/{voucher}" });
        };
        if institution_code.len() != 8 || !institution_code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QrError::BadUrl { offset: at, problem: "the institution code must be 8 digits" });
        }
        let voucher_at = at + 9;
        if voucher.is_empty() || voucher.len() > Self::VOUCHER_LENGTH_MAX {
            return Err(QrError::BadUrl { offset: voucher_at, problem: "the voucher must be 1 to 64 characters" });
        }
        if let Some(index) = voucher.bytes().position(|b| !b.is_ascii_alphanumeric()) {
            return Err(QrError::BadUrl {
                offset: voucher_at + index as u32,
                problem: "the voucher must be letters and digits",
            });
        }
        Ok(Self { institution_code, voucher })
    }
}

/// Any merchant-presented code the switch accepts.
// The EMV variant holds 400 bytes of spans; it lives briefly on the stack while a request
// is translated, and boxing it would allocate per QR request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum MerchantCode<'a> {
    Emv(MerchantQr<'a>),
    UnionPayUrl(UnionPayUrl<'a>),
}

/// Parses an EMVCo payload or a UnionPay URL, told apart by their first characters.
pub fn parse_merchant_code(payload: &str) -> Result<MerchantCode<'_>, QrError> {
    if payload.starts_with("https://") || payload.starts_with("http://") {
        UnionPayUrl::parse(payload).map(MerchantCode::UnionPayUrl)
    } else {
        MerchantQr::parse(payload).map(MerchantCode::Emv)
    }
}

/// A merchant account template in a generated code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    /// 26 to 51.
    pub tag: u8,
    /// The network's GUID (sub-tag 00).
    pub guid: String,
    /// Further (sub-tag, value) pairs; sub-tag 01 usually carries the merchant's id.
    pub fields: Vec<(u8, String)>,
}

/// What a generated code contains. Values are written as given; [`QrSpec::encode`] checks
/// them by parsing its own output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrSpec {
    pub initiation: Initiation,
    /// Merchant account templates (tags 26-51).
    pub accounts: Vec<AccountSpec>,
    pub merchant_category_code: u16,
    pub currency: u16,
    /// Written as given, e.g. `"38.00"`.
    pub amount: Option<String>,
    pub country: String,
    pub merchant_name: String,
    pub merchant_city: String,
    pub postal_code: Option<String>,
    /// Additional data (tag 62): (sub-tag, value) pairs.
    pub additional_data: Vec<(u8, String)>,
    /// Tag 64: (language, name, city).
    pub alternate_language: Option<(String, String, Option<String>)>,
}

fn push_tlv(out: &mut String, tag: u8, value: &str) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{tag:02}{:02}{value}", characters(value));
}

impl QrSpec {
    /// Writes the payload with its CRC, then parses it back: what it returns is valid.
    pub fn encode(&self) -> Result<String, QrError> {
        let mut out = String::with_capacity(256);
        push_tlv(&mut out, 0, "01");
        push_tlv(&mut out, 1, if self.initiation == Initiation::Static { "11" } else { "12" });
        for account in &self.accounts {
            let mut template = String::new();
            push_tlv(&mut template, 0, &account.guid);
            for (sub, value) in &account.fields {
                push_tlv(&mut template, *sub, value);
            }
            push_tlv(&mut out, account.tag, &template);
        }
        push_tlv(&mut out, 52, &format!("{:04}", self.merchant_category_code));
        push_tlv(&mut out, 53, &format!("{:03}", self.currency));
        if let Some(amount) = &self.amount {
            push_tlv(&mut out, 54, amount);
        }
        push_tlv(&mut out, 58, &self.country);
        push_tlv(&mut out, 59, &self.merchant_name);
        push_tlv(&mut out, 60, &self.merchant_city);
        if let Some(postal) = &self.postal_code {
            push_tlv(&mut out, 61, postal);
        }
        if !self.additional_data.is_empty() {
            let mut template = String::new();
            for (sub, value) in &self.additional_data {
                push_tlv(&mut template, *sub, value);
            }
            push_tlv(&mut out, 62, &template);
        }
        if let Some((language, name, city)) = &self.alternate_language {
            let mut template = String::new();
            push_tlv(&mut template, 0, language);
            push_tlv(&mut template, 1, name);
            if let Some(city) = city {
                push_tlv(&mut template, 2, city);
            }
            push_tlv(&mut out, 64, &template);
        }
        out.push_str("6304");
        let crc = crc16(out.as_bytes());
        let _ = write!(out, "{crc:04X}");
        MerchantQr::parse(&out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_ccitt_false() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn sample_payload_parses() {
        let qr = MerchantQr::parse(crate::sample::SAMPLE_QR_PAYLOAD).expect("valid sample");
        assert_eq!(qr.guids().collect::<Vec<_>>(), vec!["A000000333010101"]);
        let account = qr.merchant_accounts().next().expect("one account");
        assert_eq!((account.tlv.tag, account.field(1)), (26, Some("310115000123456")));
        assert_eq!((qr.merchant_category_code(), qr.currency(), qr.country()), (5814, 156, "CN"));
        assert_eq!((qr.merchant_name(), qr.merchant_city()), ("JINGAN COFFEE", "SHANGHAI"));
        assert_eq!(qr.amount_minor(), Some(Ok(3800)));
        assert_eq!(qr.initiation(), Some(Initiation::Static));
    }

    #[test]
    fn generated_payloads_parse_back() {
        let payload = crate::sample::cross_border_qr_spec().encode().expect("valid spec");
        let qr = MerchantQr::parse(&payload).expect("parses");
        assert_eq!(qr.merchant_name(), "全聚德 QUANJUDE");
        assert_eq!(qr.alternate_language(), Some(("zh", "全聚德烤鸭店", Some("北京"))));
        assert_eq!(qr.amount_minor(), Some(Ok(12850)));
        assert_eq!(
            qr.additional_data().map(|f| (f.tag, f.value)).collect::<Vec<_>>(),
            vec![(1, "INV-2026-0001"), (7, "T0000042")]
        );
        // Lengths count characters: "全聚德 QUANJUDE" is 12 characters, 18 bytes.
        assert!(payload.contains("5912全聚德 QUANJUDE"));
    }

    fn expect_error(payload: &str, expected: QrError) {
        assert_eq!(MerchantQr::parse(payload).map(|_| ()), Err(expected), "{payload}");
    }

    /// Recomputes the CRC so a test reaches the check it aims at.
    fn resealed(body_without_crc: &str) -> String {
        let mut payload = format!("{body_without_crc}6304");
        let crc = crc16(payload.as_bytes());
        payload.push_str(&format!("{crc:04X}"));
        payload
    }

    #[test]
    fn malformed_payloads_name_the_problem_and_offset() {
        let good = crate::sample::SAMPLE_QR_PAYLOAD;
        let body = &good[..good.len() - 8];
        expect_error("", QrError::Empty);
        // Bad CRC.
        let mut bad_crc = good.to_string();
        bad_crc.replace_range(good.len() - 4.., "0000");
        expect_error(&bad_crc, QrError::BadCrc { offset: (good.len() - 8) as u32, declared: 0, computed: 0xB022 });
        // Truncated TLV: a dangling "59".
        expect_error(&format!("{body}59"), QrError::Truncated { offset: body.len() as u32 });
        // Length overrun: the last object claims more than remains.
        expect_error(
            &format!("{body}6010SHORT"),
            QrError::LengthOverrun { offset: body.len() as u32, tag: 60, declared: 10, available: 5 },
        );
        expect_error("0002010102", QrError::LengthOverrun { offset: 6, tag: 1, declared: 2, available: 0 });
        expect_error("00020101", QrError::Truncated { offset: 6 });
        expect_error("0a0201", QrError::BadTag { offset: 0 });
        expect_error("00a201", QrError::BadLength { offset: 0, tag: 0 });

        // Missing mandatory tag (60, city), CRC resealed.
        let without_city = body.replace("6008SHANGHAI", "");
        expect_error(&resealed(&without_city), QrError::MissingTag { offset: 0, tag: 60 });
        // Missing GUID in a merchant account template.
        let no_guid = body.replace("26390016A0000003330101010115310115000123456", "26190115310115000123456");
        expect_error(&resealed(&no_guid), QrError::MissingTag { offset: 12, tag: 0 });
        // Format indicator not first; CRC not last; duplicates.
        expect_error(&resealed(&body[6..]), QrError::FormatIndicatorNotFirst { offset: 0 });
        expect_error(&format!("{good}6502XX"), QrError::CrcNotLast { offset: good.len() as u32 });
        expect_error(&resealed(&format!("{body}5802CN")), QrError::DuplicateTag { offset: body.len() as u32, tag: 58 });
        // Bad values.
        expect_error(
            &resealed(&body.replace("52045814", "520458A4")),
            QrError::BadValue { offset: 55, tag: 52, problem: "has the wrong number of digits" },
        );
        expect_error(
            &resealed(&body.replace("5802CN", "5802cn")),
            QrError::BadValue { offset: 79, tag: 58, problem: "(country) must be two upper-case letters" },
        );
        assert!(matches!(
            MerchantQr::parse(&resealed(&body.replace("540538.00", "54053.8.0"))),
            Err(QrError::BadValue { tag: 54, .. })
        ));
        // Too long.
        assert_eq!(MerchantQr::parse(&"0".repeat(513)).map(|_| ()), Err(QrError::TooLong { length: 513 }));
    }

    #[test]
    fn promptpay_may_omit_mcc_name_and_city_and_no_one_else_may() {
        // As promptpay-qr (npm) generates it.
        let promptpay = "00020101021229370016A000000677010111011300668123456785802TH530376454044.2263045D49";
        let qr = MerchantQr::parse(promptpay).expect("PromptPay's real shape is accepted");
        assert_eq!((qr.currency(), qr.amount_minor(), qr.merchant_name()), (764, Some(Ok(422)), ""));
        let other = promptpay.replace("A000000677010111", "A000000677019999");
        assert_eq!(
            MerchantQr::parse(&resealed(&other[..other.len() - 8])).map(|_| ()),
            Err(QrError::MissingTag { offset: 0, tag: 52 })
        );
    }

    #[test]
    fn unionpay_urls() {
        let url = UnionPayUrl::parse("https://qr.95516.com/00010000/01116734166706163435931867051876").expect("valid");
        assert_eq!(url.institution_code, "00010000");
        assert!(matches!(
            parse_merchant_code("https://qr.95516.com/00010000/ABC123"),
            Ok(MerchantCode::UnionPayUrl(_))
        ));
        for (bad, offset) in [
            ("https://qr.example.com/00010000/ABC", 0),
            ("https://qr.95516.com/0001000/ABC", 21),
            ("https://qr.95516.com/00010000/", 30),
            ("https://qr.95516.com/00010000/AB-C", 32),
            ("https://qr.95516.com/00010000", 21),
        ] {
            assert_eq!(UnionPayUrl::parse(bad).map_err(|e| e.offset()), Err(offset), "{bad}");
        }
    }

    proptest::proptest! {
        /// Arbitrary text never panics, and every error's offset is inside the payload.
        #[test]
        fn arbitrary_payloads_never_panic(payload in "\\PC{0,80}|[0-9A-Z.]{0,120}") {
            if let Err(error) = MerchantQr::parse(&payload) {
                proptest::prop_assert!(error.offset() as usize <= payload.len());
            }
            let _ = parse_merchant_code(&payload);
        }

        /// Mutating one character of a valid payload never panics and is usually caught.
        #[test]
        fn mutated_payloads_never_panic(index in 0usize..122, replacement in proptest::char::any()) {
            let mut payload: Vec<char> = crate::sample::SAMPLE_QR_PAYLOAD.chars().collect();
            payload[index] = replacement;
            let payload: String = payload.into_iter().collect();
            if let Ok(qr) = MerchantQr::parse(&payload) {
                // Whatever still parses has a CRC that matches its own bytes.
                let crc_start = payload.len() - 4;
                proptest::prop_assert_eq!(crc16(&payload.as_bytes()[..crc_start]), qr.crc);
            }
        }
    }
}
