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

use rkyv::Portable;

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
///
/// Runs on every field of every frame, so the common case (a valid field) takes a
/// branch-free path the compiler vectorises; only a failing field pays for the byte-by-byte
/// scan that names the offending index.
#[inline]
pub fn check_text(bytes: &[u8], charset: Charset, mandatory: bool) -> Result<usize, FieldProblem> {
    if let Some(length) = check_text_fast(bytes, charset)
        && !(mandatory && length == 0)
    {
        return Ok(length);
    }
    check_text_precise(bytes, charset, mandatory)
}

/// `Some(length)` when `bytes` is valid text of `charset` followed by zero padding.
/// Every field on the wire is a multiple of 8 bytes and at most 64 (asserted in
/// `message.rs`), so this works on `u64` words, eight bytes per step, without branches.
#[inline(always)]
fn check_text_fast(bytes: &[u8], charset: Charset) -> Option<usize> {
    if !bytes.len().is_multiple_of(8) || bytes.len() > 64 {
        return None;
    }
    let mut nonzero_mask = 0u64; // bit i set: byte i is not zero
    let mut non_ascii_mask = 0u64; // bit i set: byte i is 0x80 or above
    let mut bad = 0u64;
    for (index, chunk) in bytes.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        let nonzero = swar::nonzero(word);
        let ascii = !word & swar::HIGH;
        let allowed = match charset {
            Charset::Digits => swar::in_range(word, b'0', b'9'),
            Charset::UpperAlphanumeric => swar::in_range(word, b'0', b'9') | swar::in_range(word, b'A', b'Z'),
            Charset::PrintableAscii => swar::in_range(word, 0x21, 0x7E),
            Charset::AsciiText => swar::in_range(word, 0x20, 0x7E),
            // Bytes of 0x80 and above pass here and are checked as UTF-8 below.
            Charset::Utf8 => swar::in_range(word, 0x20, 0x7E) | !ascii & swar::HIGH,
        };
        bad |= nonzero & !allowed;
        nonzero_mask |= swar::gather_high_bits(nonzero) << (8 * index);
        non_ascii_mask |= swar::gather_high_bits(nonzero & !ascii) << (8 * index);
    }
    // The text is one run from the start, then zero padding: the non-zero bytes form a
    // prefix, so their mask is of the form 0b0..01..1.
    let contiguous = nonzero_mask & nonzero_mask.wrapping_add(1) == 0;
    if bad != 0 || !contiguous {
        return None;
    }
    let length = nonzero_mask.trailing_ones() as usize;
    if non_ascii_mask != 0 {
        // Only the span from the first to the last non-ASCII byte needs the UTF-8 walk:
        // ASCII around it is valid on its own, and a multi-byte sequence cut short by
        // ASCII ends inside the span, where the walk sees it.
        let first = non_ascii_mask.trailing_zeros() as usize;
        let last = 63 - non_ascii_mask.leading_zeros() as usize;
        if !is_utf8_text(&bytes[first..=last]) {
            return None;
        }
    }
    Some(length)
}

/// Whether `text` is well-formed UTF-8 without C1 control characters (U+0080..U+009F),
/// in one pass. Its ASCII bytes were already checked word-at-a-time; this walks the
/// multi-byte sequences (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
#[inline]
pub(crate) fn is_utf8_text(text: &[u8]) -> bool {
    let continuation = |b: u8| b & 0xC0 == 0x80;
    let mut index = 0;
    while index < text.len() {
        let lead = text[index];
        let width = match lead {
            0x00..=0x7F => {
                index += 1;
                continue;
            }
            // U+0080..U+009F are C1 controls: C2 80..C2 9F.
            0xC2 => 2 * usize::from(text.get(index + 1).is_some_and(|&b| (0xA0..=0xBF).contains(&b))),
            0xC3..=0xDF => 2 * usize::from(text.get(index + 1).copied().is_some_and(continuation)),
            0xE0..=0xEF => {
                let second_ok = match lead {
                    0xE0 => |b: u8| (0xA0..=0xBF).contains(&b),
                    0xED => |b: u8| (0x80..=0x9F).contains(&b),
                    _ => |b: u8| b & 0xC0 == 0x80,
                };
                let ok = text.get(index + 1).copied().is_some_and(second_ok)
                    && text.get(index + 2).copied().is_some_and(continuation);
                3 * usize::from(ok)
            }
            0xF0..=0xF4 => {
                let second_ok = match lead {
                    0xF0 => |b: u8| (0x90..=0xBF).contains(&b),
                    0xF4 => |b: u8| (0x80..=0x8F).contains(&b),
                    _ => |b: u8| b & 0xC0 == 0x80,
                };
                let ok = text.get(index + 1).copied().is_some_and(second_ok)
                    && text.get(index + 2).copied().is_some_and(continuation)
                    && text.get(index + 3).copied().is_some_and(continuation);
                4 * usize::from(ok)
            }
            _ => 0,
        };
        if width == 0 {
            return false;
        }
        index += width;
    }
    true
}

