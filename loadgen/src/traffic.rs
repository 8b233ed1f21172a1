//! What each originating connection sends: the profile's mix turned into requests.
//!
//! Who originates what (a real network's roles):
//! - consumer-presented payments (the merchant scans the payer's code) come from the plain
//!   acquirers, with codes from each wallet's prefix in proportion to its share;
//! - merchant-presented payments (the payer's wallet scans the merchant's QR) come from the
//!   wallets, in proportion to their shares;
//! - cross-border payments come from each market's wallet: inbound in CNY to Chinese
//!   merchants, outbound in the foreign merchant's currency;
//! - refunds and status queries come from the originator of the payment they name.
//!
//! Every transaction id carries the run, the connection, a sequence number and the
//! request's intended send time (`{run}-{conn}-{seq}-{due_us}`, hex): the reply echoes
//! it, so latency from the intended time needs no table, and no two runs' ids collide.

use std::sync::Arc;

use anyhow::{Context, bail};
use codec::emv_qr::{AccountSpec, Initiation, QrSpec};
use codec::field::FieldText;
use codec::{
    InstitutionId, LinkedRequest, Message, PaymentCode, PaymentCodeRequest, QrPaymentRequest, StatusQuery,
    TransactionDetails, TransactionId,
};
use std::collections::VecDeque;

use crate::participants::Participant;
use crate::profile::{Direction, Mix, Profile};
use crate::rng::Rng;

/// The QR network GUID of the demo network (UnionPay's), routed to its acquirer.
pub const QR_GUID_DEFAULT: &str = "A000000333010101";
/// Approved payments a connection remembers for refunds and queries.
pub const APPROVED_POOL: usize = 4096;
/// Refunds and queries name approvals at most this old: the switch remembers completed
/// transactions for a bounded window (5.5 s at 180,000/s by default), and a refund of a
/// forgotten payment is answered `UnknownOriginal`, which is not what a profile means.
pub const APPROVED_AGE_MAX_US: u64 = 2_000_000;
/// Distinct merchants per market.
const MERCHANTS: usize = 16;

/// One kind of payment an originator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    ConsumerPresented,
    MerchantPresented,
    /// Index into the mix's countries.
    CrossBorder(usize),
}

/// An originator's part of the traffic: its flows and their weights (shares of the total
/// payment rate).
#[derive(Debug, Clone, PartialEq)]
pub struct Origination {
    pub participant: InstitutionId,
    pub flows: Vec<(Flow, f64)>,
}

impl Origination {
    /// This originator's share of all payments.
    pub fn share(&self) -> f64 {
        self.flows.iter().map(|(_, w)| w).sum()
    }
}

/// Splits the profile's mix among the participants that originate it.
pub fn originations(profile: &Profile, participants: &[Participant]) -> anyhow::Result<Vec<Origination>> {
    let mix = &profile.mix;
    let mut out: Vec<Origination> = Vec::new();
    let mut add = |id: &str, flow: Flow, weight: f64, what: &str| -> anyhow::Result<()> {
        if weight <= 0.0 {
            return Ok(());
        }
        let Some(participant) = participants.iter().find(|p| p.id.as_str() == id) else {
            bail!("profile {}: {what} names participant {id}, which is not in the participant set", profile.source);
        };
        match out.iter_mut().find(|o| o.participant == participant.id) {
            Some(origination) => origination.flows.push((flow, weight)),
            None => out.push(Origination { participant: participant.id, flows: vec![(flow, weight)] }),
        }
        Ok(())
    };
    let acquirers: Vec<_> = participants.iter().filter(|p| p.is_plain_acquirer()).collect();
    if mix.consumer_presented() > 0.0 && acquirers.is_empty() {
        bail!("profile {} has consumer-presented payments but no participant is a plain acquirer", profile.source);
    }
    for acquirer in &acquirers {
        add(
            acquirer.id.as_str(),
            Flow::ConsumerPresented,
            mix.consumer_presented() / acquirers.len() as f64,
            "an acquirer",
        )?;
    }
    for wallet in &mix.wallets {
        add(&wallet.participant, Flow::MerchantPresented, mix.merchant_presented * wallet.share, "a wallet")?;
    }
    for (index, country) in mix.countries.iter().enumerate() {
        add(&country.wallet, Flow::CrossBorder(index), mix.cross_border * country.share, "a cross-border market")?;
    }
    Ok(out)
}

/// Remembers `approved` for later refunds and queries, forgetting the oldest beyond
/// [`APPROVED_POOL`].
pub fn remember(pool: &mut VecDeque<Approved>, approved: Approved) {
    if pool.len() >= APPROVED_POOL {
        pool.pop_front();
    }
    pool.push_back(approved);
}

