//! Every metric the channel exports (Prometheus, at each service's `/metrics`), in one place:
//! its name, its labels, and what it counts. Dashboards and alert rules use these names; the
//! services refer to them only through these constants (a test keeps it so).

/// Counter: HTTP requests served, by `service`, `route`, `method`, `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Histogram (seconds): HTTP request durations, by `service`, `route`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Gauge: 1 while the broker answers this service's produce and fetch probes, 0 while not.
pub const BROKER_SERVING: &str = "wa_broker_serving";
/// Counter: events published, by `topic`, `outcome` (`ok`, `error`).
pub const EVENTS_PUBLISHED: &str = "wa_events_published_total";
/// Counter: records consumed, by `service`, `topic`, `outcome` (`ok`, `retried`,
/// `interrupted`, `dead_lettered`).
pub const RECORDS_CONSUMED: &str = "wa_records_consumed_total";
/// Histogram (seconds): how long a revoke waited for the handlers of its partitions.
pub const CONSUMER_DRAIN: &str = "wa_consumer_drain_seconds";
/// Counter: revokes whose handlers did not finish within the drain timeout.
pub const CONSUMER_DRAIN_TIMEOUTS: &str = "wa_consumer_drain_timeouts_total";
/// Counter: consumer group members that rejoined after a stale or empty assignment.
pub const CONSUMER_GROUP_REJOINS: &str = "wa_consumer_group_rejoins_total";
/// Gauge: records not yet committed per assigned partition (high watermark less committed
/// offset, from librdkafka's statistics every 5 s), by `group`, `topic`, `partition`.
pub const CONSUMER_LAG: &str = "wa_consumer_lag";

/// Counter: webhooks and CRM requests accepted by ingress, by `endpoint`, `outcome`
/// (`accepted`, `duplicate`).
pub const INGRESS_ACCEPTED: &str = "wa_ingress_accepted_total";
/// Counter: requests ingress refused, by `endpoint`, `reason`.
pub const INGRESS_REJECTED: &str = "wa_ingress_rejected_total";
/// Counter: refused webhooks kept on the quarantine topic, by `endpoint`, `reason`.
pub const INGRESS_QUARANTINED: &str = "wa_ingress_quarantined_total";
/// Counter: refused webhooks not kept (over the quarantine budget, or unsigned), by
/// `endpoint`, `reason`.
pub const INGRESS_QUARANTINE_SKIPPED: &str = "wa_ingress_quarantine_skipped_total";
/// Counter: status callbacks accepted, by `status` (Twilio's `MessageStatus`).
pub const INGRESS_STATUS_CALLBACKS: &str = "wa_ingress_status_callbacks_total";
/// Gauge: publishes waiting for the broker (bounded by `INGRESS_MAX_IN_FLIGHT`).
pub const INGRESS_PUBLISHES_IN_FLIGHT: &str = "wa_ingress_publishes_in_flight";
/// Counter: customers' media files stored.
pub const INGRESS_MEDIA_STORED: &str = "wa_ingress_media_stored_total";
/// Counter: media downloads retried.
pub const INGRESS_MEDIA_RETRIES: &str = "wa_ingress_media_retries_total";

/// Counter: window verdicts, by `verdict` (`allowed` or the refusal reason).
pub const SESSION_VERDICTS: &str = "wa_session_verdicts_total";
/// Gauge: requests waiting behind their partition's inbound barrier.
pub const SESSION_VERDICTS_WAITING: &str = "wa_session_verdicts_waiting";
/// Gauge: conversations held by this instance.
pub const SESSION_CONVERSATIONS: &str = "wa_session_conversations";
/// Gauge: partitions this instance owns.
pub const SESSION_PARTITIONS_OWNED: &str = "wa_session_partitions_owned";
/// Counter: partitions restored from `wa.sessions.v1`.
pub const SESSION_RESTORES: &str = "wa_session_restores_total";
/// Histogram (seconds): how long a restore took.
pub const SESSION_RESTORE: &str = "wa_session_restore_seconds";
/// Counter: rejoins after outputs were lost (inputs since the last commit handled again).
pub const SESSION_REWINDS: &str = "wa_session_rewinds_total";
/// Counter: revokes whose queued records were not all acknowledged (positions left uncommitted).
pub const SESSION_UNCOMMITTED_REVOKES: &str = "wa_session_uncommitted_revokes_total";

