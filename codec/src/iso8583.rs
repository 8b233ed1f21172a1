//! ISO 8583 (1987), driven by a field specification held as data.
//!
//! A [`Profile`] is one participant format: how the MTI, bitmaps, lengths and each field are
//! encoded, and which TCP length header frames a message. Profiles are JSON in the same
//! shape as `pyiso8583`'s specifications (`data_enc`, `len_enc`, `len_type`, `max_len`,
//! `len_count`, `left_pad`), plus a `content` class per field and a `_profile` header, so an
//! independent implementation reads the very same file. Two ship built in
//! (`codec/profiles/iso8583/`): `binary` and `ascii`.
//!
//! [`IsoMessage`] holds field values in one reusable buffer, in a canonical form whatever
//! the wire encoding: numeric fields as ASCII digits (BCD unpacked), text as its bytes,
//! binary fields as raw bytes. Unpacking into a reused message allocates nothing once the
//! buffer has grown.
//!
//! Invariants: every error names the field and the byte offset; nothing panics on any
//! input; a bitmap bit for a field the profile does not define, or whose bytes are missing,
//! is an error, never a guess. Field 2 (the payment code) is masked in `Debug`.

use std::fmt;

use serde::Deserialize;

/// The largest field number (with a secondary bitmap).
pub const FIELD_MAX: usize = 128;
/// The largest message body accepted, bytes (length headers allow up to 9999 / 65535).
pub const MESSAGE_SIZE_MAX: usize = 8192;

/// How a field's data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// ASCII text (`ans`: 0x20 to 0x7E).
    Ascii,
    /// UTF-8 text (pyiso8583's `data_enc: "utf-8"`); lengths count bytes.
    Utf8,
    /// GBK text (pyiso8583's `data_enc: "gbk"`, as Chinese hosts write names): held as
    /// UTF-8 in [`IsoMessage`], encoded on the wire; lengths count the wire's bytes. A
    /// character GBK cannot write, or bytes that are not GBK, are an error, never a `?`.
    Gbk,
    /// Digits packed two per byte, an odd count padded with a leading 0 nibble.
    Bcd,
    /// Raw bytes.
    Binary,
}

/// How a variable field's length prefix is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthEncoding {
    /// Decimal digits, one per prefix byte.
    Ascii,
    /// Decimal digits, two per prefix byte.
    Bcd,
    /// A big-endian binary integer.
    Binary,
}

/// What a field may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// `n`: digits.
    Numeric,
    /// `an`: letters and digits.
    Alphanumeric,
    /// `ans`: printable text (UTF-8 allowed; see the profile).
    Text,
    /// `b`: any bytes.
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub number: u8,
    pub description: String,
    pub content: Content,
    pub data: Data,
    /// Zero for a fixed-length field; else the length prefix's size in bytes.
    pub prefix_bytes: u8,
    pub prefix: LengthEncoding,
    /// Fixed length, or the maximum: in digits for BCD fields, else in bytes.
    pub length_max: u16,
}

impl FieldSpec {
    fn is_fixed(&self) -> bool {
        self.prefix_bytes == 0
    }

    /// A variable field's length against its maximum.
    fn check_length_max(&self, length: usize, offset: u32) -> Result<(), IsoError> {
        if length > usize::from(self.length_max) {
            return Err(IsoError::TooLong {
                field: self.number,
                offset,
                length: length as u32,
                max: u32::from(self.length_max),
            });
        }
        Ok(())
    }

    /// Wire bytes of `length` units of data.
    fn wire_bytes(&self, length: usize) -> usize {
        if self.data == Data::Bcd { length.div_ceil(2) } else { length }
    }
}

/// The TCP length header that frames each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthHeader {
    /// Two bytes, big-endian binary.
    Binary2,
    /// Four ASCII digits.
    Ascii4,
}

impl LengthHeader {
    pub fn size(self) -> usize {
        match self {
            Self::Binary2 => 2,
            Self::Ascii4 => 4,
        }
    }
}

/// One participant format.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub length_header: LengthHeader,
    /// MTI as 4 ASCII digits, or 2 BCD bytes.
    pub mti_bcd: bool,
    /// Bitmaps as 8 binary bytes, or 16 ASCII hex digits.
    pub bitmap_binary: bool,
    fields: Vec<Option<FieldSpec>>,
    /// Bit `n - 1` for each field `n` written in GBK.
    gbk_fields: u128,
}

/// Why a profile file could not be used. Names the profile and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {profile}: not valid JSON in pyiso8583's spec shape: {detail}")]
    Json { profile: String, detail: String },
    #[error("profile {profile}: key {key:?} {problem}")]
    Field { profile: String, key: String, problem: String },
}

#[derive(Deserialize)]
struct JsonField {
    data_enc: String,
    len_enc: String,
    len_type: u8,
    max_len: u16,
    desc: String,
    #[serde(default)]
    len_count: Option<String>,
    #[serde(default)]
    left_pad: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct JsonHeader {
    name: String,
    length_header: String,
}

impl Profile {
    /// The built-in profile `name` (`binary`, `ascii` or `binary-gbk`).
    pub fn builtin(name: &str) -> Option<Self> {
        let json = match name {
            "binary" => include_str!("../profiles/iso8583/binary.json"),
            "ascii" => include_str!("../profiles/iso8583/ascii.json"),
            "binary-gbk" => include_str!("../profiles/iso8583/binary-gbk.json"),
            _ => return None,
        };
        Some(Self::from_json(json).expect("built-in profiles are valid (tested)"))
    }

