//! Journal records: the exchange's decisions, in the order it made them, and their byte
//! layout. Pure: encoding and decoding only; `crate::durability::journal` writes and reads the files.
//!
//! A record on disk:
//!
//! ```text
//! offset size field
//!      0    4 body length (bytes after the 24-byte header; a multiple of 8)
//!      4    4 CRC32C of bytes 8 .. end of body
//!      8    8 sequence (per shard, from 1, no gaps)
//!     16    1 kind
//!     17    7 reserved, zero
//!     24    . body (little-endian integers, fixed-width text fields as on the wire)
//! ```
//!
//! Invariant: `decode(encode(r)) == r` for every record, and any bit flipped in a record's
//! bytes makes `decode` fail (the CRC covers everything after itself; the length is checked
//! against the kind).
//!
//! With a [`CodeKey`], an `Admitted` record's payment code is stored encrypted (SM4 in
//! counter mode, the record's switch reference as the nonce, marked by code flag 2): the
//! journal then holds no payment code in clear. The CRC covers the stored bytes, so
//! integrity checks need no key; reading the code back does.
//!
//! The copies a node publishes to its fleet (`crate::settlement::fleet`) withhold the code (flag 3,
//! zero bytes): clearing needs only to know one was presented. Only
//! [`Record::decode_published`] accepts such a record, and it accepts no other code.

use codec::{AuthorizationCode, Conversion, InstitutionId, PaymentCode, TransactionId};

use crate::participant::Onboarding;

pub const HEADER_SIZE: usize = 24;
/// The largest record (an `Admitted`).
pub const RECORD_SIZE_MAX: usize = HEADER_SIZE + ADMITTED_BODY;

const ADMITTED_BODY: usize = 136;
const ANSWERED_BODY: usize = 32;
const TIMED_OUT_BODY: usize = 16;
const REVERSAL_STARTED_BODY: usize = 32;
const REVERSAL_ACKNOWLEDGED_BODY: usize = 16;
const WINDOW_CUT_BODY: usize = 16;
const ONBOARDING_BODY: usize = 32;
const CONVERTED_BODY: usize = 32;
const CHECKPOINT_BODY: usize = 32;

/// The key that encrypts payment codes at rest (16 bytes, SM4). Never printed.
#[derive(Clone)]
pub struct CodeKey {
    cipher: sm4::Sm4,
}

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(..)")
    }
}

impl CodeKey {
    pub fn new(key: [u8; 16]) -> Self {
        use sm4::cipher::KeyInit;
        Self { cipher: sm4::Sm4::new(&key.into()) }
    }

    /// Encrypts or decrypts (the same XOR) the 32 code bytes of the record `reference`:
    /// keystream block `i` is SM4(reference LE | 0u32 | i LE u32). A reference names one
    /// `Admitted` record, so no keystream is used twice under one key.
    fn apply(&self, reference: u64, bytes: &mut [u8; 32]) {
        use sm4::cipher::BlockCipherEncrypt;
        for (index, chunk) in bytes.chunks_exact_mut(16).enumerate() {
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(&reference.to_le_bytes());
            block[12..].copy_from_slice(&(index as u32).to_le_bytes());
            let mut block = block.into();
            self.cipher.encrypt_block(&mut block);
            chunk.iter_mut().zip(block.iter()).for_each(|(byte, key)| *byte ^= key);
        }
    }
}

/// An `Admitted` record's code flag: no code, the code in clear, the code encrypted.
const CODE_NONE: u8 = 0;
const CODE_PLAIN: u8 = 1;
const CODE_SEALED: u8 = 2;
const CODE_WITHHELD: u8 = 3;

