//! Fuzzes ISO 8583 unpacking with both built-in profiles (the first byte picks one): no
//! panic; whatever unpacks packs again to the same bytes, and translates or errors cleanly.
#![no_main]

use codec::iso8583::{IsoMessage, Profile};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static PROFILES: [Profile; 2] =
        [Profile::builtin("binary").expect("built in"), Profile::builtin("ascii").expect("built in")];
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    PROFILES.with(|profiles| check(&profiles[usize::from(selector & 1)], body));
});

fn check(profile: &Profile, body: &[u8]) {
    let _ = profile.frame(body);
    let mut message = IsoMessage::default();
    if profile.unpack(body, &mut message).is_ok() {
        let mut packed = Vec::new();
        profile.pack(&message, &mut packed).expect("an unpacked message packs");
        let mut again = IsoMessage::default();
        profile.unpack(&packed, &mut again).expect("and unpacks");
        assert_eq!(again, message);
        let _ = codec::translate::from_iso(&message, 1_771_286_370_000);
    }
}
