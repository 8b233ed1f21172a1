//! The native frame format: a 16-byte header and a fixed-size, rkyv-archived body.
//!
//! ```text
//!  0        4         8      10    11     12        16                    16 + body_length
//! +--------+---------+------+-----+------+---------+----------------------+
//! | body   | checksum| "CS" | ver | kind | reserved| body (archived, fixed|
//! | length |  CRC32C | magic|     |      |  zero   | layout, 8-aligned)   |
//! +--------+---------+------+-----+------+---------+----------------------+
//!   u32 LE   u32 LE    2 B    u8    u8     u32 LE
//!                    |<-------------- covered by the checksum ------------->|
//! ```
//!
//! The checksum is CRC32C (Castagnoli) over every byte from offset 8 to the frame's end:
//! one contiguous run. The length is not covered and need not be: it must equal the
//! (covered) kind's body size, and a changed length moves the covered range, which the
//! checksum then catches.
//!
//! Why this shape: the length comes first so any reader can frame the stream; the header
//! is 16 bytes and every body a multiple of 8, so when a receive buffer starts 8-aligned,
//! every body in it lands 8-aligned and is read in place, without a copy.
//!
//! Invariants:
//! - The decoder never buffers more than [`FRAME_SIZE_MAX`] bytes for one frame: the
//!   length is checked against the limit before the body is waited for.
//! - A frame is validated once (header, checksum, layout, fields); what the decoder hands
//!   out is a validated [`MessageRef`].
//! - The encoder validates what it wrote with the same checks as the decoder, and leaves
//!   the output buffer unchanged when a message is invalid.
//! - On an authenticated session ([`FrameDecoder::set_mac`], [`FrameEncoder::set_mac`])
//!   every frame is followed by a [`MAC_SIZE`]-byte tag ([`crate::mac`]); the decoder checks
//!   it before anything in the frame is trusted, and a bad tag ends the session.

use rkyv::util::AlignedVec;

use crate::code::RejectReason;
use crate::field::FieldProblem;
use crate::mac::{FrameMac, MAC_SIZE};
use crate::message::{
    BODY_SIZE_MAX, BodyError, Checks, FieldError, Message, MessageKind, MessageRef, PROTOCOL_VERSION, serialize_body,
};

/// Size of the frame header in bytes.
pub const HEADER_SIZE: usize = 16;
/// The largest frame of any kind, header included.
pub const FRAME_SIZE_MAX: usize = HEADER_SIZE + BODY_SIZE_MAX;
/// The most bytes one frame takes on the wire: the largest frame and its MAC tag.
pub const WIRE_FRAME_MAX: usize = FRAME_SIZE_MAX + MAC_SIZE;
/// Alignment of every frame start and body within a stream (bytes).
pub const FRAME_ALIGNMENT: usize = 8;
/// The magic bytes at offset 8.
pub const MAGIC: [u8; 2] = *b"CS";
/// The header's version byte.
pub const FRAME_VERSION: u8 = 2;

const _: () = assert!(PROTOCOL_VERSION == FRAME_VERSION as u16);
const _: () = assert!(HEADER_SIZE.is_multiple_of(FRAME_ALIGNMENT));

/// Header field offsets (see the module diagram).
mod offset {
    pub const BODY_LENGTH: usize = 0;
    pub const CHECKSUM: usize = 4;
    /// The checksum covers the frame from here to its end.
    pub const CHECKSUMMED: usize = 8;
    pub const MAGIC: usize = 8;
    pub const VERSION: usize = 10;
    pub const KIND: usize = 11;
    pub const RESERVED: usize = 12;
}

