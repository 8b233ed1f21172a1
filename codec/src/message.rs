//! The message model: every body the switch carries, and the kind table that ties a kind
//! byte to a body layout.
//!
//! Bodies are flat, fixed-layout records (rkyv archives them as `#[repr(C)]` structs of
//! little-endian integers and byte arrays, with no pointers), so a body is read in place
//! after one validation, and a client in any language can write one from `PROTOCOL.md`.
//!
//! Invariants:
//! - No implicit padding: every gap is an explicit `reserved` field that must be zero
//!   (checked on encode and decode), so every byte on the wire is defined and future
//!   versions can give reserved bytes a meaning.
//! - Every body's size is a multiple of 8 (asserted at compile time), which keeps every
//!   frame in a stream 8-byte aligned.
//! - A body is semantically valid ([`Validate`]) whenever the codec hands out a view of it.

use std::mem::offset_of;

use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::code::{ReplyCode, ReversalReason, SignOffReason, TransactionStatus};
use crate::field::{
    AuthorizationCode, City, FieldProblem, FieldText, InstitutionId, MerchantId, MerchantName, PaymentCode,
    RejectDetail, SwitchReference, TerminalId, TransactionId,
};

/// The protocol version this codec speaks. A frame with another version is refused.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest amount in minor units a message may carry (10^15: ten trillion units of a
/// two-decimal currency). Keeps every sum of a window's amounts far from overflow.
pub const AMOUNT_MINOR_MAX: u64 = 1_000_000_000_000_000;
/// Largest timestamp: 9999-12-31T23:59:59.999Z in Unix milliseconds.
pub const TIME_MS_MAX: i64 = 253_402_300_799_999;
/// Capacity of a merchant-presented QR payload (EMVCo's own maximum is 512 characters).
pub const QR_PAYLOAD_SIZE_MAX: usize = 512;
/// Size of sign-on nonces and proofs (HMAC-SHA256 output).
pub const PROOF_SIZE: usize = 32;

/// One field of one body that failed validation. The offset is from the body's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub offset: u32,
    pub problem: FieldProblem,
}

/// What a validation must establish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// Bytes from the wire: everything.
    Wire,
    /// A body the encoder just wrote from the owned model. Its text fields are valid by
    /// construction (their bytes are private and only validating constructors make them),
    /// so their charsets are not scanned again; everything else is checked as on the wire.
    Model,
}

/// Semantic checks on a body, beyond its layout: charsets, mandatory fields, code tables,
/// ranges, reserved bytes. Decode runs them with [`Checks::Wire`], encode with
/// [`Checks::Model`].
pub trait Validate {
    fn validate(&self, kind: MessageKind, checks: Checks) -> Result<(), FieldError>;
}

fn fail(field: &'static str, offset: usize, problem: FieldProblem) -> FieldError {
    // Body sizes are below 1 KiB (asserted by BODY_SIZE_MAX), so offsets fit u32.
    FieldError { field, offset: offset as u32, problem }
}

fn check_text<T: FieldText>(checks: Checks, value: &T, field: &'static str, offset: usize) -> Result<(), FieldError> {
    check_mandatory(checks, value, field, offset, T::MANDATORY)
}

fn check_mandatory<T: FieldText>(
    checks: Checks,
    value: &T,
    field: &'static str,
    offset: usize,
    mandatory: bool,
) -> Result<(), FieldError> {
    if checks == Checks::Wire {
        value.check().map_err(|problem| fail(field, offset, problem))?;
    }
    if mandatory && value.is_empty() {
        return Err(fail(field, offset, FieldProblem::Empty));
    }
    Ok(())
}

fn check_reserved(bytes: &[u8], field: &'static str, offset: usize) -> Result<(), FieldError> {
    if bytes.iter().any(|&b| b != 0) {
        return Err(fail(field, offset, FieldProblem::ReservedNotZero));
    }
    Ok(())
}

fn check_range(value: u64, min: u64, max: u64, field: &'static str, offset: usize) -> Result<(), FieldError> {
    if value < min || value > max {
        return Err(fail(field, offset, FieldProblem::OutOfRange { value, min, max }));
    }
    Ok(())
}

fn check_time(value: i64, field: &'static str, offset: usize) -> Result<(), FieldError> {
    // Negative times are out of range; the cast is exact for the non-negative ones.
    let shown = if value < 0 { u64::MAX } else { value as u64 };
    check_range(shown, 0, TIME_MS_MAX as u64, field, offset)
}

