//! Sign-on proofs: challenge-response over a shared key, so the key never crosses the wire.
//!
//! ```text
//! switch -> participant  SignOnChallenge { switch_id, server_nonce }
//! participant -> switch  SignOnRequest   { participant, client_nonce, proof }
//!     proof        = HMAC-SHA256(key, "CSW1 sign-on"  | switch_id | server_nonce
//!                                      | participant | client_nonce | protocol_version LE)
//! switch -> participant  SignOnResult    { session_id, server_proof, ... }
//!     server_proof = HMAC-SHA256(key, "CSW1 session"  | switch_id | participant
//!                                      | server_nonce | client_nonce | session_id LE)
//! ```
//!
//! Fields enter the MAC at their full fixed width (zero padding included), so no two
//! different field sets give the same input. The two labels differ, so a participant's proof
//! can never be replayed as the switch's, and fresh nonces on both sides stop replays of
//! either. Comparison is constant-time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::field::InstitutionId;
use crate::message::{ArchivedSignOnResult, PROOF_SIZE, PROTOCOL_VERSION, SignOnChallenge, SignOnRequest};

type HmacSha256 = Hmac<Sha256>;

const CLIENT_LABEL: &[u8] = b"CSW1 sign-on";
const SERVER_LABEL: &[u8] = b"CSW1 session";

/// The inputs both proofs bind.
#[derive(Debug, Clone, Copy)]
pub struct SignOnTranscript<'a> {
    pub switch_id: &'a InstitutionId,
    pub participant: &'a InstitutionId,
    pub server_nonce: &'a [u8; PROOF_SIZE],
    pub client_nonce: &'a [u8; PROOF_SIZE],
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length")
}

fn client_mac(key: &[u8], transcript: &SignOnTranscript<'_>, protocol_version: u16) -> HmacSha256 {
    let mut mac = mac(key);
    mac.update(CLIENT_LABEL);
    mac.update(transcript.switch_id.as_bytes());
    mac.update(transcript.server_nonce);
    mac.update(transcript.participant.as_bytes());
    mac.update(transcript.client_nonce);
    mac.update(&protocol_version.to_le_bytes());
    mac
}

fn server_mac(key: &[u8], transcript: &SignOnTranscript<'_>, session_id: u64) -> HmacSha256 {
    let mut mac = mac(key);
    mac.update(SERVER_LABEL);
    mac.update(transcript.switch_id.as_bytes());
    mac.update(transcript.participant.as_bytes());
    mac.update(transcript.server_nonce);
    mac.update(transcript.client_nonce);
    mac.update(&session_id.to_le_bytes());
    mac
}

/// The shortest demo key, in bytes (as a configuration file requires of any key).
pub const DEMO_KEY_SIZE_MIN: usize = 16;

/// The demo network's key for participant `id`: the ASCII bytes of `demo-key-{ID}`,
/// followed by `-` up to 16 bytes (`demo-key-ALIPAY-`). Public, for loopback trials only:
/// the switch's embedded default and the load generator's demo participants use it.
pub fn demo_key(id: &str) -> Vec<u8> {
    let mut key = format!("demo-key-{id}").into_bytes();
    if key.len() < DEMO_KEY_SIZE_MIN {
        key.resize(DEMO_KEY_SIZE_MIN, b'-');
    }
    key
}

/// The participant's proof of its key.
pub fn client_proof(key: &[u8], transcript: &SignOnTranscript<'_>, protocol_version: u16) -> [u8; PROOF_SIZE] {
    client_mac(key, transcript, protocol_version).finalize().into_bytes().into()
}

/// Checks a participant's proof in constant time.
pub fn verify_client_proof(
    key: &[u8],
    transcript: &SignOnTranscript<'_>,
    protocol_version: u16,
    proof: &[u8; PROOF_SIZE],
) -> bool {
    client_mac(key, transcript, protocol_version).verify_slice(proof).is_ok()
}

/// The switch's proof of the same key, bound to the session id it grants.
pub fn server_proof(key: &[u8], transcript: &SignOnTranscript<'_>, session_id: u64) -> [u8; PROOF_SIZE] {
    server_mac(key, transcript, session_id).finalize().into_bytes().into()
}

