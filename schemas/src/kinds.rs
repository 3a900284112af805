//! Closed sets of values that travel as strings on the wire: each type's `as_str` is the wire
//! string, so code matches on the type and never on a literal (issue 13). The fields stay
//! strings in the Avro records (no schema change); each record has a typed reader.

/// A closed set of wire strings as an enum: `ALL`, `as_str`, `parse` and `Display`.
#[macro_export]
macro_rules! wire_strings {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[ $( Self::$variant, )+ ];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $wire, )+
                }
            }

            /// The value a wire string names; `None` for one this build does not know.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $( $wire => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_strings! {
    /// What an `OutboundDispatched` event says happened to a send (its `outcome` field).
    pub enum DispatchOutcome {
        /// A claim on the send (`claim_id`, `claimed_by`): the first claim read back from the
        /// partition since the last release sends.
        Sending = "sending",
        /// A claim given up before anything reached Twilio.
        Released = "released",
        /// Twilio took the message (`message_sid`).
        Sent = "sent",
        /// Not sent: refused by Twilio, by the rules at send time, or out of retries
        /// (`failure_reason`, `error_code`).
        Failed = "failed",
        /// Twilio's answer was ambiguous or missing and neither a lookup nor a callback found
        /// the message.
        InDoubt = "in_doubt",
        /// A forward move of the message's delivery status (`twilio_status`; `failure_reason`
        /// and `error_code` when failed or undelivered).
        StatusChanged = "status_changed",
    }
}

impl DispatchOutcome {
    /// Whether it ends the request: sent, failed or in doubt.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Sent | Self::Failed | Self::InDoubt)
    }
}

wire_strings! {
    /// A change in a template's lifecycle (`TemplateEvent.type`).
    pub enum TemplateChange {
        /// First version registered (a draft).
        Registered = "registered",
        /// A new version (a new Content SID) replaced the content; a draft again.
        Replaced = "replaced",
        /// Submitted for Meta's approval (pending).
        Submitted = "submitted",
        /// Approved by Meta.
        Approved = "approved",
        /// Rejected by Meta (`reason`).
        Rejected = "rejected",
        /// Paused by Meta or an admin (`reason`).
        Paused = "paused",
        /// Approved again after a pause.
        Unpaused = "unpaused",
        /// Disabled by Meta or an admin (`reason`).
        Disabled = "disabled",
        /// Removed.
        Deleted = "deleted",
        /// Twilio holds new types or variables under the same Content SID (an edit in Twilio).
        ContentUpdated = "content_updated",
        /// Meta moved it to another category (`category`, `previous_category`).
        Recategorized = "recategorized",
    }
}

wire_strings! {
    /// How Meta prices a message (`pricing_category` on `OutboundAuthorized` and
    /// `OutboundDispatched`).
    pub enum PricingCategory {
        /// A reply or session content inside the customer's window.
        Service = "service",
        /// A utility template.
        Utility = "utility",
        /// A marketing template.
        Marketing = "marketing",
        /// An authentication template.
        Authentication = "authentication",
    }
}

wire_strings! {
    /// Whether Meta charges a message (`pricing_type`), per-message pricing since 2025-07-01.
    pub enum PricingType {
        /// Free: a reply, session content or a utility template inside the customer's window.
        FreeCustomerService = "free_customer_service",
        /// Free: inside the 72 hours a reply to a customer from a click-to-WhatsApp ad or Page
        /// button opened.
        FreeEntryPoint = "free_entry_point",
        /// Charged.
        Regular = "regular",
    }
}

wire_strings! {
    /// Which rule let a message go (`OutboundAuthorized.rule`).
    pub enum AuthorizationRule {
        /// Free-form text or media inside the customer's 24-hour window.
        SessionReply = "session_reply",
        /// Content WhatsApp allows inside the window without approval (text, media, quick
        /// replies, call to action, list picker), whatever its approval status.
        SessionContent = "session_content",
        /// An approved template, at any time.
        ApprovedTemplate = "approved_template",
    }
}

