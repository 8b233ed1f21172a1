//! Deterministic sample messages, one per kind: the golden vectors in `PROTOCOL.md`, the
//! benchmarks' inputs, and a starting point for tests. Fixed values, no randomness.

use crate::code::{ReplyCode, ReversalReason, SignOffReason, TransactionStatus};
use crate::field::{
    AuthorizationCode, City, InstitutionId, MerchantId, MerchantName, PaymentCode, RejectDetail, SwitchReference,
    TerminalId, TransactionId,
};
use crate::message::{
    Echo, LinkedRequest, Message, MessageKind, PROTOCOL_VERSION, QrPaymentRequest, Reject, Reply, SignOff,
    SignOnChallenge, SignOnRequest, SignOnResult, StatusQuery, StatusReply, TransactionDetails,
};
use crate::{PaymentCodeRequest, RejectReason};

/// 2026-02-16T23:59:30Z (New Year's Eve peak, in UTC) in Unix milliseconds.
pub const SAMPLE_TIME_MS: i64 = 1_771_286_370_000;

fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("sample field is valid")
}

/// The details of the typical consumer-presented payment: a coffee in Shanghai, CNY 38.00.
pub fn transaction_details() -> TransactionDetails {
    TransactionDetails {
        originator: id::<InstitutionId>("ACQ0001"),
        originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000042"),
        switch_reference: 0,
        amount_minor: 3800,
        transaction_time_ms: SAMPLE_TIME_MS,
        currency: 156,
        merchant_category_code: 5814,
        merchant_country: 156,
        reserved: 0,
        merchant_id: id::<MerchantId>("310115000123456"),
        terminal_id: id::<TerminalId>("T0000042"),
        merchant_name: id::<MerchantName>("静安咖啡 Jing'an Coffee"),
        merchant_city: id::<City>("上海 Shanghai"),
    }
}

/// The typical consumer-presented request (WeChat Pay code prefix 13, 18 digits).
pub fn payment_code_request() -> PaymentCodeRequest {
    PaymentCodeRequest {
        details: transaction_details(),
        payment_code: id::<PaymentCode>("134567890123451234"),
        conversion: crate::message::Conversion::NONE,
    }
}

/// A static EMVCo merchant-presented QR payload (the CRC in tag 63 is valid).
pub const SAMPLE_QR_PAYLOAD: &str = "00020101021126390016A0000003330101010115310115000123456520458145303156540538.005802CN5913JINGAN COFFEE6008SHANGHAI6304B022";

/// A merchant-presented request as a wallet sends it: merchant fields left for the switch
/// to fill from the QR payload.
pub fn qr_payment_request() -> QrPaymentRequest {
    let mut request = QrPaymentRequest {
        details: TransactionDetails {
            originator: id::<InstitutionId>("WAL0001"),
            originator_transaction_id: id::<TransactionId>("WAL0001-7f3a9c"),
            amount_minor: 3800,
            transaction_time_ms: SAMPLE_TIME_MS,
            currency: 156,
            ..TransactionDetails::default()
        },
        ..QrPaymentRequest::default()
    };
    request.set_payload(SAMPLE_QR_PAYLOAD).expect("sample payload fits");
    request
}

/// A dynamic cross-border merchant QR: UTF-8 names and the alternate-language template.
pub fn cross_border_qr_spec() -> crate::emv_qr::QrSpec {
    crate::emv_qr::QrSpec {
        initiation: crate::emv_qr::Initiation::Dynamic,
        accounts: vec![crate::emv_qr::AccountSpec {
            tag: 26,
            guid: "A000000333010101".into(),
            fields: vec![(1, "310115000123456".into())],
        }],
        merchant_category_code: 5812,
        currency: 156,
        amount: Some("128.50".into()),
        country: "CN".into(),
        merchant_name: "全聚德 QUANJUDE".into(),
        merchant_city: "北京".into(),
        postal_code: Some("100005".into()),
        additional_data: vec![(1, "INV-2026-0001".into()), (7, "T0000042".into())],
        alternate_language: Some(("zh".into(), "全聚德烤鸭店".into(), Some("北京".into()))),
    }
}

/// The issuer's approval of [`payment_code_request`], as forwarded back.
pub fn payment_reply() -> Reply {
    Reply {
        originator: id::<InstitutionId>("ACQ0001"),
        originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000042"),
        switch_reference: SwitchReference::new(0, 1, 42).0,
        amount_minor: 3800,
        reply_time_ms: SAMPLE_TIME_MS + 87,
        currency: 156,
        code: ReplyCode::Approved.value(),
        reserved: [0; 4],
        authorization_code: id::<AuthorizationCode>("A1B2C3"),
        responder: id::<InstitutionId>("WECHATPAY"),
        conversion: crate::message::Conversion::NONE,
    }
}