/// A frame that could not be accepted. Every variant carries `offset`: the byte offset from
/// the frame's first header byte where the problem lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {found:02X?} at offset {offset} (expected \"CS\"): not a native-protocol stream")]
    BadMagic { offset: u32, found: [u8; 2] },
    #[error("unsupported frame version {version} at offset {offset} (this switch speaks {FRAME_VERSION})")]
    UnsupportedVersion { offset: u32, version: u8 },
    #[error("header reserved bytes at offset {offset} are not zero")]
    HeaderReservedNotZero { offset: u32 },
    #[error("body length {length} at offset {offset} exceeds the maximum {max}")]
    BodyTooLarge { offset: u32, length: u32, max: u32 },
    #[error("body length {length} at offset {offset} is not a multiple of 8")]
    BodyLengthUnaligned { offset: u32, length: u32 },
    #[error("checksum mismatch at offset {offset}: frame says {expected:08X}, computed {computed:08X}")]
    BadChecksum { offset: u32, expected: u32, computed: u32 },
    #[error("unknown kind 0x{kind:02X} at offset {offset}")]
    UnknownKind { offset: u32, kind: u8 },
    #[error("body length {have} at offset {offset} does not match kind {kind:?}, whose body is {expected} bytes")]
    BodyLengthMismatch { offset: u32, kind: MessageKind, expected: u32, have: u32 },
    #[error("frame at offset {offset} is not {FRAME_ALIGNMENT}-byte aligned in memory")]
    Misaligned { offset: u32 },
    #[error("{kind:?} body at offset {offset} failed layout validation")]
    InvalidBody { offset: u32, kind: MessageKind },
    #[error("{kind:?} field `{field}` at offset {offset} {problem}")]
    InvalidField { offset: u32, kind: MessageKind, field: &'static str, problem: FieldProblem },
    #[error("bad frame MAC at offset {offset}: the frame was altered, replayed or signed with another key")]
    BadMac { offset: u32 },
}

impl DecodeError {
    /// Offset from the frame's first byte.
    pub fn offset(&self) -> u32 {
        match *self {
            Self::BadMagic { offset, .. }
            | Self::UnsupportedVersion { offset, .. }
            | Self::HeaderReservedNotZero { offset }
            | Self::BodyTooLarge { offset, .. }
            | Self::BodyLengthUnaligned { offset, .. }
            | Self::BadChecksum { offset, .. }
            | Self::UnknownKind { offset, .. }
            | Self::BodyLengthMismatch { offset, .. }
            | Self::Misaligned { offset }
            | Self::InvalidBody { offset, .. }
            | Self::InvalidField { offset, .. }
            | Self::BadMac { offset } => offset,
        }
    }

    /// The code carried in a `Reject` body.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::BadMagic { .. } => RejectReason::BadMagic,
            Self::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            Self::HeaderReservedNotZero { .. } => RejectReason::HeaderReservedNotZero,
            Self::BodyTooLarge { .. } => RejectReason::BodyTooLarge,
            Self::BodyLengthUnaligned { .. } => RejectReason::BodyLengthUnaligned,
            Self::BadChecksum { .. } => RejectReason::BadChecksum,
            Self::UnknownKind { .. } => RejectReason::UnknownKind,
            Self::BodyLengthMismatch { .. } => RejectReason::BodyLengthMismatch,
            Self::Misaligned { .. } => RejectReason::Misaligned,
            Self::InvalidBody { .. } => RejectReason::InvalidBody,
            Self::InvalidField { .. } => RejectReason::InvalidField,
            Self::BadMac { .. } => RejectReason::BadMac,
        }
    }

    /// Whether the stream can go on after this frame: its boundary is trustworthy, so the
    /// decoder has skipped it. Otherwise the connection must be closed.
    pub fn is_recoverable(&self) -> bool {
        !self.reason().closes_connection()
    }
}

/// A message that could not be encoded: a field breaks the same rule the decoder checks.
/// The output buffer is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{kind:?} field `{field}` at body offset {offset} {problem}")]
    InvalidField { kind: MessageKind, field: &'static str, offset: u32, problem: FieldProblem },
}

/// A validated frame read in place: its bytes (for forwarding or journaling unchanged) and
/// its typed body.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub bytes: &'a [u8],
    pub message: MessageRef<'a>,
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// CRC32C of a whole frame's covered bytes (offset 8 to the end).
fn checksum(frame: &[u8]) -> u32 {
    // CRC-32 values fit in the low 32 bits of crc-fast's u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &frame[offset::CHECKSUMMED..]) as u32
}