/// Counter: authorization decisions, by `decision` (`authorized`, `rejected`) and `reason`.
pub const OUTBOUND_DECISIONS: &str = "wa_outbound_decisions_total";
/// Gauge: templates known.
pub const TEMPLATES: &str = "wa_templates";
/// Counter: template status syncs with Twilio, by `outcome` (`ok`, `error`).
pub const TEMPLATE_SYNCS: &str = "wa_template_syncs_total";
/// Counter: template events this build cannot decode (skipped).
pub const TEMPLATES_UNDECODABLE: &str = "wa_templates_undecodable_total";
/// Counter: template events of a kind this build does not know (left as they were).
pub const TEMPLATES_UNKNOWN_CHANGES: &str = "wa_templates_unknown_changes_total";

/// Counter: dispatch outcomes, by `outcome` and `reason`.
pub const DISPATCH_OUTCOMES: &str = "wa_dispatch_outcomes_total";
/// Counter: claims read back, by `result` (`won`, `lost`).
pub const DISPATCH_CLAIMS: &str = "wa_dispatch_claims_total";
/// Counter: sends retried, by `throttled`.
pub const DISPATCH_RETRIES: &str = "wa_dispatch_retries_total";
/// Counter: ambiguous answers looked up in Twilio's Messages list, by `found`.
pub const DISPATCH_RECONCILED: &str = "wa_dispatch_reconciled_total";
/// Counter: authorizations skipped because their request was already dispatched.
pub const DISPATCH_DUPLICATES_SKIPPED: &str = "wa_dispatch_duplicates_skipped_total";
/// Counter: status callbacks folded, by `outcome` (`moved`, `not_forward`, `unknown_request`).
pub const DISPATCH_CALLBACKS: &str = "wa_dispatch_callbacks_total";
/// Gauge: the pace each sender is sent at now (messages/s), by `sender`.
pub const DISPATCH_SENDER_RATE: &str = "wa_dispatch_sender_rate";
/// Counter: free-form messages WhatsApp refused as outside a window session-window found open
/// (63016), by `via` (`api`, `callback`).
pub const WINDOW_DISAGREEMENTS: &str = "wa_window_disagreements_total";

/// Counter (simulator): messages accepted.
pub const SIM_MESSAGES_ACCEPTED: &str = "twilio_sim_messages_accepted_total";
/// Counter (simulator): messages refused with 429 / 20429.
pub const SIM_RATE_LIMITED: &str = "twilio_sim_rate_limited_total";
/// Counter (simulator): faults injected, by `endpoint`.
pub const SIM_FAULTS_INJECTED: &str = "twilio_sim_faults_injected_total";

/// The buckets of every histogram (they all measure seconds): 1 ms to a minute.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Every name above, for checks and catalogues.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    BROKER_SERVING,
    EVENTS_PUBLISHED,
    RECORDS_CONSUMED,
    CONSUMER_DRAIN,
    CONSUMER_DRAIN_TIMEOUTS,
    CONSUMER_GROUP_REJOINS,
    CONSUMER_LAG,
    INGRESS_ACCEPTED,
    INGRESS_REJECTED,
    INGRESS_QUARANTINED,
    INGRESS_QUARANTINE_SKIPPED,
    INGRESS_STATUS_CALLBACKS,
    INGRESS_PUBLISHES_IN_FLIGHT,
    INGRESS_MEDIA_STORED,
    INGRESS_MEDIA_RETRIES,
    SESSION_VERDICTS,
    SESSION_VERDICTS_WAITING,
    SESSION_CONVERSATIONS,
    SESSION_PARTITIONS_OWNED,
    SESSION_RESTORES,
    SESSION_RESTORE,
    SESSION_REWINDS,
    SESSION_UNCOMMITTED_REVOKES,
    OUTBOUND_DECISIONS,
    TEMPLATES,
    TEMPLATE_SYNCS,
    TEMPLATES_UNDECODABLE,
    TEMPLATES_UNKNOWN_CHANGES,
    DISPATCH_OUTCOMES,
    DISPATCH_CLAIMS,
    DISPATCH_RETRIES,
    DISPATCH_RECONCILED,
    DISPATCH_DUPLICATES_SKIPPED,
    DISPATCH_CALLBACKS,
    DISPATCH_SENDER_RATE,
    WINDOW_DISAGREEMENTS,
    SIM_MESSAGES_ACCEPTED,
    SIM_RATE_LIMITED,
    SIM_FAULTS_INJECTED,
];
