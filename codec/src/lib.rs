//! The clearing switch's codec: the message model, the native frame format, and (in time)
//! the participant formats translated at the edge.
//!
//! Pure by design: no sockets, no async, no clocks, no randomness. Everything here takes
//! bytes or values and returns bytes or values, so it is tested exhaustively and fuzzed, and
//! shared by the switch and the load generator (which talks to the switch over the wire).
//!
//! - [`message`]: the bodies, the kind table ([`MessageKind`]), owned [`Message`] and
//!   zero-copy [`MessageRef`].
//! - [`frame`]: header, checksum, [`FrameDecoder`] and [`FrameEncoder`].
//! - [`field`]: fixed-width fields; payment codes masked in `Debug`/`Display`.
//! - [`code`]: the reply code table and the other code tables.
//! - [`signon`]: challenge-response proofs for sign-on.
//! - [`payment_code`]: consumer payment codes and the longest-prefix issuer table.
//! - [`emv_qr`]: EMVCo merchant-presented QR (parse, validate, generate) and UnionPay URLs.
//! - [`currency`]: ISO 4217 exponents and exact decimal amounts.
//! - [`fx`]: exact rates, conversion into the payer's currency, refund shares.
//! - [`iso8583`]: ISO 8583 (1987) driven by data profiles, pyiso8583-compatible.
//! - [`translate`]: ISO 8583 to and from the canonical model, lossless.
//!
//! The byte-exact format is documented in `PROTOCOL.md` beside this crate, and tests check
//! the document against the code.

pub mod code;
pub mod country;
pub mod currency;
pub mod emv_qr;
pub mod field;
pub mod frame;
pub mod fx;
pub mod iso8583;
pub mod iso_answer;
pub mod mac;
pub mod message;
pub mod payment_code;
pub mod sample;
pub mod signon;
pub mod translate;

pub use code::{RejectReason, ReplyCode, ReversalReason, SignOffReason, TransactionStatus};
pub use field::{
    AuthorizationCode, City, FieldProblem, InstitutionId, MerchantId, MerchantName, PaymentCode, RejectDetail,
    SwitchReference, TerminalId, TransactionId,
};
pub use frame::{
    DecodeError, EncodeError, FRAME_SIZE_MAX, Frame, FrameDecoder, FrameEncoder, HEADER_SIZE, WIRE_FRAME_MAX,
    decode_frame, encode_frame, salvage_request, seal_frame,
};
pub use mac::{MAC_SIZE, MacAlgorithm, SessionMacs};
pub use message::{
    Conversion, Echo, LinkedRequest, Message, MessageKind, MessageRef, PROTOCOL_VERSION, PaymentCodeRequest,
    QrPaymentRequest, Reject, Reply, SignOff, SignOnChallenge, SignOnRequest, SignOnResult, StatusQuery, StatusReply,
    TransactionDetails,
};
