//! Translation between ISO 8583 messages and the canonical message model, both ways,
//! lossless for every field the model carries.
//!
//! The 1987 fields cannot hold the whole model (a 32-character transaction id, UTF-8
//! names, a QR payload, millisecond times, the switch reference), so field 48 (additional
//! data, private) carries the canonical extras as subelements `TT LLL value` (a 2-digit
//! tag, the value's length in bytes as 3 digits, the UTF-8 value). Standard fields are
//! filled too, for participants that read only them. On the way in, subelements win over
//! the standard fields they refine.
//!
//! | field | from the model |
//! |---|---|
//! | MTI | 0200 payment or refund (DE3 `20xxxx`), 0210 reply; 0400 cancel reversal, 0420 reversal advice (the switch's), 0410/0430 acknowledgements; 0800/0810 network management (DE70 001 sign-on, 002 sign-off, 301 echo) |
//! | DE2 | payment code |
//! | DE3 | `000000` purchase, `200000` refund |
//! | DE4 | amount in minor units (12 digits: at most 999,999,999,999) |
//! | DE7 | time as MMDDhhmmss UTC |
//! | DE3 | on requests, checked: `processing_code_supported` (else `UnsupportedProcessingCode`) |
//! | DE11 | STAN: the echo sequence, or the switch reference's sequence, mod 10^6 (an answer to a participant's own request carries its DE11 back: `crate::iso_answer::Echo`); mandatory on requests |
//! | DE12, DE13 | time as hhmmss and MMDD in China Standard Time (UTC+8) |
//! | DE18 | merchant category code |
//! | DE22 | `031` payment code scanned, `032` QR scanned |
//! | DE25 | `00` |
//! | DE32 | originator institution id |
//! | DE37 | the last 12 characters of the originator transaction id |
//! | DE38 | authorisation code (6; longer ones whole in DE48 14) |
//! | DE39 | reply code's ISO equivalent (`ReplyCode::iso8583_response_code`) |
//! | DE41 | terminal id, space-padded to 8 |
//! | DE42 | merchant id, space-padded to 15 (a 16th character in DE48 13) |
//! | DE43 | name (25), city (13), ISO 3166 alpha-2 country (2), in wire bytes: in a GBK field (the profile's `data_enc: "gbk"`) Chinese as GBK, else non-ASCII shown as `?` |
//! | DE49 | currency |
//! | DE70 | network management code |
//! | DE90 | original MTI, original STAN, then zeros |
//!
//! DE48 subelements: 01 originator transaction id, 02 merchant name, 03 merchant city,
//! 04 QR payload, 05 merchant country (numeric), 06 time (Unix ms), 07 switch reference
//! (16 hex digits), 08 original switch reference, 09 original originator transaction id,
//! 10 responder, 11 echo sequence, 12 reason code, 13 merchant id, 14 authorisation code,
//! 15 status (status replies are native only and not translated), 16 the conversion of a
//! cross-border transaction (payer currency 3 digits, payer amount 16, rate scaled by
//! 10^10 17, rate version 10, margin in basis points 4; only when converted).

use crate::code::ReplyCode;
use crate::field::{
    AuthorizationCode, City, FieldText, InstitutionId, MerchantId, MerchantName, PaymentCode, TerminalId, TransactionId,
};
use crate::iso8583::{IsoError, IsoMessage};
use crate::message::{
    Conversion, Echo, LinkedRequest, Message, PaymentCodeRequest, QrPaymentRequest, Reply, SignOff, TransactionDetails,
};

/// Largest amount DE4 (12 digits) carries.
pub const DE4_AMOUNT_MAX: u64 = 999_999_999_999;
/// China Standard Time, for DE12 and DE13 (no daylight saving).
const CHINA_OFFSET_MS: i64 = 8 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("MTI {mti} is not translated")]
    UnsupportedMti { mti: String },
    #[error("{kind} messages have no ISO 8583 form")]
    UnsupportedKind { kind: &'static str },
    #[error("field {field} is missing")]
    MissingField { field: u8 },
    #[error("field {field}: {problem}")]
    BadField { field: u8, problem: String },
    #[error("field 48 subelement {tag:02}: {problem}")]
    BadSubelement { tag: u8, problem: String },
    #[error("field 48 is malformed at byte {offset}")]
    BadAdditionalData { offset: u32 },
    #[error("processing code {code} (DE3) is not one the switch carries")]
    UnsupportedProcessingCode { code: String },
    #[error("amount {amount} exceeds DE4's 12 digits")]
    AmountTooLarge { amount: u64 },
    #[error(transparent)]
    Iso(#[from] IsoError),
}

/// What an ISO 8583 message means in the model.
// `Message` is large (a QR request); like `Message` itself it is built in place and moved
// once, so it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    Message(Message),
    /// 0800 with DE70 001: the ISO participant signs on as `institution` (its identity is
    /// proven by the connection, not this field; see the switch's session rules).
    SignOn {
        institution: Option<InstitutionId>,
    },
    /// 0810 with DE70 001: the switch's answer to a sign-on.
    SignOnReply {
        code: ReplyCode,
    },
}

// ---------------------------------------------------------------------------------------
// Field 48 subelements
// ---------------------------------------------------------------------------------------

mod tag {
    pub const ORIGINATOR_TRANSACTION_ID: u8 = 1;
    pub const MERCHANT_NAME: u8 = 2;
    pub const MERCHANT_CITY: u8 = 3;
    pub const QR_PAYLOAD: u8 = 4;
    pub const MERCHANT_COUNTRY: u8 = 5;
    pub const TIME_MS: u8 = 6;
    pub const SWITCH_REFERENCE: u8 = 7;
    pub const ORIGINAL_SWITCH_REFERENCE: u8 = 8;
    pub const ORIGINAL_TRANSACTION_ID: u8 = 9;
    pub const RESPONDER: u8 = 10;
    pub const SEQUENCE: u8 = 11;
    pub const REASON: u8 = 12;
    pub const MERCHANT_ID: u8 = 13;
    pub const AUTHORIZATION_CODE: u8 = 14;
    pub const CONVERSION: u8 = 16;
}