/// An approved payment a later refund or query can name.
#[derive(Debug, Clone, Copy)]
pub struct Approved {
    /// When the approval arrived, microseconds from the run's start.
    pub at_us: u64,
    pub reference: u64,
    pub id: TransactionId,
    pub amount_minor: u64,
    pub currency: u16,
}

/// What a request is, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Payment,
    Refund,
    Query,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Refund => "refund",
            Self::Query => "query",
        }
    }
}

/// The parts of one of our transaction ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    pub run: u32,
    pub connection: u16,
    pub sequence: u64,
    pub due_us: u64,
}

/// Reads `{run}-{conn}-{seq}-{due_us}` (hex); `None` for an id this generator never made.
pub fn parse_id(id: &str) -> Option<IdParts> {
    let mut parts = id.split('-');
    let mut next = || u64::from_str_radix(parts.next()?, 16).ok();
    let parsed = IdParts {
        run: u32::try_from(next()?).ok()?,
        connection: u16::try_from(next()?).ok()?,
        sequence: next()?,
        due_us: next()?,
    };
    parts.next().is_none().then_some(parsed)
}

/// Numbers one connection's requests: transaction ids and payment codes unique to the
/// run, the connection and the sequence.
#[derive(Debug)]
struct Numbering {
    run: u32,
    connection: u16,
    sequence: u64,
    text: String,
}

impl Numbering {
    fn next_id(&mut self, due_us: u64) -> anyhow::Result<TransactionId> {
        use std::fmt::Write;
        self.text.clear();
        let _ = write!(self.text, "{:x}-{:x}-{:x}-{:x}", self.run, self.connection, self.sequence, due_us);
        TransactionId::new(&self.text).map_err(|e| anyhow::anyhow!("transaction id {:?}: {e}", self.text))
    }

    fn payment_code(&mut self, prefix: &str, digits: u8) -> anyhow::Result<PaymentCode> {
        use std::fmt::Write;
        self.text.clear();
        let width = usize::from(digits).saturating_sub(prefix.len() + 7);
        let modulus = 10u64.checked_pow(width as u32).unwrap_or(u64::MAX);
        let _ = write!(
            self.text,
            "{prefix}{:04}{:03}{:0width$}",
            self.run % 10_000,
            self.connection % 1000,
            self.sequence % modulus
        );
        PaymentCode::new(&self.text).map_err(|e| anyhow::anyhow!("payment code: {e}"))
    }
}

/// Builds one connection's requests.
#[derive(Debug)]
pub struct Traffic {
    numbering: Numbering,
    originator: InstitutionId,
    mix: Arc<Mix>,
    flows: Vec<Flow>,
    weights: Vec<f64>,
    /// The wallets' shares, for picking a consumer-presented code's prefix.
    wallet_weights: Vec<f64>,
    /// QR payloads per flow (empty for consumer-presented).
    qr: Vec<Vec<String>>,
    rng: Rng,
    template: TransactionDetails,
}

/// One request made, with what it is.
#[derive(Debug)]
pub struct Made {
    pub message: Message,
    pub kind: Kind,
    pub sequence: u64,
}

fn qr_payloads(guid: &str, country: &str, currency: u16, seed: u64) -> anyhow::Result<Vec<String>> {
    (0..MERCHANTS)
        .map(|m| {
            let spec = QrSpec {
                initiation: Initiation::Static,
                accounts: vec![AccountSpec {
                    tag: 26,
                    guid: guid.to_string(),
                    fields: vec![(
                        1,
                        format!("{country}{:013}", seed.wrapping_mul(31).wrapping_add(m as u64) % 10_000_000_000_000),
                    )],
                }],
                merchant_category_code: [5812, 5411, 5999, 4121][m % 4],
                currency,
                amount: None,
                country: country.to_string(),
                merchant_name: format!("LOADGEN MERCHANT {m:02}"),
                merchant_city: if country == "CN" { "SHANGHAI".into() } else { format!("CITY {country}") },
                postal_code: None,
                additional_data: Vec::new(),
                alternate_language: None,
            };
            spec.encode().map_err(|e| anyhow::anyhow!("building a merchant QR for {country}: {e}"))
        })
        .collect()
}

