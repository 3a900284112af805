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
/// Session state snapshots (session-window's changelog, read back on partition assignment).
pub const SESSIONS: TopicSpec = TopicSpec {
    name: "wa.sessions.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: &[("cleanup.policy", "compact")],
    doc: "each conversation's whole session state (SessionState), compacted: the latest record per conversation is its state; co-partitioned with the message topics",
};
/// Session lifecycle (session-window → CRM, analytics).
pub const SESSION_EVENTS: TopicSpec = TopicSpec {
    name: "wa.session.events.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: RETAIN_7_DAYS,
    doc: "window opened, extended, expiring and closed, free entry points, opt-out and opt-in (SessionEvent)",
};
/// Consent facts (session-window's opt-outs and opt-ins, kept forever for the rebuild).
pub const CONSENT: TopicSpec = TopicSpec {
    name: "wa.consent.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: &[("retention.ms", "-1")],
    doc: "every opt-out and opt-in (ConsentChanged), by keyword or Twilio error; kept forever, so consent outlives the message topics' retention; co-partitioned with the message topics",
};
/// Which session-window instance owns which partition (for the session query's redirects).
pub const SESSION_OWNERS: TopicSpec = TopicSpec {
    name: "wa.session.owners.v1",
    partitions: 1,
    configs: &[("cleanup.policy", "compact")],
    doc: "the session-window instance that took each partition of the message topics, keyed by partition number (PartitionOwner)",
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
/// Customers' media, stored (ingress → CRM, analytics).
pub const INBOUND_MEDIA: TopicSpec = TopicSpec {
    name: "wa.inbound.media.v1",
    partitions: MESSAGE_PARTITIONS,
    configs: &[("retention.ms", "-1")],
    doc: "each media item of a customer's message, downloaded from Twilio and stored (InboundMediaStored): where, its type, size and SHA-256",
};
/// Business-scoped user ids seen with phone numbers (ingress → ingress).
pub const IDENTITIES: TopicSpec = TopicSpec {
    name: "wa.identities.v1",
    partitions: 1,
    configs: &[("cleanup.policy", "compact")],
    doc: "each BSUID (ExternalUserId) seen with a phone number, keyed by BSUID (IdentityLinked): a later message with only the BSUID joins that number's conversation",
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
    SESSIONS,
    SESSION_EVENTS,
    SESSION_OWNERS,
    CONSENT,
    TEMPLATES,
    QUARANTINE,
    IDENTITIES,
    INBOUND_MEDIA,
    DEAD_LETTER,
];

/// The partition Java's default partitioner (and librdkafka's `murmur2_random`, which every
/// producer of the channel uses) picks for `key` among `partitions`: murmur2 of the key, sign
/// bit cleared, modulo the count. The session-window service uses it to tell which instance
/// owns a conversation.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    (positive % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 hash (seed 0x9747b28c), as in the Java client's `Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Java client's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "{key}");
        }
    }
}
