//! What an ISO 8583 host expects back, whatever the answer says: the response MTI of its
//! request, and its own trace fields echoed (DE11 STAN, DE37 retrieval reference number,
//! DE41 terminal id, DE42 merchant id, as it sent them). Hosts such as jPOS match an answer
//! to its request by them; the switch's own reference travels in DE48 07.
//!
//! Also the switch's own answer to a request it could read only in part (malformed, or
//! asking for what the switch does not do): the response MTI, DE39, and whatever of the
//! request's fields could be read, DE11 among them.

use crate::iso8583::{IsoError, IsoMessage};

/// The fields an answer carries back exactly as its request had them.
pub const ECHOED_FIELDS: [usize; 4] = [11, 37, 41, 42];

/// Fields of a partly read request that the switch's own answer carries back: the echoed
/// ones and the request's description (processing code, amount, times, originator,
/// currency), where they were read.
const REFUSAL_FIELDS: [usize; 11] = [3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];

/// DE39 for a message the switch could read but that breaks the format or the field rules.
pub const DE39_FORMAT_ERROR: &str = "30";
/// DE39 for a request the switch does not carry (its MTI or DE3 processing code).
pub const DE39_INVALID_TRANSACTION: &str = "12";

/// The response MTI of a request (`xx0x`) or advice (`xx2x`) MTI: 0200 is answered 0210,
/// 0400 0410, 0420 0430, 0100 0110. `None` for anything else (responses, notifications),
/// which is not answered.
pub fn response_mti(mti: &str) -> Option<[u8; 4]> {
    let mut digits: [u8; 4] = mti.as_bytes().try_into().ok()?;
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(digits[2], b'0' | b'2') {
        return None;
    }
    digits[2] += 1;
    Some(digits)
}

/// What an answer to one request must carry back: its response MTI and the echoed fields
/// as the request had them (absent ones stay absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    response_mti: [u8; 4],
    values: [Option<Box<str>>; ECHOED_FIELDS.len()],
}

impl Echo {
    /// The echo of `request`; `None` when its MTI has no response.
    pub fn of(request: &IsoMessage) -> Option<Self> {
        let response_mti = response_mti(request.mti())?;
        Some(Self { response_mti, values: ECHOED_FIELDS.map(|field| request.get_str(field).map(Box::from)) })
    }

    /// Makes `answer` the answer to the request this was taken from: its MTI and the
    /// echoed fields.
    pub fn apply(&self, answer: &mut IsoMessage) -> Result<(), IsoError> {
        answer.set_mti(std::str::from_utf8(&self.response_mti).unwrap_or("0000"))?;
        for (field, value) in ECHOED_FIELDS.into_iter().zip(&self.values) {
            match value {
                Some(value) => answer.set_str(field, value)?,
                None => answer.remove(field),
            }
        }
        Ok(())
    }
}

/// The switch's own answer to `request`, read as far as it could be: the response MTI,
/// DE39 `response_code`, and every field of [`REFUSAL_FIELDS`] that was read. `None`
/// unless its MTI is a request's and its DE11 was read: an answer a host cannot match to
/// its request is not sent.
pub fn refusal(request: &IsoMessage, response_code: &str, out: &mut IsoMessage) -> Option<()> {
    let mti = response_mti(request.mti())?;
    request.get(11)?;
    out.clear();
    out.set_mti(std::str::from_utf8(&mti).ok()?).ok()?;
    for field in REFUSAL_FIELDS {
        if let Some(value) = request.get(field) {
            out.set(field, value).ok()?;
        }
    }
    out.set_str(39, response_code).ok()?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_advices_are_answered_with_their_response_mti() {
        for (mti, answer) in
            [("0200", Some("0210")), ("0400", Some("0410")), ("0420", Some("0430")), ("0100", Some("0110"))]
        {
            assert_eq!(response_mti(mti).map(|m| String::from_utf8_lossy(&m).to_string()).as_deref(), answer, "{mti}");
        }
        for mti in ["0210", "0430", "0440", "02x0", "020", "????"] {
            assert_eq!(response_mti(mti), None, "{mti}");
        }
    }

    #[test]
    fn an_answer_carries_back_the_trace_fields_as_sent() {
        let mut request = IsoMessage::new("0400").expect("valid");
        for (field, value) in [(11, "004242"), (37, "RRN 00042   "), (42, "MERCHANT 1     ")] {
            request.set_str(field, value).expect("valid");
        }
        let echo = Echo::of(&request).expect("a request");
        let mut answer = IsoMessage::new("0430").expect("valid");
        for (field, value) in [(11, "999999"), (37, "switch's id "), (41, "T1      "), (39, "00")] {
            answer.set_str(field, value).expect("valid");
        }
        echo.apply(&mut answer).expect("applies");
        assert_eq!(answer.mti(), "0410");
        assert_eq!(answer.get_str(11), Some("004242"));
        assert_eq!(answer.get_str(37), Some("RRN 00042   "));
        assert_eq!(answer.get_str(41), None, "the request had no DE41");
        assert_eq!(answer.get_str(42), Some("MERCHANT 1     "));
        assert_eq!(answer.get_str(39), Some("00"));
    }

    #[test]
    fn a_refusal_needs_a_request_mti_and_its_stan() {
        let mut request = IsoMessage::new("0200").expect("valid");
        let mut out = IsoMessage::default();
        assert_eq!(refusal(&request, DE39_FORMAT_ERROR, &mut out), None, "no DE11 read");
        request.set_str(11, "000007").expect("valid");
        request.set_str(2, "6212345678901234567").expect("valid");
        assert_eq!(refusal(&request, DE39_FORMAT_ERROR, &mut out), Some(()));
        assert_eq!((out.mti(), out.get_str(11), out.get_str(39)), ("0210", Some("000007"), Some("30")));
        assert_eq!(out.get(2), None, "the payment code is never sent back");
        request.set_mti("0210").expect("valid");
        assert_eq!(refusal(&request, DE39_FORMAT_ERROR, &mut out), None, "a response is not answered");
    }
}