impl Traffic {
    pub fn new(
        run: u32,
        connection: u16,
        origination: &Origination,
        mix: Arc<Mix>,
        qr_guid: &str,
        rng: Rng,
    ) -> anyhow::Result<Self> {
        let mut qr = Vec::new();
        for (flow, _) in &origination.flows {
            qr.push(match flow {
                Flow::ConsumerPresented => Vec::new(),
                Flow::MerchantPresented => qr_payloads(qr_guid, "CN", 156, u64::from(connection))?,
                Flow::CrossBorder(index) => {
                    let country = &mix.countries[*index];
                    match country.direction {
                        Direction::Inbound => qr_payloads(qr_guid, "CN", 156, u64::from(connection))?,
                        Direction::Outbound => {
                            qr_payloads(qr_guid, &country.country, country.currency, u64::from(connection))?
                        }
                    }
                }
            });
        }
        let mut template = codec::sample::transaction_details();
        template.originator = origination.participant;
        Ok(Self {
            numbering: Numbering { run, connection, sequence: 0, text: String::with_capacity(40) },
            originator: origination.participant,
            flows: origination.flows.iter().map(|(f, _)| *f).collect(),
            weights: origination.flows.iter().map(|(_, w)| *w).collect(),
            wallet_weights: mix.wallets.iter().map(|w| w.share).collect(),
            qr,
            mix,
            rng,
            template,
        })
    }

    /// Requests made so far.
    pub fn made(&self) -> u64 {
        self.numbering.sequence
    }

