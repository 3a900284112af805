//! The Content API's values the channel reads.

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
