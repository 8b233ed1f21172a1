//! Which shard owns a message. Pure: every shard computes the same answer from the message
//! alone, so hand-offs need no shared lookup.
//!
//! - A new request is owned by `hash(originator, originator transaction id) % shards`, not
//!   by the shard of the connection it came on: an originator's duplicates meet the first
//!   attempt in one exchange whichever of its connections they use.
//! - A reversal, refund or status query from an originator goes where its original lives:
//!   the shard named in the original's switch reference, or the same hash over the
//!   original's id when the reference is not given.
//! - An answer from a receiver goes to the shard named in its switch reference (the switch
//!   wrote it there when forwarding).
//!
//! A reference naming a shard this process does not have (a foreign or forged value) maps
//! to shard 0, whose exchange finds nothing under it and answers accordingly.

use codec::field::FieldText;
use codec::{InstitutionId, Message, SwitchReference, TransactionId};

/// Shards one process may run: the switch reference has 8 shard bits.
pub const SHARDS_MAX: usize = 256;

/// The shard that owns `message`, of `shards` (1..=[`SHARDS_MAX`]).
pub fn owner(message: &Message, shards: usize) -> usize {
    debug_assert!((1..=SHARDS_MAX).contains(&shards));
    if shards == 1 {
        return 0;
    }
    match message {
        Message::PaymentCodeRequest(request) => {
            by_id(request.details.originator, &request.details.originator_transaction_id, shards)
        }
        Message::QrPaymentRequest(request) => {
            by_id(request.details.originator, &request.details.originator_transaction_id, shards)
        }
        Message::StatusQuery(query) => by_reference(query.original_switch_reference, shards)
            .unwrap_or_else(|| by_id(query.originator, &query.original_originator_transaction_id, shards)),
        // From an originator (switch reference zero): where the original lives.
        Message::ReversalRequest(request) | Message::RefundRequest(request) if request.switch_reference == 0 => {
            by_reference(request.original_switch_reference, shards)
                .unwrap_or_else(|| by_id(request.originator, &request.original_originator_transaction_id, shards))
        }
        Message::ReversalRequest(request) | Message::RefundRequest(request) => {
            by_reference(request.switch_reference, shards).unwrap_or(0)
        }
        Message::PaymentReply(reply) | Message::RefundReply(reply) | Message::ReversalReply(reply) => {
            by_reference(reply.switch_reference, shards).unwrap_or(0)
        }
        // Session-level messages never reach an exchange; any shard will do.
        _ => 0,
    }
}

/// The shard named in a switch reference; `None` for "no reference".
fn by_reference(reference: u64, shards: usize) -> Option<usize> {
    if reference == 0 {
        return None;
    }
    let shard = usize::from(SwitchReference(reference).shard());
    Some(if shard < shards { shard } else { 0 })
}

fn by_id(originator: InstitutionId, id: &TransactionId, shards: usize) -> usize {
    // FNV-1a: stable across processes and versions (a std hasher is neither), and plenty
    // for spreading ids that originators make unique, once mixed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in originator.as_str().as_bytes().iter().chain([0xffu8].iter()).chain(id.as_str().as_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV-1a's low bits are weak (its lowest is the parity of the bytes' lowest bits), so
    // mix (MurmurHash3's finaliser) and reduce by the high bits (multiply-shift).
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::sample;

    fn payment(id: &str) -> Message {
        let mut request = sample::payment_code_request();
        request.details.originator_transaction_id = TransactionId::new(id).expect("valid");
        Message::PaymentCodeRequest(request)
    }

    #[test]
    fn ids_with_a_pattern_in_their_last_digits_still_spread() {
        // Every id's digits sum to an even number: FNV-1a's low bit alone would put them all
        // on one of two shards.
        let mut counts = [0usize; 2];
        for n in 0..2_000u64 {
            counts[owner(&payment(&format!("T{}{}", n, n)), 2)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn one_shard_owns_everything() {
        assert_eq!(owner(&payment("A1"), 1), 0);
    }

    #[test]
    fn requests_spread_and_the_same_id_always_lands_on_the_same_shard() {
        let mut counts = [0usize; 4];
        for n in 0..4_000 {
            let id = format!("T{n}");
            let shard = owner(&payment(&id), 4);
            assert_eq!(shard, owner(&payment(&id), 4), "stable");
            counts[shard] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "spread evenly enough: {counts:?}");
    }

    #[test]
    fn answers_follow_the_reference_and_foreign_shards_map_to_zero() {
        let mut reply = sample::payment_reply();
        reply.switch_reference = SwitchReference::new(0, 3, 9).0;
        assert_eq!(owner(&Message::PaymentReply(reply.clone()), 4), 3);
        reply.switch_reference = SwitchReference::new(0, 7, 9).0;
        assert_eq!(owner(&Message::PaymentReply(reply), 4), 0);
    }

    #[test]
    fn a_query_by_id_meets_its_request() {
        let request = payment("Q-42");
        let Message::PaymentCodeRequest(details) = &request else { unreachable!() };
        let query = codec::StatusQuery {
            originator: details.details.originator,
            original_originator_transaction_id: details.details.originator_transaction_id,
            original_switch_reference: 0,
            query_time_ms: 0,
        };
        for shards in 2..8 {
            assert_eq!(owner(&Message::StatusQuery(query.clone()), shards), owner(&request, shards));
        }
    }
}
