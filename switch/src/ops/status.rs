//! Participant and link state for the admin port's `/participants`: which sessions each
//! participant has signed on, on which shard and from where, and what the shards' exchanges
//! hold for it (in flight, pending reversals, breaker).
//!
//! Invariant: nothing here is touched per message. Links change on sign-on and close; each
//! shard publishes its summary at most every [`PUBLISH_INTERVAL_MS`] and only after it
//! changed, so the page may lag the switch by that much.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

use codec::InstitutionId;
use dashmap::DashMap;
use serde::Serialize;

use crate::core::exchange::{BreakerState, ParticipantFlight, SessionId};
use crate::participant::{Directory, Onboarding, Role};

/// How often a busy shard republishes its summary.
pub const PUBLISH_INTERVAL_MS: u64 = 250;

/// One signed-on session.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Link {
    pub session: SessionId,
    pub participant: InstitutionId,
    pub shard: usize,
    pub peer: SocketAddr,
    pub signed_on_unix_ms: i64,
}

#[derive(Debug, Default)]
pub struct Status {
    links: DashMap<SessionId, Link>,
    /// Each shard's last summary, by shard index.
    shards: Mutex<BTreeMap<usize, Vec<ParticipantFlight>>>,
}

#[derive(Debug, Serialize)]
struct ParticipantView<'a> {
    id: InstitutionId,
    name: &'a str,
    roles: Vec<&'static str>,
    status: &'static str,
    sessions: Vec<Link>,
    in_flight_originating: usize,
    in_flight_receiving: usize,
    reversals_pending: usize,
    /// The worst breaker state over the shards (each shard keeps its own breaker).
    breaker: BreakerState,
}

impl Status {
    pub fn link_up(&self, link: Link) {
        self.links.insert(link.session, link);
    }

    pub fn link_down(&self, session: SessionId) {
        self.links.remove(&session);
    }

    /// Replaces shard `shard`'s summary.
    pub fn publish(&self, shard: usize, flights: Vec<ParticipantFlight>) {
        // A poisoned lock only means a panicking reader; the map itself stays valid.
        self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shard, flights);
    }

    /// The `/participants` document: every configured participant, sorted by id.
    pub fn render(
        &self,
        directory: &Directory,
        states: &HashMap<InstitutionId, (Onboarding, Option<Onboarding>)>,
    ) -> String {
        let mut views: BTreeMap<InstitutionId, ParticipantView<'_>> = directory
            .iter()
            .map(|participant| {
                let state = states.get(&participant.id).map_or(Onboarding::Live, |&(state, _)| state);
                let view = ParticipantView {
                    id: participant.id,
                    name: &participant.name,
                    roles: participant
                        .roles
                        .iter()
                        .map(|role| match role {
                            Role::Issuer => "issuer",
                            Role::Acquirer => "acquirer",
                            Role::Network => "network",
                        })
                        .collect(),
                    status: state.name(),
                    sessions: Vec::new(),
                    in_flight_originating: 0,
                    in_flight_receiving: 0,
                    reversals_pending: 0,
                    breaker: BreakerState::Closed,
                };
                (participant.id, view)
            })
            .collect();
        for link in self.links.iter() {
            if let Some(view) = views.get_mut(&link.participant) {
                view.sessions.push(*link);
            }
        }
        let shards = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for flight in shards.values().flatten() {
            if let Some(view) = views.get_mut(&flight.participant) {
                view.in_flight_originating += flight.originating;
                view.in_flight_receiving += flight.receiving;
                view.reversals_pending += flight.reversals_pending;
                view.breaker = view.breaker.max(flight.breaker);
            }
        }
        drop(shards);
        let participants: Vec<_> = views
            .into_values()
            .map(|mut view| {
                view.sessions.sort_by_key(|link| link.session);
                view
            })
            .collect();
        let mut text = serde_json::to_string_pretty(&serde_json::json!({ "participants": participants }))
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SwitchConfig;

    #[test]
    fn merges_links_and_shard_summaries_per_participant() {
        let config = SwitchConfig::embedded_default();
        let states = HashMap::new();
        let directory = Directory::new(config.participants);
        let status = Status::default();
        let wechat = InstitutionId::new("WECHATPAY").expect("valid");
        status.link_up(Link {
            session: 7,
            participant: wechat,
            shard: 1,
            peer: "127.0.0.1:5000".parse().expect("valid"),
            signed_on_unix_ms: 1,
        });
        let flight = |receiving, breaker| ParticipantFlight {
            participant: wechat,
            originating: 0,
            receiving,
            reversals_pending: 1,
            breaker,
        };
        status.publish(0, vec![flight(2, BreakerState::Closed)]);
        status.publish(1, vec![flight(3, BreakerState::Open)]);
        let document: serde_json::Value = serde_json::from_str(&status.render(&directory, &states)).expect("json");
        let participants = document["participants"].as_array().expect("array");
        assert_eq!(participants.len(), directory.len());
        let view = participants.iter().find(|p| p["id"] == "WECHATPAY").expect("listed");
        assert_eq!(view["in_flight_receiving"], 5);
        assert_eq!(view["reversals_pending"], 2);
        assert_eq!(view["breaker"], "open");
        assert_eq!(view["sessions"][0]["shard"], 1);
        assert_eq!(view["status"], "live");
        status.link_down(7);
        let document: serde_json::Value = serde_json::from_str(&status.render(&directory, &states)).expect("json");
        let view = document["participants"].as_array().expect("array").iter().find(|p| p["id"] == "WECHATPAY").cloned();
        assert_eq!(view.expect("listed")["sessions"].as_array().map(Vec::len), Some(0));
    }
}
