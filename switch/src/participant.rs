//! The participant directory: who may sign on, with which keys.
//!
//! Read-mostly and immutable once built: sessions share it through an `Arc`, so a sign-on
//! takes no lock. (The switch issue replaces it atomically on reload.)

use std::collections::HashMap;
use std::fmt;

use codec::InstitutionId;

/// A participant's shared sign-on key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey {
    pub key_id: u16,
    pub secret: Vec<u8>,
    /// The key is refused for sign-on from this instant (Unix ms): the end of a rotation's
    /// overlap. `None`: no end.
    pub not_after_unix_ms: Option<i64>,
}

impl SharedKey {
    pub fn new(key_id: u16, secret: Vec<u8>) -> Self {
        Self { key_id, secret, not_after_unix_ms: None }
    }

    pub fn is_valid_at(&self, unix_ms: i64) -> bool {
        self.not_after_unix_ms.is_none_or(|end| unix_ms < end)
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SharedKey {{ key_id: {}, secret: <{} bytes>, not_after_unix_ms: {:?} }}",
            self.key_id,
            self.secret.len(),
            self.not_after_unix_ms
        )
    }
}

/// What a participant does in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The payer's wallet or bank.
    Issuer,
    /// The merchant's side.
    Acquirer,
    /// A foreign national QR network or clearing network reached through one link.
    Network,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub id: InstitutionId,
    pub name: String,
    pub roles: Vec<Role>,
    /// Keys accepted for sign-on; more than one during a rotation's overlap.
    pub keys: Vec<SharedKey>,
    /// The MAC every frame of the participant's sessions carries after sign-on.
    pub frame_mac: codec::MacAlgorithm,
    /// It connects with ISO 8583 (on the switch's ISO 8583 listener) instead of the native
    /// protocol.
    pub iso8583: bool,
}

impl Participant {
    pub fn key(&self, key_id: u16) -> Option<&SharedKey> {
        self.keys.iter().find(|key| key.key_id == key_id)
    }

    /// Whether its roles allow it to originate `kind`: payment-code requests from
    /// acquirers and networks (the merchant side presents the consumer's code), QR payments
    /// from issuers and networks (the payer's wallet scans the merchant's code). Cancels,
    /// refunds and status queries name the participant's own transactions, so any role may
    /// send them; answers are checked against the request by the exchange.
    pub fn may_originate(&self, kind: codec::MessageKind) -> bool {
        use codec::MessageKind;
        let has = |role| self.roles.contains(&role);
        match kind {
            MessageKind::PaymentCodeRequest => has(Role::Acquirer) || has(Role::Network),
            MessageKind::QrPaymentRequest => has(Role::Issuer) || has(Role::Network),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Directory {
    participants: HashMap<InstitutionId, Participant>,
}

impl Directory {
    pub fn new(participants: impl IntoIterator<Item = Participant>) -> Self {
        Self { participants: participants.into_iter().map(|p| (p.id, p)).collect() }
    }

    pub fn get(&self, id: &InstitutionId) -> Option<&Participant> {
        self.participants.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }

    pub fn len(&self) -> usize {
        self.participants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }
}

/// Where a participant is in the admission process (the Cross-Border QR Code Unified
/// Gateway's rules): what traffic the switch lets it originate and receive.
///
/// ```text
/// admission ─▶ joint_testing ─▶ production_verification ─▶ agreement ─▶ live
///     any state but terminated ─▶ suspended ─▶ the state it was suspended from
///     any state ─▶ terminated (final)
/// ```
///
/// | state | traffic |
/// |---|---|
/// | `admission` | none |
/// | `joint_testing` | only with participants marked `test` |
/// | `production_verification`, `agreement` | with live participants, each transaction at most the verification amount, at most the verification rate |
/// | `live` | all |
/// | `suspended` | none new (it may sign on: it still receives the reversals owed to it) |
/// | `terminated` | none, for good |
///
/// Participants marked `test` (the network's own test counterparts) transact only with
/// participants in joint testing, and with each other: test traffic never reaches
/// production participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Onboarding {
    Admission,
    JointTesting,
    ProductionVerification,
    Agreement,
    #[default]
    Live,
    Suspended,
    Terminated,
}

impl Onboarding {
    pub const ALL: [Onboarding; 7] = [
        Self::Admission,
        Self::JointTesting,
        Self::ProductionVerification,
        Self::Agreement,
        Self::Live,
        Self::Suspended,
        Self::Terminated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Admission => "admission",
            Self::JointTesting => "joint_testing",
            Self::ProductionVerification => "production_verification",
            Self::Agreement => "agreement",
            Self::Live => "live",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
        }
    }

    /// Its number in journal records.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Whether an operator may move a participant from `self` to `to`. `suspended_from` is
    /// the state a suspended participant was suspended from (it may only go back there).
    pub fn may_become(self, to: Onboarding, suspended_from: Option<Onboarding>) -> bool {
        use Onboarding::*;
        match (self, to) {
            (Terminated, _) => false,
            (_, Terminated) => true,
            (Suspended, to) => suspended_from == Some(to),
            (_, Suspended) => true,
            (Admission, JointTesting)
            | (JointTesting, ProductionVerification)
            | (ProductionVerification, Agreement)
            | (Agreement, Live) => true,
            _ => false,
        }
    }

    /// Whether it may take part in traffic at all.
    pub fn carries_traffic(self) -> bool {
        matches!(self, Self::JointTesting | Self::ProductionVerification | Self::Agreement | Self::Live)
    }

    /// Whether it is held to the verification limits.
    pub fn verifying(self) -> bool {
        matches!(self, Self::ProductionVerification | Self::Agreement)
    }
}

impl std::str::FromStr for Onboarding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|state| state.name() == text).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
            format!("{text:?}: expected one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Onboarding::{self, *};

    #[test]
    fn onboarding_moves_forward_one_step_suspends_and_resumes_and_ends() {
        let forward = [Admission, JointTesting, ProductionVerification, Agreement, Live];
        for from in Onboarding::ALL {
            for to in Onboarding::ALL {
                let step = forward.windows(2).any(|pair| pair == [from, to]);
                let expected = match (from, to) {
                    (Terminated, _) => false,
                    (_, Terminated) => true,
                    (Suspended, _) => false,
                    (_, Suspended) => true,
                    _ => step,
                };
                assert_eq!(from.may_become(to, None), expected, "{from:?} -> {to:?}");
            }
        }
        // A suspended participant goes back where it was, and nowhere else.
        assert!(Suspended.may_become(JointTesting, Some(JointTesting)));
        assert!(!Suspended.may_become(Live, Some(JointTesting)));
        assert!(Suspended.may_become(Terminated, Some(JointTesting)));
        for state in Onboarding::ALL {
            assert_eq!(Onboarding::from_code(state.code()), Some(state));
            assert_eq!(state.name().parse::<Onboarding>(), Ok(state));
        }
        assert!("active".parse::<Onboarding>().is_err());
    }
}