fn check_code<T: TryFrom<u16>>(value: u16, field: &'static str, offset: usize) -> Result<(), FieldError> {
    T::try_from(value)
        .map(|_| ())
        .map_err(|_| fail(field, offset, FieldProblem::UnknownCode { value: u32::from(value) }))
}

// ---------------------------------------------------------------------------------------
// Network management
// ---------------------------------------------------------------------------------------

/// Switch to participant, first frame on every connection: the challenge the participant
/// must prove its key over.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct SignOnChallenge {
    /// The switch's own institution id (bound into the proof).
    pub switch_id: InstitutionId,
    /// 32 random bytes, new for every connection.
    #[serde(serialize_with = "hex_bytes")]
    pub server_nonce: [u8; PROOF_SIZE],
    /// The highest protocol version the switch speaks.
    pub protocol_version: u16,
    pub reserved: [u8; 6],
}

/// Participant to switch: who I am, and proof that I hold my key. Never the key itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct SignOnRequest {
    pub participant: InstitutionId,
    /// 32 random bytes chosen by the participant (bound into the switch's proof).
    #[serde(serialize_with = "hex_bytes")]
    pub client_nonce: [u8; PROOF_SIZE],
    /// HMAC-SHA256 under the participant's key; see [`crate::signon`].
    #[serde(serialize_with = "hex_bytes")]
    pub proof: [u8; PROOF_SIZE],
    pub protocol_version: u16,
    /// Which of the participant's keys made the proof (keys rotate with an overlap).
    pub key_id: u16,
    pub reserved: [u8; 4],
}

/// Switch to participant: the sign-on outcome. On approval, the switch proves it holds the
/// key too (mutual authentication) and states the session's timers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct SignOnResult {
    pub session_id: u64,
    /// HMAC-SHA256 under the participant's key; all zero when refused.
    #[serde(serialize_with = "hex_bytes")]
    pub server_proof: [u8; PROOF_SIZE],
    /// The participant sends an echo when it has sent nothing for this long.
    pub echo_interval_ms: u32,
    /// The switch closes a session that has sent nothing for this long.
    pub idle_timeout_ms: u32,
    /// [`ReplyCode`]: `Approved`, or `NotAuthorised` / `FormatError` when refused.
    pub code: u16,
    /// [`crate::MacAlgorithm`]: from the next frame on, every frame either way carries a
    /// MAC tag (`0`: none). The switch's configuration for the participant decides it.
    pub frame_mac: u8,
    pub reserved: [u8; 5],
}

/// Echo (heartbeat), either way. The reply carries the request's values back.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct Echo {
    pub sequence: u64,
    pub sent_time_ms: i64,
}

/// Sign-off request (reason: [`SignOffReason`]) and its reply (code: [`ReplyCode`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct SignOff {
    pub code: u16,
    pub reserved: [u8; 6],
}

// ---------------------------------------------------------------------------------------
// Payments
// ---------------------------------------------------------------------------------------

/// The elements every payment request carries (the barcode payment interconnection rules'
/// message elements). Embedded at offset 0 of both request bodies.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct TransactionDetails {
    /// The institution that originated the request. Must equal the signed-on sender.
    pub originator: InstitutionId,
    /// The originator's own id for this transaction.
    pub originator_transaction_id: TransactionId,
    /// Zero from the originator; set by the switch when it forwards ([`SwitchReference`]).
    pub switch_reference: u64,
    /// Amount in minor units of `currency` (fen for CNY). Never a float.
    pub amount_minor: u64,
    /// When the payer or merchant initiated it: Unix milliseconds, UTC.
    pub transaction_time_ms: i64,
    /// ISO 4217 numeric (156 = CNY).
    pub currency: u16,
    /// ISO 18245 merchant category code.
    pub merchant_category_code: u16,
    /// ISO 3166-1 numeric (156 = China).
    pub merchant_country: u16,
    pub reserved: u16,
    pub merchant_id: MerchantId,
    pub terminal_id: TerminalId,
    pub merchant_name: MerchantName,
    pub merchant_city: City,
}

impl ArchivedTransactionDetails {
    pub fn switch_reference(&self) -> SwitchReference {
        SwitchReference(self.switch_reference.to_native())
    }

