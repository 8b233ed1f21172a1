//! Fuzzes the merchant-presented QR parser (EMVCo and UnionPay URLs): no panic on any
//! input; every error's offset lies inside the payload; whatever parses has a CRC that
//! matches its own bytes and reads back every accessor without panicking.
#![no_main]

use codec::emv_qr::{MerchantCode, crc16, parse_merchant_code};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else { return };
    match parse_merchant_code(payload) {
        Ok(MerchantCode::Emv(qr)) => {
            assert_eq!(crc16(&payload.as_bytes()[..payload.len() - 4]), qr.crc);
            let _ = (qr.merchant_name(), qr.merchant_city(), qr.amount_minor(), qr.alternate_language());
            for account in qr.merchant_accounts() {
                let _ = (account.guid(), account.fields().count());
            }
            let _ = qr.additional_data().count();
        }
        Ok(MerchantCode::UnionPayUrl(_)) => {}
        Err(error) => assert!(error.offset() as usize <= payload.len()),
    }
});