    /// The names of the built-in profiles.
    pub const BUILTIN: &'static [&'static str] = &["binary", "ascii", "binary-gbk"];

    /// Bit `n - 1` set for each field `n` this profile writes in GBK.
    pub fn gbk_fields(&self) -> u128 {
        self.gbk_fields
    }

    /// Reads a profile in pyiso8583's spec shape with our `_profile` header and `content`.
    pub fn from_json(json: &str) -> Result<Self, ProfileError> {
        let mut entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| ProfileError::Json { profile: "?".into(), detail: e.to_string() })?;
        let header: JsonHeader = entries
            .remove("_profile")
            .ok_or_else(|| ProfileError::Json { profile: "?".into(), detail: "no _profile header".into() })
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| ProfileError::Json { profile: "?".into(), detail: e.to_string() })
            })?;
        let profile = header.name.clone();
        let problem = |key: &str, problem: &str| ProfileError::Field {
            profile: profile.clone(),
            key: key.into(),
            problem: problem.into(),
        };
        let length_header = match header.length_header.as_str() {
            "binary2" => LengthHeader::Binary2,
            "ascii4" => LengthHeader::Ascii4,
            _ => return Err(problem("_profile.length_header", "must be \"binary2\" or \"ascii4\"")),
        };
        let mut mti_bcd = false;
        let mut bitmap_binary = None;
        let mut secondary_binary = None;
        let mut fields = vec![None; FIELD_MAX + 1];
        for (key, value) in entries {
            let field: JsonField = serde_json::from_value(value).map_err(|e| problem(&key, &e.to_string()))?;
            match key.as_str() {
                "h" => {
                    if field.max_len != 0 {
                        return Err(problem("h", "message headers are not supported; max_len must be 0"));
                    }
                }
                "t" => {
                    mti_bcd = match (field.data_enc.as_str(), field.max_len) {
                        ("b", 2) => true,
                        ("ascii", 4) => false,
                        _ => return Err(problem("t", "must be ascii with max_len 4, or b with max_len 2")),
                    }
                }
                "p" | "1" => {
                    let binary = match (field.data_enc.as_str(), field.max_len) {
                        ("b", 8) => true,
                        ("ascii", 16) => false,
                        _ => return Err(problem(&key, "must be ascii with max_len 16, or b with max_len 8")),
                    };
                    if key == "p" {
                        bitmap_binary = Some(binary);
                    } else {
                        secondary_binary = Some(binary);
                    }
                }
                _ => {
                    let number: u8 = key
                        .parse()
                        .ok()
                        .filter(|n| (2..=FIELD_MAX as u8).contains(n))
                        .ok_or_else(|| problem(&key, "is not a field number from 2 to 128"))?;
                    if number == 65 {
                        return Err(problem(&key, "field 65 is the tertiary bitmap, which is not supported"));
                    }
                    fields[usize::from(number)] = Some(field_spec(number, &field).map_err(|p| problem(&key, p))?);
                }
            }
        }
        let bitmap_binary = bitmap_binary.ok_or_else(|| problem("p", "the primary bitmap must be specified"))?;
        if secondary_binary.is_some_and(|binary| binary != bitmap_binary) {
            return Err(problem("1", "must be encoded like the primary bitmap"));
        }
        let gbk_fields = fields
            .iter()
            .flatten()
            .filter(|spec| spec.data == Data::Gbk)
            .fold(0, |bits, spec| bits | field_bit(usize::from(spec.number)));
        Ok(Self { name: header.name, length_header, mti_bcd, bitmap_binary, fields, gbk_fields })
    }

    pub fn field(&self, number: usize) -> Option<&FieldSpec> {
        self.fields.get(number).and_then(Option::as_ref)
    }

    /// Every defined field, in order.
    pub fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.iter().flatten()
    }
}