    /// Checks the details; `merchant_known` says whether the merchant fields are mandatory
    /// (they are for a consumer-presented request; a wallet sending a QR request may leave
    /// them zero for the switch to fill from the QR payload).
    fn validate_at(&self, base: usize, merchant_known: bool, checks: Checks) -> Result<(), FieldError> {
        type D = ArchivedTransactionDetails;
        check_text(checks, &self.originator, "originator", base + offset_of!(D, originator))?;
        check_text(
            checks,
            &self.originator_transaction_id,
            "originator_transaction_id",
            base + offset_of!(D, originator_transaction_id),
        )?;
        check_range(
            self.amount_minor.to_native(),
            1,
            AMOUNT_MINOR_MAX,
            "amount_minor",
            base + offset_of!(D, amount_minor),
        )?;
        check_time(
            self.transaction_time_ms.to_native(),
            "transaction_time_ms",
            base + offset_of!(D, transaction_time_ms),
        )?;
        check_range(u64::from(self.currency.to_native()), 1, 999, "currency", base + offset_of!(D, currency))?;
        let merchant_min = u64::from(merchant_known);
        check_range(
            u64::from(self.merchant_category_code.to_native()),
            merchant_min,
            9999,
            "merchant_category_code",
            base + offset_of!(D, merchant_category_code),
        )?;
        check_range(
            u64::from(self.merchant_country.to_native()),
            merchant_min,
            999,
            "merchant_country",
            base + offset_of!(D, merchant_country),
        )?;
        check_reserved(&self.reserved.to_native().to_le_bytes(), "reserved", base + offset_of!(D, reserved))?;
        check_mandatory(checks, &self.merchant_id, "merchant_id", base + offset_of!(D, merchant_id), merchant_known)?;
        check_text(checks, &self.terminal_id, "terminal_id", base + offset_of!(D, terminal_id))?;
        check_text(checks, &self.merchant_name, "merchant_name", base + offset_of!(D, merchant_name))?;
        check_text(checks, &self.merchant_city, "merchant_city", base + offset_of!(D, merchant_city))
    }
}

/// The switch's conversion of a cross-border transaction into the payer's currency (its
/// settlement currency): set by the switch, never by an originator (whose value is
/// overwritten). All zero when the transaction is not converted. See [`crate::fx`] for
/// the arithmetic and its rounding rule.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct Conversion {
    /// What the payer pays (or, on a refund or reversal, gets back), in minor units of
    /// `payer_currency`. May be zero only on a refund worth less than half a minor unit.
    pub payer_amount_minor: u64,
    /// The rate table's mid rate: units of `payer_currency` per unit of the transaction's
    /// currency, scaled by 10^10 ([`crate::fx::RATE_SCALE`]).
    pub rate: u64,
    /// The version of the rate table the rate came from.
    pub rate_version: u32,
    /// ISO 4217 numeric; zero: no conversion.
    pub payer_currency: u16,
    /// The FX margin applied on top of the mid rate, in basis points.
    pub margin_basis_points: u16,
}

impl Conversion {
    /// No conversion.
    pub const NONE: Self =
        Self { payer_amount_minor: 0, rate: 0, rate_version: 0, payer_currency: 0, margin_basis_points: 0 };

    pub fn is_some(&self) -> bool {
        self.payer_currency != 0
    }
}

impl ArchivedConversion {
    fn validate_at(&self, base: usize) -> Result<(), FieldError> {
        type C = ArchivedConversion;
        let currency = self.payer_currency.to_native();
        let (amount, rate, version, margin) = (
            self.payer_amount_minor.to_native(),
            self.rate.to_native(),
            self.rate_version.to_native(),
            self.margin_basis_points.to_native(),
        );
        // Without a payer currency every field is zero; with one, each is in range.
        let (rate_min, version_min, maxima) = if currency == 0 {
            (0, 0, [0; 4])
        } else {
            (
                1,
                1,
                [
                    AMOUNT_MINOR_MAX,
                    crate::fx::RATE_SCALED_MAX,
                    u64::from(u32::MAX),
                    u64::from(crate::fx::MARGIN_BASIS_POINTS_MAX),
                ],
            )
        };
        check_range(u64::from(currency), 0, 999, "conversion.payer_currency", base + offset_of!(C, payer_currency))?;
        check_range(amount, 0, maxima[0], "conversion.payer_amount_minor", base + offset_of!(C, payer_amount_minor))?;
        check_range(rate, rate_min, maxima[1], "conversion.rate", base + offset_of!(C, rate))?;
        check_range(
            u64::from(version),
            version_min,
            maxima[2],
            "conversion.rate_version",
            base + offset_of!(C, rate_version),
        )?;
        check_range(
            u64::from(margin),
            0,
            maxima[3],
            "conversion.margin_basis_points",
            base + offset_of!(C, margin_basis_points),
        )
    }
}

