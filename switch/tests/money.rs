//! Money at the edge, against a running switch with real TCP participants: the switch never
//! clears an amount the receiver did not approve, never forwards a QR payment that
//! contradicts its QR, and answers status queries only about the asker's own transactions.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codec::emv_qr::{AccountSpec, Initiation, QrSpec};
use codec::field::FieldText;
use codec::{InstitutionId, Message, ReplyCode, ReversalReason};
use loadgen::client::Client;
use switch::config::{SwitchConfig, demo_key};
use switch::core::exchange::Routes;
use switch::edge::tcp::{Shared, serve};
use switch::participant::Directory;
use tokio::sync::mpsc;

fn id(text: &str) -> InstitutionId {
    InstitutionId::new(text).expect("valid id")
}

async fn connect(address: SocketAddr, participant: &str) -> Client {
    Client::connect(address, id(participant), 1, &demo_key(participant)).await.expect("sign on")
}

/// A 2-shard switch on the embedded default with a journal in `data_dir`.
async fn start(data_dir: &std::path::Path) -> (SocketAddr, Arc<Shared>) {
    let config = SwitchConfig::embedded_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shared = Arc::new(
        Shared::new(config.session, Directory::new(config.participants))
            .with_exchange(config.exchange, Routes::embedded_default())
            .with_fees(config.fees)
            .with_shards(2)
            .with_journal(switch::durability::journal::JournalSettings {
                data_dir: data_dir.to_path_buf(),
                policy: switch::durability::journal::SyncPolicy::Never,
                segment_size: switch::durability::journal::SEGMENT_SIZE_MAX,
                retain_windows: 0,
                restart_every: switch::durability::journal::RESTART_EVERY_DEFAULT,
                damage: switch::durability::journal::Damage::Refuse,
                io_uring: false,
                code_key: None,
            }),
    );
    tokio::spawn(serve(listener, Arc::clone(&shared), std::future::pending()));
    (address, shared)
}

/// What a test receiver was sent: requests and reversals, as they arrived.
type Seen = mpsc::UnboundedReceiver<Message>;

/// Signs `participant` on; it answers every payment with `answer(request details)` and
/// acknowledges every reversal, and reports everything it receives.
async fn receiver(
    address: SocketAddr,
    participant: &str,
    answer: impl Fn(&codec::TransactionDetails) -> codec::Reply + Send + 'static,
) -> Seen {
    let Client { participant, mut reader, mut writer, .. } = connect(address, participant).await;
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(message) = reader.next(|m| m.to_message()).await {
            let reply = match &message {
                Message::PaymentCodeRequest(request) => Message::PaymentReply(answer(&request.details)),
                Message::QrPaymentRequest(request) => Message::PaymentReply(answer(&request.details)),
                Message::ReversalRequest(reversal) => {
                    Message::ReversalReply(common::acknowledgement(reversal, participant))
                }
                _ => continue,
            };
            let _ = seen.send(message);
            if writer.send(&reply).await.is_err() {
                return;
            }
        }
    });
    received
}

async fn next_seen(seen: &mut Seen) -> Message {
    tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.expect("in time").expect("the receiver runs")
}

fn code_of(reply: &codec::Reply) -> ReplyCode {
    ReplyCode::try_from(reply.code).expect("a code from the table")
}

