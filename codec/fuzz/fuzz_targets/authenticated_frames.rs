//! Fuzzes the authenticated frame path: a participant signs frames with its session MAC,
//! and the input interleaves them with bit flips and injected bytes, fed to the switch's
//! side in reads sized by the input. Nothing may panic, and every frame the decoder
//! accepts is exactly the frame the participant signed at that place in the stream: no
//! altered, injected, reordered or replayed frame ever passes.
#![no_main]

use codec::signon::SignOnTranscript;
use codec::{FrameDecoder, FrameEncoder, InstitutionId, MacAlgorithm, SessionMacs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut ops)) = data.split_first() else { return };
    let algorithm = if seed & 0x80 == 0 { MacAlgorithm::HmacSha256 } else { MacAlgorithm::HmacSm3 };
    let chunk = usize::from(seed & 0x7F).max(1);
    let (switch_id, participant) = (InstitutionId::new("CSWITCH").unwrap(), InstitutionId::new("ACQ0001").unwrap());
    let transcript =
        SignOnTranscript { switch_id: &switch_id, participant: &participant, server_nonce: &[1; 32], client_nonce: &[2; 32] };
    let macs = SessionMacs::derive(algorithm, b"fuzz key", &transcript, 7).expect("an algorithm");
    let mut sender = FrameEncoder::default();
    sender.set_mac(Some(macs.to_switch.clone()));
    let samples = codec::sample::all_kinds();

    // Build the stream: signed frames (some altered), replays and raw bytes.
    let mut stream = Vec::new();
    let mut signed: Vec<Vec<u8>> = Vec::new();
    let mut originals: Vec<Vec<u8>> = Vec::new();
    while let [op, rest @ ..] = ops {
        ops = rest;
        match op % 4 {
            0 | 1 => {
                let Some((&pick, rest)) = ops.split_first() else { break };
                ops = rest;
                sender.clear();
                sender.encode(&samples[usize::from(pick) % samples.len()]).expect("samples are valid");
                let bytes = sender.bytes().to_vec();
                signed.push(bytes[..bytes.len() - codec::MAC_SIZE].to_vec());
                originals.push(bytes.clone());
                let mut sent = bytes;
                if op % 4 == 1 {
                    // Flip one bit anywhere in the frame or its tag.
                    let Some((&at, rest)) = ops.split_first() else { break };
                    ops = rest;
                    let position = usize::from(at) * 7 % sent.len();
                    sent[position] ^= 1 << (at % 8);
                }
                stream.extend_from_slice(&sent);
            }
            2 => {
                // Replay an earlier frame exactly as it was sent, tag and all.
                let Some((&pick, rest)) = ops.split_first() else { break };
                ops = rest;
                if !originals.is_empty() {
                    stream.extend_from_slice(&originals[usize::from(pick) % originals.len()].clone());
                }
            }
            _ => {
                let Some((&count, rest)) = ops.split_first() else { break };
                let count = usize::from(count).min(rest.len());
                stream.extend_from_slice(&rest[..count]);
                ops = &rest[count..];
            }
        }
    }

    let mut receiver = FrameDecoder::default();
    receiver.set_mac(Some(macs.to_switch));
    let mut accepted = 0usize;
    let mut fed = 0;
    loop {
        loop {
            match receiver.decode() {
                Ok(Some(frame)) => {
                    let expected = signed.get(accepted).expect("no more frames accepted than were signed");
                    assert_eq!(frame.bytes, expected.as_slice(), "frame {accepted} is not the one signed there");
                    accepted += 1;
                }
                Ok(None) => break,
                // Every signed frame is valid, so a frame that passed its tag passes its
                // checks too: a recoverable error would mean an unsigned frame got past.
                Err(error) if error.is_recoverable() => panic!("a frame passed its MAC but not its checks: {error}"),
                Err(_) => return,
            }
        }
        if fed == stream.len() {
            return;
        }
        let end = (fed + chunk).min(stream.len());
        fed += receiver.feed(&stream[fed..end]);
    }
});