/// Consumer-presented (B scans C, 被扫): the merchant's acquirer scanned the payer's
/// payment code. Routed to the issuer by the code's prefix.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct PaymentCodeRequest {
    pub details: TransactionDetails,
    pub payment_code: PaymentCode,
    /// Set by the switch when the issuer (the payer's side) settles in another currency.
    pub conversion: Conversion,
}

/// The bytes of a scanned QR payload: UTF-8, zero-padded to 512 bytes. Its own archived
/// form (serialising is one copy).
#[derive(Portable, rkyv::bytecheck::CheckBytes, Clone, Copy, PartialEq, Eq)]
#[bytecheck(crate = rkyv::bytecheck)]
#[rkyv(crate = rkyv)]
#[repr(transparent)]
pub struct QrPayload(pub [u8; QR_PAYLOAD_SIZE_MAX]);

crate::field::archive_as_copy!(QrPayload);

impl Default for QrPayload {
    fn default() -> Self {
        Self([0; QR_PAYLOAD_SIZE_MAX])
    }
}

impl serde::Serialize for QrPayload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let length = self.0.iter().position(|&b| b == 0).unwrap_or(QR_PAYLOAD_SIZE_MAX);
        serializer.collect_str(&String::from_utf8_lossy(&self.0[..length]))
    }
}

/// Serialises bytes as lower-case hex (nonces and proofs in inspection output).
fn hex_bytes<S: serde::Serializer>(bytes: &[u8; PROOF_SIZE], serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = String::with_capacity(2 * PROOF_SIZE);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    serializer.serialize_str(&text)
}

impl std::fmt::Debug for QrPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let length = self.0.iter().position(|&b| b == 0).unwrap_or(QR_PAYLOAD_SIZE_MAX);
        write!(f, "{:?}", String::from_utf8_lossy(&self.0[..length]))
    }
}

/// Merchant-presented (C scans B, 主扫): the payer's wallet scanned the merchant's QR code.
/// Routed to the acquirer by the QR's network GUID.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct QrPaymentRequest {
    pub details: TransactionDetails,
    /// Bytes of `qr_payload` in use (1..=512).
    pub qr_length: u16,
    pub reserved: [u8; 6],
    /// The scanned payload as UTF-8 (EMVCo MPM TLV, or a UnionPay URL), zero-padded.
    pub qr_payload: QrPayload,
}

impl QrPaymentRequest {
    /// Sets the payload, checking its size. The text is checked on encode.
    pub fn set_payload(&mut self, payload: &str) -> Result<(), FieldProblem> {
        if payload.len() > QR_PAYLOAD_SIZE_MAX {
            return Err(FieldProblem::TooLong { capacity: QR_PAYLOAD_SIZE_MAX as u32 });
        }
        self.qr_payload = QrPayload::default();
        self.qr_payload.0[..payload.len()].copy_from_slice(payload.as_bytes());
        self.qr_length = payload.len() as u16;
        Ok(())
    }

    pub fn payload_text(&self) -> &str {
        qr_text(&self.qr_payload, self.qr_length)
    }
}

fn qr_text(payload: &QrPayload, length: u16) -> &str {
    let length = usize::from(length).min(QR_PAYLOAD_SIZE_MAX);
    std::str::from_utf8(&payload.0[..length]).unwrap_or("<invalid utf-8>")
}

impl ArchivedQrPaymentRequest {
    /// The scanned payload (valid UTF-8 once the frame was decoded).
    pub fn payload_text(&self) -> &str {
        qr_text(&self.qr_payload, self.qr_length.to_native())
    }
}

/// A reply to a payment, reversal or refund: approved, declined, or a switch answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct Reply {
    /// The originator of the request answered (echoed).
    pub originator: InstitutionId,
    /// The originator's transaction id of the request answered (echoed).
    pub originator_transaction_id: TransactionId,
    /// The switch reference of the request answered (zero only when the switch refused the
    /// request before assigning one).
    pub switch_reference: u64,
    /// Amount approved, in minor units (echoes the request's amount when declined).
    pub amount_minor: u64,
    /// When the reply was made: Unix milliseconds, UTC.
    pub reply_time_ms: i64,
    /// ISO 4217 numeric.
    pub currency: u16,
    /// [`ReplyCode`].
    pub code: u16,
    pub reserved: [u8; 4],
    /// Set by the issuer on approval (ISO 8583 DE38).
    pub authorization_code: AuthorizationCode,
    /// Who decided: the issuer or acquirer, or the switch's own id for switch answers.
    pub responder: InstitutionId,
    /// The payer's side of a converted transaction, as the switch set it (echoed from
    /// the switch's own state, whatever a receiver put here).
    pub conversion: Conversion,
}