/// Checks the switch's proof in constant time (the participant's side of mutual auth).
pub fn verify_server_proof(
    key: &[u8],
    transcript: &SignOnTranscript<'_>,
    session_id: u64,
    proof: &[u8; PROOF_SIZE],
) -> bool {
    server_mac(key, transcript, session_id).verify_slice(proof).is_ok()
}

/// The participant's side of sign-on: builds the `SignOnRequest` answering `challenge`.
pub fn sign_on_request(
    challenge: &SignOnChallenge,
    participant: InstitutionId,
    key_id: u16,
    key: &[u8],
    client_nonce: [u8; PROOF_SIZE],
) -> SignOnRequest {
    let transcript = SignOnTranscript {
        switch_id: &challenge.switch_id,
        participant: &participant,
        server_nonce: &challenge.server_nonce,
        client_nonce: &client_nonce,
    };
    SignOnRequest {
        participant,
        client_nonce,
        proof: client_proof(key, &transcript, PROTOCOL_VERSION),
        protocol_version: PROTOCOL_VERSION,
        key_id,
        reserved: [0; 4],
    }
}

/// The participant's check of the switch's answer: approved, and the switch proved the key.
pub fn sign_on_accepted(
    challenge: &SignOnChallenge,
    request: &SignOnRequest,
    key: &[u8],
    result: &ArchivedSignOnResult,
) -> bool {
    let transcript = SignOnTranscript {
        switch_id: &challenge.switch_id,
        participant: &request.participant,
        server_nonce: &challenge.server_nonce,
        client_nonce: &request.client_nonce,
    };
    result.code.to_native() == 0
        && verify_server_proof(key, &transcript, result.session_id.to_native(), &result.server_proof)
}

/// The participant's frame MACs for a session the switch approved with `result` (see
/// [`crate::mac`]): `None` when the switch asked for none. The caller signs what it sends
/// with `to_switch` and checks what it reads with `to_participant`.
pub fn participant_session_macs(
    challenge: &SignOnChallenge,
    request: &SignOnRequest,
    key: &[u8],
    result: &ArchivedSignOnResult,
) -> Option<crate::mac::SessionMacs> {
    let algorithm = crate::mac::MacAlgorithm::try_from(result.frame_mac).ok()?;
    let transcript = SignOnTranscript {
        switch_id: &challenge.switch_id,
        participant: &request.participant,
        server_nonce: &challenge.server_nonce,
        client_nonce: &request.client_nonce,
    };
    crate::mac::SessionMacs::derive(algorithm, key, &transcript, result.session_id.to_native())
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_keys_are_the_id_spelled_out_and_at_least_16_bytes() {
        assert_eq!(super::demo_key("ACQ0001"), b"demo-key-ACQ0001");
        assert_eq!(super::demo_key("ALIPAY"), b"demo-key-ALIPAY-");
        assert_eq!(super::demo_key("WECHATPAY"), b"demo-key-WECHATPAY");
        assert_eq!(super::demo_key("A").len(), super::DEMO_KEY_SIZE_MIN);
    }

    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_key_and_transcript() {
        let switch_id = InstitutionId::new("CSWITCH").expect("valid");
        let participant = InstitutionId::new("ACQ001").expect("valid");
        let other = InstitutionId::new("ACQ002").expect("valid");
        let transcript = SignOnTranscript {
            switch_id: &switch_id,
            participant: &participant,
            server_nonce: &[1; 32],
            client_nonce: &[2; 32],
        };
        let proof = client_proof(b"key-1", &transcript, 1);
        assert!(verify_client_proof(b"key-1", &transcript, 1, &proof));
        assert!(!verify_client_proof(b"key-2", &transcript, 1, &proof));
        assert!(!verify_client_proof(b"key-1", &transcript, 2, &proof));
        let spoofed = SignOnTranscript { participant: &other, ..transcript };
        assert!(!verify_client_proof(b"key-1", &spoofed, 1, &proof));
        let replayed = SignOnTranscript { server_nonce: &[3; 32], ..transcript };
        assert!(!verify_client_proof(b"key-1", &replayed, 1, &proof));

        let session = server_proof(b"key-1", &transcript, 7);
        assert!(verify_server_proof(b"key-1", &transcript, 7, &session));
        assert!(!verify_server_proof(b"key-1", &transcript, 8, &session));
        // A client proof is never accepted as the server's and the other way round.
        assert_ne!(session, proof);
    }
}
