//! Frame MACs: after sign-on, every frame in both directions carries a 16-byte tag.
//!
//! ```text
//! direction key  = HMAC(key, label | switch_id | participant | server_nonce
//!                              | client_nonce | session_id LE)
//!     label      = "CSW1 mac p->s" (participant to switch) or "CSW1 mac s->p"
//! tag            = first 16 bytes of HMAC(direction key, sequence LE (8 bytes)
//!                                         | frame bytes from offset 8 to the body's end)
//! ```
//!
//! `key` is the participant's sign-on key (the one `key_id` named), HMAC is HMAC-SHA256 or,
//! in the national-crypto profile, HMAC-SM3, for both steps. `sequence` counts the frames
//! sent in that direction after the `SignOnResult`, from 1. So a tag binds the frame to its
//! session, its direction and its place in the stream: a frame replayed (on this session or
//! any other), reordered, reflected back or altered fails. A tag is 128 bits (HMAC
//! truncation as RFC 2104 section 5 allows); comparison is constant-time.
//!
//! The keyed state is computed once per session, so a frame costs one HMAC over its bytes
//! and no key schedule.

use hmac::{Hmac, KeyInit, Mac};

use crate::field::InstitutionId;
use crate::message::PROOF_SIZE;
use crate::signon::SignOnTranscript;

/// Bytes of the tag that follows each frame on an authenticated session.
pub const MAC_SIZE: usize = 16;

const TO_SWITCH_LABEL: &[u8] = b"CSW1 mac p->s";
const TO_PARTICIPANT_LABEL: &[u8] = b"CSW1 mac s->p";

/// The MAC a session uses, as carried in `SignOnResult.frame_mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacAlgorithm {
    /// No frame MACs: the connection's integrity rests on TCP (loopback) or TLS.
    #[default]
    None = 0,
    /// HMAC-SHA256, truncated to 16 bytes.
    HmacSha256 = 1,
    /// HMAC-SM3 (GB/T 32905-2016), truncated to 16 bytes: the national-crypto profile.
    HmacSm3 = 2,
}

impl MacAlgorithm {
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// The name used in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSm3 => "hmac-sm3",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::HmacSha256, Self::HmacSm3].into_iter().find(|a| a.name() == name)
    }
}

impl TryFrom<u8> for MacAlgorithm {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Self::None),
            1 => Ok(Self::HmacSha256),
            2 => Ok(Self::HmacSm3),
            other => Err(other),
        }
    }
}

#[derive(Clone)]
enum Keyed {
    Sha256(Hmac<sha2::Sha256>),
    Sm3(Hmac<sm3::Sm3>),
}

impl Keyed {
    fn new(algorithm: MacAlgorithm, key: &[u8]) -> Option<Self> {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        match algorithm {
            MacAlgorithm::None => None,
            MacAlgorithm::HmacSha256 => {
                Some(Self::Sha256(<Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key length")))
            }
            MacAlgorithm::HmacSm3 => {
                Some(Self::Sm3(<Hmac<sm3::Sm3> as KeyInit>::new_from_slice(key).expect("any key length")))
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(mac) => mac.update(bytes),
            Self::Sm3(mac) => mac.update(bytes),
        }
    }

    /// The full 32-byte output (both hashes give 32 bytes).
    fn finalize(self) -> [u8; 32] {
        match self {
            Self::Sha256(mac) => mac.finalize().into_bytes().into(),
            Self::Sm3(mac) => mac.finalize().into_bytes().into(),
        }
    }
}

/// One direction's frame MAC: the keyed state and the next sequence number.
#[derive(Clone)]
pub struct FrameMac {
    keyed: Keyed,
    sequence: u64,
}

impl std::fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keyed state is secret.
        write!(f, "FrameMac {{ sequence: {} }}", self.sequence)
    }
}

impl FrameMac {
    /// The tag of the next frame in this direction; `covered` is the frame from offset 8 to
    /// the end of its body. Advances the sequence.
    pub fn sign(&mut self, covered: &[u8]) -> [u8; MAC_SIZE] {
        self.sequence += 1;
        let mut mac = self.keyed.clone();
        mac.update(&self.sequence.to_le_bytes());
        mac.update(covered);
        let full = mac.finalize();
        let mut tag = [0u8; MAC_SIZE];
        tag.copy_from_slice(&full[..MAC_SIZE]);
        tag
    }