impl ArchivedReply {
    pub fn code(&self) -> ReplyCode {
        // Decoded bodies were validated, so the code is in the table.
        ReplyCode::try_from(self.code.to_native()).unwrap_or(ReplyCode::FormatError)
    }

    pub fn switch_reference(&self) -> SwitchReference {
        SwitchReference(self.switch_reference.to_native())
    }
}

/// A request that refers to an earlier transaction: a reversal (kind `ReversalRequest`) or
/// a refund (kind `RefundRequest`). The original is named by its switch reference, or, when
/// the sender never learnt it (it timed out), by the original originator transaction id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct LinkedRequest {
    pub originator: InstitutionId,
    /// This reversal's or refund's own id at the originator.
    pub originator_transaction_id: TransactionId,
    /// This message's switch reference (zero from the originator).
    pub switch_reference: u64,
    /// The original transaction's switch reference, or zero if unknown to the sender.
    pub original_switch_reference: u64,
    /// Amount to reverse (the original's) or to refund (at most the original's).
    pub amount_minor: u64,
    pub transaction_time_ms: i64,
    pub currency: u16,
    /// Reversal: [`ReversalReason`]. Refund: zero.
    pub reason: u16,
    pub reserved: [u8; 4],
    /// The original transaction's originator transaction id, or empty if the switch
    /// reference is given.
    pub original_originator_transaction_id: TransactionId,
    /// Set by the switch on a refund or reversal of a converted payment: what the payer
    /// gets back in its currency.
    pub conversion: Conversion,
}

/// Ask the switch for a transaction's state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct StatusQuery {
    pub originator: InstitutionId,
    /// The queried transaction's originator transaction id (the sender's own).
    pub original_originator_transaction_id: TransactionId,
    /// The queried transaction's switch reference, or zero if unknown.
    pub original_switch_reference: u64,
    pub query_time_ms: i64,
}

/// The switch's answer to a status query.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct StatusReply {
    pub originator: InstitutionId,
    pub original_originator_transaction_id: TransactionId,
    pub original_switch_reference: u64,
    pub amount_minor: u64,
    pub reply_time_ms: i64,
    pub currency: u16,
    /// The final [`ReplyCode`] if there is one (zero while in flight or unknown).
    pub code: u16,
    /// [`TransactionStatus`].
    pub status: u8,
    pub reserved: [u8; 3],
}

/// The switch's answer to a frame it could not accept: which check failed and where.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[rkyv(derive(Debug))]
pub struct Reject {
    /// Byte offset in the rejected frame (from its first header byte) of the problem.
    pub offset: u32,
    /// [`crate::RejectReason`].
    pub reason: u16,
    /// The kind byte of the rejected frame (as received).
    pub rejected_kind: u8,
    pub reserved: u8,
    /// Human-readable detail, never containing a payment code.
    pub detail: RejectDetail,
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

impl Validate for ArchivedSignOnChallenge {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_text(checks, &self.switch_id, "switch_id", offset_of!(Self, switch_id))?;
        check_range(
            u64::from(self.protocol_version.to_native()),
            1,
            0xFFFF,
            "protocol_version",
            offset_of!(Self, protocol_version),
        )?;
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))
    }
}

impl Validate for ArchivedSignOnRequest {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_text(checks, &self.participant, "participant", offset_of!(Self, participant))?;
        check_range(
            u64::from(self.protocol_version.to_native()),
            1,
            0xFFFF,
            "protocol_version",
            offset_of!(Self, protocol_version),
        )?;
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))
    }
}

impl Validate for ArchivedSignOnResult {
    fn validate(&self, _: MessageKind, _: Checks) -> Result<(), FieldError> {
        check_code::<ReplyCode>(self.code.to_native(), "code", offset_of!(Self, code))?;
        crate::MacAlgorithm::try_from(self.frame_mac).map_err(|value| {
            fail("frame_mac", offset_of!(Self, frame_mac), FieldProblem::UnknownCode { value: u32::from(value) })
        })?;
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))
    }
}

impl Validate for ArchivedEcho {
    fn validate(&self, _: MessageKind, _: Checks) -> Result<(), FieldError> {
        check_time(self.sent_time_ms.to_native(), "sent_time_ms", offset_of!(Self, sent_time_ms))
    }
}