/// Subelement 16, the conversion: payer currency (3 digits), payer amount (16), rate
/// scaled by 10^10 (17), rate version (10), margin in basis points (4); absent when the
/// transaction is not converted.
fn put_conversion(subelements: &mut SubelementWriter, conversion: &Conversion) {
    if conversion.is_some() {
        subelements.put(
            tag::CONVERSION,
            &format!(
                "{:03}{:016}{:017}{:010}{:04}",
                conversion.payer_currency,
                conversion.payer_amount_minor,
                conversion.rate,
                conversion.rate_version,
                conversion.margin_basis_points
            ),
        );
    }
}

fn conversion(subelements: &Subelements<'_>) -> Result<Conversion, TranslateError> {
    let Some(value) = subelements.get(tag::CONVERSION) else { return Ok(Conversion::NONE) };
    let bad = || TranslateError::BadSubelement {
        tag: tag::CONVERSION,
        problem: "not 50 digits: currency 3, payer amount 16, rate 17, version 10, margin 4".to_string(),
    };
    if value.len() != 50 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| value[range].parse::<u64>().map_err(|_| bad());
    Ok(Conversion {
        payer_currency: u16::try_from(number(0..3)?).map_err(|_| bad())?,
        payer_amount_minor: number(3..19)?,
        rate: number(19..36)?,
        rate_version: u32::try_from(number(36..46)?).map_err(|_| bad())?,
        margin_basis_points: u16::try_from(number(46..50)?).map_err(|_| bad())?,
    })
}

/// Field 48's subelements, parsed.
#[derive(Debug)]
struct Subelements<'a> {
    values: [Option<&'a str>; 100],
}

impl<'a> Subelements<'a> {
    fn parse(field: &'a str) -> Result<Self, TranslateError> {
        let mut values = [None; 100];
        let mut position = 0;
        let bytes = field.as_bytes();
        while position < bytes.len() {
            let bad = TranslateError::BadAdditionalData { offset: position as u32 };
            let header = bytes.get(position..position + 5).ok_or(bad.clone())?;
            if !header.iter().all(u8::is_ascii_digit) {
                return Err(bad);
            }
            let tag = usize::from((header[0] - b'0') * 10 + (header[1] - b'0'));
            let length = header[2..].iter().fold(0usize, |n, b| n * 10 + usize::from(b - b'0'));
            let value = field.get(position + 5..position + 5 + length).ok_or(bad.clone())?;
            if values[tag].replace(value).is_some() {
                return Err(bad);
            }
            position += 5 + length;
        }
        Ok(Self { values })
    }

    fn get(&self, tag: u8) -> Option<&'a str> {
        self.values[usize::from(tag)]
    }
}

/// Builds field 48.
#[derive(Debug, Default)]
struct SubelementWriter {
    text: String,
}

impl SubelementWriter {
    fn put(&mut self, tag: u8, value: &str) {
        if !value.is_empty() {
            self.text.push_str(&format!("{tag:02}{:03}{value}", value.len()));
        }
    }

    fn finish(self, message: &mut IsoMessage) -> Result<(), TranslateError> {
        if !self.text.is_empty() {
            message.set_str(48, &self.text)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// (year, month, day, hour, minute, second) of Unix milliseconds, UTC (civil-from-days).
fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rest / 3600) as u32, (rest % 3600 / 60) as u32, (rest % 60) as u32)
}

fn set_times(message: &mut IsoMessage, time_ms: i64) -> Result<(), TranslateError> {
    let (_, month, day, hour, minute, second) = civil(time_ms);
    message.set_str(7, &format!("{month:02}{day:02}{hour:02}{minute:02}{second:02}"))?;
    let (_, month, day, hour, minute, second) = civil(time_ms + CHINA_OFFSET_MS);
    message.set_str(12, &format!("{hour:02}{minute:02}{second:02}"))?;
    message.set_str(13, &format!("{month:02}{day:02}"))?;
    Ok(())
}

/// `text` in `width` wire bytes of a fixed-layout field: printable ASCII as is; in a GBK
/// field (`gbk`, the profile's) every character GBK writes, in its GBK width; anything
/// else `?`. Cut at a character boundary, padded with spaces, so the layout holds.
fn fitted(text: &str, width: usize, gbk: bool) -> String {
    let mut fitted = String::with_capacity(width + 8);
    let mut used = 0;
    for c in text.chars() {
        let (shown, bytes) = if c.is_ascii() && !c.is_ascii_control() {
            (c, 1)
        } else if let Some(encoded) = gbk.then(|| crate::iso8583::gbk_bytes(c.encode_utf8(&mut [0; 4]))).flatten() {
            (c, encoded.len())
        } else {
            ('?', 1)
        };
        if used + bytes > width {
            break;
        }
        fitted.push(shown);
        used += bytes;
    }
    fitted.extend(std::iter::repeat_n(' ', width - used));
    fitted
}