wire_strings! {
    /// Why a request was refused before anything reached Twilio (`OutboundRejected.reason`;
    /// the window's reasons are also `OutboundWindowChecked.refusal_reason`).
    pub enum RejectionReason {
        /// A free-form message to a customer who never wrote to this sender.
        NoWindow = "no_window",
        /// A free-form message after the customer's 24-hour window closed.
        WindowClosed = "window_closed",
        /// The customer opted out of what was asked (marketing, or every business-initiated
        /// message).
        OptedOut = "opted_out",
        /// No template of that name in the language or its fallbacks.
        TemplateNotFound = "template_not_found",
        /// The template is a draft or awaits Meta's approval.
        TemplateNotApproved = "template_not_approved",
        /// The template is paused (by Meta or an admin).
        TemplatePaused = "template_paused",
        /// The template is disabled.
        TemplateDisabled = "template_disabled",
        /// Meta rejected the template.
        TemplateRejected = "template_rejected",
        /// The variables given do not fit the template's.
        TemplateVariablesInvalid = "template_variables_invalid",
        /// A marketing template to a number where Meta does not deliver marketing templates
        /// (`TEMPLATE_MARKETING_BLOCKED_PREFIXES`, US numbers by default).
        MarketingRegionBlocked = "marketing_region_blocked",
        /// A marketing template during the cool-down after Meta declined one to this customer
        /// (63049, its per-user marketing limit).
        MarketingLimited = "marketing_limited",
    }
}

wire_strings! {
    /// What a `SessionEvent` announces (its `type`).
    pub enum SessionChange {
        /// A customer message opened the 24-hour window.
        WindowOpened = "window_opened",
        /// A later customer message moved the window's end.
        WindowExtended = "window_extended",
        /// The window closes within the configured lead.
        WindowExpiring = "window_expiring",
        /// The window closed.
        WindowClosed = "window_closed",
        /// A free entry point opened (a customer who came from an ad or a Page button).
        EntryPointOpened = "entry_point_opened",
        /// The customer opted out (`reason`).
        OptedOut = "opted_out",
        /// The customer opted back in (`reason`).
        OptedIn = "opted_in",
    }
}

wire_strings! {
    /// A customer's consent as `wa.consent.v1` keeps it (`ConsentChanged.consent`).
    pub enum ConsentChange {
        /// The customer opted out.
        OptedOut = "opted_out",
        /// The customer opted back in.
        OptedIn = "opted_in",
    }
}

wire_strings! {
    /// Who made a template change (`TemplateEvent.actor`).
    pub enum Actor {
        /// The admin API.
        Admin = "admin",
        /// The status sync with Twilio.
        Twilio = "twilio",
    }
}

impl crate::OutboundDispatched {
    /// The outcome, typed; `None` for one this build does not know.
    pub fn kind(&self) -> Option<DispatchOutcome> {
        DispatchOutcome::parse(&self.outcome)
    }
}

impl crate::SessionEvent {
    /// The change, typed; `None` for one this build does not know.
    pub fn change(&self) -> Option<SessionChange> {
        SessionChange::parse(&self.kind)
    }
}

impl crate::TemplateEvent {
    /// The change, typed; `None` for one this build does not know.
    pub fn change(&self) -> Option<TemplateChange> {
        TemplateChange::parse(&self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value reads back from its wire string, and the schema's doc names every one.
    fn round_trips_and_is_documented<T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        parse: fn(&str) -> Option<T>,
        schema: &str,
    ) {
        for value in all {
            assert_eq!(parse(as_str(*value)), Some(*value));
            assert_eq!(value.to_string(), as_str(*value));
            assert!(schema.contains(as_str(*value)), "{value} is not in the schema's doc");
        }
        assert_eq!(parse("something_new"), None);
    }

    #[test]
    fn every_closed_set_matches_its_schema() {
        let dispatched = include_str!("../outbound_dispatched.avsc");
        round_trips_and_is_documented(
            DispatchOutcome::ALL,
            DispatchOutcome::as_str,
            DispatchOutcome::parse,
            dispatched,
        );
        let template = include_str!("../template_event.avsc");
        round_trips_and_is_documented(TemplateChange::ALL, TemplateChange::as_str, TemplateChange::parse, template);
        round_trips_and_is_documented(Actor::ALL, Actor::as_str, Actor::parse, template);
        let rejected = include_str!("../outbound_rejected.avsc");
        round_trips_and_is_documented(RejectionReason::ALL, RejectionReason::as_str, RejectionReason::parse, rejected);
        let consent = include_str!("../consent_changed.avsc");
        round_trips_and_is_documented(ConsentChange::ALL, ConsentChange::as_str, ConsentChange::parse, consent);
        let session = include_str!("../session_event.avsc");
        round_trips_and_is_documented(SessionChange::ALL, SessionChange::as_str, SessionChange::parse, session);
        let authorized = include_str!("../outbound_authorized.avsc");
        round_trips_and_is_documented(
            PricingCategory::ALL,
            PricingCategory::as_str,
            PricingCategory::parse,
            authorized,
        );
        round_trips_and_is_documented(PricingType::ALL, PricingType::as_str, PricingType::parse, authorized);
        round_trips_and_is_documented(
            AuthorizationRule::ALL,
            AuthorizationRule::as_str,
            AuthorizationRule::parse,
            authorized,
        );
    }
}