/// Recomputes a frame's checksum after its header or body was changed in place (the
/// switch stamps its switch reference into a request before forwarding it). `frame` is one
/// whole frame.
pub fn seal_frame(frame: &mut [u8]) {
    assert!(frame.len() >= HEADER_SIZE, "seal_frame needs a whole frame");
    let sum = checksum(frame);
    frame[offset::CHECKSUM..offset::CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
}

/// Checks the header fields that can be checked before the body arrives, and returns the
/// whole frame's size. `Ok(None)` means fewer than [`HEADER_SIZE`] bytes are available.
/// Errors here are framing errors: the stream cannot be trusted after them.
pub fn check_header(bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = bytes.get(..HEADER_SIZE) else {
        return Ok(None);
    };
    let found = [header[offset::MAGIC], header[offset::MAGIC + 1]];
    if found != MAGIC {
        return Err(DecodeError::BadMagic { offset: offset::MAGIC as u32, found });
    }
    let version = header[offset::VERSION];
    if version != FRAME_VERSION {
        return Err(DecodeError::UnsupportedVersion { offset: offset::VERSION as u32, version });
    }
    if read_u32(header, offset::RESERVED) != 0 {
        return Err(DecodeError::HeaderReservedNotZero { offset: offset::RESERVED as u32 });
    }
    let length = read_u32(header, offset::BODY_LENGTH);
    if length as usize > BODY_SIZE_MAX {
        return Err(DecodeError::BodyTooLarge {
            offset: offset::BODY_LENGTH as u32,
            length,
            max: BODY_SIZE_MAX as u32,
        });
    }
    if !(length as usize).is_multiple_of(FRAME_ALIGNMENT) {
        return Err(DecodeError::BodyLengthUnaligned { offset: offset::BODY_LENGTH as u32, length });
    }
    Ok(Some(HEADER_SIZE + length as usize))
}

/// Decodes the first frame in `bytes`, which must start 8-byte aligned in memory.
/// Returns the frame and its size, or `Ok(None)` when more bytes are needed. Never reads
/// past the frame, never allocates.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<Frame<'_>>, DecodeError> {
    if !bytes.is_empty() && bytes.as_ptr().align_offset(FRAME_ALIGNMENT) != 0 {
        return Err(DecodeError::Misaligned { offset: 0 });
    }
    let Some(frame_size) = check_header(bytes)? else {
        return Ok(None);
    };
    let Some(frame) = bytes.get(..frame_size) else {
        return Ok(None);
    };
    check_frame(frame).map(Some)
}

/// Validates one complete frame (`bytes.len()` is its exact size, header checked).
fn check_frame(bytes: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let (header, body) = bytes.split_at(HEADER_SIZE);
    let expected = read_u32(header, offset::CHECKSUM);
    let computed = checksum(bytes);
    if expected != computed {
        return Err(DecodeError::BadChecksum { offset: offset::CHECKSUM as u32, expected, computed });
    }
    let kind = MessageKind::try_from(header[offset::KIND])
        .map_err(|kind| DecodeError::UnknownKind { offset: offset::KIND as u32, kind })?;
    if body.len() != kind.body_size() {
        return Err(DecodeError::BodyLengthMismatch {
            offset: offset::BODY_LENGTH as u32,
            kind,
            expected: kind.body_size() as u32,
            have: body.len() as u32,
        });
    }
    if body.as_ptr().align_offset(FRAME_ALIGNMENT) != 0 {
        return Err(DecodeError::Misaligned { offset: HEADER_SIZE as u32 });
    }
    let message = MessageRef::access(kind, body, Checks::Wire).map_err(|error| match error {
        BodyError::Layout => DecodeError::InvalidBody { offset: HEADER_SIZE as u32, kind },
        BodyError::Field(FieldError { field, offset, problem }) => {
            DecodeError::InvalidField { offset: HEADER_SIZE as u32 + offset, kind, field, problem }
        }
    })?;
    Ok(Frame { bytes, message })
}