/// DE43's name, city and country: 25, 13 and 2 wire bytes (GBK bytes in a GBK field,
/// else UTF-8 bytes), as text.
fn location(message: &IsoMessage) -> [&str; 3] {
    let text = message.get_str(43).unwrap_or("");
    let gbk = message.is_gbk(43);
    let mut cuts = [text.len(); 2];
    let mut used = 0;
    for (index, c) in text.char_indices() {
        for (cut, at) in cuts.iter_mut().zip([25, 38]) {
            if used >= at && *cut == text.len() {
                *cut = index;
            }
        }
        let bytes = if gbk && !c.is_ascii() { 2 } else { c.len_utf8() };
        used += bytes;
    }
    let [name_end, city_end] = cuts;
    let city_end = city_end.max(name_end);
    let (name, rest) = text.split_at(name_end);
    let (city, country) = rest.split_at(city_end - name_end);
    [name, city, country]
}

fn amount_digits(amount: u64) -> Result<String, TranslateError> {
    if amount > DE4_AMOUNT_MAX {
        return Err(TranslateError::AmountTooLarge { amount });
    }
    Ok(format!("{amount:012}"))
}

/// DE43's alpha-2 country (its last two characters) as ISO 3166 numeric; 0 if unknown.
fn country_numeric(alpha2: &str) -> u16 {
    crate::country::numeric(alpha2).unwrap_or(0)
}

/// DE43's alpha-2 country of an ISO 3166 numeric one; two spaces if unknown.
fn country_alpha2(numeric: u16) -> &'static str {
    crate::country::alpha2(numeric).unwrap_or("  ")
}

fn field(message: &IsoMessage, number: u8) -> Result<&str, TranslateError> {
    message.get_str(usize::from(number)).ok_or(TranslateError::MissingField { field: number })
}

fn parse_number<T: std::str::FromStr>(text: &str, field: u8) -> Result<T, TranslateError> {
    text.trim().parse().map_err(|_| TranslateError::BadField { field, problem: format!("{text:?} is not a number") })
}

fn text<T: std::str::FromStr<Err = crate::field::FieldProblem>>(value: &str, field: u8) -> Result<T, TranslateError> {
    value.trim_end().parse().map_err(|problem| TranslateError::BadField { field, problem: format!("{problem}") })
}

fn sub_text<T: std::str::FromStr<Err = crate::field::FieldProblem>>(value: &str, tag: u8) -> Result<T, TranslateError> {
    value.parse().map_err(|problem| TranslateError::BadSubelement { tag, problem: format!("{problem}") })
}

/// A switch reference subelement (16 hex digits), or zero when absent.
fn reference(subelements: &Subelements<'_>, tag: u8) -> Result<u64, TranslateError> {
    subelements.get(tag).map_or(Ok(0), |value| {
        u64::from_str_radix(value, 16)
            .map_err(|_| TranslateError::BadSubelement { tag, problem: "not 16 hexadecimal digits".into() })
    })
}

/// DE39 "10": approved for a partial amount (DE4). Read as an approval of DE4's amount, so
/// the switch, which supports no partial approval, refuses it unless DE4 is the whole
/// amount asked (`ReplyCode::ApprovalMismatch`) and reverses it at the issuer.
pub const DE39_PARTIAL_APPROVAL: &str = "10";

fn reply_code_from_iso(code: &str) -> ReplyCode {
    if code == DE39_PARTIAL_APPROVAL {
        return ReplyCode::Approved;
    }
    // An unknown DE39 is a decline without a specific reason: never an approval.
    ReplyCode::ALL.iter().copied().find(|c| c.iso8583_response_code() == code).unwrap_or(ReplyCode::DoNotHonour)
}

// ---------------------------------------------------------------------------------------
// Model to ISO 8583
// ---------------------------------------------------------------------------------------

fn put_details(
    message: &mut IsoMessage,
    subelements: &mut SubelementWriter,
    details: &TransactionDetails,
) -> Result<(), TranslateError> {
    message.set_str(4, &amount_digits(details.amount_minor)?)?;
    set_times(message, details.transaction_time_ms)?;
    message.set_str(11, &format!("{:06}", (details.switch_reference & 0xFFFF_FFFF_FFFF) % 1_000_000))?;
    if details.merchant_category_code != 0 {
        message.set_str(18, &format!("{:04}", details.merchant_category_code))?;
    }
    message.set_str(25, "00")?;
    message.set_str(32, details.originator.as_str())?;
    let id = details.originator_transaction_id.as_str();
    message.set_str(37, &fitted(&id[id.len().saturating_sub(12)..], 12, false))?;
    if !details.terminal_id.is_empty() {
        message.set_str(41, &fitted(details.terminal_id.as_str(), 8, false))?;
    }
    if !details.merchant_id.is_empty() {
        message.set_str(42, &fitted(details.merchant_id.as_str(), 15, false))?;
        if details.merchant_id.as_str().len() > 15 {
            subelements.put(tag::MERCHANT_ID, details.merchant_id.as_str());
        }
    }
    let location = format!(
        "{}{}{}",
        fitted(details.merchant_name.as_str(), 25, message.is_gbk(43)),
        fitted(details.merchant_city.as_str(), 13, message.is_gbk(43)),
        country_alpha2(details.merchant_country)
    );
    message.set_str(43, &location)?;
    message.set_str(49, &format!("{:03}", details.currency))?;
    subelements.put(tag::ORIGINATOR_TRANSACTION_ID, id);
    subelements.put(tag::MERCHANT_NAME, details.merchant_name.as_str());
    subelements.put(tag::MERCHANT_CITY, details.merchant_city.as_str());
    if details.merchant_country != 0 {
        subelements.put(tag::MERCHANT_COUNTRY, &format!("{:03}", details.merchant_country));
    }
    subelements.put(tag::TIME_MS, &details.transaction_time_ms.to_string());
    if details.switch_reference != 0 {
        subelements.put(tag::SWITCH_REFERENCE, &format!("{:016X}", details.switch_reference));
    }
    Ok(())
}