fn field_spec(number: u8, field: &JsonField) -> Result<FieldSpec, &'static str> {
    let content = match field.content.as_deref() {
        Some("n") => Content::Numeric,
        Some("an") => Content::Alphanumeric,
        Some("ans") | None => Content::Text,
        Some("b") => Content::Binary,
        Some(_) => return Err("content must be n, an, ans or b"),
    };
    let nibbles = field.len_count.as_deref() == Some("nibbles");
    let data = match (field.data_enc.as_str(), content, nibbles) {
        ("ascii" | "utf-8" | "gbk", Content::Binary, _) => return Err("binary content needs data_enc b"),
        ("ascii", _, false) => Data::Ascii,
        ("utf-8", Content::Text, false) => Data::Utf8,
        ("gbk", Content::Text, false) => Data::Gbk,
        ("b", Content::Numeric, true) => {
            if field.left_pad.as_deref() != Some("0") {
                return Err("BCD numeric fields need left_pad \"0\"");
            }
            Data::Bcd
        }
        ("b", Content::Binary, false) => Data::Binary,
        _ => return Err("unsupported data_enc/content/len_count combination"),
    };
    let prefix = match field.len_enc.as_str() {
        "ascii" => LengthEncoding::Ascii,
        "bcd" => LengthEncoding::Bcd,
        "b" => LengthEncoding::Binary,
        _ => return Err("len_enc must be ascii, bcd or b"),
    };
    if field.len_type > 4 {
        return Err("len_type must be 0 to 4");
    }
    let prefix_max: u64 = match (prefix, field.len_type) {
        (_, 0) => u64::MAX,
        (LengthEncoding::Ascii, n) => 10u64.pow(u32::from(n)) - 1,
        (LengthEncoding::Bcd, n) => 10u64.pow(2 * u32::from(n)) - 1,
        (LengthEncoding::Binary, n) => (1u64 << (8 * u32::from(n))) - 1,
    };
    if field.max_len == 0 || u64::from(field.max_len) > prefix_max {
        return Err("max_len must be at least 1 and fit its length prefix");
    }
    Ok(FieldSpec {
        number,
        description: field.desc.clone(),
        content,
        data,
        prefix_bytes: field.len_type,
        prefix,
        length_max: field.max_len,
    })
}

/// What is wrong with an ISO 8583 message. `offset` is in the message body (after the TCP
/// length header); `field` 0 means the MTI, 1 the bitmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    #[error("field {field} at offset {offset}: needs {need} more bytes, {have} remain")]
    Truncated { field: u8, offset: u32, need: u32, have: u32 },
    #[error("the MTI at offset {offset} is not 4 digits")]
    BadMti { offset: u32 },
    #[error("the bitmap at offset {offset} is not hexadecimal")]
    BadBitmap { offset: u32 },
    #[error("the bitmap announces field {field}, which profile {profile} does not define")]
    UndefinedField { field: u8, profile: &'static str },
    #[error("field {field} at offset {offset}: the length prefix is not a number")]
    BadLengthPrefix { field: u8, offset: u32 },
    #[error("field {field} at offset {offset}: length {length} exceeds its maximum {max}")]
    TooLong { field: u8, offset: u32, length: u32, max: u32 },
    #[error("field {field} at offset {offset}: a fixed field of {expected} must not be {length}")]
    WrongLength { field: u8, offset: u32, length: u32, expected: u32 },
    #[error("field {field} at offset {offset}: byte {index} is not allowed in its content class")]
    BadContent { field: u8, offset: u32, index: u32 },
    #[error("{count} bytes follow the last field at offset {offset}")]
    TrailingBytes { offset: u32, count: u32 },
    #[error("the message is {length} bytes, more than {MESSAGE_SIZE_MAX}")]
    MessageTooLarge { length: u32 },
    #[error("the length header is not {size} digits")]
    BadLengthHeader { size: u32 },
    #[error("field {field} cannot be set: numbers run from 2 to 128")]
    BadFieldNumber { field: u32 },
}

impl IsoError {
    pub fn field(&self) -> Option<u8> {
        match *self {
            Self::Truncated { field, .. }
            | Self::UndefinedField { field, .. }
            | Self::BadLengthPrefix { field, .. }
            | Self::TooLong { field, .. }
            | Self::WrongLength { field, .. }
            | Self::BadContent { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A message's MTI and field values, in one reusable buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IsoMessage {
    pub mti: [u8; 4],
    values: Vec<u8>,
    /// `(start, end)` in `values` per field; `end == 0` means absent.
    spans: Vec<(u32, u32)>,
    /// Bit `n - 1`: field `n` is GBK on the wire (its profile's), so fixed layouts inside it
    /// (DE43's name, city and country) count GBK bytes. Kept by `clear`.
    gbk_fields: u128,
}

impl IsoMessage {
    /// An empty message for `profile`'s participant: it knows which fields the profile
    /// writes in GBK.
    pub fn for_profile(profile: &Profile) -> Self {
        Self { gbk_fields: profile.gbk_fields(), ..Self::default() }
    }

    /// Whether field `field` is GBK on the wire (for this message's profile).
    pub fn is_gbk(&self, field: usize) -> bool {
        self.gbk_fields & field_bit(field) != 0
    }

    pub fn new(mti: &str) -> Result<Self, IsoError> {
        let mut message = Self { spans: vec![(0, 0); FIELD_MAX + 1], ..Self::default() };
        message.set_mti(mti)?;
        Ok(message)
    }

    pub fn set_mti(&mut self, mti: &str) -> Result<(), IsoError> {
        let bytes: [u8; 4] = mti.as_bytes().try_into().map_err(|_| IsoError::BadMti { offset: 0 })?;
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(IsoError::BadMti { offset: 0 });
        }
        self.mti = bytes;
        Ok(())
    }

    pub fn mti(&self) -> &str {
        std::str::from_utf8(&self.mti).unwrap_or("????")
    }

    /// Forgets every field, keeping the buffers.
    pub fn clear(&mut self) {
        self.values.clear();
        self.spans.clear();
        self.spans.resize(FIELD_MAX + 1, (0, 0));
    }

    /// Sets a field's canonical value (digits for numeric fields, raw bytes for binary).
    /// Content and length are checked against a profile when packing.
    pub fn set(&mut self, field: usize, value: &[u8]) -> Result<(), IsoError> {
        if !(2..=FIELD_MAX).contains(&field) || field == 65 {
            return Err(IsoError::BadFieldNumber { field: field as u32 });
        }
        if self.spans.len() != FIELD_MAX + 1 {
            self.spans.resize(FIELD_MAX + 1, (0, 0));
        }
        let start = self.values.len() as u32;
        self.values.extend_from_slice(value);
        // An empty value is stored as present: `end` is start + 0 + 1 shifted below.
        self.spans[field] = (start, self.values.len() as u32 + 1);
        Ok(())
    }

    pub fn set_str(&mut self, field: usize, value: &str) -> Result<(), IsoError> {
        self.set(field, value.as_bytes())
    }

    pub fn remove(&mut self, field: usize) {
        if let Some(span) = self.spans.get_mut(field) {
            *span = (0, 0);
        }
    }

    pub fn get(&self, field: usize) -> Option<&[u8]> {
        let &(start, end) = self.spans.get(field)?;
        (end != 0).then(|| &self.values[start as usize..end as usize - 1])
    }

    /// A text or numeric field as `&str` (`None` if absent or not UTF-8).
    pub fn get_str(&self, field: usize) -> Option<&str> {
        self.get(field).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Numbers of the present fields, ascending.
    pub fn present(&self) -> impl Iterator<Item = usize> + '_ {
        (2..=FIELD_MAX).filter(|&f| self.spans.get(f).is_some_and(|s| s.1 != 0))
    }
}

impl fmt::Debug for IsoMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&"mti", &self.mti());
        for field in self.present() {
            let value = self.get(field).unwrap_or_default();
            match (field, std::str::from_utf8(value)) {
                (2, Ok(text)) => map.entry(&field, &crate::field::masked(text)),
                (_, Ok(text)) => map.entry(&field, &text),
                (_, Err(_)) => map.entry(&field, &format_args!("<{} bytes>", value.len())),
            };
        }
        map.finish()
    }
}

