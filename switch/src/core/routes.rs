//! Where requests go: consumer-presented payments by payment-code prefix to the issuer,
//! merchant-presented ones by the QR's network GUID (or UnionPay URL institution code) to
//! the acquirer; and what a merchant's code requires of the wallet's request.
//!
//! Invariant: a merchant-presented payment is routed only when it carries its code's
//! currency and, when the code has one, its amount (`Routes::route_merchant_code`).

use std::collections::HashMap;

use codec::code::ReplyCode;
use codec::emv_qr::MerchantQr;
use codec::field::FieldText;
use codec::payment_code::IssuerTable;
use codec::{InstitutionId, TransactionDetails};

/// Where requests go: consumer-presented by payment-code prefix to the issuer,
/// merchant-presented by the QR's network GUID (or UnionPay URL institution code) to the
/// acquirer.
#[derive(Debug, Clone)]
pub struct Routes {
    pub issuers: IssuerTable,
    /// By the GUID (sub-tag 00) of a merchant account template.
    pub qr_networks: HashMap<String, QrNetwork>,
    pub unionpay_institutions: HashMap<String, InstitutionId>,
}

/// A QR network the switch routes merchant-presented payments of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrNetwork {
    /// Its acquirer (or the network itself): where its merchants' payments go.
    pub acquirer: InstitutionId,
    /// The sub-tags of its template that carry the merchant's id, in order of preference
    /// (UnionPay: 01; PromptPay: 01, 02 or 03 by the merchant's proxy type). A code whose
    /// template has none of them is refused `FormatError`.
    pub merchant_id_tags: Vec<u8>,
}

impl QrNetwork {
    /// The sub-tag most networks carry the merchant's id in.
    pub const MERCHANT_ID_TAG_DEFAULT: u8 = 1;
}

impl Routes {
    /// The demo network's routes: the default issuer table, and UnionPay's QR GUID and
    /// institution code to the UNIONPAY participant.
    pub fn embedded_default() -> Self {
        let unionpay = InstitutionId::new("UNIONPAY").expect("valid id");
        let network = QrNetwork { acquirer: unionpay, merchant_id_tags: vec![QrNetwork::MERCHANT_ID_TAG_DEFAULT] };
        Self {
            issuers: IssuerTable::china_default(),
            qr_networks: HashMap::from([("A000000333010101".to_string(), network)]),
            unionpay_institutions: HashMap::from([("00010000".to_string(), unionpay)]),
        }
    }

    /// Routes a merchant's EMV code and holds the wallet's request to it: the acquirer of
    /// the first template whose GUID names a network the switch routes. The code's
    /// currency (tag 53) must be the request's, and its amount (tag 54), when it has one,
    /// the request's amount: a payment never contradicts what the merchant asks
    /// (`InvalidAmount`). The merchant's id (the network's sub-tag), category code (52)
    /// and country (58) are taken from the code, and its name and city where the wallet
    /// left them empty. `Err`: the switch's answer.
    pub(crate) fn route_merchant_code(
        &self,
        qr: &MerchantQr<'_>,
        details: &mut TransactionDetails,
    ) -> Result<InstitutionId, ReplyCode> {
        let (account, network) = qr
            .merchant_accounts()
            .find_map(|account| account.guid().and_then(|guid| self.qr_networks.get(guid)).map(|n| (account, n)))
            .ok_or(ReplyCode::NoRoute)?;
        if qr.currency() == 0 {
            return Err(ReplyCode::FormatError);
        }
        if qr.currency() != details.currency {
            return Err(ReplyCode::InvalidAmount);
        }
        match qr.amount_minor() {
            None => {}
            Some(Ok(amount)) if amount == details.amount_minor => {}
            Some(Ok(_)) => return Err(ReplyCode::InvalidAmount),
            Some(Err(_)) => return Err(ReplyCode::FormatError),
        }
        let merchant_id = network
            .merchant_id_tags
            .iter()
            .find_map(|&tag| account.field(tag).filter(|id| !id.is_empty()))
            .ok_or(ReplyCode::FormatError)?;
        let country = codec::country::numeric(qr.country()).ok_or(ReplyCode::FormatError)?;
        // An id longer than the model's field (a Pix key) stays whole in the payload.
        if let Ok(merchant_id) = merchant_id.parse() {
            details.merchant_id = merchant_id;
        }
        details.merchant_country = country;
        if qr.merchant_category_code() != 0 {
            details.merchant_category_code = qr.merchant_category_code();
        }
        if details.merchant_name.is_empty() {
            details.merchant_name = qr.merchant_name().parse().unwrap_or_default();
        }
        if details.merchant_city.is_empty() {
            details.merchant_city = qr.merchant_city().parse().unwrap_or_default();
        }
        Ok(network.acquirer)
    }
}