fn put_reply(message: &mut IsoMessage, reply: &Reply) -> Result<(), TranslateError> {
    let code = ReplyCode::try_from(reply.code)
        .map_err(|v| TranslateError::BadField { field: 39, problem: format!("reply code {v} is not in the table") })?;
    let mut subelements = SubelementWriter::default();
    message.set_str(4, &amount_digits(reply.amount_minor)?)?;
    set_times(message, reply.reply_time_ms)?;
    message.set_str(11, &format!("{:06}", (reply.switch_reference & 0xFFFF_FFFF_FFFF) % 1_000_000))?;
    message.set_str(32, reply.originator.as_str())?;
    let id = reply.originator_transaction_id.as_str();
    message.set_str(37, &fitted(&id[id.len().saturating_sub(12)..], 12, false))?;
    if !reply.authorization_code.is_empty() {
        message.set_str(38, &fitted(reply.authorization_code.as_str(), 6, false))?;
        if reply.authorization_code.as_str().len() > 6 {
            subelements.put(tag::AUTHORIZATION_CODE, reply.authorization_code.as_str());
        }
    }
    message.set_str(39, code.iso8583_response_code())?;
    message.set_str(49, &format!("{:03}", reply.currency))?;
    subelements.put(tag::ORIGINATOR_TRANSACTION_ID, id);
    subelements.put(tag::TIME_MS, &reply.reply_time_ms.to_string());
    if reply.switch_reference != 0 {
        subelements.put(tag::SWITCH_REFERENCE, &format!("{:016X}", reply.switch_reference));
    }
    subelements.put(tag::RESPONDER, reply.responder.as_str());
    put_conversion(&mut subelements, &reply.conversion);
    // The exact code, where several of ours share one DE39 value in other tables.
    subelements.put(tag::REASON, &reply.code.to_string());
    subelements.finish(message)
}

fn put_linked(message: &mut IsoMessage, request: &LinkedRequest, original_mti: &str) -> Result<(), TranslateError> {
    let mut subelements = SubelementWriter::default();
    message.set_str(4, &amount_digits(request.amount_minor)?)?;
    set_times(message, request.transaction_time_ms)?;
    message.set_str(11, &format!("{:06}", (request.switch_reference & 0xFFFF_FFFF_FFFF) % 1_000_000))?;
    message.set_str(32, request.originator.as_str())?;
    let id = request.originator_transaction_id.as_str();
    message.set_str(37, &fitted(&id[id.len().saturating_sub(12)..], 12, false))?;
    message.set_str(49, &format!("{:03}", request.currency))?;
    let original_stan = (request.original_switch_reference & 0xFFFF_FFFF_FFFF) % 1_000_000;
    message.set_str(90, &format!("{original_mti}{original_stan:06}{}", "0".repeat(32)))?;
    subelements.put(tag::ORIGINATOR_TRANSACTION_ID, id);
    subelements.put(tag::TIME_MS, &request.transaction_time_ms.to_string());
    if request.switch_reference != 0 {
        subelements.put(tag::SWITCH_REFERENCE, &format!("{:016X}", request.switch_reference));
    }
    if request.original_switch_reference != 0 {
        subelements.put(tag::ORIGINAL_SWITCH_REFERENCE, &format!("{:016X}", request.original_switch_reference));
    }
    subelements.put(tag::ORIGINAL_TRANSACTION_ID, request.original_originator_transaction_id.as_str());
    if request.reason != 0 {
        subelements.put(tag::REASON, &request.reason.to_string());
    }
    put_conversion(&mut subelements, &request.conversion);
    subelements.finish(message)
}

/// Translates a model message into `out` (cleared first).
pub fn to_iso(message: &Message, out: &mut IsoMessage) -> Result<(), TranslateError> {
    out.clear();
    match message {
        Message::PaymentCodeRequest(request) => {
            out.set_mti("0200")?;
            out.set_str(2, request.payment_code.digits())?;
            out.set_str(3, "000000")?;
            out.set_str(22, "031")?;
            let mut subelements = SubelementWriter::default();
            put_details(out, &mut subelements, &request.details)?;
            put_conversion(&mut subelements, &request.conversion);
            subelements.finish(out)
        }
        Message::QrPaymentRequest(request) => {
            out.set_mti("0200")?;
            out.set_str(3, "000000")?;
            out.set_str(22, "032")?;
            let mut subelements = SubelementWriter::default();
            put_details(out, &mut subelements, &request.details)?;
            subelements.put(tag::QR_PAYLOAD, request.payload_text());
            subelements.finish(out)
        }
        Message::PaymentReply(reply) => {
            out.set_mti("0210")?;
            out.set_str(3, "000000")?;
            put_reply(out, reply)
        }
        Message::RefundReply(reply) => {
            out.set_mti("0210")?;
            out.set_str(3, "200000")?;
            put_reply(out, reply)
        }
        Message::ReversalRequest(request) => {
            // The switch's own reversals are advices (stored and forwarded); a cancel from
            // the originator is a request.
            let advice = request.reason != crate::code::ReversalReason::OriginatorCancel.value();
            out.set_mti(if advice { "0420" } else { "0400" })?;
            out.set_str(3, "000000")?;
            put_linked(out, request, "0200")
        }
        Message::ReversalReply(reply) => {
            out.set_mti("0430")?;
            out.set_str(3, "000000")?;
            put_reply(out, reply)
        }
        Message::RefundRequest(request) => {
            out.set_mti("0200")?;
            out.set_str(3, "200000")?;
            put_linked(out, request, "0200")
        }
        Message::EchoRequest(echo) | Message::EchoReply(echo) => {
            let reply = matches!(message, Message::EchoReply(_));
            out.set_mti(if reply { "0810" } else { "0800" })?;
            set_times(out, echo.sent_time_ms)?;
            out.set_str(11, &format!("{:06}", echo.sequence % 1_000_000))?;
            if reply {
                out.set_str(39, "00")?;
            }
            out.set_str(70, "301")?;
            let mut subelements = SubelementWriter::default();
            subelements.put(tag::SEQUENCE, &echo.sequence.to_string());
            subelements.put(tag::TIME_MS, &echo.sent_time_ms.to_string());
            subelements.finish(out)
        }
        Message::SignOffRequest(sign_off) => {
            out.set_mti("0800")?;
            out.set_str(70, "002")?;
            let mut subelements = SubelementWriter::default();
            subelements.put(tag::REASON, &sign_off.code.to_string());
            subelements.finish(out)
        }
        Message::SignOffReply(sign_off) => {
            let code = ReplyCode::try_from(sign_off.code).unwrap_or(ReplyCode::FormatError);
            out.set_mti("0810")?;
            out.set_str(39, code.iso8583_response_code())?;
            out.set_str(70, "002")?;
            Ok(())
        }
        Message::SignOnResult(result) => {
            let code = ReplyCode::try_from(result.code).unwrap_or(ReplyCode::FormatError);
            out.set_mti("0810")?;
            out.set_str(39, code.iso8583_response_code())?;
            out.set_str(70, "001")?;
            Ok(())
        }
        Message::SignOnChallenge(_) => Err(TranslateError::UnsupportedKind { kind: "SignOnChallenge" }),
        Message::SignOnRequest(_) => Err(TranslateError::UnsupportedKind { kind: "SignOnRequest" }),
        Message::StatusQuery(_) => Err(TranslateError::UnsupportedKind { kind: "StatusQuery" }),
        Message::StatusReply(_) => Err(TranslateError::UnsupportedKind { kind: "StatusReply" }),
        Message::Reject(_) => Err(TranslateError::UnsupportedKind { kind: "Reject" }),
    }
}

