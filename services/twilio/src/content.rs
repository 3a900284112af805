//! The Content API's values the channel reads.

/// Whether `sid` is a Content SID as Twilio makes them: `HX` and 32 hex digits.
pub fn is_content_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("HX") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

wa_schemas::wire_strings! {
    /// The status of a content's WhatsApp approval request (`approval_requests.whatsapp.status`
    /// in `GET /v1/ContentAndApprovals` and `GET /v1/Content/{sid}/ApprovalRequests`).
    pub enum ApprovalStatus {
        /// Twilio received the request.
        Received = "received",
        /// Meta is reviewing it.
        Pending = "pending",
        /// Meta approved it.
        Approved = "approved",
        /// Meta rejected it (`rejection_reason`).
        Rejected = "rejected",
        /// Meta paused it (quality).
        Paused = "paused",
        /// Meta disabled it.
        Disabled = "disabled",
        /// Never submitted.
        Unsubmitted = "unsubmitted",
    }
}

impl ApprovalStatus {
    /// Whether it is Meta's verdict (approved, rejected, paused, disabled) rather than a step
    /// on the way.
    pub const fn is_verdict(self) -> bool {
        matches!(self, Self::Approved | Self::Rejected | Self::Paused | Self::Disabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sids_are_hx_and_32_hex_digits() {
        assert!(is_content_sid("HX0123456789abcdef0123456789ABCDEF"));
        assert!(!is_content_sid("HX0123456789abcdef0123456789abcde"), "31 digits");
        assert!(!is_content_sid("MG0123456789abcdef0123456789abcdef"), "a Messaging Service SID");
        assert!(!is_content_sid("HX0123456789abcdef0123456789abcdeg"), "not hex");
        assert!(!is_content_sid("HXé123456789abcdef0123456789abcde"), "not ASCII");
    }
}
