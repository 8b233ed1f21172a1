//! Fixed-width field types of the message model.
//!
//! Every text field on the wire is a fixed-size byte array: the text left-aligned, the rest
//! filled with zero bytes. Fixed sizes keep every body a flat, fixed-layout record that a
//! Java or C client can produce from `PROTOCOL.md` alone, and that the switch reads in place.
//!
//! Each field type has one *charset* rule, checked by [`FieldText::check`] on encode and on
//! decode (never in between: a validated view is passed inward). The owned type and its rkyv
//! archived twin share that check, so they cannot disagree.
//!
//! Invariant: a [`PaymentCode`] never appears whole in `Debug` or `Display`; at most its first
//! six and last four digits are shown.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// What is wrong with one field of a body. Carried, with the field's name and offset, in
/// [`crate::DecodeError::InvalidField`] and [`crate::EncodeError::InvalidField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("is empty but is mandatory")]
    Empty,
    #[error("has a character outside its charset at byte {index}")]
    BadCharacter { index: u32 },
    #[error("is not valid UTF-8 at byte {index}")]
    BadUtf8 { index: u32 },
    #[error("has a non-zero byte after its zero padding at byte {index}")]
    PaddingNotZero { index: u32 },
    #[error("is longer than its {capacity}-byte capacity")]
    TooLong { capacity: u32 },
    #[error("holds {value}, which is not in its code table")]
    UnknownCode { value: u32 },
    #[error("is reserved and must be zero")]
    ReservedNotZero,
    #[error("is {value}, outside {min}..={max}")]
    OutOfRange { value: u64, min: u64, max: u64 },
}

/// The characters a fixed-width text field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `0-9` only.
    Digits,
    /// `0-9` and `A-Z`.
    UpperAlphanumeric,
    /// Printable ASCII, `0x21..=0x7E` (no spaces).
    PrintableAscii,
    /// Printable ASCII including space, `0x20..=0x7E`.
    AsciiText,
    /// UTF-8 in any script, without control characters.
    Utf8,
}

impl Charset {
    fn allows_ascii(self, byte: u8) -> bool {
        match self {
            Charset::Digits => byte.is_ascii_digit(),
            Charset::UpperAlphanumeric => byte.is_ascii_digit() || byte.is_ascii_uppercase(),
            Charset::PrintableAscii => (0x21..=0x7E).contains(&byte),
            Charset::AsciiText | Charset::Utf8 => (0x20..=0x7E).contains(&byte),
        }
    }
}

/// Checks a zero-padded text field: the text (up to the first zero byte) must be in
/// `charset`, everything after it zero, and the text non-empty if `mandatory`.
/// Returns the text's length in bytes.
pub fn check_text(bytes: &[u8], charset: Charset, mandatory: bool) -> Result<usize, FieldProblem> {
    let length = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let (text, padding) = bytes.split_at(length);
    if let Some(index) = padding.iter().position(|&b| b != 0) {
        return Err(FieldProblem::PaddingNotZero { index: index_u32(length + index) });
    }
    if mandatory && length == 0 {
        return Err(FieldProblem::Empty);
    }
    if charset == Charset::Utf8 && !text.is_ascii() {
        let text = std::str::from_utf8(text)
            .map_err(|error| FieldProblem::BadUtf8 { index: index_u32(error.valid_up_to()) })?;
        if let Some((index, _)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Err(FieldProblem::BadCharacter { index: index_u32(index) });
        }
        return Ok(length);
    }
    if let Some(index) = text.iter().position(|&b| !charset.allows_ascii(b)) {
        return Err(FieldProblem::BadCharacter { index: index_u32(index) });
    }
    Ok(length)
}

fn index_u32(index: usize) -> u32 {
    // Field sizes are at most 512 bytes (asserted where fields are declared).
    u32::try_from(index).expect("field index fits u32")
}