impl Validate for ArchivedSignOff {
    fn validate(&self, kind: MessageKind, _: Checks) -> Result<(), FieldError> {
        let offset = offset_of!(Self, code);
        match kind {
            MessageKind::SignOffRequest => check_code::<SignOffReason>(self.code.to_native(), "code", offset)?,
            _ => check_code::<ReplyCode>(self.code.to_native(), "code", offset)?,
        }
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))
    }
}

impl Validate for ArchivedPaymentCodeRequest {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        self.details.validate_at(offset_of!(Self, details), true, checks)?;
        check_text(checks, &self.payment_code, "payment_code", offset_of!(Self, payment_code))?;
        self.conversion.validate_at(offset_of!(Self, conversion))
    }
}

impl Validate for ArchivedQrPaymentRequest {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        self.details.validate_at(offset_of!(Self, details), false, checks)?;
        let length = self.qr_length.to_native();
        check_range(u64::from(length), 1, QR_PAYLOAD_SIZE_MAX as u64, "qr_length", offset_of!(Self, qr_length))?;
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))?;
        let base = offset_of!(Self, qr_payload);
        let (text, padding) = self.qr_payload.0.split_at(usize::from(length));
        if let Some(index) = padding.iter().position(|&b| b != 0) {
            let index = (usize::from(length) + index) as u32;
            return Err(fail("qr_payload", base, FieldProblem::PaddingNotZero { index }));
        }
        // The payload's bytes are public in the model, so both directions check them.
        // `qr_length` gives its end: a zero byte inside it is a bad character.
        if let Some(index) = text.iter().position(|&b| b == 0) {
            return Err(fail("qr_payload", base, FieldProblem::BadCharacter { index: index as u32 }));
        }
        crate::field::check_text(text, crate::field::Charset::Utf8, true)
            .map(|_| ())
            .map_err(|problem| fail("qr_payload", base, problem))
    }
}

impl Validate for ArchivedReply {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_text(checks, &self.originator, "originator", offset_of!(Self, originator))?;
        check_text(
            checks,
            &self.originator_transaction_id,
            "originator_transaction_id",
            offset_of!(Self, originator_transaction_id),
        )?;
        check_range(
            self.amount_minor.to_native(),
            0,
            AMOUNT_MINOR_MAX,
            "amount_minor",
            offset_of!(Self, amount_minor),
        )?;
        check_time(self.reply_time_ms.to_native(), "reply_time_ms", offset_of!(Self, reply_time_ms))?;
        check_range(u64::from(self.currency.to_native()), 0, 999, "currency", offset_of!(Self, currency))?;
        check_code::<ReplyCode>(self.code.to_native(), "code", offset_of!(Self, code))?;
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))?;
        check_text(checks, &self.authorization_code, "authorization_code", offset_of!(Self, authorization_code))?;
        check_text(checks, &self.responder, "responder", offset_of!(Self, responder))?;
        self.conversion.validate_at(offset_of!(Self, conversion))
    }
}

impl Validate for ArchivedLinkedRequest {
    fn validate(&self, kind: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_text(checks, &self.originator, "originator", offset_of!(Self, originator))?;
        check_text(
            checks,
            &self.originator_transaction_id,
            "originator_transaction_id",
            offset_of!(Self, originator_transaction_id),
        )?;
        check_range(
            self.amount_minor.to_native(),
            1,
            AMOUNT_MINOR_MAX,
            "amount_minor",
            offset_of!(Self, amount_minor),
        )?;
        check_time(self.transaction_time_ms.to_native(), "transaction_time_ms", offset_of!(Self, transaction_time_ms))?;
        check_range(u64::from(self.currency.to_native()), 1, 999, "currency", offset_of!(Self, currency))?;
        let reason_offset = offset_of!(Self, reason);
        if kind == MessageKind::ReversalRequest {
            check_code::<ReversalReason>(self.reason.to_native(), "reason", reason_offset)?;
        } else {
            check_reserved(&self.reason.to_native().to_le_bytes(), "reason", reason_offset)?;
        }
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))?;
        // The original is named by its switch reference, its originator transaction id, or
        // both; with neither it cannot be found.
        let original_id_offset = offset_of!(Self, original_originator_transaction_id);
        let original_id = &self.original_originator_transaction_id;
        self.conversion.validate_at(offset_of!(Self, conversion))?;
        let checked = if checks == Checks::Wire || original_id.is_empty() { original_id.check() } else { Ok(()) };
        match checked {
            Ok(()) => Ok(()),
            Err(FieldProblem::Empty) if self.original_switch_reference.to_native() != 0 => Ok(()),
            Err(FieldProblem::Empty) => {
                Err(fail("original_switch_reference", offset_of!(Self, original_switch_reference), FieldProblem::Empty))
            }
            Err(problem) => Err(fail("original_originator_transaction_id", original_id_offset, problem)),
        }
    }
}