/// Field `field`'s bit in a field mask (bit `n - 1` for field `n`; none outside 1..=128).
fn field_bit(field: usize) -> u128 {
    if (1..=FIELD_MAX).contains(&field) { 1u128 << (field - 1) } else { 0 }
}

/// `text` in GBK, or `None` if a character has no GBK form.
pub fn gbk_bytes(text: &str) -> Option<Vec<u8>> {
    let mut encoder = encoding_rs::GBK.new_encoder();
    let mut out = Vec::with_capacity(text.len());
    let capacity = encoder.max_buffer_length_from_utf8_without_replacement(text.len())?;
    out.resize(capacity, 0);
    let (result, _, written) = encoder.encode_from_utf8_without_replacement(text, &mut out, true);
    match result {
        encoding_rs::EncoderResult::InputEmpty => {
            out.truncate(written);
            Some(out)
        }
        _ => None,
    }
}

/// GBK bytes as text, or the index of the first byte that is not GBK.
fn gbk_text(raw: &[u8]) -> Result<String, u32> {
    let mut decoder = encoding_rs::GBK.new_decoder_without_bom_handling();
    let mut text = String::with_capacity(raw.len() * 3 / 2 + 4);
    let (result, read) = decoder.decode_to_string_without_replacement(raw, &mut text, true);
    match result {
        encoding_rs::DecoderResult::InputEmpty => Ok(text),
        encoding_rs::DecoderResult::Malformed(bad, after) => Err((read - usize::from(after) - usize::from(bad)) as u32),
        encoding_rs::DecoderResult::OutputFull => Err(read as u32),
    }
}

/// The index of the first byte `spec` does not allow in `value`, if any.
fn content_ok(spec: &FieldSpec, value: &[u8]) -> Option<usize> {
    match (spec.content, spec.data) {
        (Content::Numeric, _) => value.iter().position(|b| !b.is_ascii_digit()),
        (Content::Alphanumeric, _) => value.iter().position(|b| !b.is_ascii_alphanumeric()),
        (Content::Text, Data::Utf8 | Data::Gbk) if value.is_ascii() => {
            value.iter().position(|b| !(0x20..=0x7E).contains(b))
        }
        (Content::Text, Data::Utf8 | Data::Gbk) => match std::str::from_utf8(value) {
            Ok(text) => text.char_indices().find(|(_, c)| c.is_control()).map(|(i, _)| i),
            Err(error) => Some(error.valid_up_to()),
        },
        (Content::Text, _) => value.iter().position(|b| !(0x20..=0x7E).contains(b)),
        (Content::Binary, _) => None,
    }
}

/// Reads bytes at a cursor, naming the field on shortage.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, field: u8) -> Result<&'a [u8], IsoError> {
        let remaining = self.bytes.len() - self.position;
        if count > remaining {
            return Err(IsoError::Truncated {
                field,
                offset: self.position as u32,
                need: count as u32,
                have: remaining as u32,
            });
        }
        let slice = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(slice)
    }
}

