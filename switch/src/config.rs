//! The switch's configuration and its embedded default.
//!
//! The embedded default is a demo network on loopback: a switch on 127.0.0.1:7400 and a few
//! participants whose demo keys are printed in the README. It lets `switch run` work with no
//! file at all; production configuration never uses these keys.

use std::net::SocketAddr;

use codec::InstitutionId;

use crate::core::session::SessionConfig;
use crate::participant::{Participant, Role, SharedKey};

#[derive(Debug, Clone)]
pub struct SwitchConfig {
    pub listen: SocketAddr,
    pub session: SessionConfig,
    pub participants: Vec<Participant>,
}

/// The demo key of a participant in the embedded default: `demo-key-{ID}`.
pub fn demo_key(id: &str) -> Vec<u8> {
    format!("demo-key-{id}").into_bytes()
}

impl SwitchConfig {
    pub const LISTEN_DEFAULT: &'static str = "127.0.0.1:7400";

    /// The embedded default: demo participants on loopback.
    pub fn embedded_default() -> Self {
        let demo = |id: &str, name: &str, roles: &[Role]| Participant {
            id: InstitutionId::new(id).expect("demo id is valid"),
            name: name.to_string(),
            roles: roles.to_vec(),
            keys: vec![SharedKey { key_id: 1, secret: demo_key(id) }],
        };
        Self {
            listen: Self::LISTEN_DEFAULT.parse().expect("valid address"),
            session: SessionConfig::default(),
            participants: vec![
                demo("ACQ0001", "Demo acquirer 1", &[Role::Acquirer]),
                demo("ACQ0002", "Demo acquirer 2", &[Role::Acquirer]),
                demo("WECHATPAY", "WeChat Pay (demo)", &[Role::Issuer, Role::Acquirer]),
                demo("ALIPAY", "Alipay (demo)", &[Role::Issuer, Role::Acquirer]),
                demo("UNIONPAY", "UnionPay (demo)", &[Role::Issuer, Role::Network]),
                demo("WAL0001", "Demo foreign wallet", &[Role::Issuer]),
            ],
        }
    }
}