    /// Checks the next frame's tag in constant time. Advances the sequence either way.
    pub fn verify(&mut self, covered: &[u8], tag: &[u8]) -> bool {
        let expected = self.sign(covered);
        tag.len() == MAC_SIZE && constant_time_eq(&expected, tag)
    }

    /// Frames signed or verified so far.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A session's two frame MACs, derived from the sign-on key and transcript.
#[derive(Debug, Clone)]
pub struct SessionMacs {
    pub algorithm: MacAlgorithm,
    /// Frames the participant sends (the switch verifies, the participant signs).
    pub to_switch: FrameMac,
    /// Frames the switch sends.
    pub to_participant: FrameMac,
}

impl SessionMacs {
    /// `None` for [`MacAlgorithm::None`].
    pub fn derive(
        algorithm: MacAlgorithm,
        key: &[u8],
        transcript: &SignOnTranscript<'_>,
        session_id: u64,
    ) -> Option<Self> {
        let direction = |label: &[u8]| -> Option<FrameMac> {
            let mut derive = Keyed::new(algorithm, key)?;
            derive.update(label);
            bind(&mut derive, transcript.switch_id, transcript.participant, transcript.server_nonce);
            derive.update(transcript.client_nonce);
            derive.update(&session_id.to_le_bytes());
            let direction_key = derive.finalize();
            Some(FrameMac { keyed: Keyed::new(algorithm, &direction_key)?, sequence: 0 })
        };
        Some(Self {
            algorithm,
            to_switch: direction(TO_SWITCH_LABEL)?,
            to_participant: direction(TO_PARTICIPANT_LABEL)?,
        })
    }
}

fn bind(keyed: &mut Keyed, switch_id: &InstitutionId, participant: &InstitutionId, server_nonce: &[u8; PROOF_SIZE]) {
    keyed.update(switch_id.as_bytes());
    keyed.update(participant.as_bytes());
    keyed.update(server_nonce);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn macs(algorithm: MacAlgorithm, key: &[u8], session_id: u64) -> SessionMacs {
        let switch_id = InstitutionId::new("CSWITCH").unwrap();
        let participant = InstitutionId::new("ACQ0001").unwrap();
        let transcript = SignOnTranscript {
            switch_id: &switch_id,
            participant: &participant,
            server_nonce: &[1; 32],
            client_nonce: &[2; 32],
        };
        SessionMacs::derive(algorithm, key, &transcript, session_id).unwrap()
    }

    #[test]
    fn tags_bind_direction_sequence_session_and_bytes() {
        for algorithm in [MacAlgorithm::HmacSha256, MacAlgorithm::HmacSm3] {
            let mut a = macs(algorithm, b"key", 1);
            let frame = [9u8; 40];
            let first = a.to_switch.clone().sign(&frame);
            // The two ends agree.
            assert!(a.to_switch.clone().verify(&frame, &first));
            // Other direction, session, key, sequence or bytes: another tag.
            assert_ne!(first, a.to_participant.clone().sign(&frame));
            assert_ne!(first, macs(algorithm, b"key", 2).to_switch.sign(&frame));
            assert_ne!(first, macs(algorithm, b"other key", 1).to_switch.sign(&frame));
            let mut changed = frame;
            changed[39] ^= 1;
            assert_ne!(first, a.to_switch.clone().sign(&changed));
            a.to_switch.sign(&frame);
            assert!(!a.to_switch.verify(&frame, &first), "a replayed frame fails at its new place");
        }
        let sha = macs(MacAlgorithm::HmacSha256, b"key", 1).to_switch.sign(&[0; 8]);
        let sm3 = macs(MacAlgorithm::HmacSm3, b"key", 1).to_switch.sign(&[0; 8]);
        assert_ne!(sha, sm3);
    }

    #[test]
    fn names_and_values_round_trip() {
        for algorithm in [MacAlgorithm::None, MacAlgorithm::HmacSha256, MacAlgorithm::HmacSm3] {
            assert_eq!(MacAlgorithm::from_name(algorithm.name()), Some(algorithm));
            assert_eq!(MacAlgorithm::try_from(algorithm.value()), Ok(algorithm));
        }
        assert_eq!(MacAlgorithm::try_from(3), Err(3));
        assert!(
            SessionMacs::derive(
                MacAlgorithm::None,
                b"k",
                &SignOnTranscript {
                    switch_id: &InstitutionId::new("S").unwrap(),
                    participant: &InstitutionId::new("P").unwrap(),
                    server_nonce: &[0; 32],
                    client_nonce: &[0; 32],
                },
                1
            )
            .is_none()
        );
    }
}
