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