#[tokio::test]
async fn an_approval_for_another_amount_or_currency_is_refused_reversed_and_never_cleared() {
    let dir = std::env::temp_dir().join(format!("switch-money-approval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (address, shared) = start(&dir).await;
    // WeChat Pay approves less than asked for ids ending in LESS, another currency for
    // ids ending in CCY, and exactly what was asked otherwise.
    let mut wechat = receiver(address, "WECHATPAY", |details| {
        let mut reply = common::approval(details, id("WECHATPAY"));
        let asked = details.originator_transaction_id.as_str();
        if asked.ends_with("LESS") {
            reply.amount_minor -= 1;
        } else if asked.ends_with("CCY") {
            reply.currency = 840;
        }
        reply
    })
    .await;
    let mut acquirer = connect(address, "ACQ0001").await;
    let mut references = Vec::new();
    for (n, suffix) in ["LESS", "CCY", "EXACT"].into_iter().enumerate() {
        let mut request = common::payment_code_request();
        request.details.originator_transaction_id = format!("MONEY-{n}-{suffix}").parse().expect("valid");
        request.payment_code = format!("13{n:016}").parse().expect("valid");
        acquirer.writer.send(&Message::PaymentCodeRequest(request.clone())).await.expect("send");
        let Message::PaymentCodeRequest(forwarded) = next_seen(&mut wechat).await else { panic!("not a payment") };
        let reply = common::next_payment_reply(&mut acquirer).await;
        references.push(forwarded.details.switch_reference);
        if suffix == "EXACT" {
            assert_eq!(code_of(&reply), ReplyCode::Approved, "{reply:?}");
            continue;
        }
        // The originator hears an explicit non-approval, at the amount it asked for...
        assert_eq!(code_of(&reply), ReplyCode::ApprovalMismatch, "{suffix}: {reply:?}");
        assert_eq!((reply.amount_minor, reply.currency), (request.details.amount_minor, request.details.currency));
        assert!(reply.authorization_code.is_empty());
        // ...and the receiver gets a reversal of what it approved.
        let Message::ReversalRequest(reversal) = next_seen(&mut wechat).await else { panic!("not a reversal") };
        assert_eq!(reversal.original_switch_reference, forwarded.details.switch_reference);
        assert_eq!(reversal.reason, ReversalReason::ApprovalMismatch.value());
    }
    let rendered = shared.metrics.render();
    assert!(rendered.contains("switch_replies_total{code=\"ApprovalMismatch\"} 2"), "{rendered}");

    // Clearing holds the exact approval only.
    let (window, _) = shared.close_window().await.expect("closes");
    let files = common::read_window(&dir, window);
    let (_, acquirer_csv) =
        files.iter().find(|(name, _)| name.contains("ACQ0001") && name.ends_with(".csv")).expect("csv");
    let acquirer_csv = String::from_utf8_lossy(acquirer_csv);
    assert!(acquirer_csv.contains("MONEY-2-EXACT"), "{acquirer_csv}");
    assert!(!acquirer_csv.contains("MONEY-0-LESS") && !acquirer_csv.contains("MONEY-1-CCY"), "{acquirer_csv}");

    // A status query tells the originator it was declined with the same code.
    let query = codec::StatusQuery {
        originator: id("ACQ0001"),
        original_originator_transaction_id: "MONEY-0-LESS".parse().expect("valid"),
        original_switch_reference: 0,
        query_time_ms: common::now_ms(),
    };
    acquirer.writer.send(&Message::StatusQuery(query)).await.expect("send");
    let status = next_status(&mut acquirer).await;
    assert_eq!(status.status, codec::TransactionStatus::Declined.value(), "{status:?}");
    assert_eq!(status.code, ReplyCode::ApprovalMismatch.value(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn next_status(client: &mut Client) -> codec::StatusReply {
    client
        .reader
        .next(|m| match m.to_message() {
            Message::StatusReply(status) => status,
            other => panic!("expected a status reply, got {:?}", other.kind()),
        })
        .await
        .expect("status")
}

/// A static UnionPay merchant QR in CNY, with `amount` (tag 54) if given and the merchant
/// id in sub-tag 01 unless `merchant_id` is `None`.
fn unionpay_qr(amount: Option<&str>, merchant_id: Option<&str>) -> String {
    QrSpec {
        initiation: if amount.is_some() { Initiation::Dynamic } else { Initiation::Static },
        accounts: vec![AccountSpec {
            tag: 26,
            guid: "A000000333010101".into(),
            fields: merchant_id.map(|id| vec![(1, id.to_string())]).unwrap_or_default(),
        }],
        merchant_category_code: 5812,
        currency: 156,
        amount: amount.map(str::to_string),
        country: "CN".into(),
        merchant_name: "JINGAN COFFEE".into(),
        merchant_city: "SHANGHAI".into(),
        postal_code: None,
        additional_data: Vec::new(),
        alternate_language: None,
    }
    .encode()
    .expect("a valid QR")
}

#[tokio::test]
async fn a_qr_payment_must_match_the_amount_and_currency_its_qr_carries() {
    let dir = std::env::temp_dir().join(format!("switch-money-qr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (address, _shared) = start(&dir).await;
    let mut unionpay = receiver(address, "UNIONPAY", |details| common::approval(details, id("UNIONPAY"))).await;
    let mut wallet = connect(address, "WAL0001").await;
    let mut pay = async |n: u32, payload: &str, amount_minor: u64, currency: u16| {
        let mut request = common::qr_payment_request();
        request.details.originator_transaction_id = format!("QR-{n}").parse().expect("valid");
        request.details.amount_minor = amount_minor;
        request.details.currency = currency;
        request.set_payload(payload).expect("fits");
        wallet.writer.send(&Message::QrPaymentRequest(request.into())).await.expect("send");
        code_of(&common::next_payment_reply(&mut wallet).await)
    };
    let priced = unionpay_qr(Some("38.00"), Some("310115000123456"));
    // PROTOCOL.md's golden QR carries 38.00 CNY: 37.99, or 38.00 in USD, is refused.
    assert_eq!(pay(1, &priced, 3799, 156).await, ReplyCode::InvalidAmount);
    assert_eq!(pay(2, &priced, 3800, 840).await, ReplyCode::InvalidAmount);
    // A static code without an amount still names its currency.
    let open = unionpay_qr(None, Some("310115000123456"));
    assert_eq!(pay(3, &open, 1250, 344).await, ReplyCode::InvalidAmount);
    // A code whose routed template has no merchant id is malformed for its network.
    assert_eq!(pay(4, &unionpay_qr(None, None), 1250, 156).await, ReplyCode::FormatError);
    // None of those reached UnionPay.
    assert!(unionpay.try_recv().is_err(), "a refused QR payment was forwarded");

    // What matches goes through, with the merchant fields filled from the code, its
    // country (tag 58) included.
    assert_eq!(pay(5, &priced, 3800, 156).await, ReplyCode::Approved);
    let Message::QrPaymentRequest(forwarded) = next_seen(&mut unionpay).await else { panic!("not a QR payment") };
    assert_eq!(forwarded.details.merchant_country, 156, "tag 58 CN");
    assert_eq!(forwarded.details.merchant_id.as_str(), "310115000123456");
    assert_eq!(forwarded.details.merchant_category_code, 5812);
    // PROTOCOL.md's own golden QR, as its golden request carries it.
    let mut golden = common::qr_payment_request();
    golden.details.originator_transaction_id = "QR-GOLDEN".parse().expect("valid");
    wallet.writer.send(&Message::QrPaymentRequest(golden.into())).await.expect("send");
    assert_eq!(code_of(&common::next_payment_reply(&mut wallet).await), ReplyCode::Approved);
    let Message::QrPaymentRequest(forwarded) = next_seen(&mut unionpay).await else { panic!("not a QR payment") };
    assert_eq!(forwarded.details.merchant_country, 156);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_status_query_for_another_originator_is_refused() {
    let dir = std::env::temp_dir().join(format!("switch-money-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (address, _shared) = start(&dir).await;
    let _wechat = receiver(address, "WECHATPAY", |details| common::approval(details, id("WECHATPAY"))).await;
    // ACQ0002 pays; ACQ0001 asks about it, naming ACQ0002 as the originator.
    let mut owner = connect(address, "ACQ0002").await;
    let mut request = common::payment_code_request();
    request.details.originator = id("ACQ0002");
    request.details.originator_transaction_id = "THEIRS-1".parse().expect("valid");
    owner.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
    assert_eq!(code_of(&common::next_payment_reply(&mut owner).await), ReplyCode::Approved);
    let mut snoop = connect(address, "ACQ0001").await;
    let query = codec::StatusQuery {
        originator: id("ACQ0002"),
        original_originator_transaction_id: "THEIRS-1".parse().expect("valid"),
        original_switch_reference: 0,
        query_time_ms: common::now_ms(),
    };
    snoop.writer.send(&Message::StatusQuery(query.clone())).await.expect("send");
    let status = next_status(&mut snoop).await;
    assert_eq!(status.code, ReplyCode::NotAuthorised.value(), "{status:?}");
    assert_eq!(status.status, codec::TransactionStatus::Unknown.value(), "{status:?}");
    assert_eq!(status.originator, id("ACQ0002"), "the query's fields are echoed");
    assert_eq!((status.amount_minor, status.original_switch_reference), (0, 0), "nothing of it is told");
    // The owner still sees its own.
    owner.writer.send(&Message::StatusQuery(query)).await.expect("send");
    assert_eq!(next_status(&mut owner).await.status, codec::TransactionStatus::Approved.value());
    let _ = std::fs::remove_dir_all(&dir);
}