    /// The next request, due `due_us` after the run's start; refunds and queries name
    /// payments from `approved` (a payment is sent instead when it is empty).
    pub fn make(&mut self, due_us: u64, now_ms: i64, approved: &mut VecDeque<Approved>) -> anyhow::Result<Made> {
        // Borrowed, not cloned: the numbering and the random source are other fields.
        let mix = &*self.mix;
        let linked = mix.refunds + mix.queries;
        let pick = self.rng.unit() * (1.0 + linked);
        let kind = if pick < 1.0 {
            Kind::Payment
        } else if pick < 1.0 + mix.refunds {
            Kind::Refund
        } else {
            Kind::Query
        };
        let id = self.numbering.next_id(due_us)?;
        let sequence = self.numbering.sequence;
        self.numbering.sequence += 1;
        // The oldest approvals first, skipping any too old to name.
        let mut original = None;
        while kind != Kind::Payment
            && let Some(candidate) = approved.pop_front()
        {
            if due_us.saturating_sub(candidate.at_us) <= APPROVED_AGE_MAX_US {
                original = Some(candidate);
                break;
            }
        }
        if let Some(original) = original {
            let message = if kind == Kind::Refund {
                // A third of refunds are partial.
                let amount_minor =
                    if self.rng.chance(1.0 / 3.0) { (original.amount_minor / 2).max(1) } else { original.amount_minor };
                Message::RefundRequest(LinkedRequest {
                    originator: self.originator,
                    originator_transaction_id: id,
                    switch_reference: 0,
                    original_switch_reference: original.reference,
                    amount_minor,
                    transaction_time_ms: now_ms,
                    currency: original.currency,
                    reason: 0,
                    reserved: [0; 4],
                    original_originator_transaction_id: TransactionId::EMPTY,
                    conversion: codec::Conversion::NONE,
                })
            } else {
                // A queried payment can be queried or refunded again.
                approved.push_back(original);
                Message::StatusQuery(StatusQuery {
                    originator: self.originator,
                    original_originator_transaction_id: original.id,
                    original_switch_reference: original.reference,
                    query_time_ms: now_ms,
                })
            };
            return Ok(Made { message, kind, sequence });
        }

        let flow_index = self.rng.weighted(&self.weights);
        let fen = mix.amounts.sample(self.rng.normal());
        let mut details = self.template.clone();
        details.originator_transaction_id = id;
        details.transaction_time_ms = now_ms;
        details.amount_minor = fen;
        let message = match self.flows[flow_index] {
            Flow::ConsumerPresented => {
                let wallet = &mix.wallets[self.rng.weighted(&self.wallet_weights)];
                let payment_code = self.numbering.payment_code(&wallet.prefix, wallet.digits)?;
                Message::PaymentCodeRequest(PaymentCodeRequest {
                    details,
                    payment_code,
                    conversion: codec::Conversion::NONE,
                })
            }
            flow => {
                let payloads = &self.qr[flow_index];
                let payload = &payloads[self.rng.below(payloads.len() as u64) as usize];
                let mut request = QrPaymentRequest {
                    details: TransactionDetails {
                        originator: self.originator,
                        originator_transaction_id: id,
                        amount_minor: fen,
                        transaction_time_ms: now_ms,
                        currency: 156,
                        merchant_country: 156,
                        ..TransactionDetails::default()
                    },
                    ..QrPaymentRequest::default()
                };
                if let Flow::CrossBorder(index) = flow {
                    let country = &mix.countries[index];
                    if country.direction == Direction::Outbound {
                        let exponent = codec::currency::exponent(country.currency).context("currency exponent")?;
                        let units = fen as f64 / 100.0 * country.units_per_cny * 10f64.powi(i32::from(exponent));
                        request.details.amount_minor = (units.round() as u64).max(1);
                        request.details.currency = country.currency;
                        request.details.merchant_country = country.country_numeric;
                    }
                }
                request.set_payload(payload).map_err(|e| anyhow::anyhow!("QR payload: {e}"))?;
                Message::QrPaymentRequest(Box::new(request))
            }
        };
        Ok(Made { message, kind: Kind::Payment, sequence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participants;

    #[test]
    fn ids_round_trip_and_foreign_ids_are_refused() {
        let parts = IdParts { run: 0xabcdef, connection: 3, sequence: 0x1234_5678, due_us: 86_400_000_000 };
        let text = format!("{:x}-{:x}-{:x}-{:x}", parts.run, parts.connection, parts.sequence, parts.due_us);
        assert!(text.len() <= 32, "{text}");
        assert_eq!(parse_id(&text), Some(parts));
        for foreign in ["ACQ0001-20260216-000000042", "1-2-3", "1-2-3-4-5", "x-1-2-3", ""] {
            assert_eq!(parse_id(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn the_mix_reaches_the_right_originators_and_encodes() {
        let profile = Profile::load("visa-free-surge").unwrap();
        let participants = participants::demo();
        let origins = originations(&profile, &participants).unwrap();
        let total: f64 = origins.iter().map(Origination::share).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // One wallet per inbound market, each only cross-border.
        for market in ["WALKR01", "WALSG01", "WALTH01", "WALMY01", "WALHK01", "WALMO01"] {
            let wallet = origins.iter().find(|o| o.participant.as_str() == market).unwrap();
            assert!(wallet.flows.iter().all(|(f, _)| matches!(f, Flow::CrossBorder(_))), "{market}");
        }

        let mix = Arc::new(profile.mix.clone());
        let mut pool = VecDeque::new();
        let mut encoder = codec::FrameEncoder::default();
        for origination in &origins {
            let mut traffic = Traffic::new(7, 1, origination, Arc::clone(&mix), QR_GUID_DEFAULT, Rng::new(1)).unwrap();
            for n in 0..500 {
                let made = traffic.make(n * 1000, codec::sample::SAMPLE_TIME_MS, &mut pool).unwrap();
                encoder.encode(&made.message).unwrap_or_else(|e| panic!("{:?}: {e}", made.message));
                encoder.clear();
                if let Message::QrPaymentRequest(request) = &made.message {
                    assert_eq!(parse_id(request.details.originator_transaction_id.as_str()).unwrap().sequence, n);
                    remember(
                        &mut pool,
                        Approved {
                            at_us: n * 1000,
                            reference: 1 + n,
                            id: request.details.originator_transaction_id,
                            amount_minor: request.details.amount_minor,
                            currency: request.details.currency,
                        },
                    );
                }
            }
        }
        // The consumer-presented side: codes by prefix, of each wallet's length.
        let weekday = Profile::load("weekday").unwrap();
        let origins = originations(&weekday, &participants).unwrap();
        let acquirer = origins.iter().find(|o| o.participant.as_str() == "ACQ0001").unwrap();
        let mut traffic =
            Traffic::new(7, 1, acquirer, Arc::new(weekday.mix.clone()), QR_GUID_DEFAULT, Rng::new(2)).unwrap();
        let mut prefixes = std::collections::BTreeMap::new();
        for n in 0..2000 {
            if let Made { message: Message::PaymentCodeRequest(request), .. } =
                traffic.make(n, codec::sample::SAMPLE_TIME_MS, &mut pool).unwrap()
            {
                let code = request.payment_code.as_str().to_string();
                *prefixes.entry((code[..2].to_string(), code.len())).or_insert(0) += 1;
            }
        }
        assert_eq!(
            prefixes.keys().cloned().collect::<Vec<_>>(),
            [("13".to_string(), 18), ("28".to_string(), 18), ("62".to_string(), 19)]
        );
        assert!(prefixes[&("62".to_string(), 19)] < prefixes[&("13".to_string(), 18)]);
    }

    #[test]
    fn a_participant_missing_from_the_set_is_named() {
        let profile = Profile::load("weekday").unwrap();
        let participants: Vec<_> = participants::demo().into_iter().filter(|p| p.id.as_str() != "WAL0001").collect();
        let error = originations(&profile, &participants).unwrap_err().to_string();
        assert!(error.contains("WAL0001"), "{error}");
    }
}
