//! The serde + bincode baseline for the typical payment request.

use codec::PaymentCodeRequest;
use serde::{Deserialize, Serialize};

/// The same message elements as [`codec::PaymentCodeRequest`], as an idiomatic serde model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselinePaymentRequest {
    pub originator: String,
    pub originator_transaction_id: String,
    pub switch_reference: u64,
    pub amount_minor: u64,
    pub transaction_time_ms: i64,
    pub currency: u16,
    pub merchant_category_code: u16,
    pub merchant_country: u16,
    pub merchant_id: String,
    pub terminal_id: String,
    pub merchant_name: String,
    pub merchant_city: String,
    pub payment_code: String,
}

impl From<&PaymentCodeRequest> for BaselinePaymentRequest {
    fn from(request: &PaymentCodeRequest) -> Self {
        let details = &request.details;
        Self {
            originator: details.originator.to_string(),
            originator_transaction_id: details.originator_transaction_id.to_string(),
            switch_reference: details.switch_reference,
            amount_minor: details.amount_minor,
            transaction_time_ms: details.transaction_time_ms,
            currency: details.currency,
            merchant_category_code: details.merchant_category_code,
            merchant_country: details.merchant_country,
            merchant_id: details.merchant_id.to_string(),
            terminal_id: details.terminal_id.to_string(),
            merchant_name: details.merchant_name.to_string(),
            merchant_city: details.merchant_city.to_string(),
            payment_code: request.payment_code.digits().to_string(),
        }
    }
}

/// Encodes with bincode 1.3 into `out` (cleared first).
pub fn encode(request: &BaselinePaymentRequest, out: &mut Vec<u8>) {
    out.clear();
    bincode::serialize_into(&mut *out, request).expect("serialising into a Vec cannot fail");
}

/// Decodes with bincode 1.3.
pub fn decode(bytes: &[u8]) -> Result<BaselinePaymentRequest, bincode::Error> {
    bincode::deserialize(bytes)
}

/// What bincode needs to give the native frame's guarantees: the frame carries a CRC32C
/// (here, four trailing bytes over the rest) and every field is checked against its
/// charset and range. Returns `None` for any failure.
pub fn decode_checked(bytes: &[u8]) -> Option<BaselinePaymentRequest> {
    let (payload, sum) = bytes.split_at(bytes.len().checked_sub(4)?);
    let computed = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, payload) as u32;
    if sum != computed.to_le_bytes() {
        return None;
    }
    let request: BaselinePaymentRequest = bincode::deserialize(payload).ok()?;
    let valid = codec::InstitutionId::new(&request.originator).is_ok_and(|id| !id.to_string().is_empty())
        && codec::TransactionId::new(&request.originator_transaction_id).is_ok()
        && codec::MerchantId::new(&request.merchant_id).is_ok()
        && codec::TerminalId::new(&request.terminal_id).is_ok()
        && codec::MerchantName::new(&request.merchant_name).is_ok()
        && codec::City::new(&request.merchant_city).is_ok()
        && codec::PaymentCode::new(&request.payment_code).is_ok()
        && (1..=codec::message::AMOUNT_MINOR_MAX).contains(&request.amount_minor)
        && (1..=999).contains(&request.currency);
    valid.then_some(request)
}

/// Encodes with bincode and appends the CRC32C that [`decode_checked`] expects.
pub fn encode_checked(request: &BaselinePaymentRequest, out: &mut Vec<u8>) {
    encode(request, out);
    let sum = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, out) as u32;
    out.extend_from_slice(&sum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_round_trips_the_sample() {
        let request = BaselinePaymentRequest::from(&codec::sample::payment_code_request());
        let mut bytes = Vec::new();
        encode(&request, &mut bytes);
        assert_eq!(decode(&bytes).expect("valid"), request);
        assert_eq!(request.payment_code, "134567890123451234");
        encode_checked(&request, &mut bytes);
        assert_eq!(decode_checked(&bytes), Some(request.clone()));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode_checked(&bytes), None, "a bad checksum is refused");
    }
}
