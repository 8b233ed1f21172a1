//! Code tables carried in bodies as plain integers: the reply code table, transaction
//! statuses and reversal reasons.
//!
//! They travel as `u16`/`u8` (not as rkyv enums) so a client in any language writes a
//! number from the table in `PROTOCOL.md`; decoding checks the number is in the table.
//! One table, one meaning per number: `PROTOCOL.md` is generated from [`ReplyCode::ALL`]
//! and a test keeps the two equal.

use std::fmt;

/// Declares a `#[repr]` code enum with its wire value, a description, `TryFrom` and `ALL`.
macro_rules! code_table {
    (
        $(#[$meta:meta])* $name:ident: $repr:ty {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal, $description:literal;)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Every code in the table, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The wire value.
            pub const fn value(self) -> $repr {
                self as $repr
            }

            /// One line for operators and `PROTOCOL.md`.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Self::$variant => $description,)*
                }
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $repr;
            fn try_from(value: $repr) -> Result<Self, $repr> {
                match value {
                    $($value => Ok(Self::$variant),)*
                    other => Err(other),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?} ({})", self, self.value())
            }
        }
    };
}

code_table! {
    /// The outcome carried by every reply. `0` approves; `1..=99` are the issuer's (or
    /// receiver's) declines; `100..` are answers the switch generates itself.
    ReplyCode: u16 {
        Approved = 0, "approved";
        DoNotHonour = 1, "declined by the issuer without a specific reason";
        InsufficientFunds = 2, "declined: insufficient funds";
        InvalidPaymentCode = 3, "declined: the payment code is not valid at the issuer";
        PaymentCodeExpired = 4, "declined: the payment code has expired or was already used";
        ExceedsLimit = 5, "declined: exceeds the payer's limit";
        SuspectedFraud = 6, "declined: suspected fraud";
        InvalidAmount = 7, "declined: the amount is not acceptable";
        RestrictedAccount = 8, "declined: the payer's account is restricted or closed";
        UnknownOriginal = 9, "the original transaction named by a reversal, refund or query is not known";
        Timeout = 100, "switch: no reply from the receiver within the deadline; a reversal follows";
        NoRoute = 101, "switch: no participant serves this payment code, QR network or counterparty";
        DestinationUnavailable = 102, "switch: the receiving participant is signed off, suspended or its circuit is open";
        SystemBusy = 103, "switch: overloaded; the request was shed before processing, retry later";
        Duplicate = 104, "switch: same originator transaction id, or a payment code already used";
        FormatError = 105, "switch: the message is well framed but a field is invalid";
        NotAuthorised = 106, "switch: the sender may not send this kind, act for this originator or reach this counterparty, or the request's time is outside the replay window";
        NoExchangeRate = 107, "switch: no valid exchange rate for the payer's settlement currency, or the amount does not convert into it";
        ApprovalMismatch = 108, "switch: the receiver approved another amount or currency than asked; its approval was refused and is reversed, nothing clears";
    }
}

impl ReplyCode {
    /// Whether the switch itself produced this answer (as opposed to the receiver).
    pub const fn is_switch_generated(self) -> bool {
        self.value() >= 100
    }

    pub const fn is_approved(self) -> bool {
        matches!(self, Self::Approved)
    }

    /// The ISO 8583 (1987) DE39 response code used when translating to and from ISO 8583
    /// participants.
    pub const fn iso8583_response_code(self) -> &'static str {
        match self {
            Self::Approved => "00",
            Self::DoNotHonour => "05",
            Self::InsufficientFunds => "51",
            Self::InvalidPaymentCode => "14",
            Self::PaymentCodeExpired => "54",
            Self::ExceedsLimit => "61",
            Self::SuspectedFraud => "59",
            Self::InvalidAmount => "13",
            Self::RestrictedAccount => "62",
            Self::UnknownOriginal => "25",
            Self::Timeout => "68",
            Self::NoRoute => "92",
            Self::DestinationUnavailable => "91",
            Self::SystemBusy => "96",
            Self::Duplicate => "94",
            Self::FormatError => "30",
            Self::NotAuthorised => "58",
            Self::NoExchangeRate => "12",
            Self::ApprovalMismatch => "06",
        }
    }
}

