//! Every topic of the channel, declared once: names, partition counts and configs. The local
//! broker scripts, the services and the tests all read this list.

/// Partitions of every message-level topic. They are co-partitioned (same count, same key:
/// the conversation id), so one instance owns whole conversations across topics.
pub const MESSAGE_PARTITIONS: i32 = 6;

/// A topic the channel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name without the deployment prefix.
    pub name: &'static str,
    /// Partition count.
    pub partitions: i32,
    /// Topic configs set at creation.
    pub configs: &'static [(&'static str, &'static str)],
    /// What flows on it.
    pub doc: &'static str,
}

const RETAIN_7_DAYS: &[(&str, &str)] = &[("retention.ms", "604800000")];

/// Customer messages from Twilio (ingress → session-window, analytics).
pub const INBOUND: TopicSpec = TopicSpec {
    name: "wa.inbound.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: &[("retention.ms", "-1")],
    doc: "customer messages (InboundMessageReceived); kept forever: session state is rebuilt from it",
};
/// Outbound requests from the CRM (ingress or CRM producers → session-window).
pub const OUTBOUND_REQUESTED: TopicSpec = TopicSpec {
    name: "wa.outbound.requested.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "agent messages to send (OutboundRequested)",
};
/// Window verdicts (session-window → template-approval).
pub const OUTBOUND_CHECKED: TopicSpec = TopicSpec {
    name: "wa.outbound.checked.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "window verdicts on outbound requests (OutboundWindowChecked)",
};
/// Authorized sends (template-approval → outbound-dispatch).
pub const OUTBOUND_AUTHORIZED: TopicSpec = TopicSpec {
    name: "wa.outbound.authorized.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "messages cleared for sending (OutboundAuthorized)",
};
/// Refusals (template-approval → CRM, analytics).
pub const OUTBOUND_REJECTED: TopicSpec = TopicSpec {
    name: "wa.outbound.rejected.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "requests refused before Twilio (OutboundRejected)",
};
/// Dispatch outcomes (outbound-dispatch → CRM, analytics).
pub const OUTBOUND_DISPATCHED: TopicSpec = TopicSpec {
    name: "wa.outbound.dispatched.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "send outcomes (OutboundDispatched)",
};
/// Template lifecycle events (template-approval's own event store).
pub const TEMPLATES: TopicSpec = TopicSpec {
    name: "wa.templates.v1",
    partitions: 1,
    configs: &[("retention.ms", "-1")],
    doc: "template lifecycle (TemplateEvent), keyed by name:language; kept forever: template-approval rebuilds its state from it",
};
/// Twilio status callbacks (ingress → outbound-dispatch, analytics).
pub const DELIVERY: TopicSpec = TopicSpec {
    name: "wa.delivery.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "status callbacks as received, out of order and repeated (DeliveryStatusReceived)",
};
/// Webhooks ingress refused that may carry a customer's message, kept for operators.
pub const QUARANTINE: TopicSpec = TopicSpec {
    name: "wa.ingress.quarantine.v1",
    partitions: 1,
    configs: &[("retention.ms", "2592000000")],
    doc: "refused webhooks kept whole for 30 days: bad or missing signature, unknown sender (QuarantinedRequest; personal data)",
};
/// Records no handler could process, with the reason in headers.
pub const DEAD_LETTER: TopicSpec = TopicSpec {
    name: "wa.deadletter.v1",
    partitions: 1,
    configs: &[("retention.ms", "-1")],
    doc: "poison records: original key, value and headers plus dlq.* headers naming the reason",
};

/// Every topic, in the order they are created.
pub const ALL: &[TopicSpec] = &[
    INBOUND,
    OUTBOUND_REQUESTED,
    OUTBOUND_CHECKED,
    OUTBOUND_AUTHORIZED,
    OUTBOUND_REJECTED,
    OUTBOUND_DISPATCHED,
    DELIVERY,
    TEMPLATES,
    QUARANTINE,
    DEAD_LETTER,
];