/// Fills a fixed-width field from `text`, zero-padding the rest. Checks the charset.
fn fill_text<const N: usize>(text: &str, charset: Charset) -> Result<[u8; N], FieldProblem> {
    if text.len() > N {
        return Err(FieldProblem::TooLong { capacity: index_u32(N) });
    }
    let mut bytes = [0u8; N];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    check_text(&bytes, charset, false)?;
    Ok(bytes)
}

/// The text of a field already checked to be in its charset (ASCII or UTF-8).
fn text_of(bytes: &[u8]) -> &str {
    let length = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    // Fields built through constructors or validated on decode are UTF-8; anything else is a
    // programmer error, shown rather than hidden.
    std::str::from_utf8(&bytes[..length]).unwrap_or("<invalid utf-8>")
}

/// A fixed-width text field type: its size, charset, and whether it may be empty.
pub trait FieldText {
    /// Name used in error messages and in `PROTOCOL.md`.
    const NAME: &'static str;
    const CHARSET: Charset;
    const MANDATORY: bool;
    fn bytes(&self) -> &[u8];

    /// The charset and padding check shared by encode and decode.
    fn check(&self) -> Result<(), FieldProblem> {
        check_text(self.bytes(), Self::CHARSET, Self::MANDATORY).map(|_| ())
    }

    /// The text without its padding.
    fn as_str(&self) -> &str {
        text_of(self.bytes())
    }

    fn is_empty(&self) -> bool {
        self.bytes().first().is_none_or(|&b| b == 0)
    }
}