impl Validate for ArchivedStatusQuery {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_text(checks, &self.originator, "originator", offset_of!(Self, originator))?;
        check_text(
            checks,
            &self.original_originator_transaction_id,
            "original_originator_transaction_id",
            offset_of!(Self, original_originator_transaction_id),
        )?;
        check_time(self.query_time_ms.to_native(), "query_time_ms", offset_of!(Self, query_time_ms))
    }
}

impl Validate for ArchivedStatusReply {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_text(checks, &self.originator, "originator", offset_of!(Self, originator))?;
        check_text(
            checks,
            &self.original_originator_transaction_id,
            "original_originator_transaction_id",
            offset_of!(Self, original_originator_transaction_id),
        )?;
        check_range(
            self.amount_minor.to_native(),
            0,
            AMOUNT_MINOR_MAX,
            "amount_minor",
            offset_of!(Self, amount_minor),
        )?;
        check_time(self.reply_time_ms.to_native(), "reply_time_ms", offset_of!(Self, reply_time_ms))?;
        check_range(u64::from(self.currency.to_native()), 0, 999, "currency", offset_of!(Self, currency))?;
        check_code::<ReplyCode>(self.code.to_native(), "code", offset_of!(Self, code))?;
        TransactionStatus::try_from(self.status)
            .map_err(|v| fail("status", offset_of!(Self, status), FieldProblem::UnknownCode { value: u32::from(v) }))?;
        check_reserved(&self.reserved, "reserved", offset_of!(Self, reserved))
    }
}

impl Validate for ArchivedReject {
    fn validate(&self, _: MessageKind, checks: Checks) -> Result<(), FieldError> {
        check_code::<crate::RejectReason>(self.reason.to_native(), "reason", offset_of!(Self, reason))?;
        check_reserved(&[self.reserved], "reserved", offset_of!(Self, reserved))?;
        check_text(checks, &self.detail, "detail", offset_of!(Self, detail))
    }
}

// ---------------------------------------------------------------------------------------
// The kind table
// ---------------------------------------------------------------------------------------

/// Declares the kind table once: the `MessageKind` byte, the owned `Message`, the borrowed
/// zero-copy `MessageRef`, and the per-kind dispatch the frame codec needs.
macro_rules! message_kinds {
    // What `Message` holds for a body: the body, or a box of it for a `boxed` kind.
    (@held $body:ident) => { $body };
    (@held $body:ident boxed) => { Box<$body> };
    ($($(#[$meta:meta])* $variant:ident = $value:literal => $body:ident / $archived:ident, $size:literal $(, $boxed:ident)?;)*) => {
        /// The kind byte of a frame. Each kind has one body layout of a fixed size.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageKind {
            $($(#[$meta])* $variant = $value,)*
        }

        impl MessageKind {
            /// Every kind, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// Size of this kind's body in bytes.
            pub const fn body_size(self) -> usize {
                match self {
                    $(Self::$variant => $size,)*
                }
            }

            /// The body type's name, as `PROTOCOL.md` names it.
            pub const fn body_name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($body),)*
                }
            }
        }

        impl TryFrom<u8> for MessageKind {
            type Error = u8;
            fn try_from(value: u8) -> Result<Self, u8> {
                match value {
                    $($value => Ok(Self::$variant),)*
                    other => Err(other),
                }
            }
        }

        // Layout assertions: the archived size is the documented size, a multiple of 8.
        $(
            const _: () = assert!(std::mem::size_of::<$archived>() == $size);
            const _: () = assert!($size % 8 == 0);
            const _: () = assert!(std::mem::align_of::<$archived>() <= 8);
        )*

        /// An owned message: the model the encoder takes. The QR request (720 bytes) is
        /// boxed: owned messages move through the switch's queues, and every move copies
        /// the enum's full size (264 bytes with the box, 728 without).
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
        pub enum Message {
            $($(#[$meta])* $variant(message_kinds!(@held $body $($boxed)?)),)*
        }

        impl Message {
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(Self::$variant(_) => MessageKind::$variant,)*
                }
            }
        }

        /// A validated body read in place from a receive buffer (zero-copy).
        #[derive(Debug, Clone, Copy)]
        pub enum MessageRef<'a> {
            $($(#[$meta])* $variant(&'a $archived),)*
        }

        impl<'a> MessageRef<'a> {
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(Self::$variant(_) => MessageKind::$variant,)*
                }
            }

            /// Copies the body out into the owned model.
            pub fn to_message(&self) -> Message {
                match *self {
                    $(Self::$variant(body) => Message::$variant(
                        rkyv::deserialize::<$body, rkyv::rancor::Panic>(body)
                            .unwrap_or_else(|never| match never {})
                            .into(),
                    ),)*
                }
            }

            /// Checks the layout (bytecheck) and then the semantics ([`Validate`]) of `body`,
            /// which must be exactly `kind.body_size()` bytes, 8-byte aligned.
            pub(crate) fn access(kind: MessageKind, body: &'a [u8], checks: Checks) -> Result<Self, BodyError> {
                match kind {
                    $(MessageKind::$variant => {
                        let archived = rkyv::access::<$archived, rkyv::rancor::Failure>(body)
                            .map_err(|_| BodyError::Layout)?;
                        archived.validate(kind, checks).map_err(BodyError::Field)?;
                        Ok(Self::$variant(archived))
                    })*
                }
            }
        }

        /// Appends `message`'s archived body to `out` (rkyv serialization, no allocation
        /// beyond `out`'s growth).
        pub(crate) fn serialize_body(message: &Message, out: &mut rkyv::util::AlignedVec<16>) {
            match message {
                $(Message::$variant(body) => {
                    let body: &$body = std::borrow::Borrow::borrow(body);
                    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Panic>(body, &mut *out)
                        .unwrap_or_else(|never| match never {});
                })*
            }
        }
    };
}