// ---------------------------------------------------------------------------------------
// ISO 8583 to the model
// ---------------------------------------------------------------------------------------

/// The time of a message: DE48 06 if present, else DE7 in the year that puts it nearest
/// to `now_ms` (DE7 carries no year).
fn time_ms(message: &IsoMessage, subelements: &Subelements<'_>, now_ms: i64) -> Result<i64, TranslateError> {
    if let Some(value) = subelements.get(tag::TIME_MS) {
        return value
            .parse()
            .map_err(|_| TranslateError::BadSubelement { tag: tag::TIME_MS, problem: "not a number".into() });
    }
    let de7 = field(message, 7)?;
    let digit = |range: std::ops::Range<usize>| parse_number::<i64>(&de7[range], 7);
    let (month, day, hour, minute, second) = (digit(0..2)?, digit(2..4)?, digit(4..6)?, digit(6..8)?, digit(8..10)?);
    let (year, ..) = civil(now_ms);
    let candidates = [year - 1, year, year + 1].map(|y| {
        // days from civil (the inverse of `civil`).
        let y = if month <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000).max(0)
    });
    Ok(candidates.into_iter().min_by_key(|t| (t - now_ms).abs()).unwrap_or(0))
}

fn transaction_id(message: &IsoMessage, subelements: &Subelements<'_>) -> Result<TransactionId, TranslateError> {
    match subelements.get(tag::ORIGINATOR_TRANSACTION_ID) {
        Some(id) => sub_text(id, tag::ORIGINATOR_TRANSACTION_ID),
        None => text(field(message, 37)?.trim(), 37),
    }
}

fn details(
    message: &IsoMessage,
    subelements: &Subelements<'_>,
    now_ms: i64,
) -> Result<TransactionDetails, TranslateError> {
    let [location_name, location_city, location_country] = location(message);
    let name = match subelements.get(tag::MERCHANT_NAME) {
        Some(name) => sub_text::<MerchantName>(name, tag::MERCHANT_NAME)?,
        None => text(location_name.trim(), 43)?,
    };
    let city = match subelements.get(tag::MERCHANT_CITY) {
        Some(city) => sub_text::<City>(city, tag::MERCHANT_CITY)?,
        None => text(location_city.trim(), 43)?,
    };
    let merchant_id = match subelements.get(tag::MERCHANT_ID) {
        Some(id) => sub_text::<MerchantId>(id, tag::MERCHANT_ID)?,
        None => text(message.get_str(42).unwrap_or("").trim_end(), 42)?,
    };
    Ok(TransactionDetails {
        originator: text(field(message, 32)?, 32)?,
        originator_transaction_id: transaction_id(message, subelements)?,
        switch_reference: reference(subelements, tag::SWITCH_REFERENCE)?,
        amount_minor: parse_number(field(message, 4)?, 4)?,
        transaction_time_ms: time_ms(message, subelements, now_ms)?,
        currency: parse_number(field(message, 49)?, 49)?,
        merchant_category_code: message.get_str(18).map_or(Ok(0), |v| parse_number(v, 18))?,
        merchant_country: match subelements.get(tag::MERCHANT_COUNTRY) {
            Some(value) => parse_number(value, 48)?,
            None => country_numeric(location_country.trim()),
        },
        reserved: 0,
        merchant_id,
        terminal_id: text::<TerminalId>(message.get_str(41).unwrap_or("").trim_end(), 41)?,
        merchant_name: name,
        merchant_city: city,
    })
}

