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
    }
}