/// Appends `message` as one frame to `out`. `out`'s length must be a multiple of 8 (it is,
/// when it holds only frames), so the body lands aligned. On error `out` is unchanged.
pub fn encode_frame(message: &Message, out: &mut AlignedVec<16>) -> Result<(), EncodeError> {
    let start = out.len();
    assert!(start % FRAME_ALIGNMENT == 0, "output buffer holds a partial frame");
    let kind = message.kind();
    let mut header = [0u8; HEADER_SIZE];
    header[offset::BODY_LENGTH..offset::BODY_LENGTH + 4].copy_from_slice(&(kind.body_size() as u32).to_le_bytes());
    header[offset::MAGIC..offset::MAGIC + 2].copy_from_slice(&MAGIC);
    header[offset::VERSION] = FRAME_VERSION;
    header[offset::KIND] = kind as u8;
    out.extend_from_slice(&header);
    serialize_body(message, out);
    let body_start = start + HEADER_SIZE;
    assert_eq!(out.len() - body_start, kind.body_size(), "archived body size drifted from the kind table");

    // Pair the decoder's check: what we send passes the same validation, less the text
    // charsets the model's types already guarantee.
    let body = &out.as_slice()[body_start..];
    if let Err(error) = MessageRef::access(kind, body, Checks::Model) {
        out.resize(start, 0);
        return Err(match error {
            BodyError::Field(FieldError { field, offset, problem }) => {
                EncodeError::InvalidField { kind, field, offset, problem }
            }
            BodyError::Layout => unreachable!("rkyv wrote a body its own validator refuses"),
        });
    }
    seal_frame(&mut out.as_mut_slice()[start..]);
    Ok(())
}

/// Encodes frames into one reusable buffer, so a batch of replies goes out in one write.
/// Steady state allocates nothing: the buffer keeps its capacity across [`clear`].
///
/// [`clear`]: FrameEncoder::clear
#[derive(Debug)]
pub struct FrameEncoder {
    buffer: AlignedVec<16>,
    mac: Option<FrameMac>,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::with_capacity(FrameDecoder::BUFFER_SIZE_DEFAULT)
    }
}

impl FrameEncoder {
    pub fn with_capacity(bytes: usize) -> Self {
        Self { buffer: AlignedVec::with_capacity(bytes), mac: None }
    }

    /// From the next frame on, follow every frame with its MAC tag (`None`: no more tags).
    pub fn set_mac(&mut self, mac: Option<FrameMac>) {
        self.mac = mac;
    }

    /// Appends one frame (and its tag on an authenticated session).
    pub fn encode(&mut self, message: &Message) -> Result<(), EncodeError> {
        let start = self.buffer.len();
        encode_frame(message, &mut self.buffer)?;
        if let Some(mac) = &mut self.mac {
            let tag = mac.sign(&self.buffer.as_slice()[start + offset::CHECKSUMMED..]);
            self.buffer.extend_from_slice(&tag);
        }
        Ok(())
    }

    /// The frames encoded since the last clear.
    pub fn bytes(&self) -> &[u8] {
        self.buffer.as_slice()
    }

    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Forgets the frames, keeping the capacity.
    pub fn clear(&mut self) {
        self.buffer.clear();
    }
}

/// An incremental decoder over a byte stream: read into [`spare`], [`commit`] what was
/// read, then call [`decode`] until it returns `Ok(None)`. Many frames per read and frames
/// split across reads are both handled. The buffer is allocated once and grows only when
/// asked ([`FrameDecoder::grow`]).
///
/// After an error for which [`DecodeError::is_recoverable`] holds, the bad frame has been
/// skipped and decoding may go on; after any other error, the decoder returns the same
/// error again and the connection must be closed.
///
/// [`spare`]: FrameDecoder::spare
/// [`commit`]: FrameDecoder::commit
/// [`decode`]: FrameDecoder::decode
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: AlignedVec<16>,
    /// Start of the first undecoded byte; always 8-aligned.
    start: usize,
    /// End of the received bytes.
    end: usize,
    /// Stream offset of `buffer[start]`.
    stream_offset: u64,
    /// Kind byte of the last frame whose header was read (for a `Reject`'s `rejected_kind`).
    last_kind: u8,
    /// Where the last consumed frame lies in `buffer` (valid until the next `spare`).
    last_frame: std::ops::Range<usize>,
    /// On an authenticated session: the peer's frame MAC.
    mac: Option<FrameMac>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::with_capacity(Self::BUFFER_SIZE_DEFAULT)
    }
}