fn reply(message: &IsoMessage, subelements: &Subelements<'_>, now_ms: i64) -> Result<Reply, TranslateError> {
    let code = match subelements.get(tag::REASON) {
        Some(value) => ReplyCode::try_from(parse_number::<u16>(value, 48)?).map_err(|v| {
            TranslateError::BadSubelement { tag: tag::REASON, problem: format!("{v} is not a reply code") }
        })?,
        None => reply_code_from_iso(field(message, 39)?),
    };
    let authorization = match subelements.get(tag::AUTHORIZATION_CODE) {
        Some(value) => sub_text(value, tag::AUTHORIZATION_CODE)?,
        None => text::<AuthorizationCode>(message.get_str(38).unwrap_or("").trim_end(), 38)?,
    };
    Ok(Reply {
        originator: text(field(message, 32)?, 32)?,
        originator_transaction_id: transaction_id(message, subelements)?,
        switch_reference: reference(subelements, tag::SWITCH_REFERENCE)?,
        amount_minor: message.get_str(4).map_or(Ok(0), |v| parse_number(v, 4))?,
        reply_time_ms: time_ms(message, subelements, now_ms)?,
        currency: message.get_str(49).map_or(Ok(0), |v| parse_number(v, 49))?,
        code: code.value(),
        reserved: [0; 4],
        authorization_code: authorization,
        responder: subelements.get(tag::RESPONDER).map_or(Ok(InstitutionId::EMPTY), |v| sub_text(v, tag::RESPONDER))?,
        conversion: conversion(subelements)?,
    })
}

fn linked(message: &IsoMessage, subelements: &Subelements<'_>, now_ms: i64) -> Result<LinkedRequest, TranslateError> {
    Ok(LinkedRequest {
        originator: text(field(message, 32)?, 32)?,
        originator_transaction_id: transaction_id(message, subelements)?,
        switch_reference: reference(subelements, tag::SWITCH_REFERENCE)?,
        original_switch_reference: reference(subelements, tag::ORIGINAL_SWITCH_REFERENCE)?,
        amount_minor: parse_number(field(message, 4)?, 4)?,
        transaction_time_ms: time_ms(message, subelements, now_ms)?,
        currency: parse_number(field(message, 49)?, 49)?,
        reason: subelements.get(tag::REASON).map_or(Ok(0), |v| parse_number(v, 48))?,
        reserved: [0; 4],
        original_originator_transaction_id: subelements
            .get(tag::ORIGINAL_TRANSACTION_ID)
            .map_or(Ok(TransactionId::EMPTY), |v| sub_text(v, tag::ORIGINAL_TRANSACTION_ID))?,
        conversion: conversion(subelements)?,
    })
}

/// Whether the switch carries DE3 processing code `code`: transaction type 00 (purchase,
/// a payment) or 20 (refund), from account type 00 (unspecified), 10 (savings), 20
/// (checking) or 30 (credit), to account type 00.
pub fn processing_code_supported(code: &str) -> bool {
    let bytes = code.as_bytes();
    bytes.len() == 6
        && matches!(&bytes[..2], b"00" | b"20")
        && matches!(&bytes[2..4], b"00" | b"10" | b"20" | b"30")
        && &bytes[4..] == b"00"
}

/// The MTIs of the requests a participant sends: each needs its DE11 (STAN, echoed in the
/// answer) and a DE3 the switch carries.
const REQUEST_MTIS: [&str; 4] = ["0200", "0400", "0420", "0421"];