/// SIMD-within-a-register helpers over eight bytes at once. Results are "high-bit masks":
/// bit 7 of each byte set when the condition holds for that byte.
mod swar {
    pub const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = !HIGH;
    const ONES: u64 = 0x0101_0101_0101_0101;

    /// Bytes that are not zero. Exact (no carries between bytes: each byte's low seven
    /// bits plus 0x7F stays below 0x100).
    #[inline(always)]
    pub fn nonzero(word: u64) -> u64 {
        (((word & LOW7) + LOW7) | word) & HIGH
    }

    /// ASCII bytes (below 0x80) in `low..=high` (both below 0x80). Exact: with the high bit
    /// forced on, `byte - low` cannot borrow; `(high + 0x80) - (byte & 0x7F)` cannot either.
    #[inline(always)]
    pub fn in_range(word: u64, low: u8, high: u8) -> u64 {
        let at_least_low = (word | HIGH).wrapping_sub(ONES * u64::from(low));
        let at_most_high = (ONES * u64::from(high | 0x80)).wrapping_sub(word & LOW7);
        at_least_low & at_most_high & !word & HIGH
    }

    /// Packs the eight high bits of a high-bit mask into the low eight bits (byte i to bit i).
    #[inline(always)]
    pub fn gather_high_bits(mask: u64) -> u64 {
        ((mask >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
    }
}

/// The byte-by-byte check that names what is wrong and where.
fn check_text_precise(bytes: &[u8], charset: Charset, mandatory: bool) -> Result<usize, FieldProblem> {
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
    #[inline]
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

/// Implements rkyv's traits for a `repr(transparent)` byte-array newtype that is its own
/// archived form: serialising is one copy of the bytes (rkyv's derive would resolve the
/// array byte by byte, which perf showed as a tenth of encode time).
macro_rules! archive_as_copy {
    ($name:ty) => {
        // SAFETY: `$name` is `repr(transparent)` over `[u8; N]`: every byte is initialised
        // and there is no padding.
        unsafe impl rkyv::traits::NoUndef for $name {}

        impl rkyv::Archive for $name {
            type Archived = Self;
            type Resolver = ();

            #[inline]
            fn resolve(&self, _: (), out: rkyv::Place<Self>) {
                out.write(*self);
            }
        }

        impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for $name {
            #[inline]
            fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
                Ok(())
            }
        }

        impl<D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<$name, D> for $name {
            #[inline]
            fn deserialize(&self, _: &mut D) -> Result<$name, D::Error> {
                Ok(*self)
            }
        }
    };
}
pub(crate) use archive_as_copy;

/// Declares a fixed-width text field: one type that is both the model's and the archived
/// form (rkyv `as = Self`: serialising is a copy, reading is in place), its constructor,
/// and the shared check. The bytes are private, so an owned value is valid by construction;
/// values read from the wire are exposed only after [`crate::message::Validate`].
macro_rules! text_field {
    ($(#[$meta:meta])* $name:ident, $size:literal, $charset:expr, mandatory = $mandatory:literal) => {
        $(#[$meta])*
        /// Ordered by bytes: zero-padded text, so the same order as the text.
        #[derive(Portable, rkyv::bytecheck::CheckBytes, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[bytecheck(crate = rkyv::bytecheck)]
        #[rkyv(crate = rkyv)]
        #[repr(transparent)]
        pub struct $name([u8; $size]);

        archive_as_copy!($name);

        const _: () = assert!($size % 8 == 0 && $size <= 64, "text fields are whole words, at most 64 bytes");

        impl $name {
            /// Size on the wire, in bytes.
            pub const SIZE: usize = $size;
            /// The all-zero (empty) value.
            pub const EMPTY: Self = Self([0; $size]);

            /// Builds the field from text, checking length and charset.
            pub fn new(text: &str) -> Result<Self, FieldProblem> {
                fill_text::<$size>(text, $charset).map(Self)
            }

            /// The field exactly as received, not yet checked: for code that checks it at
            /// once (`FieldText::check`) before trusting it.
            #[allow(dead_code, reason = "generated for every field; salvage reads two of them")]
            pub(crate) fn from_wire(bytes: [u8; $size]) -> Self {
                Self(bytes)
            }

            /// The field's bytes as on the wire (text, then zero padding).
            pub fn as_bytes(&self) -> &[u8; $size] {
                &self.0
            }

            /// The field from stored bytes (text, then zero padding), checked as a field on
            /// the wire is (charset, padding; empty only where the field may be).
            pub fn from_bytes(bytes: [u8; $size]) -> Result<Self, FieldProblem> {
                check_text(&bytes, $charset, $mandatory).map(|_| Self(bytes))
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

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                // `Display` is the text, or the masked form for sensitive fields.
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                Self::new(&text).map_err(|problem| {
                    serde::de::Error::custom(format_args!("{} {text:?} {problem}", stringify!($name)))
                })
            }
        }

        impl std::str::FromStr for $name {
            type Err = FieldProblem;
            fn from_str(text: &str) -> Result<Self, FieldProblem> {
                Self::new(text)
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
    InstitutionId, 16, Charset::UpperAlphanumeric, mandatory = true
);
text_field!(
    /// An originator's own transaction id: printable ASCII without spaces, 1 to 32
    /// characters. Mandatory. Unique per originator (duplicates are refused).
    TransactionId, 32, Charset::PrintableAscii, mandatory = true
);
text_field!(
    /// A merchant id as the acquirer knows it (ISO 8583 DE42): printable ASCII, up to 16.
    MerchantId, 16, Charset::PrintableAscii, mandatory = false
);
text_field!(
    /// A terminal id (ISO 8583 DE41): printable ASCII, up to 8.
    TerminalId, 8, Charset::PrintableAscii, mandatory = false
);
text_field!(
    /// A merchant's name: UTF-8 in any script, up to 64 bytes, no control characters.
    MerchantName, 64, Charset::Utf8, mandatory = false
);
text_field!(
    /// A merchant's city: UTF-8 in any script, up to 32 bytes, no control characters.
    City, 32, Charset::Utf8, mandatory = false
);
text_field!(
    /// An authorisation code given by the issuer on approval (ISO 8583 DE38): `0-9A-Z`, up
    /// to 8 characters.
    AuthorizationCode, 8, Charset::UpperAlphanumeric, mandatory = false
);
text_field!(
    /// Human-readable detail in a reject: ASCII text with spaces, up to 56 bytes.
    RejectDetail, 56, Charset::AsciiText, mandatory = false
);
text_field!(
    /// A consumer's one-time payment code (付款码): digits only, 1 to 32. Mandatory.
    /// Sensitive: `Debug` and `Display` show at most the first 6 and last 4 digits.
    PaymentCode, 32, Charset::Digits, mandatory = true
);

plain_display!(
    InstitutionId,
    TransactionId,
    MerchantId,
    TerminalId,
    MerchantName,
    City,
    AuthorizationCode,
    RejectDetail
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
masked_display!(PaymentCode);

impl PaymentCode {
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The word-at-a-time fast path and the precise path agree on every input.
        #[test]
        fn fast_and_precise_checks_agree(bytes in proptest::collection::vec(
                                             proptest::prop_oneof![proptest::prelude::any::<u8>(), 0x1Fu8..0x80, b'0'..=b'9'], 0..80),
                                         zeros in 0usize..80, charset in 0usize..5) {
            let charset = [Charset::Digits, Charset::UpperAlphanumeric, Charset::PrintableAscii, Charset::AsciiText, Charset::Utf8][charset];
            let mut bytes = bytes;
            bytes.extend(std::iter::repeat_n(0, zeros));
            // Field sizes are multiples of 8 up to 64; the fast path declines the others.
            bytes.truncate(64);
            bytes.truncate(bytes.len() / 8 * 8);
            let fast = check_text_fast(&bytes, charset);
            let precise = check_text_precise(&bytes, charset, false);
            proptest::prop_assert_eq!(fast, precise.ok(), "{:?} {:?}", charset, bytes);
        }

        /// The one-pass UTF-8 check agrees with the standard library plus a C1 scan.
        #[test]
        fn utf8_check_agrees_with_std(bytes in proptest::collection::vec(
                                          proptest::prop_oneof![proptest::prelude::any::<u8>(), 0x80u8..0xC0, 0xC2u8..0xF5], 0..24)) {
            let expected = std::str::from_utf8(&bytes).is_ok_and(|t| !t.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)));
            proptest::prop_assert_eq!(is_utf8_text(&bytes), expected, "{:02X?}", bytes);
        }

        /// Valid UTF-8 text of any script is accepted by both paths.
        #[test]
        fn utf8_text_is_accepted(text in "\\PC{0,20}") {
            let mut bytes = text.as_bytes().to_vec();
            proptest::prop_assume!(bytes.len() <= 64);
            bytes.resize(64, 0);
            let has_control = text.chars().any(char::is_control);
            proptest::prop_assert_eq!(check_text_fast(&bytes, Charset::Utf8).is_some(), !has_control);
        }
    }

    #[test]
    fn utf8_edge_cases() {
        let cases: &[(&[u8], bool)] = &[
            (b"plain", true),
            ("静安".as_bytes(), true),
            ("😀".as_bytes(), true),
            (&[0xC2, 0x85], false),             // NEL, a C1 control
            (&[0xC2, 0xA0], true),              // no-break space
            (&[0xC0, 0x80], false),             // overlong
            (&[0xE0, 0x80, 0x80], false),       // overlong
            (&[0xED, 0xA0, 0x80], false),       // surrogate
            (&[0xF4, 0x90, 0x80, 0x80], false), // above U+10FFFF
            (&[0xF5, 0x80, 0x80, 0x80], false),
            (&[0xE4, 0xB8], false), // truncated
            (&[0x80], false),       // lone continuation
        ];
        for &(bytes, expected) in cases {
            assert_eq!(is_utf8_text(bytes), expected, "{bytes:02X?}");
        }
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