impl FrameDecoder {
    /// 64 KiB: room for at least 88 of the largest frames, or 260 payment-code requests.
    pub const BUFFER_SIZE_DEFAULT: usize = 64 * 1024;

    /// A decoder with a `bytes`-sized receive buffer (at least two of the largest frames).
    pub fn with_capacity(bytes: usize) -> Self {
        assert!(bytes >= 2 * WIRE_FRAME_MAX, "receive buffer smaller than two frames");
        let mut buffer = AlignedVec::with_capacity(bytes);
        buffer.resize(bytes, 0);
        Self { buffer, start: 0, end: 0, stream_offset: 0, last_kind: 0, last_frame: 0..0, mac: None }
    }

    /// From the next frame on, expect every frame to be followed by its MAC tag and check
    /// it (`None`: no more tags).
    pub fn set_mac(&mut self, mac: Option<FrameMac>) {
        self.mac = mac;
    }

    /// Grows the receive buffer to `bytes`, keeping what it holds (a server gives a
    /// connection its full buffer only once it has signed on). Never shrinks.
    pub fn grow(&mut self, bytes: usize) {
        if bytes > self.buffer.len() {
            self.buffer.resize(bytes, 0);
        }
    }

    /// Free space to read into. At least [`WIRE_FRAME_MAX`] bytes long (undecoded bytes are
    /// moved to the front when needed, keeping alignment).
    pub fn spare(&mut self) -> &mut [u8] {
        self.last_frame = 0..0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buffer.len() - self.end < WIRE_FRAME_MAX {
            self.buffer.as_mut_slice().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buffer.as_mut_slice()[self.end..]
    }

    /// Records that `count` bytes were read into [`FrameDecoder::spare`].
    pub fn commit(&mut self, count: usize) {
        assert!(count <= self.buffer.len() - self.end, "committed more than the spare space");
        self.end += count;
    }

    /// Convenience for tests and tools: copies `bytes` in through `spare`/`commit`. Returns
    /// how many bytes were taken (fewer than offered when the buffer is full).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let count = spare.len().min(bytes.len());
        spare[..count].copy_from_slice(&bytes[..count]);
        self.commit(count);
        count
    }

    /// Decodes the next complete frame, or `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame<'_>>, DecodeError> {
        let available = &self.buffer.as_slice()[self.start..self.end];
        if let Some(&kind) = available.get(offset::KIND) {
            self.last_kind = kind;
        }
        let Some(frame_size) = check_header(available)? else {
            return Ok(None);
        };
        let wire_size = frame_size + if self.mac.is_some() { MAC_SIZE } else { 0 };
        if self.end - self.start < wire_size {
            return Ok(None);
        }
        // From here the frame's boundary is known: consume it whatever its validity, so a
        // recoverable error skips exactly this frame.
        let frame_start = self.start;
        self.start += wire_size;
        self.stream_offset += wire_size as u64;
        self.last_frame = frame_start..frame_start + frame_size;
        let bytes = &self.buffer.as_slice()[frame_start..frame_start + wire_size];
        if let Some(mac) = &mut self.mac {
            // Nothing in the frame is trusted before its tag checks out.
            let (frame, tag) = bytes.split_at(frame_size);
            if !mac.verify(&frame[offset::CHECKSUMMED..], tag) {
                return Err(DecodeError::BadMac { offset: frame_size as u32 });
            }
        }
        check_frame(&bytes[..frame_size]).map(Some)
    }

    /// Stream offset of the next undecoded byte (the start of the next frame).
    pub fn stream_offset(&self) -> u64 {
        self.stream_offset
    }

    /// The bytes of the last frame `decode` consumed, valid or not (empty after `spare`).
    /// After a recoverable error, [`salvage_request`] reads from it.
    pub fn last_frame(&self) -> &[u8] {
        &self.buffer.as_slice()[self.last_frame.clone()]
    }

    /// Kind byte of the last frame header seen, as received (for a `Reject`).
    pub fn last_kind(&self) -> u8 {
        self.last_kind
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

/// Who sent a transaction request whose body failed its checks, when that much can still be
/// trusted: the frame's checksum held, its kind is a transaction request, and its first two
/// fields (every request body starts with `originator` and `originator_transaction_id`)
/// are valid. The switch then answers with the request's reply kind and `FormatError`, so
/// the originator can match the answer to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SalvagedRequest {
    pub kind: MessageKind,
    pub originator: crate::InstitutionId,
    pub originator_transaction_id: crate::TransactionId,
}

