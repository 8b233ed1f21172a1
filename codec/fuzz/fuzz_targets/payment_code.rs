//! Fuzzes payment-code validation and the issuer table: no panic; a found issuer's prefix
//! and length rules hold for the code.
#![no_main]

use codec::payment_code::IssuerTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static TABLE: IssuerTable = IssuerTable::china_default();
    }
    let Ok(code) = std::str::from_utf8(data) else { return };
    TABLE.with(|table| {
        if let Ok(entry) = table.lookup(code) {
            assert!(code.starts_with(&entry.prefix));
            assert!((usize::from(entry.length_min)..=usize::from(entry.length_max)).contains(&code.len()));
        }
    });
});
