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
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedKey {{ key_id: {}, secret: <{} bytes> }}", self.key_id, self.secret.len())
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
}

impl Participant {
    pub fn key(&self, key_id: u16) -> Option<&SharedKey> {
        self.keys.iter().find(|key| key.key_id == key_id)
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