/// How an `Admitted` record's payment code is stored.
#[derive(Clone, Copy)]
enum Codes<'a> {
    /// In clear, or encrypted with the key when there is one (the journal).
    Journal(Option<&'a CodeKey>),
    /// Not at all: only the fact that one was presented (published copies).
    Withheld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A request passed every check and is forwarded under `reference`. A refund names
    /// the payment it refunds (`refund_of`, else zero).
    Admitted {
        reference: u64,
        time_ms: i64,
        originator: InstitutionId,
        receiver: InstitutionId,
        id: TransactionId,
        amount_minor: u64,
        currency: u16,
        refund_of: u64,
        payment_code: Option<PaymentCode>,
    },
    /// The receiver's answer, forwarded to the originator.
    Answered { reference: u64, time_ms: i64, code: u16, authorization_code: AuthorizationCode },
    /// The switch answered the originator `Timeout` (deadline passed, or the originator
    /// cancelled); a reversal follows.
    TimedOut { reference: u64, time_ms: i64 },
    /// A reversal (`reversal`, its own reference) of `original` was started.
    ReversalStarted { reversal: u64, original: u64, reason: u16, time_ms: i64 },
    /// The receiver acknowledged reversal `reversal`.
    ReversalAcknowledged { reversal: u64, time_ms: i64 },
    /// Clearing window `window` closes here: what this shard decided before belongs to
    /// it, what comes after to the next (written to every shard's journal).
    WindowCut { window: u64, time_ms: i64 },
    /// An operator moved `participant` from `previous` to `state` (written to every shard's
    /// journal, in order with the decisions around it).
    Onboarding { participant: InstitutionId, state: Onboarding, previous: Onboarding, time_ms: i64 },
    /// Transaction `reference` (admitted by the record just before) is converted into its
    /// payer's settlement currency: what the payer pays, or on a refund gets back.
    Converted { reference: u64, conversion: Conversion },
    /// Written right after window `window`'s cut, at journal sequence `sequence` (the
    /// exchange's count, checked by the journal when it writes it): the oldest record the
    /// exchange still needed then (`low_water`: the `Admitted` of the oldest transaction it
    /// remembered or had in flight, else this record) and the last switch reference it had
    /// drawn. What retention may remove, and what a replay from `low_water` on must restore
    /// (`crate::durability::journal::remove_before`).
    Checkpoint { window: u64, sequence: u64, low_water: u64, reference_sequence: u64 },
    /// A restart point, written every so many records between cuts: what a `Checkpoint`
    /// says for a restart (the oldest record the exchange still needed, the last reference
    /// drawn, the last window cut), followed like a checkpoint by the onboarding changes in
    /// force. A restart replays from the latest one's `low_water` (`journal::head`), not
    /// from the journal's start. Clearing and retention do not use it: it is no cut.
    Restart { window: u64, sequence: u64, low_water: u64, reference_sequence: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("incomplete record: {available} bytes where at least {needed} are needed")]
    Incomplete { needed: usize, available: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("body length {length} does not match kind {kind}")]
    Length { kind: u8, length: usize },
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("field {0} is invalid")]
    Field(&'static str),
    #[error("the payment code is encrypted and no journal code key was given")]
    Sealed,
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Self::Admitted { .. } => 1,
            Self::Answered { .. } => 2,
            Self::TimedOut { .. } => 3,
            Self::ReversalStarted { .. } => 4,
            Self::ReversalAcknowledged { .. } => 5,
            Self::WindowCut { .. } => 6,
            Self::Onboarding { .. } => 7,
            Self::Converted { .. } => 8,
            Self::Checkpoint { .. } => 9,
            Self::Restart { .. } => 10,
        }
    }

    /// Appends this record with sequence `sequence` to `out`; with `key`, a payment code
    /// is stored encrypted.
    pub fn encode(&self, sequence: u64, key: Option<&CodeKey>, out: &mut Vec<u8>) {
        self.encode_with(sequence, Codes::Journal(key), out);
    }

    /// Appends this record as a node publishes it: a payment code withheld.
    pub fn encode_published(&self, sequence: u64, out: &mut Vec<u8>) {
        self.encode_with(sequence, Codes::Withheld, out);
    }

    fn encode_with(&self, sequence: u64, codes: Codes<'_>, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_SIZE]);
        match *self {
            Self::Admitted {
                reference,
                time_ms,
                originator,
                receiver,
                id,
                amount_minor,
                currency,
                refund_of,
                payment_code,
            } => {
                out.extend_from_slice(&reference.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(&amount_minor.to_le_bytes());
                out.extend_from_slice(&refund_of.to_le_bytes());
                out.extend_from_slice(&currency.to_le_bytes());
                let flag = match (payment_code, codes) {
                    (None, _) => CODE_NONE,
                    (Some(_), Codes::Withheld) => CODE_WITHHELD,
                    (Some(_), Codes::Journal(None)) => CODE_PLAIN,
                    (Some(_), Codes::Journal(Some(_))) => CODE_SEALED,
                };
                out.push(flag);
                out.extend_from_slice(&[0; 5]);
                out.extend_from_slice(originator.as_bytes());
                out.extend_from_slice(receiver.as_bytes());
                out.extend_from_slice(id.as_bytes());
                let mut code = [0u8; 32];
                match (codes, flag) {
                    (_, CODE_NONE | CODE_WITHHELD) => {}
                    (Codes::Journal(key), _) => {
                        code.copy_from_slice(payment_code.unwrap_or_default().as_bytes());
                        if let Some(key) = key {
                            key.apply(reference, &mut code);
                        }
                    }
                    (Codes::Withheld, _) => unreachable!("withheld codes have their own flag"),
                }
                out.extend_from_slice(&code);
            }
            Self::Answered { reference, time_ms, code, authorization_code } => {
                out.extend_from_slice(&reference.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(&[0; 6]);
                out.extend_from_slice(authorization_code.as_bytes());
            }
            Self::TimedOut { reference, time_ms } => {
                out.extend_from_slice(&reference.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
            }
            Self::ReversalStarted { reversal, original, reason, time_ms } => {
                out.extend_from_slice(&reversal.to_le_bytes());
                out.extend_from_slice(&original.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(&reason.to_le_bytes());
                out.extend_from_slice(&[0; 6]);
            }
            Self::ReversalAcknowledged { reversal, time_ms } => {
                out.extend_from_slice(&reversal.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
            }
            Self::WindowCut { window, time_ms } => {
                out.extend_from_slice(&window.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
            }
            Self::Onboarding { participant, state, previous, time_ms } => {
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.push(state.code());
                out.push(previous.code());
                out.extend_from_slice(&[0; 6]);
                out.extend_from_slice(participant.as_bytes());
            }
            Self::Converted { reference, conversion } => {
                out.extend_from_slice(&reference.to_le_bytes());
                out.extend_from_slice(&conversion.payer_amount_minor.to_le_bytes());
                out.extend_from_slice(&conversion.rate.to_le_bytes());
                out.extend_from_slice(&conversion.rate_version.to_le_bytes());
                out.extend_from_slice(&conversion.payer_currency.to_le_bytes());
                out.extend_from_slice(&conversion.margin_basis_points.to_le_bytes());
            }
            Self::Checkpoint { window, sequence, low_water, reference_sequence }
            | Self::Restart { window, sequence, low_water, reference_sequence } => {
                for value in [window, sequence, low_water, reference_sequence] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
        let body = (out.len() - start - HEADER_SIZE) as u32;
        let header = &mut out[start..start + HEADER_SIZE];
        header[0..4].copy_from_slice(&body.to_le_bytes());
        header[8..16].copy_from_slice(&sequence.to_le_bytes());
        header[16] = self.kind();
        let crc = crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the record at the start of `bytes`: the record, its sequence and its size.
    /// An encrypted payment code needs `key` ([`RecordError::Sealed`] without it).
    pub fn decode(bytes: &[u8], key: Option<&CodeKey>) -> Result<(Record, u64, usize), RecordError> {
        Self::decode_with(bytes, Codes::Journal(key))
    }

    /// Decodes a published record ([`Record::encode_published`]): a presented payment code
    /// comes back as [`PaymentCode::EMPTY`]; a record that carries a code is refused.
    pub fn decode_published(bytes: &[u8]) -> Result<(Record, u64, usize), RecordError> {
        Self::decode_with(bytes, Codes::Withheld)
    }

    fn decode_with(bytes: &[u8], codes: Codes<'_>) -> Result<(Record, u64, usize), RecordError> {
        if bytes.len() < HEADER_SIZE {
            return Err(RecordError::Incomplete { needed: HEADER_SIZE, available: bytes.len() });
        }
        let body_length = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let kind = bytes[16];
        let expected = match kind {
            1 => ADMITTED_BODY,
            2 => ANSWERED_BODY,
            3 => TIMED_OUT_BODY,
            4 => REVERSAL_STARTED_BODY,
            5 => REVERSAL_ACKNOWLEDGED_BODY,
            6 => WINDOW_CUT_BODY,
            7 => ONBOARDING_BODY,
            8 => CONVERTED_BODY,
            9 | 10 => CHECKPOINT_BODY,
            // An unknown kind with a sane length is still checked first: a torn or
            // corrupt record should say "checksum", not mislead with "kind".
            _ if body_length <= ADMITTED_BODY && bytes.len() >= HEADER_SIZE + body_length => {
                let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
                return Err(if stored == crc32c(&bytes[8..HEADER_SIZE + body_length]) {
                    RecordError::UnknownKind(kind)
                } else {
                    RecordError::Checksum
                });
            }
            _ => return Err(RecordError::Checksum),
        };
        if body_length != expected {
            return Err(RecordError::Length { kind, length: body_length });
        }
        let size = HEADER_SIZE + body_length;
        if bytes.len() < size {
            return Err(RecordError::Incomplete { needed: size, available: bytes.len() });
        }
        let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if stored != crc32c(&bytes[8..size]) {
            return Err(RecordError::Checksum);
        }
        if bytes[17..24].iter().any(|&b| b != 0) {
            return Err(RecordError::Reserved);
        }
        let sequence = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let mut body = Reader { bytes: &bytes[HEADER_SIZE..size] };
        let record = match kind {
            1 => {
                let reference = body.u64();
                let time_ms = body.u64() as i64;
                let amount_minor = body.u64();
                let refund_of = body.u64();
                let currency = body.u16();
                let has_code = body.take::<1>()[0];
                body.reserved::<5>()?;
                let originator =
                    InstitutionId::from_bytes(body.take()).map_err(|_| RecordError::Field("originator"))?;
                let receiver = InstitutionId::from_bytes(body.take()).map_err(|_| RecordError::Field("receiver"))?;
                let id = TransactionId::from_bytes(body.take()).map_err(|_| RecordError::Field("id"))?;
                let mut code_bytes: [u8; 32] = body.take();
                let payment_code = match (has_code, codes) {
                    (CODE_NONE, _) if code_bytes == [0; 32] => None,
                    (CODE_WITHHELD, Codes::Withheld) if code_bytes == [0; 32] => Some(PaymentCode::EMPTY),
                    (CODE_SEALED, Codes::Journal(None)) => return Err(RecordError::Sealed),
                    (CODE_PLAIN | CODE_SEALED, Codes::Journal(key)) => {
                        if let (CODE_SEALED, Some(key)) = (has_code, key) {
                            key.apply(reference, &mut code_bytes);
                        }
                        Some(PaymentCode::from_bytes(code_bytes).map_err(|_| RecordError::Field("payment_code"))?)
                    }
                    _ => return Err(RecordError::Field("payment_code")),
                };
                Record::Admitted {
                    reference,
                    time_ms,
                    originator,
                    receiver,
                    id,
                    amount_minor,
                    currency,
                    refund_of,
                    payment_code,
                }
            }
            2 => {
                let reference = body.u64();
                let time_ms = body.u64() as i64;
                let code = body.u16();
                body.reserved::<6>()?;
                let authorization_code =
                    AuthorizationCode::from_bytes(body.take()).map_err(|_| RecordError::Field("authorization_code"))?;
                Record::Answered { reference, time_ms, code, authorization_code }
            }
            3 => Record::TimedOut { reference: body.u64(), time_ms: body.u64() as i64 },
            4 => {
                let reversal = body.u64();
                let original = body.u64();
                let time_ms = body.u64() as i64;
                let reason = body.u16();
                body.reserved::<6>()?;
                Record::ReversalStarted { reversal, original, reason, time_ms }
            }
            5 => Record::ReversalAcknowledged { reversal: body.u64(), time_ms: body.u64() as i64 },
            6 => Record::WindowCut { window: body.u64(), time_ms: body.u64() as i64 },
            7 => {
                let time_ms = body.u64() as i64;
                let [state, previous] = body.take::<2>();
                body.reserved::<6>()?;
                let participant =
                    InstitutionId::from_bytes(body.take()).map_err(|_| RecordError::Field("participant"))?;
                let state = Onboarding::from_code(state).ok_or(RecordError::Field("state"))?;
                let previous = Onboarding::from_code(previous).ok_or(RecordError::Field("previous"))?;
                Record::Onboarding { participant, state, previous, time_ms }
            }
            8 => {
                let reference = body.u64();
                let conversion = Conversion {
                    payer_amount_minor: body.u64(),
                    rate: body.u64(),
                    rate_version: u32::from_le_bytes(body.take()),
                    payer_currency: body.u16(),
                    margin_basis_points: body.u16(),
                };
                // The same ranges as on the wire: a converted record has a payer currency
                // and a rate.
                if conversion.payer_currency == 0 || conversion.rate == 0 || conversion.rate_version == 0 {
                    return Err(RecordError::Field("conversion"));
                }
                Record::Converted { reference, conversion }
            }
            9 | 10 => {
                let (window, at, low_water, reference_sequence) = (body.u64(), body.u64(), body.u64(), body.u64());
                // Written at its own sequence, needing nothing after itself.
                if at != sequence {
                    return Err(RecordError::Field("sequence"));
                }
                if low_water == 0 || low_water > at {
                    return Err(RecordError::Field("low_water"));
                }
                if kind == 9 {
                    Record::Checkpoint { window, sequence: at, low_water, reference_sequence }
                } else {
                    Record::Restart { window, sequence: at, low_water, reference_sequence }
                }
            }
            _ => unreachable!("kinds checked above"),
        };
        Ok((record, sequence, size))
    }
}

/// One line per record, for `switch journal inspect`. Payment codes are masked (their
/// `Display`); references in hex, as `SwitchReference` shows them.
impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use codec::field::FieldText;
        let reference = |r: u64| codec::SwitchReference(r);
        match self {
            Self::Admitted {
                reference: r,
                time_ms,
                originator,
                receiver,
                id,
                amount_minor,
                currency,
                refund_of,
                payment_code,
            } => {
                write!(
                    f,
                    "admitted  {} at {time_ms} {} -> {} id {:?} amount {amount_minor} currency {currency}",
                    reference(*r),
                    originator.as_str(),
                    receiver.as_str(),
                    id.as_str()
                )?;
                if *refund_of != 0 {
                    write!(f, " refund of {}", reference(*refund_of))?;
                }
                match payment_code {
                    Some(code) => write!(f, " code {code}"),
                    None => Ok(()),
                }
            }
            Self::Answered { reference: r, time_ms, code, authorization_code } => write!(
                f,
                "answered  {} at {time_ms} code {code} authorization {:?}",
                reference(*r),
                authorization_code.as_str()
            ),
            Self::TimedOut { reference: r, time_ms } => write!(f, "timed out {} at {time_ms}", reference(*r)),
            Self::ReversalStarted { reversal, original, reason, time_ms } => {
                write!(f, "reversal  {} of {} at {time_ms} reason {reason}", reference(*reversal), reference(*original))
            }
            Self::ReversalAcknowledged { reversal, time_ms } => {
                write!(f, "reversed  {} acknowledged at {time_ms}", reference(*reversal))
            }
            Self::WindowCut { window, time_ms } => write!(f, "cut       window {window} closed at {time_ms}"),
            Self::Onboarding { participant, state, previous, time_ms } => {
                write!(f, "state     {} {} -> {} at {time_ms}", participant.as_str(), previous.name(), state.name())
            }
            Self::Converted { reference: r, conversion: c } => write!(
                f,
                "converted {} payer amount {} currency {} rate {} margin {} bp rate version {}",
                reference(*r),
                c.payer_amount_minor,
                c.payer_currency,
                codec::fx::format_rate(c.rate),
                c.margin_basis_points,
                c.rate_version
            ),
            Self::Checkpoint { window, low_water, reference_sequence, .. } => write!(
                f,
                "checkpoint window {window} needs records from {low_water} on, last reference sequence \
                 {reference_sequence}"
            ),
            Self::Restart { window, low_water, reference_sequence, .. } => write!(
                f,
                "restart point (last window {window}) needs records from {low_water} on, last reference \
                 sequence {reference_sequence}"
            ),
        }
    }
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Reads a body front to back; lengths are checked before, so reads cannot run short.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        head.try_into().expect("length checked against the kind")
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn reserved<const N: usize>(&mut self) -> Result<(), RecordError> {
        if self.take::<N>().iter().all(|&b| b == 0) { Ok(()) } else { Err(RecordError::Reserved) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `record` as written at `sequence` (a checkpoint names its own).
    fn at(record: Record, sequence: u64) -> Record {
        match record {
            Record::Checkpoint { window, low_water, reference_sequence, .. } => {
                Record::Checkpoint { window, sequence, low_water, reference_sequence }
            }
            Record::Restart { window, low_water, reference_sequence, .. } => {
                Record::Restart { window, sequence, low_water, reference_sequence }
            }
            other => other,
        }
    }

    pub(crate) fn samples() -> Vec<Record> {
        let id = |t: &str| InstitutionId::new(t).expect("valid");
        vec![
            Record::Admitted {
                reference: 0x0001_0000_0000_0007,
                time_ms: 1_771_286_370_000,
                originator: id("ACQ0001"),
                receiver: id("WECHATPAY"),
                id: TransactionId::new("ACQ0001-20260216-000000042").expect("valid"),
                amount_minor: 3_800,
                currency: 156,
                refund_of: 0,
                payment_code: Some(PaymentCode::new("134567890123451234").expect("valid")),
            },
            Record::Admitted {
                reference: 9,
                time_ms: -1,
                originator: id("ACQ0001"),
                receiver: id("UNIONPAY"),
                id: TransactionId::new("R-1").expect("valid"),
                amount_minor: 1,
                currency: 344,
                refund_of: 7,
                payment_code: None,
            },
            Record::Answered {
                reference: 7,
                time_ms: 5,
                code: 0,
                authorization_code: AuthorizationCode::new("A1B2C3").expect("valid"),
            },
            Record::TimedOut { reference: 8, time_ms: 6 },
            Record::ReversalStarted { reversal: 10, original: 8, reason: 1, time_ms: 7 },
            Record::ReversalAcknowledged { reversal: 10, time_ms: 8 },
            Record::WindowCut { window: 3, time_ms: 9 },
            Record::Onboarding {
                participant: id("WAL0001"),
                state: Onboarding::Suspended,
                previous: Onboarding::ProductionVerification,
                time_ms: 10,
            },
            Record::Converted {
                reference: 9,
                conversion: Conversion {
                    payer_amount_minor: 49_369,
                    rate: 49_123_000_000,
                    rate_version: 7,
                    payer_currency: 764,
                    margin_basis_points: 50,
                },
            },
            Record::Checkpoint { window: 3, sequence: 12, low_water: 4, reference_sequence: 10 },
            Record::Restart { window: 3, sequence: 13, low_water: 5, reference_sequence: 11 },
        ]
    }

    fn key() -> CodeKey {
        CodeKey::new(*b"journal-code-key")
    }

    #[test]
    fn every_record_round_trips_and_is_a_whole_number_of_words() {
        for key in [None, Some(key())] {
            let mut bytes = Vec::new();
            for (index, record) in samples().iter().enumerate() {
                let record = &at(*record, index as u64 + 1);
                let start = bytes.len();
                record.encode(index as u64 + 1, key.as_ref(), &mut bytes);
                assert_eq!((bytes.len() - start) % 8, 0);
                assert!(bytes.len() - start <= RECORD_SIZE_MAX);
                let (decoded, sequence, size) = Record::decode(&bytes[start..], key.as_ref()).expect("decodes");
                assert_eq!((decoded, sequence, size), (*record, index as u64 + 1, bytes.len() - start));
            }
        }
    }

    #[test]
    fn published_records_withhold_the_code_and_keep_everything_else() {
        for (index, record) in samples().iter().enumerate() {
            let record = &at(*record, index as u64 + 1);
            let mut bytes = Vec::new();
            record.encode_published(index as u64 + 1, &mut bytes);
            let (decoded, sequence, size) = Record::decode_published(&bytes).expect("decodes");
            assert_eq!((sequence, size), (index as u64 + 1, bytes.len()));
            match (*record, decoded) {
                (Record::Admitted { payment_code: Some(code), .. }, Record::Admitted { payment_code, .. }) => {
                    assert_eq!(payment_code, Some(PaymentCode::EMPTY));
                    let digits = code.digits().as_bytes();
                    assert!(!bytes.windows(6).any(|w| w == &digits[..6]), "no part of the code is published");
                    // A journal reader refuses a published record rather than invent a code.
                    assert!(Record::decode(&bytes, None).is_err());
                }
                (original, decoded) => assert_eq!(decoded, original),
            }
        }
        // A record that carries a code is not a published one.
        for key in [None, Some(key())] {
            let mut journal = Vec::new();
            samples()[0].encode(1, key.as_ref(), &mut journal);
            assert_eq!(Record::decode_published(&journal), Err(RecordError::Field("payment_code")));
        }
    }

    #[test]
    fn encrypted_codes_need_the_key_and_leave_nothing_in_clear() {
        let record = samples()[0];
        let Record::Admitted { payment_code: Some(code), .. } = record else { unreachable!("a code sample") };
        let mut sealed = Vec::new();
        record.encode(1, Some(&key()), &mut sealed);
        let digits = code.digits().as_bytes();
        assert!(!sealed.windows(digits.len()).any(|w| w == digits), "the code is not in the record");
        assert!(!sealed.windows(6).any(|w| w == &digits[..6]), "not even its prefix");
        assert!(matches!(Record::decode(&sealed, None), Err(RecordError::Sealed)));
        let other = CodeKey::new(*b"another-code-key");
        assert!(matches!(Record::decode(&sealed, Some(&other)), Err(RecordError::Field("payment_code"))));
        assert_eq!(Record::decode(&sealed, Some(&key())).expect("decodes").0, record);
        // A plain journal reads with or without a key.
        let mut plain = Vec::new();
        record.encode(1, None, &mut plain);
        assert_eq!(Record::decode(&plain, Some(&key())).expect("decodes").0, record);
        // Two records (two references), two keystreams.
        let mut moved = record;
        if let Record::Admitted { reference, .. } = &mut moved {
            *reference += 1;
        }
        let mut second = Vec::new();
        moved.encode(2, Some(&key()), &mut second);
        let code_at = HEADER_SIZE + ADMITTED_BODY - 32;
        assert_ne!(sealed[code_at..code_at + 32], second[code_at..code_at + 32]);
    }

    #[test]
    fn a_checkpoint_names_its_own_sequence_and_needs_nothing_after_it() {
        let checkpoint =
            |sequence, low_water| Record::Checkpoint { window: 2, sequence, low_water, reference_sequence: 9 };
        for (record, written_at, problem) in
            [(checkpoint(7, 3), 8, "sequence"), (checkpoint(7, 8), 7, "low_water"), (checkpoint(7, 0), 7, "low_water")]
        {
            let mut bytes = Vec::new();
            record.encode(written_at, None, &mut bytes);
            assert_eq!(Record::decode(&bytes, None), Err(RecordError::Field(problem)), "{record:?}");
        }
    }

    #[test]
    fn any_flipped_bit_or_short_read_is_refused() {
        for key in [None, Some(key())] {
            for record in samples().into_iter().map(|record| at(record, 42)) {
                let mut bytes = Vec::new();
                record.encode(42, key.as_ref(), &mut bytes);
                for bit in 0..bytes.len() * 8 {
                    let mut bad = bytes.clone();
                    bad[bit / 8] ^= 1 << (bit % 8);
                    assert!(
                        Record::decode(&bad, key.as_ref()).is_err(),
                        "{record:?}: bit {bit} flipped went unnoticed"
                    );
                }
                for length in 0..bytes.len() {
                    assert!(matches!(
                        Record::decode(&bytes[..length], key.as_ref()),
                        Err(RecordError::Incomplete { .. } | RecordError::Checksum)
                    ));
                }
            }
        }
    }
}