/// Why a body failed its check after framing was fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// bytecheck refused the layout (misaligned or wrong size; the frame checks make this
    /// unreachable for well-framed input, but it is checked, not assumed).
    Layout,
    Field(FieldError),
}

message_kinds! {
    /// Switch to participant: first frame of a connection.
    SignOnChallenge = 0x01 => SignOnChallenge / ArchivedSignOnChallenge, 56;
    /// Participant to switch: identity and key proof.
    SignOnRequest = 0x02 => SignOnRequest / ArchivedSignOnRequest, 88;
    /// Switch to participant: sign-on outcome.
    SignOnResult = 0x03 => SignOnResult / ArchivedSignOnResult, 56;
    /// Either way: heartbeat.
    EchoRequest = 0x04 => Echo / ArchivedEcho, 16;
    /// Either way: heartbeat answer.
    EchoReply = 0x05 => Echo / ArchivedEcho, 16;
    /// Either way: end the session after in-flight work drains.
    SignOffRequest = 0x06 => SignOff / ArchivedSignOff, 8;
    /// Answer to a sign-off; the sender then closes the connection.
    SignOffReply = 0x07 => SignOff / ArchivedSignOff, 8;
    /// Consumer-presented payment request (payment code).
    PaymentCodeRequest = 0x10 => PaymentCodeRequest / ArchivedPaymentCodeRequest, 256;
    /// Merchant-presented payment request (QR payload).
    QrPaymentRequest = 0x11 => QrPaymentRequest / ArchivedQrPaymentRequest, 720, boxed;
    /// Reply to either payment request.
    PaymentReply = 0x12 => Reply / ArchivedReply, 128;
    /// Reversal of an earlier request.
    ReversalRequest = 0x20 => LinkedRequest / ArchivedLinkedRequest, 144;
    /// Acknowledgement of a reversal.
    ReversalReply = 0x21 => Reply / ArchivedReply, 128;
    /// Refund of an earlier approval.
    RefundRequest = 0x30 => LinkedRequest / ArchivedLinkedRequest, 144;
    /// Reply to a refund.
    RefundReply = 0x31 => Reply / ArchivedReply, 128;
    /// Transaction status query.
    StatusQuery = 0x40 => StatusQuery / ArchivedStatusQuery, 64;
    /// Answer to a status query.
    StatusReply = 0x41 => StatusReply / ArchivedStatusReply, 80;
    /// Switch to participant: a frame was refused.
    Reject = 0x7F => Reject / ArchivedReject, 64;
}

/// The largest body of any kind.
pub const BODY_SIZE_MAX: usize = {
    let mut max = 0;
    let mut index = 0;
    while index < MessageKind::ALL.len() {
        let size = MessageKind::ALL[index].body_size();
        if size > max {
            max = size;
        }
        index += 1;
    }
    max
};
const _: () = assert!(BODY_SIZE_MAX <= 1024);

// Owned messages move through queues by value: keep them small (see `Message`).
const _: () = assert!(std::mem::size_of::<Message>() <= 264);