fn unpack_bcd(packed: &[u8], digits: usize, out: &mut Vec<u8>) -> Option<()> {
    let mut bytes = packed;
    if digits % 2 == 1 {
        // An odd count carries a leading pad nibble, which must be 0.
        let (&first, rest) = bytes.split_first()?;
        if first > 9 {
            return None;
        }
        out.push(b'0' + first);
        bytes = rest;
    }
    out.reserve(bytes.len() * 2);
    for &byte in bytes {
        let (high, low) = (byte >> 4, byte & 0x0F);
        if high > 9 || low > 9 {
            return None;
        }
        out.extend_from_slice(&[b'0' + high, b'0' + low]);
    }
    Some(())
}

fn pack_bcd(digits: &[u8], out: &mut Vec<u8>) {
    let padded = digits.len() % 2;
    let mut iter = std::iter::repeat_n(b'0', padded).chain(digits.iter().copied());
    while let (Some(high), Some(low)) = (iter.next(), iter.next()) {
        out.push(((high - b'0') << 4) | (low - b'0'));
    }
}

impl Profile {
    fn profile_name(&self) -> &'static str {
        // Error values are Copy; the two built-in names cover every shipped profile.
        match self.name.as_str() {
            "binary" => "binary",
            "ascii" => "ascii",
            "binary-gbk" => "binary-gbk",
            _ => "custom",
        }
    }

    /// Unpacks one message body (without its TCP length header) into `message`.
    ///
    /// On an error, `message` holds what was read before it: the MTI (`"????"` when that
    /// could not be read) and every field before the one that failed, enough to answer
    /// the message when its DE11 was among them (`crate::iso_answer::refusal`).
    pub fn unpack(&self, bytes: &[u8], message: &mut IsoMessage) -> Result<(), IsoError> {
        message.clear();
        message.mti = *b"????";
        if bytes.len() > MESSAGE_SIZE_MAX {
            return Err(IsoError::MessageTooLarge { length: bytes.len() as u32 });
        }
        message.gbk_fields = self.gbk_fields;
        let mut reader = Reader { bytes, position: 0 };
        if self.mti_bcd {
            let raw = reader.take(2, 0)?;
            let mut digits = [0u8; 4];
            for (index, nibble) in raw.iter().flat_map(|b| [b >> 4, b & 0x0F]).enumerate() {
                if nibble > 9 {
                    return Err(IsoError::BadMti { offset: 0 });
                }
                digits[index] = b'0' + nibble;
            }
            message.mti = digits;
        } else {
            let raw = reader.take(4, 0)?;
            if !raw.iter().all(u8::is_ascii_digit) {
                return Err(IsoError::BadMti { offset: 0 });
            }
            message.mti.copy_from_slice(raw);
        }
        let mut bitmap = self.read_bitmap(&mut reader)?;
        if bitmap & (1 << 127) != 0 {
            bitmap |= self.read_bitmap(&mut reader)? >> 64;
        }
        for field in 2..=FIELD_MAX {
            if bitmap & (1u128 << (128 - field)) == 0 || field == 65 {
                continue;
            }
            let spec = self
                .field(field)
                .ok_or(IsoError::UndefinedField { field: field as u8, profile: self.profile_name() })?;
            self.unpack_field(spec, &mut reader, message)?;
        }
        if reader.position != bytes.len() {
            return Err(IsoError::TrailingBytes {
                offset: reader.position as u32,
                count: (bytes.len() - reader.position) as u32,
            });
        }
        Ok(())
    }

    /// Reads 64 bits of bitmap into the top of a u128.
    fn read_bitmap(&self, reader: &mut Reader<'_>) -> Result<u128, IsoError> {
        let offset = reader.position as u32;
        let raw: [u8; 8] = if self.bitmap_binary {
            reader.take(8, 1)?.try_into().expect("took 8 bytes")
        } else {
            let hex = reader.take(16, 1)?;
            let mut raw = [0u8; 8];
            for (index, pair) in hex.chunks_exact(2).enumerate() {
                let text = std::str::from_utf8(pair).map_err(|_| IsoError::BadBitmap { offset })?;
                raw[index] = u8::from_str_radix(text, 16).map_err(|_| IsoError::BadBitmap { offset })?;
            }
            raw
        };
        Ok(u128::from(u64::from_be_bytes(raw)) << 64)
    }

    fn unpack_field(
        &self,
        spec: &FieldSpec,
        reader: &mut Reader<'_>,
        message: &mut IsoMessage,
    ) -> Result<(), IsoError> {
        let field = spec.number;
        let offset = reader.position as u32;
        let length = if spec.is_fixed() {
            usize::from(spec.length_max)
        } else {
            let raw = reader.take(usize::from(spec.prefix_bytes), field)?;
            let bad = IsoError::BadLengthPrefix { field, offset };
            let length = match spec.prefix {
                LengthEncoding::Ascii => std::str::from_utf8(raw)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(bad)?
                    .parse()
                    .map_err(|_| bad)?,
                LengthEncoding::Bcd => {
                    let mut digits = Vec::with_capacity(raw.len() * 2);
                    unpack_bcd(raw, raw.len() * 2, &mut digits).ok_or(bad)?;
                    std::str::from_utf8(&digits).map_err(|_| bad)?.parse().map_err(|_| bad)?
                }
                LengthEncoding::Binary => raw.iter().fold(0usize, |n, &b| n << 8 | usize::from(b)),
            };
            spec.check_length_max(length, offset)?;
            length
        };
        let raw = reader.take(spec.wire_bytes(length), field)?;
        let start = message.values.len();
        match spec.data {
            Data::Bcd => {
                unpack_bcd(raw, length, &mut message.values).ok_or(IsoError::BadContent { field, offset, index: 0 })?
            }
            Data::Gbk => {
                // Control characters are single bytes below 0x20 (or 0x7F) in GBK too.
                if let Some(index) = raw.iter().position(|&b| b < 0x20 || b == 0x7F) {
                    return Err(IsoError::BadContent { field, offset, index: index as u32 });
                }
                let text = gbk_text(raw).map_err(|index| IsoError::BadContent { field, offset, index })?;
                message.values.extend_from_slice(text.as_bytes());
            }
            Data::Ascii | Data::Utf8 | Data::Binary => message.values.extend_from_slice(raw),
        }
        if let Some(index) = content_ok(spec, &message.values[start..]) {
            return Err(IsoError::BadContent { field, offset, index: index as u32 });
        }
        message.spans[usize::from(field)] = (start as u32, message.values.len() as u32 + 1);
        Ok(())
    }

    /// Packs `message` (body only, no length header), appending to `out`. On error `out`
    /// is left as it was.
    pub fn pack(&self, message: &IsoMessage, out: &mut Vec<u8>) -> Result<(), IsoError> {
        let start = out.len();
        let result = self.pack_inner(message, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn pack_inner(&self, message: &IsoMessage, out: &mut Vec<u8>) -> Result<(), IsoError> {
        if !message.mti.iter().all(u8::is_ascii_digit) {
            return Err(IsoError::BadMti { offset: 0 });
        }
        if self.mti_bcd {
            pack_bcd(&message.mti, out);
        } else {
            out.extend_from_slice(&message.mti);
        }
        let mut bitmap = 0u128;
        for field in message.present() {
            bitmap |= 1u128 << (128 - field);
        }
        if bitmap & ((1u128 << 64) - 1) != 0 {
            bitmap |= 1 << 127;
        }
        let words = if bitmap & (1 << 127) != 0 { 2 } else { 1 };
        for word in 0..words {
            let raw = ((bitmap >> (64 * (1 - word))) as u64).to_be_bytes();
            if self.bitmap_binary {
                out.extend_from_slice(&raw);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                for byte in raw {
                    out.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0F)]]);
                }
            }
        }
        for field in message.present() {
            let spec = self
                .field(field)
                .ok_or(IsoError::UndefinedField { field: field as u8, profile: self.profile_name() })?;
            let value = message.get(field).unwrap_or_default();
            self.pack_field(spec, value, out)?;
        }
        if out.len() > MESSAGE_SIZE_MAX {
            return Err(IsoError::MessageTooLarge { length: out.len() as u32 });
        }
        Ok(())
    }

    fn pack_field(&self, spec: &FieldSpec, value: &[u8], out: &mut Vec<u8>) -> Result<(), IsoError> {
        let field = spec.number;
        let offset = out.len() as u32;
        if let Some(index) = content_ok(spec, value) {
            return Err(IsoError::BadContent { field, offset, index: index as u32 });
        }
        let encoded;
        let value = match spec.data {
            Data::Gbk => {
                let text = std::str::from_utf8(value).map_err(|e| IsoError::BadContent {
                    field,
                    offset,
                    index: e.valid_up_to() as u32,
                })?;
                encoded = gbk_bytes(text).ok_or_else(|| {
                    // The first character GBK cannot write (its UTF-8 byte index).
                    let index = text.char_indices().find(|(_, c)| gbk_bytes(c.encode_utf8(&mut [0; 4])).is_none());
                    IsoError::BadContent { field, offset, index: index.map_or(0, |(i, _)| i as u32) }
                })?;
                &encoded[..]
            }
            _ => value,
        };
        let length = value.len();
        if spec.is_fixed() {
            if length != usize::from(spec.length_max) {
                return Err(IsoError::WrongLength {
                    field,
                    offset,
                    length: length as u32,
                    expected: u32::from(spec.length_max),
                });
            }
        } else {
            spec.check_length_max(length, offset)?;
            let width = usize::from(spec.prefix_bytes);
            // The length in decimal, right-aligned in 8 digits (max_len fits the prefix).
            let mut digits = [b'0'; 8];
            let mut rest = length;
            for slot in digits.iter_mut().rev() {
                *slot = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            match spec.prefix {
                LengthEncoding::Ascii => out.extend_from_slice(&digits[8 - width..]),
                LengthEncoding::Bcd => pack_bcd(&digits[8 - 2 * width..], out),
                LengthEncoding::Binary => out.extend_from_slice(&(length as u64).to_be_bytes()[8 - width..]),
            }
        }
        match spec.data {
            Data::Bcd => pack_bcd(value, out),
            Data::Ascii | Data::Utf8 | Data::Gbk | Data::Binary => out.extend_from_slice(value),
        }
        Ok(())
    }

    /// Frames a packed body with the profile's TCP length header.
    pub fn pack_frame(&self, message: &IsoMessage, out: &mut Vec<u8>) -> Result<(), IsoError> {
        let start = out.len();
        out.resize(start + self.length_header.size(), 0);
        self.pack(message, out).inspect_err(|_| out.truncate(start))?;
        let length = out.len() - start - self.length_header.size();
        match self.length_header {
            LengthHeader::Binary2 => out[start..start + 2].copy_from_slice(&(length as u16).to_be_bytes()),
            LengthHeader::Ascii4 => out[start..start + 4].copy_from_slice(format!("{length:04}").as_bytes()),
        }
        Ok(())
    }

    /// The body of the first whole message in a stream: `Ok(None)` if more bytes are
    /// needed, else the body's range in `bytes` (after the header).
    pub fn frame(&self, bytes: &[u8]) -> Result<Option<std::ops::Range<usize>>, IsoError> {
        let size = self.length_header.size();
        let Some(header) = bytes.get(..size) else { return Ok(None) };
        let length = match self.length_header {
            LengthHeader::Binary2 => usize::from(u16::from_be_bytes([header[0], header[1]])),
            LengthHeader::Ascii4 => std::str::from_utf8(header)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse().ok())
                .ok_or(IsoError::BadLengthHeader { size: 4 })?,
        };
        if length > MESSAGE_SIZE_MAX {
            return Err(IsoError::MessageTooLarge { length: length as u32 });
        }
        Ok((bytes.len() >= size + length).then_some(size..size + length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IsoMessage {
        let mut message = IsoMessage::new("0200").expect("valid");
        for (field, value) in [
            (2, "134567890123451234"),
            (3, "000000"),
            (4, "000000003800"),
            (7, "0216155930"),
            (11, "000042"),
            (12, "235930"),
            (13, "0216"),
            (18, "5814"),
            (22, "031"),
            (25, "00"),
            (32, "ACQ0001"),
            (37, "000000000042"),
            (41, "T0000042"),
            (42, "310115000123456"),
            (43, "JINGAN COFFEE            SHANGHAI     CN"),
            (49, "156"),
        ] {
            message.set_str(field, value).expect("valid field");
        }
        message.set(128, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("valid");
        message
    }

    #[test]
    fn builtin_profiles_load() {
        for name in Profile::BUILTIN {
            let profile = Profile::builtin(name).expect("built in");
            assert_eq!(profile.fields().count(), 22, "{name}");
        }
        assert!(Profile::builtin("nope").is_none());
    }

    #[test]
    fn both_profiles_round_trip() {
        let message = sample();
        for name in Profile::BUILTIN {
            let profile = Profile::builtin(name).expect("built in");
            let mut framed = Vec::new();
            profile.pack_frame(&message, &mut framed).expect("packs");
            let body = profile.frame(&framed).expect("valid header").expect("whole");
            let mut decoded = IsoMessage::default();
            profile.unpack(&framed[body], &mut decoded).expect("unpacks");
            assert_eq!(decoded.mti(), "0200");
            for field in message.present() {
                assert_eq!(decoded.get(field), message.get(field), "{name} field {field}");
            }
            assert_eq!(decoded.present().count(), message.present().count());
        }
    }

    #[test]
    fn binary_profile_layout() {
        let profile = Profile::builtin("binary").expect("built in");
        let mut message = IsoMessage::new("0800").expect("valid");
        message.set_str(7, "0216155930").expect("valid");
        message.set_str(11, "000001").expect("valid");
        message.set_str(70, "301").expect("valid");
        let mut framed = Vec::new();
        profile.pack_frame(&message, &mut framed).expect("packs");
        // 2-byte length (28: MTI 2, bitmaps 16, fields 5 + 3 + 2), MTI 08 00, bitmap with
        // bit 1 (secondary), 7 and 11, then 70.
        assert_eq!(hex(&framed[..4]), "001C0800");
        assert_eq!(hex(&framed[4..20]), "8220000000000000".to_owned() + "0400000000000000");
        assert_eq!(hex(&framed[20..]), "0216155930".to_owned() + "000001" + "0301");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02X}")).collect()
    }

    #[test]
    fn malformed_messages_name_field_and_offset() {
        let ascii = Profile::builtin("ascii").expect("built in");
        let mut out = Vec::new();
        ascii.pack(&sample(), &mut out).expect("packs");
        let mut message = IsoMessage::default();
        // Truncated: the bitmap announces fields whose bytes are missing.
        let error = ascii.unpack(&out[..out.len() - 3], &mut message).expect_err("truncated");
        assert!(matches!(error, IsoError::Truncated { field: 128, .. }), "{error}");
        // Non-digit in a numeric field (field 3 follows MTI 4 + bitmaps 32 + field 2 (2 + 18)).
        let mut bad = out.clone();
        bad[4 + 32 + 20 + 1] = b'X';
        assert_eq!(ascii.unpack(&bad, &mut message), Err(IsoError::BadContent { field: 3, offset: 56, index: 1 }));
        // LLVAR longer than its maximum: field 2's prefix says 99.
        let mut bad = out.clone();
        bad[36..38].copy_from_slice(b"99");
        assert_eq!(
            ascii.unpack(&bad, &mut message),
            Err(IsoError::TooLong { field: 2, offset: 36, length: 99, max: 32 })
        );
        let mut bad = out.clone();
        bad[36..38].copy_from_slice(b"9X");
        assert_eq!(ascii.unpack(&bad, &mut message), Err(IsoError::BadLengthPrefix { field: 2, offset: 36 }));
        // A bitmap bit for a field the profile does not define (field 5).
        let mut bad = out.clone();
        bad[5] = b'8';
        assert_eq!(ascii.unpack(&bad, &mut message), Err(IsoError::UndefinedField { field: 5, profile: "ascii" }));
        let mut bad = out.clone();
        bad[4] = b'G';
        assert_eq!(ascii.unpack(&bad, &mut message), Err(IsoError::BadBitmap { offset: 4 }));
        let mut bad = out.clone();
        bad[0] = b'A';
        assert_eq!(ascii.unpack(&bad, &mut message), Err(IsoError::BadMti { offset: 0 }));
        let mut long = out.clone();
        long.push(b'0');
        assert_eq!(
            ascii.unpack(&long, &mut message),
            Err(IsoError::TrailingBytes { offset: out.len() as u32, count: 1 })
        );
        // Packing checks too, and leaves the output as it was.
        let mut wrong = sample();
        wrong.set_str(3, "00000").expect("set");
        let mut out = b"keep".to_vec();
        assert!(matches!(ascii.pack(&wrong, &mut out), Err(IsoError::WrongLength { field: 3, .. })));
        assert_eq!(out, b"keep");
        assert_eq!(ascii.frame(b"12a4"), Err(IsoError::BadLengthHeader { size: 4 }));
        assert_eq!(ascii.frame(b"001"), Ok(None));
    }

    #[test]
    fn gbk_fields_carry_chinese_names_and_refuse_what_gbk_cannot_write() {
        let profile = Profile::builtin("binary-gbk").expect("built in");
        assert!(profile.gbk_fields() == 1 << 42, "only DE43");
        let mut message = IsoMessage::for_profile(&profile);
        message.set_mti("0200").expect("valid");
        message.set_str(3, "000000").expect("valid");
        // 25 GBK bytes of name (three characters, two bytes each, and 19 spaces), 13 of
        // city (two characters and 9 spaces), the country.
        let location = format!("全聚德{}北京{}CN", " ".repeat(19), " ".repeat(9));
        message.set_str(43, &location).expect("valid");
        let mut bytes = Vec::new();
        profile.pack(&message, &mut bytes).expect("packs");
        let wire = hex(&bytes);
        assert!(wire.contains("C8ABBEDBB5C2"), "全聚德 in GBK: {wire}");
        assert!(wire.contains("B1B1BEA9"), "北京 in GBK: {wire}");
        let mut back = IsoMessage::default();
        profile.unpack(&bytes, &mut back).expect("unpacks");
        assert_eq!(back.get_str(43), Some(location.as_str()));
        assert!(back.is_gbk(43) && !back.is_gbk(48));
        // A character GBK has no form for is refused, naming where: never a `?`.
        message.set_str(43, &format!("全聚德😀{}北京{}CN", " ".repeat(15), " ".repeat(9))).expect("valid");
        assert_eq!(
            profile.pack(&message, &mut Vec::new()),
            Err(IsoError::BadContent { field: 43, offset: 13, index: 9 })
        );
        // Bytes that are not GBK are refused with their index in the field.
        let at = bytes.windows(6).position(|w| w == [0xC8, 0xAB, 0xBE, 0xDB, 0xB5, 0xC2]).expect("name");
        let mut bad = bytes.clone();
        bad[at + 2] = 0xFF;
        assert!(matches!(profile.unpack(&bad, &mut back), Err(IsoError::BadContent { field: 43, index: 2, .. })));
        // The same 40 characters are too long for a fixed 40-byte GBK field.
        message.set_str(43, &format!("全聚德{}北京{}CN", " ".repeat(22), " ".repeat(9))).expect("valid");
        assert!(matches!(
            profile.pack(&message, &mut Vec::new()),
            Err(IsoError::WrongLength { field: 43, length: 43, .. })
        ));
    }

    #[test]
    fn debug_masks_the_payment_code() {
        let text = format!("{:?}", sample());
        assert!(text.contains("134567********1234") && !text.contains("134567890123451234"), "{text}");
    }

    #[test]
    fn profile_errors_name_the_key() {
        let bad = r#"{"_profile": {"name": "x", "length_header": "binary2"}, "2": {"data_enc": "b", "len_enc": "bcd", "len_type": 1, "max_len": 19, "desc": "PAN", "content": "n"}}"#;
        let error = Profile::from_json(bad).expect_err("no nibbles");
        assert!(error.to_string().contains("key \"2\""), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), binary in proptest::prelude::any::<bool>()) {
            let profile = Profile::builtin(if binary { "binary" } else { "ascii" }).expect("built in");
            let mut message = IsoMessage::default();
            let _ = profile.unpack(&bytes, &mut message);
            let _ = profile.frame(&bytes);
        }
    }
}