/// Translates an ISO 8583 message into the model. `now_ms` resolves DE7's missing year
/// when DE48 carries no exact time.
pub fn from_iso(message: &IsoMessage, now_ms: i64) -> Result<Translated, TranslateError> {
    if REQUEST_MTIS.contains(&message.mti()) {
        field(message, 11)?;
        let code = field(message, 3)?;
        if !processing_code_supported(code) {
            return Err(TranslateError::UnsupportedProcessingCode { code: code.to_string() });
        }
    }
    let subelements = Subelements::parse(message.get_str(48).unwrap_or(""))?;
    let processing = message.get_str(3).unwrap_or("000000");
    let refund = processing.starts_with("20");
    let translated = match (message.mti(), refund) {
        ("0200", false) => {
            let details = details(message, &subelements, now_ms)?;
            match (subelements.get(tag::QR_PAYLOAD), message.get_str(2)) {
                (Some(payload), _) => {
                    let mut request = QrPaymentRequest { details, ..QrPaymentRequest::default() };
                    request
                        .set_payload(payload)
                        .map_err(|p| TranslateError::BadSubelement { tag: tag::QR_PAYLOAD, problem: p.to_string() })?;
                    Message::QrPaymentRequest(request.into())
                }
                (None, Some(code)) => Message::PaymentCodeRequest(PaymentCodeRequest {
                    details,
                    payment_code: text::<PaymentCode>(code, 2)?,
                    conversion: conversion(&subelements)?,
                }),
                (None, None) => return Err(TranslateError::MissingField { field: 2 }),
            }
        }
        ("0200", true) => Message::RefundRequest(linked(message, &subelements, now_ms)?),
        ("0210", false) => Message::PaymentReply(reply(message, &subelements, now_ms)?),
        ("0210", true) => Message::RefundReply(reply(message, &subelements, now_ms)?),
        ("0400" | "0420" | "0421", _) => {
            let mut request = linked(message, &subelements, now_ms)?;
            if request.reason == 0 {
                request.reason = if message.mti() == "0400" {
                    crate::code::ReversalReason::OriginatorCancel.value()
                } else {
                    crate::code::ReversalReason::Timeout.value()
                };
            }
            Message::ReversalRequest(request)
        }
        ("0410" | "0430", _) => Message::ReversalReply(reply(message, &subelements, now_ms)?),
        (mti @ ("0800" | "0810"), _) => {
            let request = mti == "0800";
            match field(message, 70)? {
                "001" if request => {
                    return Ok(Translated::SignOn { institution: message.get_str(32).and_then(|v| v.parse().ok()) });
                }
                "001" => return Ok(Translated::SignOnReply { code: reply_code_from_iso(field(message, 39)?) }),
                "002" if request => Message::SignOffRequest(SignOff {
                    code: subelements.get(tag::REASON).map_or(Ok(0), |v| parse_number(v, 48))?,
                    reserved: [0; 6],
                }),
                "002" => Message::SignOffReply(SignOff {
                    code: reply_code_from_iso(field(message, 39)?).value(),
                    reserved: [0; 6],
                }),
                "301" => {
                    let sequence = match subelements.get(tag::SEQUENCE) {
                        Some(value) => parse_number(value, 48)?,
                        None => parse_number(field(message, 11)?, 11)?,
                    };
                    let echo = Echo { sequence, sent_time_ms: time_ms(message, &subelements, now_ms)? };
                    if request { Message::EchoRequest(echo) } else { Message::EchoReply(echo) }
                }
                other => {
                    return Err(TranslateError::BadField {
                        field: 70,
                        problem: format!("network code {other} is not translated"),
                    });
                }
            }
        }
        (mti, _) => return Err(TranslateError::UnsupportedMti { mti: mti.to_string() }),
    };
    Ok(Translated::Message(translated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Profile;

    /// Model to ISO 8583 to bytes (both profiles) to ISO 8583 to model: the same message.
    fn round_trip(message: &Message) {
        for name in Profile::BUILTIN {
            let profile = Profile::builtin(name).expect("built in");
            let mut iso = IsoMessage::default();
            to_iso(message, &mut iso).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut bytes = Vec::new();
            profile.pack(&iso, &mut bytes).unwrap_or_else(|e| panic!("{name}: {e} packing {iso:?}"));
            let mut decoded = IsoMessage::default();
            profile.unpack(&bytes, &mut decoded).expect("unpacks");
            let back = from_iso(&decoded, crate::sample::SAMPLE_TIME_MS).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, Translated::Message(message.clone()), "{name}");
        }
    }

    #[test]
    fn every_translatable_sample_round_trips_losslessly() {
        let mut translated = 0;
        for message in crate::sample::all_kinds() {
            let mut iso = IsoMessage::default();
            match to_iso(&message, &mut iso) {
                Err(TranslateError::UnsupportedKind { .. }) => continue,
                Err(error) => panic!("{:?}: {error}", message.kind()),
                Ok(()) => {}
            }
            if matches!(message, Message::SignOnResult(_)) {
                continue; // translated to 0810/001, which reads back as a sign-on reply
            }
            round_trip(&message);
            translated += 1;
        }
        assert_eq!(translated, 11);
    }

    #[test]
    fn conversions_survive_both_ways() {
        let conversion = Conversion {
            payer_amount_minor: 49_369,
            rate: 49_123_000_000,
            rate_version: 7,
            payer_currency: 764,
            margin_basis_points: 50,
        };
        let mut request = crate::sample::payment_code_request();
        request.conversion = conversion;
        round_trip(&Message::PaymentCodeRequest(request));
        let mut reply = crate::sample::payment_reply();
        reply.conversion = conversion;
        round_trip(&Message::PaymentReply(reply.clone()));
        round_trip(&Message::RefundReply(reply));
        let Message::RefundRequest(mut refund) = crate::sample::all_kinds().remove(12) else { panic!("sample order") };
        refund.conversion = Conversion { payer_amount_minor: 0, ..conversion };
        round_trip(&Message::RefundRequest(refund));
        // A malformed subelement 16 is an error naming it, never a guess.
        let mut iso = IsoMessage::default();
        to_iso(&Message::PaymentReply(crate::sample::payment_reply()), &mut iso).expect("translates");
        let field = format!("{}16005123X5", iso.get_str(48).expect("field 48"));
        iso.set_str(48, &field).expect("fits");
        assert!(matches!(
            from_iso(&iso, crate::sample::SAMPLE_TIME_MS),
            Err(TranslateError::BadSubelement { tag: 16, .. })
        ));
    }

    #[test]
    fn long_ids_and_unicode_survive() {
        let mut request = crate::sample::payment_code_request();
        request.details.merchant_id = "M234567890123456".parse().expect("16 characters");
        request.details.switch_reference = crate::field::SwitchReference::new(3, 1, 987_654_321).0;
        round_trip(&Message::PaymentCodeRequest(request));
        let mut reply = crate::sample::payment_reply();
        reply.authorization_code = "AB12CD34".parse().expect("8 characters");
        reply.code = ReplyCode::Timeout.value();
        round_trip(&Message::PaymentReply(reply));
    }

    #[test]
    fn a_plain_iso_participant_without_field_48_is_understood() {
        let mut iso = IsoMessage::new("0200").expect("valid");
        for (number, value) in [
            (2, "6212345678901234567"),
            (3, "000000"),
            (4, "000000012850"),
            (7, "0216155930"),
            (11, "000042"),
            (18, "5812"),
            (32, "UNIONPAY"),
            (37, "RRN000000042"),
            (41, "T1      "),
            (42, "M-1            "),
            (43, "QUANJUDE ROAST DUCK      BEIJING      CN"),
            (49, "156"),
        ] {
            iso.set_str(number, value).expect("valid");
        }
        let Translated::Message(Message::PaymentCodeRequest(request)) =
            from_iso(&iso, crate::sample::SAMPLE_TIME_MS).expect("translates")
        else {
            panic!("expected a payment-code request");
        };
        assert_eq!(request.details.originator_transaction_id.as_str(), "RRN000000042");
        assert_eq!(request.details.merchant_name.as_str(), "QUANJUDE ROAST DUCK");
        assert_eq!(request.details.merchant_city.as_str(), "BEIJING");
        assert_eq!(request.details.terminal_id.as_str(), "T1");
        assert_eq!(request.details.merchant_country, 156, "from DE43's CN");
        // DE7 has no year: the one nearest "now" (February 2026) is taken.
        assert_eq!(civil(request.details.transaction_time_ms), (2026, 2, 16, 15, 59, 30));
        // An unknown DE39 in a reply is a decline, never an approval.
        let mut reply = IsoMessage::new("0210").expect("valid");
        reply.set_str(32, "UNIONPAY").expect("valid");
        reply.set_str(37, "RRN000000042").expect("valid");
        reply.set_str(39, "Q7").expect("valid");
        reply.set_str(7, "0216155931").expect("valid");
        let Translated::Message(Message::PaymentReply(reply)) =
            from_iso(&reply, crate::sample::SAMPLE_TIME_MS).expect("ok")
        else {
            panic!("expected a reply");
        };
        assert_eq!(reply.code, ReplyCode::DoNotHonour.value());
        // A partial approval (DE39 10) is an approval of DE4's amount: the switch then
        // holds that amount to the amount asked.
        let mut partial = IsoMessage::new("0210").expect("valid");
        for (number, value) in
            [(32, "UNIONPAY"), (37, "RRN000000042"), (39, "10"), (4, "000000000500"), (7, "0216155931")]
        {
            partial.set_str(number, value).expect("valid");
        }
        let Ok(Translated::Message(Message::PaymentReply(partial))) = from_iso(&partial, crate::sample::SAMPLE_TIME_MS)
        else {
            panic!("expected a reply");
        };
        assert_eq!((partial.code, partial.amount_minor), (ReplyCode::Approved.value(), 500));
    }

    #[test]
    fn network_management() {
        let mut iso = IsoMessage::new("0800").expect("valid");
        iso.set_str(70, "001").expect("valid");
        iso.set_str(32, "UNIONPAY").expect("valid");
        assert_eq!(from_iso(&iso, 0), Ok(Translated::SignOn { institution: "UNIONPAY".parse().ok() }));
        iso.set_str(70, "999").expect("valid");
        assert!(matches!(from_iso(&iso, 0), Err(TranslateError::BadField { field: 70, .. })));
        assert!(matches!(
            from_iso(&IsoMessage::new("0100").expect("valid"), 0),
            Err(TranslateError::UnsupportedMti { .. })
        ));
    }

    #[test]
    fn a_gbk_profile_carries_chinese_merchant_names_in_de43() {
        let profile = Profile::builtin("binary-gbk").expect("built in");
        let mut request = crate::sample::payment_code_request();
        request.details.merchant_name = "全聚德烤鸭店 Quanjude".parse().expect("valid");
        request.details.merchant_city = "北京".parse().expect("valid");
        let mut iso = IsoMessage::for_profile(&profile);
        to_iso(&Message::PaymentCodeRequest(request.clone()), &mut iso).expect("translates");
        // In GBK bytes: six characters (12) and " Quanjude" (9) fill 21 of the name's 25.
        let location = format!("全聚德烤鸭店 Quanjude{}北京{}CN", " ".repeat(4), " ".repeat(9));
        assert_eq!(iso.get_str(43), Some(location.as_str()));
        let mut bytes = Vec::new();
        profile.pack(&iso, &mut bytes).expect("packs");
        // A plain host's message: no field 48, so the names come from DE43 alone.
        let mut plain = IsoMessage::default();
        profile.unpack(&bytes, &mut plain).expect("unpacks");
        plain.remove(48);
        plain.set_str(37, "000000000042").expect("valid");
        let Ok(Translated::Message(Message::PaymentCodeRequest(back))) = from_iso(&plain, 0) else {
            panic!("not a payment: {plain:?}")
        };
        assert_eq!(back.details.merchant_name.as_str(), "全聚德烤鸭店 Quanjude");
        assert_eq!(back.details.merchant_city.as_str(), "北京");
        assert_eq!(back.details.merchant_country, 156);
        // A name longer than 25 GBK bytes is cut at a character, never inside one; what
        // GBK cannot write is shown as `?`; in an ASCII profile every non-ASCII character is.
        request.details.merchant_name = "全聚德烤鸭店全聚德烤鸭店全😀".parse().expect("valid");
        to_iso(&Message::PaymentCodeRequest(request.clone()), &mut iso).expect("translates");
        let cut = iso.get_str(43).expect("DE43");
        assert!(cut.starts_with("全聚德烤鸭店全聚德烤鸭店 北京"), "{cut}");
        request.details.merchant_name = "😀全聚德".parse().expect("valid");
        to_iso(&Message::PaymentCodeRequest(request.clone()), &mut iso).expect("translates");
        assert!(iso.get_str(43).expect("DE43").starts_with("?全聚德 "));
        let mut ascii = IsoMessage::default();
        to_iso(&Message::PaymentCodeRequest(request), &mut ascii).expect("translates");
        assert!(ascii.get_str(43).expect("DE43").starts_with(&format!("????{}", " ".repeat(21))));
    }

    #[test]
    fn amounts_beyond_de4_are_refused() {
        let mut request = crate::sample::payment_code_request();
        request.details.amount_minor = DE4_AMOUNT_MAX + 1;
        let mut iso = IsoMessage::default();
        assert_eq!(
            to_iso(&Message::PaymentCodeRequest(request), &mut iso),
            Err(TranslateError::AmountTooLarge { amount: DE4_AMOUNT_MAX + 1 })
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(crate::sample::SAMPLE_TIME_MS), (2026, 2, 16, 23, 59, 30));
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0, 0, 0));
    }
}