/// Declares a fixed-width text field: the owned type, its archived twin, constructors,
/// `Debug`/`Display` and the shared check.
macro_rules! text_field {
    ($(#[$meta:meta])* $name:ident, $archived:ident, $size:literal, $charset:expr, mandatory = $mandatory:literal) => {
        $(#[$meta])*
        #[derive(Archive, Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
        #[rkyv(derive(PartialEq, Eq, Hash))]
        pub struct $name(pub [u8; $size]);

        impl $name {
            /// Size on the wire, in bytes.
            pub const SIZE: usize = $size;
            /// The all-zero (empty) value.
            pub const EMPTY: Self = Self([0; $size]);

            /// Builds the field from text, checking length and charset.
            pub fn new(text: &str) -> Result<Self, FieldProblem> {
                fill_text::<$size>(text, $charset).map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::EMPTY
            }
        }

        impl FieldText for $name {
            const NAME: &'static str = stringify!($name);
            const CHARSET: Charset = $charset;
            const MANDATORY: bool = $mandatory;
            fn bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl FieldText for $archived {
            const NAME: &'static str = stringify!($name);
            const CHARSET: Charset = $charset;
            const MANDATORY: bool = $mandatory;
            fn bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = FieldProblem;
            fn from_str(text: &str) -> Result<Self, FieldProblem> {
                Self::new(text)
            }
        }

        impl From<&$archived> for $name {
            fn from(archived: &$archived) -> Self {
                Self(archived.0)
            }
        }
    };
}

/// Declares `Debug` and `Display` as the plain text (for fields that are not sensitive).
macro_rules! plain_display {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

text_field!(
    /// An institution code (participant id): `0-9A-Z`, 1 to 16 characters. Mandatory.
    InstitutionId, ArchivedInstitutionId, 16, Charset::UpperAlphanumeric, mandatory = true
);
text_field!(
    /// An originator's own transaction id: printable ASCII without spaces, 1 to 32
    /// characters. Mandatory. Unique per originator (duplicates are refused).
    TransactionId, ArchivedTransactionId, 32, Charset::PrintableAscii, mandatory = true
);
text_field!(
    /// A merchant id as the acquirer knows it (ISO 8583 DE42): printable ASCII, up to 16.
    MerchantId, ArchivedMerchantId, 16, Charset::PrintableAscii, mandatory = false
);
text_field!(
    /// A terminal id (ISO 8583 DE41): printable ASCII, up to 8.
    TerminalId, ArchivedTerminalId, 8, Charset::PrintableAscii, mandatory = false
);
text_field!(
    /// A merchant's name: UTF-8 in any script, up to 64 bytes, no control characters.
    MerchantName, ArchivedMerchantName, 64, Charset::Utf8, mandatory = false
);
text_field!(
    /// A merchant's city: UTF-8 in any script, up to 32 bytes, no control characters.
    City, ArchivedCity, 32, Charset::Utf8, mandatory = false
);
text_field!(
    /// An authorisation code given by the issuer on approval (ISO 8583 DE38): `0-9A-Z`, up
    /// to 8 characters.
    AuthorizationCode, ArchivedAuthorizationCode, 8, Charset::UpperAlphanumeric, mandatory = false
);
text_field!(
    /// Human-readable detail in a reject: ASCII text with spaces, up to 56 bytes.
    RejectDetail, ArchivedRejectDetail, 56, Charset::AsciiText, mandatory = false
);
text_field!(
    /// A consumer's one-time payment code (付款码): digits only, 1 to 32. Mandatory.
    /// Sensitive: `Debug` and `Display` show at most the first 6 and last 4 digits.
    PaymentCode, ArchivedPaymentCode, 32, Charset::Digits, mandatory = true
);

plain_display!(
    InstitutionId,
    ArchivedInstitutionId,
    TransactionId,
    ArchivedTransactionId,
    MerchantId,
    ArchivedMerchantId,
    TerminalId,
    ArchivedTerminalId,
    MerchantName,
    ArchivedMerchantName,
    City,
    ArchivedCity,
    AuthorizationCode,
    ArchivedAuthorizationCode,
    RejectDetail,
    ArchivedRejectDetail
);

/// Writes `digits` masked: the first 6 and last 4 shown only when at least 6 digits stay
/// hidden, otherwise every digit hidden. Used for payment codes and account numbers.
pub fn write_masked(f: &mut impl fmt::Write, digits: &str) -> fmt::Result {
    const SHOWN_HEAD: usize = 6;
    const SHOWN_TAIL: usize = 4;
    const HIDDEN_MIN: usize = 6;
    let length = digits.len();
    if !digits.is_ascii() || length < SHOWN_HEAD + SHOWN_TAIL + HIDDEN_MIN {
        for _ in 0..length {
            f.write_char('*')?;
        }
        return Ok(());
    }
    f.write_str(&digits[..SHOWN_HEAD])?;
    for _ in SHOWN_HEAD..length - SHOWN_TAIL {
        f.write_char('*')?;
    }
    f.write_str(&digits[length - SHOWN_TAIL..])
}

/// A payment code masked for logs and errors, e.g. `134567********1234`.
pub fn masked(digits: &str) -> String {
    let mut text = String::with_capacity(digits.len());
    // Writing into a String cannot fail.
    let _ = write_masked(&mut text, digits);
    text
}

macro_rules! masked_display {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("PaymentCode(\"")?;
                write_masked(f, self.as_str())?;
                f.write_str("\")")
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_masked(f, self.as_str())
            }
        }
    )*};
}
masked_display!(PaymentCode, ArchivedPaymentCode);

impl PaymentCode {
    /// The whole code, for the router's prefix lookup. Never log this.
    pub fn digits(&self) -> &str {
        self.as_str()
    }
}

impl ArchivedPaymentCode {
    /// The whole code, for the router's prefix lookup. Never log this.
    pub fn digits(&self) -> &str {
        self.as_str()
    }
}

/// The switch reference: the id the switch gives each transaction. Replies are matched by
/// it, and its top bits name the node and shard that own the transaction, so a reply finds
/// its owner without a shared lookup.
///
/// ```text
///  63        56 55        48 47                                            0
/// +------------+------------+-----------------------------------------------+
/// |  node (8)  |  shard (8) |               sequence (48)                   |
/// +------------+------------+-----------------------------------------------+
/// ```
///
/// Zero means "none yet" (an originator's request before the switch assigned one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SwitchReference(pub u64);

impl SwitchReference {
    pub const NONE: Self = Self(0);
    pub const SEQUENCE_MAX: u64 = (1 << 48) - 1;