/// Reads a [`SalvagedRequest`] from a whole frame the decoder refused with a recoverable
/// error ([`FrameDecoder::last_frame`]), or `None` when nothing can be trusted.
pub fn salvage_request(frame: &[u8], error: &DecodeError) -> Option<SalvagedRequest> {
    use crate::field::FieldText;
    let DecodeError::InvalidField { kind, .. } = *error else { return None };
    if !matches!(
        kind,
        MessageKind::PaymentCodeRequest
            | MessageKind::QrPaymentRequest
            | MessageKind::ReversalRequest
            | MessageKind::RefundRequest
    ) {
        return None;
    }
    let body = frame.get(HEADER_SIZE..)?;
    let originator = crate::InstitutionId::from_wire(body.get(..16)?.try_into().ok()?);
    let originator_transaction_id = crate::TransactionId::from_wire(body.get(16..48)?.try_into().ok()?);
    (originator.check().is_ok() && originator_transaction_id.check().is_ok()).then_some(SalvagedRequest {
        kind,
        originator,
        originator_transaction_id,
    })
}

/// Builds the `Reject` message for a decode error, ready to encode.
pub fn reject_for(error: &DecodeError, rejected_kind: u8) -> Message {
    let mut detail = error.to_string();
    // The detail is ASCII text of at most 56 bytes; error texts carry no payment codes.
    detail.retain(|c| c.is_ascii() && !c.is_ascii_control());
    detail.truncate(crate::field::RejectDetail::SIZE);
    Message::Reject(crate::message::Reject {
        offset: error.offset(),
        reason: error.reason().value(),
        rejected_kind,
        reserved: 0,
        detail: crate::field::RejectDetail::new(&detail).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_crc32c() {
        // The CRC-32/ISCSI check value PROTOCOL.md quotes.
        assert_eq!(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b"123456789"), 0xE306_9283);
        // The frame checksum covers offset 8 to the end.
        let bytes: Vec<u8> = (0u8..=255).collect();
        assert_eq!(u64::from(checksum(&bytes)), crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes[8..]));
    }

    #[test]
    fn decoder_compacts_without_growing_and_keeps_alignment() {
        let mut decoder = FrameDecoder::with_capacity(2 * WIRE_FRAME_MAX);
        let mut frames = FrameEncoder::default();
        for sequence in 0..50 {
            frames.encode(&Message::EchoRequest(crate::message::Echo { sequence, sent_time_ms: 0 })).expect("valid");
        }
        let stream = frames.bytes();
        let mut fed = 0;
        let mut seen = 0;
        while seen < 50 {
            // Feed odd-sized pieces so the partial frame moves on compaction.
            let end = (fed + 37).min(stream.len());
            fed += decoder.feed(&stream[fed..end]);
            while let Some(frame) = decoder.decode().expect("valid") {
                assert_eq!(frame.bytes.as_ptr().align_offset(FRAME_ALIGNMENT), 0);
                seen += 1;
            }
            assert!(decoder.spare().len() >= FRAME_SIZE_MAX);
        }
        assert_eq!(decoder.stream_offset(), stream.len() as u64);
    }
}
