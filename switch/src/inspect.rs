//! `switch inspect`: an integrator's view of what the switch reads. Each command decodes
//! one input and renders it as JSON (payment codes masked), or returns the codec's error,
//! which names the offset and the field.

use codec::emv_qr::{MerchantCode, parse_merchant_code};
use codec::iso8583::{Content, IsoMessage, Profile};
use codec::translate::{Translated, from_iso};
use serde_json::{Map, Value, json};

/// Why an input could not be inspected: what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("the input is not hexadecimal: {0}")]
    Hex(#[from] hex::FromHexError),
    #[error("{0}")]
    Qr(#[from] codec::emv_qr::QrError),
    #[error("{0}")]
    Frame(#[from] codec::DecodeError),
    #[error("the frame is incomplete: {have} bytes, the header announces more")]
    FrameIncomplete { have: usize },
    #[error("{} bytes follow the frame", .0)]
    FrameTrailing(usize),
    #[error("ISO 8583 ({profile} profile): {error}")]
    Iso { profile: String, error: codec::iso8583::IsoError },
    #[error("unknown ISO 8583 profile {0:?}; built in: binary, ascii, binary-gbk")]
    UnknownProfile(String),
    #[error("the ISO 8583 length header is incomplete or does not match the message length")]
    IsoFrame,
}

fn hex_input(text: &str) -> Result<Vec<u8>, InspectError> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(hex::decode(cleaned)?)
}

/// `switch inspect qr PAYLOAD`
pub fn qr(payload: &str) -> Result<Value, InspectError> {
    Ok(match parse_merchant_code(payload)? {
        MerchantCode::UnionPayUrl(url) => json!({
            "format": "unionpay_url",
            "institution_code": url.institution_code,
            "voucher": url.voucher,
        }),
        MerchantCode::Emv(qr) => {
            let accounts: Vec<Value> = qr
                .merchant_accounts()
                .chain(qr.unreserved_templates())
                .map(|account| {
                    let fields: Map<String, Value> =
                        account.fields().map(|f| (format!("{:02}", f.tag), json!(f.value))).collect();
                    json!({
                        "tag": format!("{:02}", account.tlv.tag),
                        "guid": account.guid(),
                        "value": if account.is_template() || account.tlv.tag >= 80 { Value::Null } else { json!(account.tlv.value) },
                        "fields": fields,
                    })
                })
                .collect();
            let additional: Map<String, Value> =
                qr.additional_data().map(|f| (format!("{:02}", f.tag), json!(f.value))).collect();
            json!({
                "format": "emv",
                "initiation": match qr.initiation() {
                    Some(codec::emv_qr::Initiation::Static) => "static",
                    Some(codec::emv_qr::Initiation::Dynamic) => "dynamic",
                    None => "unspecified",
                },
                "merchant_accounts": accounts,
                "merchant_category_code": qr.merchant_category_code(),
                "currency": qr.currency(),
                "currency_alpha": codec::currency::alphabetic(qr.currency()),
                "amount": qr.amount(),
                "amount_minor": qr.amount_minor().and_then(Result::ok),
                "country": qr.country(),
                "merchant_name": qr.merchant_name(),
                "merchant_city": qr.merchant_city(),
                "postal_code": qr.postal_code(),
                "additional_data": additional,
                "alternate_language": qr.alternate_language().map(|(language, name, city)| json!({
                    "language": language, "merchant_name": name, "merchant_city": city,
                })),
                "crc": format!("{:04X}", qr.crc),
            })
        }
    })
}

/// `switch inspect frame HEX`: one native frame, decoded as the switch's edge decodes it.
pub fn frame(hex_text: &str) -> Result<Value, InspectError> {
    let bytes = hex_input(hex_text)?;
    let mut decoder = codec::FrameDecoder::default();
    let fed = decoder.feed(&bytes);
    let value = match decoder.decode()? {
        Some(frame) => json!({
            "kind": format!("{:?}", frame.message.kind()),
            "kind_byte": format!("0x{:02X}", frame.message.kind() as u8),
            "frame_bytes": frame.bytes.len(),
            "message": frame.message.to_message(),
        }),
        None => return Err(InspectError::FrameIncomplete { have: bytes.len() }),
    };
    let trailing = decoder.buffered() + (bytes.len() - fed);
    if trailing > 0 {
        return Err(InspectError::FrameTrailing(trailing));
    }
    Ok(value)
}

/// `switch inspect iso8583 HEX [--profile NAME] [--framed]`
pub fn iso8583(hex_text: &str, profile_name: &str, framed: bool, now_ms: i64) -> Result<Value, InspectError> {
    let profile = Profile::builtin(profile_name).ok_or_else(|| InspectError::UnknownProfile(profile_name.into()))?;
    let bytes = hex_input(hex_text)?;
    let body = if framed {
        let range = profile
            .frame(&bytes)
            .map_err(|error| InspectError::Iso { profile: profile.name.clone(), error })?
            .filter(|range| range.end == bytes.len())
            .ok_or(InspectError::IsoFrame)?;
        &bytes[range]
    } else {
        &bytes[..]
    };
    let mut message = IsoMessage::default();
    profile.unpack(body, &mut message).map_err(|error| InspectError::Iso { profile: profile.name.clone(), error })?;
    let mut fields = Map::new();
    for number in message.present() {
        let spec = profile.field(number).expect("unpacked fields are defined");
        let raw = message.get(number).unwrap_or_default();
        let value = match spec.content {
            Content::Binary => json!(hex::encode_upper(raw)),
            // Field 2 carries the payment code or account number: never shown whole.
            _ if number == 2 => json!(codec::field::masked(message.get_str(2).unwrap_or(""))),
            _ => json!(message.get_str(number)),
        };
        fields.insert(number.to_string(), json!({ "name": spec.description, "value": value }));
    }
    let translation = match from_iso(&message, now_ms) {
        Ok(Translated::Message(model)) => json!({ "message": model }),
        Ok(Translated::SignOn { institution }) => json!({ "sign_on": institution.map(|i| i.to_string()) }),
        Ok(Translated::SignOnReply { code }) => json!({ "sign_on_reply": format!("{code:?}") }),
        Err(error) => json!({ "error": error.to_string() }),
    };
    Ok(json!({
        "profile": profile.name,
        "mti": message.mti(),
        "fields": fields,
        "canonical": translation,
    }))
}