code_table! {
    /// A transaction's state as reported by a status query.
    TransactionStatus: u8 {
        Unknown = 0, "the switch holds no record of the transaction";
        InFlight = 1, "forwarded, waiting for the receiver's reply";
        Approved = 2, "approved and cleared in the open window";
        Declined = 3, "declined (the reply code says by whom and why)";
        TimedOut = 4, "answered with a timeout; a reversal is pending";
        Reversed = 5, "reversed and acknowledged";
        Refunded = 6, "approved, then refunded in whole or in part";
    }
}

code_table! {
    /// Why a reversal was sent.
    ReversalReason: u16 {
        Timeout = 1, "the switch answered the originator with a timeout";
        OriginatorCancel = 2, "the originator cancels a request whose outcome it does not know";
        LateApproval = 3, "an approval arrived after the timeout answer and is undone";
        ReplyUndeliverable = 4, "the approval could not be delivered to the originator";
        ApprovalMismatch = 5, "the approval was for another amount or currency than asked, and the switch refused it";
    }
}

code_table! {
    /// Why a participant signs off.
    SignOffReason: u16 {
        Normal = 0, "end of the session";
        Maintenance = 1, "planned maintenance; the participant will sign on again";
        Shutdown = 2, "the sender is shutting down";
    }
}

code_table! {
    /// Why a frame was refused, carried in a `Reject` body. Reasons 1 to 5 are framing
    /// errors after which the stream cannot be trusted: the switch sends the reject and
    /// closes the connection. From 6 on, the frame's boundary is known (its checksum held,
    /// or it was never read as data), so the switch rejects that frame and reads on.
    RejectReason: u16 {
        BadMagic = 1, "the frame does not start with the magic bytes \"CS\"";
        UnsupportedVersion = 2, "the header's version is not 2";
        HeaderReservedNotZero = 3, "the header's reserved bytes are not zero";
        BodyTooLarge = 4, "the body length exceeds the largest body of any kind";
        BodyLengthUnaligned = 5, "the body length is not a multiple of 8";
        BadChecksum = 6, "the CRC32C over the frame from offset 8 does not match (connection closed)";
        UnknownKind = 7, "the kind byte is not in the kind table";
        BodyLengthMismatch = 8, "the body length is not the size of the kind's body";
        Misaligned = 9, "the body is not 8-byte aligned in memory (a receiver bug)";
        InvalidBody = 10, "the body's layout failed validation";
        InvalidField = 11, "a field's value is invalid (the offset names the field)";
        NotSignedOn = 12, "traffic before a successful sign-on";
        UnexpectedKind = 13, "this kind may not be sent in this direction or session state";
        BadMac = 14, "the frame's MAC tag does not match (connection closed)";
    }
}

impl RejectReason {
    /// Whether the connection must be closed after this reject (the stream cannot be
    /// resynchronised, or the peer cannot be trusted with it).
    pub const fn closes_connection(self) -> bool {
        self.value() <= 6 || self.value() == Self::BadMac.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_refuse_unknown_values() {
        for &code in ReplyCode::ALL {
            assert_eq!(ReplyCode::try_from(code.value()), Ok(code));
            assert_eq!(code.is_switch_generated(), code.value() >= 100);
        }
        assert_eq!(ReplyCode::try_from(10), Err(10));
        assert_eq!(ReplyCode::try_from(109), Err(109));
        for &status in TransactionStatus::ALL {
            assert_eq!(TransactionStatus::try_from(status.value()), Ok(status));
        }
        assert_eq!(TransactionStatus::try_from(7), Err(7));
        assert_eq!(ReversalReason::try_from(0), Err(0));
    }

    #[test]
    fn iso8583_codes_are_distinct() {
        let mut codes: Vec<_> = ReplyCode::ALL.iter().map(|c| c.iso8583_response_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ReplyCode::ALL.len());
    }
}