    /// Composes a reference. Panics on a sequence beyond 48 bits (a programmer error: the
    /// shard rolls its sequence over long before).
    pub fn new(node: u8, shard: u8, sequence: u64) -> Self {
        assert!(sequence <= Self::SEQUENCE_MAX, "switch reference sequence overflow");
        Self(u64::from(node) << 56 | u64::from(shard) << 48 | sequence)
    }

    pub fn node(self) -> u8 {
        (self.0 >> 56) as u8
    }

    pub fn shard(self) -> u8 {
        (self.0 >> 48) as u8
    }

    pub fn sequence(self) -> u64 {
        self.0 & Self::SEQUENCE_MAX
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for SwitchReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &[u8], charset: Charset, mandatory: bool, expected: Result<usize, FieldProblem>) {
        let mut bytes = [0u8; 16];
        bytes[..text.len()].copy_from_slice(text);
        assert_eq!(check_text(&bytes, charset, mandatory), expected, "{text:?}");
    }

    #[test]
    fn text_rules() {
        check(b"ALIPAY01", Charset::UpperAlphanumeric, true, Ok(8));
        check(b"", Charset::UpperAlphanumeric, true, Err(FieldProblem::Empty));
        check(b"", Charset::UpperAlphanumeric, false, Ok(0));
        check(b"ali", Charset::UpperAlphanumeric, true, Err(FieldProblem::BadCharacter { index: 0 }));
        check(b"12a4", Charset::Digits, true, Err(FieldProblem::BadCharacter { index: 2 }));
        check(b"AB\0C", Charset::UpperAlphanumeric, true, Err(FieldProblem::PaddingNotZero { index: 3 }));
        check(b"a b", Charset::PrintableAscii, true, Err(FieldProblem::BadCharacter { index: 1 }));
        check(b"a b", Charset::AsciiText, true, Ok(3));
        check("上海".as_bytes(), Charset::Utf8, true, Ok(6));
        check(&[0xE4, 0xB8], Charset::Utf8, true, Err(FieldProblem::BadUtf8 { index: 0 }));
        check(b"a\x07", Charset::Utf8, true, Err(FieldProblem::BadCharacter { index: 1 }));
        check("é\u{85}".as_bytes(), Charset::Utf8, true, Err(FieldProblem::BadCharacter { index: 2 }));
        check(&[0x7F], Charset::AsciiText, false, Err(FieldProblem::BadCharacter { index: 0 }));
        check(&[b'1'; 16], Charset::Digits, true, Ok(16));
    }

    #[test]
    fn constructors_check_length_and_charset() {
        assert_eq!(InstitutionId::new("WECHATPAY").map(|id| id.to_string()), Ok("WECHATPAY".into()));
        assert_eq!(InstitutionId::new("X".repeat(17).as_str()), Err(FieldProblem::TooLong { capacity: 16 }));
        assert!(MerchantName::new("星巴克 上海静安店").is_ok());
        assert!(PaymentCode::new("13456").is_ok());
        assert!(PaymentCode::new("1345a").is_err());
    }

    #[test]
    fn payment_codes_are_masked() {
        let code = PaymentCode::new("134567890123451234").expect("valid");
        assert_eq!(code.to_string(), "134567********1234");
        assert_eq!(format!("{code:?}"), "PaymentCode(\"134567********1234\")");
        assert_eq!(code.digits(), "134567890123451234");
        // Too short to show anything safely: every digit hidden.
        assert_eq!(PaymentCode::new("123456789012345").expect("valid").to_string(), "*".repeat(15));
        assert_eq!(masked("6212345678901234567"), "621234*********4567");
    }

    #[test]
    fn switch_reference_layout() {
        let reference = SwitchReference::new(3, 1, 42);
        assert_eq!(reference.0, 0x0301_0000_0000_002A);
        assert_eq!((reference.node(), reference.shard(), reference.sequence()), (3, 1, 42));
        assert_eq!(reference.to_string(), "030100000000002A");
    }
}
