//! Fuzzes the incremental frame decoder: arbitrary bytes, fed in reads whose sizes come
//! from the input itself. Nothing may panic; a frame that decodes must re-encode to the
//! same bytes; the decoder must never report more bytes buffered than it was given.
#![no_main]

use codec::{FrameDecoder, FrameEncoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk_seed).max(1);
    let mut decoder = FrameDecoder::default();
    let mut encoder = FrameEncoder::default();
    let mut fed = 0;
    loop {
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    let message = frame.message.to_message();
                    let original = frame.bytes.to_vec();
                    encoder.clear();
                    encoder.encode(&message).expect("a decoded message re-encodes");
                    assert_eq!(encoder.bytes(), original.as_slice(), "decode then encode is the identity");
                }
                Ok(None) => break,
                Err(error) if error.is_recoverable() => {}
                Err(_) => return,
            }
        }
        if fed == stream.len() {
            return;
        }
        let end = (fed + chunk).min(stream.len());
        fed += decoder.feed(&stream[fed..end]);
        assert!(decoder.buffered() <= fed);
    }
});
