//! Twilio's error codes, in one table: what each means for the channel. The Messages API client
//! (an error in the answer to a send) and the status-callback folding (an `ErrorCode` on a
//! `failed` or `undelivered` callback) read the same table, so a code means the same thing
//! wherever WhatsApp reports it.

/// What a Twilio error means for the send that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Twilio did not take the message and asks to try later (throttling): sending again
    /// cannot deliver it twice.
    Retryable,
    /// The message cannot be delivered as it is; sending it again would fail again.
    Permanent,
    /// The customer refused it (unsubscribed, blocked): permanent, and the customer is opted
    /// out exactly as by a STOP keyword.
    Consent,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// Twilio's error code.
    pub code: i32,
    /// The channel's `failure_reason` for it.
    pub failure_reason: &'static str,
    /// What it means for the send.
    pub class: ErrorClass,
    /// Twilio's description, shortened.
    pub description: &'static str,
}

const fn row(code: i32, failure_reason: &'static str, class: ErrorClass, description: &'static str) -> ErrorCode {
    ErrorCode { code, failure_reason, class, description }
}

/// The `failure_reason` of a code the table does not list.
pub const UNKNOWN_REASON: &str = "twilio_rejected";

/// Every Twilio error code the channel tells apart (docs/events.md prints this table).
pub const ERROR_CODES: &[ErrorCode] = &[
    row(20429, "rate_limited", ErrorClass::Retryable, "Too many requests"),
    row(63018, "rate_limited", ErrorClass::Retryable, "Rate limit exceeded for the WhatsApp sender"),
    row(
        63016,
        "outside_window",
        ErrorClass::Permanent,
        "Free-form message outside the 24-hour customer-service window",
    ),
    row(63024, "invalid_recipient", ErrorClass::Permanent, "Invalid message recipient"),
    row(63003, "invalid_recipient", ErrorClass::Permanent, "The channel could not find the To address"),
    row(63049, "marketing_limited", ErrorClass::Permanent, "Meta chose not to deliver this marketing message"),
    row(63112, "account_disabled", ErrorClass::Permanent, "The WhatsApp Business Account was disabled by Meta"),
    row(
        63032,
        "recipient_unavailable",
        ErrorClass::Permanent,
        "WhatsApp did not deliver to this user (Meta's experiment)",
    ),
    row(21610, "unsubscribed", ErrorClass::Consent, "Attempt to send to an unsubscribed recipient"),
    row(63014, "blocked", ErrorClass::Consent, "The customer blocked the business"),
    row(63041, "template_paused", ErrorClass::Permanent, "The template was paused by Meta"),
    row(63040, "template_rejected", ErrorClass::Permanent, "The template was rejected"),
    row(63042, "template_rejected", ErrorClass::Permanent, "The template was disabled"),
    row(63027, "template_rejected", ErrorClass::Permanent, "The template does not exist for this language and locale"),
    row(
        21655,
        "template_rejected",
        ErrorClass::Permanent,
        "The ContentSid is invalid: no such content in this account",
    ),
    row(21211, "invalid_number", ErrorClass::Permanent, "Invalid 'To' phone number"),
    row(21614, "invalid_number", ErrorClass::Permanent, "'To' number is not a valid mobile number"),
    row(21217, "invalid_number", ErrorClass::Permanent, "Phone number does not appear to be valid"),
    row(21617, "body_too_long", ErrorClass::Permanent, "The message body exceeds the 1600 character limit"),
    row(
        20003,
        "configuration_error",
        ErrorClass::Permanent,
        "Authentication failed: check the account SID and credentials",
    ),
    row(
        20404,
        "configuration_error",
        ErrorClass::Permanent,
        "The requested resource was not found (account or service)",
    ),
    row(21603, "configuration_error", ErrorClass::Permanent, "A 'From' address is required"),
    row(21604, "configuration_error", ErrorClass::Permanent, "A 'To' address is required"),
    row(
        21606,
        "configuration_error",
        ErrorClass::Permanent,
        "The 'From' address is not a valid sender for this account",
    ),
    row(21619, "configuration_error", ErrorClass::Permanent, "A body, media or content is required"),
];

/// The table's row for `code`, if it lists it.
pub fn lookup(code: i32) -> Option<&'static ErrorCode> {
    ERROR_CODES.iter().find(|row| row.code == code)
}

/// The `failure_reason` of `code` (`twilio_rejected` for codes the table does not list).
pub fn failure_reason(code: i32) -> &'static str {
    lookup(code).map_or(UNKNOWN_REASON, |row| row.failure_reason)
}

/// What `code` means for the send (unlisted codes are permanent).
pub fn class(code: i32) -> ErrorClass {
    lookup(code).map_or(ErrorClass::Permanent, |row| row.class)
}

/// Whether `code` means the customer refused the business's messages.
pub fn is_consent(code: i32) -> bool {
    class(code) == ErrorClass::Consent
}

/// The code WhatsApp gives when a free-form message is sent outside the window.
pub const OUTSIDE_WINDOW: i32 = 63016;

/// WhatsApp's rate limit (Meta's 1015 for one user, 429, 471): retried for that send only.
pub const WHATSAPP_RATE_LIMITED: i32 = 63018;

/// Meta declined to deliver a marketing message: the user's marketing limit (a cool-down
/// follows, `TEMPLATE_MARKETING_COOLDOWN_HOURS`).
pub const MARKETING_LIMITED: i32 = 63049;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once() {
        let mut codes: Vec<i32> = ERROR_CODES.iter().map(|row| row.code).collect();
        codes.sort_unstable();
        let before = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), before, "a code is listed twice");
    }

    #[test]
    fn whatsapp_delivery_failures_have_their_reasons() {
        let expected = [
            (63016, "outside_window"),
            (63024, "invalid_recipient"),
            (63003, "invalid_recipient"),
            (63049, "marketing_limited"),
            (63112, "account_disabled"),
            (63032, "recipient_unavailable"),
            (21610, "unsubscribed"),
            (63014, "blocked"),
            (63018, "rate_limited"),
            (63041, "template_paused"),
            (63040, "template_rejected"),
            (63042, "template_rejected"),
            (63027, "template_rejected"),
            (21655, "template_rejected"),
            (21211, "invalid_number"),
            (21614, "invalid_number"),
            (21217, "invalid_number"),
            (21617, "body_too_long"),
        ];
        for (code, reason) in expected {
            assert_eq!(failure_reason(code), reason, "{code}");
        }
        assert_eq!(failure_reason(12345), "twilio_rejected");
    }

    #[test]
    fn only_refusals_by_the_customer_are_consent_and_only_throttling_is_retryable() {
        let consent: Vec<i32> = ERROR_CODES.iter().filter(|r| r.class == ErrorClass::Consent).map(|r| r.code).collect();
        assert_eq!(consent, [21610, 63014]);
        let retryable: Vec<i32> =
            ERROR_CODES.iter().filter(|r| r.class == ErrorClass::Retryable).map(|r| r.code).collect();
        assert_eq!(retryable, [20429, 63018]);
        assert_eq!(class(99999), ErrorClass::Permanent);
        assert!(is_consent(21610) && !is_consent(63016));
    }
}