fn linked_request(reason: u16) -> LinkedRequest {
    LinkedRequest {
        originator: id::<InstitutionId>("ACQ0001"),
        originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000043"),
        switch_reference: 0,
        original_switch_reference: SwitchReference::new(0, 1, 42).0,
        amount_minor: 3800,
        transaction_time_ms: SAMPLE_TIME_MS + 60_000,
        currency: 156,
        reason,
        reserved: [0; 4],
        original_originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000042"),
        conversion: crate::message::Conversion::NONE,
    }
}

/// One sample message of every kind, in kind order.
pub fn all_kinds() -> Vec<Message> {
    let switch_id = id::<InstitutionId>("CSWITCH");
    let messages = vec![
        Message::SignOnChallenge(SignOnChallenge {
            switch_id,
            server_nonce: [0x5A; 32],
            protocol_version: PROTOCOL_VERSION,
            reserved: [0; 6],
        }),
        Message::SignOnRequest(SignOnRequest {
            participant: id::<InstitutionId>("ACQ0001"),
            client_nonce: [0xC3; 32],
            proof: [0x11; 32],
            protocol_version: PROTOCOL_VERSION,
            key_id: 1,
            reserved: [0; 4],
        }),
        Message::SignOnResult(SignOnResult {
            session_id: 0x0000_0001_0000_0007,
            server_proof: [0x22; 32],
            echo_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            code: ReplyCode::Approved.value(),
            frame_mac: 1,
            reserved: [0; 5],
        }),
        Message::EchoRequest(Echo { sequence: 1, sent_time_ms: SAMPLE_TIME_MS }),
        Message::EchoReply(Echo { sequence: 1, sent_time_ms: SAMPLE_TIME_MS }),
        Message::SignOffRequest(SignOff { code: SignOffReason::Maintenance.value(), reserved: [0; 6] }),
        Message::SignOffReply(SignOff { code: ReplyCode::Approved.value(), reserved: [0; 6] }),
        Message::PaymentCodeRequest(payment_code_request()),
        Message::QrPaymentRequest(qr_payment_request().into()),
        Message::PaymentReply(payment_reply()),
        Message::ReversalRequest(linked_request(ReversalReason::OriginatorCancel.value())),
        Message::ReversalReply(Reply {
            originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000043"),
            switch_reference: SwitchReference::new(0, 1, 43).0,
            authorization_code: AuthorizationCode::EMPTY,
            ..payment_reply()
        }),
        Message::RefundRequest(linked_request(0)),
        // A refund of a converted payment: the payer's issuer settles in THB, so the reply
        // says what the payer gets back (38.00 CNY at 4.9123 THB/CNY plus 50 bp: 187.60 THB).
        Message::RefundReply(Reply {
            originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000043"),
            switch_reference: SwitchReference::new(0, 1, 44).0,
            authorization_code: AuthorizationCode::EMPTY,
            conversion: crate::message::Conversion {
                payer_amount_minor: 18_760,
                rate: 49_123_000_000,
                rate_version: 1,
                payer_currency: 764,
                margin_basis_points: 50,
            },
            ..payment_reply()
        }),
        Message::StatusQuery(StatusQuery {
            originator: id::<InstitutionId>("ACQ0001"),
            original_originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000042"),
            original_switch_reference: 0,
            query_time_ms: SAMPLE_TIME_MS + 5_000,
        }),
        Message::StatusReply(StatusReply {
            originator: id::<InstitutionId>("ACQ0001"),
            original_originator_transaction_id: id::<TransactionId>("ACQ0001-20260216-000000042"),
            original_switch_reference: SwitchReference::new(0, 1, 42).0,
            amount_minor: 3800,
            reply_time_ms: SAMPLE_TIME_MS + 5_001,
            currency: 156,
            code: ReplyCode::Approved.value(),
            status: TransactionStatus::Approved.value(),
            reserved: [0; 3],
        }),
        Message::Reject(Reject {
            offset: 4,
            reason: RejectReason::BadChecksum.value(),
            rejected_kind: MessageKind::PaymentCodeRequest as u8,
            reserved: 0,
            detail: id::<RejectDetail>("checksum mismatch"),
        }),
    ];
    debug_assert_eq!(messages.iter().map(Message::kind).collect::<Vec<_>>(), MessageKind::ALL);
    messages
}
