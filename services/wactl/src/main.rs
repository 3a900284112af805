//! `wactl`: the operator's view of the channel, read from its topics on any broker
//! (`KAFKA_BOOTSTRAP_SERVERS`, `WA_TOPIC_PREFIX` and the security variables, as the services).
//!
//! - `wactl request <request_id>`: the request's whole story across the topics (requested,
//!   window verdict, authorized or rejected, each dispatch outcome, each delivery status), with
//!   times and trace ids.
//! - `wactl in-doubt list`: the sends whose last outcome is `in_doubt` (never retried
//!   automatically; see docs/runbook.md).
//! - `wactl in-doubt resolve <request_id> --sent <SM sid> | --not-sent`: settles one with an
//!   event on `wa.outbound.dispatched.v1` (`sent`, or `failed` with `not_sent`: the CRM may
//!   then send it again under a new request id).
//! - `wactl conversation <conversation id | customer address>`: the session state (window,
//!   free entry point, consent) and the latest window and consent events of the conversation,
//!   or of each conversation the customer has (found on `wa.inbound.v1`).
//! - `wactl dlq list | show <offset> | replay <offset>…`: the dead letters; a replay produces
//!   the original key, value and headers back to the original topic, once (the copy carries
//!   `wactl.replay_of`, and a dead letter already replayed is refused).
//! - `wactl quarantine list | show <offset> | replay <offset> --url <public base url>`: the
//!   webhooks ingress refused and kept; a replay verifies the signature again against the URL
//!   Twilio called (`--url` and the kept path, with `TWILIO_AUTH_TOKEN` and
//!   `TWILIO_PREVIOUS_AUTH_TOKENS`) and publishes the message as ingress would, with its
//!   original receive time, unless its `MessageSid` is already published.
//! - `wactl lag`: each consumer group's committed offset, end and lag per topic and partition.
//!
//! Human output by default, `--json` (anywhere) for one JSON document. Message texts and full
//! phone numbers are never printed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use wa_platform::config::KafkaConfig;
use wa_platform::topics::{
    TopicSpec, CONSENT, DEAD_LETTER, DELIVERY, INBOUND, OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_DISPATCHED,
    OUTBOUND_REJECTED, OUTBOUND_REQUESTED, QUARANTINE, SESSIONS, SESSION_EVENTS,
};
use wa_schemas::{
    ConsentChanged, DeliveryStatusReceived, DispatchOutcome, Event, InboundMessageReceived, OutboundAuthorized,
    OutboundDispatched, OutboundRejected, OutboundRequested, OutboundWindowChecked, QuarantinedRequest, SessionEvent,
    SessionState, WhatsAppAddress,
};

const USAGE: &str = "usage: wactl [--json] request <request_id> | in-doubt list \
                     | in-doubt resolve <request_id> (--sent <SM sid> | --not-sent) \
                     | conversation <conversation id | customer address> \
                     | dlq list | dlq show <offset> | dlq replay <offset>... \
                     | quarantine list | quarantine show <offset> | quarantine replay <offset> --url <public url> | lag";

/// The consumer groups of the channel and the topics each reads.
const GROUPS: &[(&str, &[&TopicSpec])] = &[
    ("session-window", &[&INBOUND, &OUTBOUND_REQUESTED, &OUTBOUND_DISPATCHED]),
    ("template-approval", &[&OUTBOUND_CHECKED]),
    ("outbound-dispatch", &[&OUTBOUND_AUTHORIZED, &DELIVERY]),
    ("ingress-media", &[&INBOUND]),
];

const TIMEOUT: Duration = Duration::from_secs(10);

/// One thing that happened to a request.
struct Step {
    at: i64,
    topic: &'static str,
    what: String,
    trace_id: Option<String>,
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|arg| arg == "--json");
    args.retain(|arg| arg != "--json");
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = KafkaConfig::from_env().map_err(anyhow::Error::from).and_then(|kafka| match words.as_slice() {
        ["request", request_id] => request(&kafka, request_id, json),
        ["in-doubt", "list"] => in_doubt(&kafka, json),
        ["in-doubt", "resolve", request_id, "--sent", sid] => resolve(&kafka, request_id, Some(sid)),
        ["in-doubt", "resolve", request_id, "--not-sent"] => resolve(&kafka, request_id, None),
        ["conversation", who] => conversation(&kafka, who, json),
        ["dlq", "list"] => dlq_list(&kafka, json),
        ["dlq", "show", offset] => dlq_show(&kafka, offset, json),
        ["dlq", "replay", offsets @ ..] if !offsets.is_empty() => dlq_replay(&kafka, offsets),
        ["quarantine", "list"] => quarantine_list(&kafka, json),
        ["quarantine", "show", offset] => quarantine_show(&kafka, offset, json),
        ["quarantine", "replay", offset, "--url", url] => quarantine_replay(&kafka, offset, url),
        ["lag"] => lag(&kafka, json),
        _ => Err(anyhow::anyhow!("{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wactl: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The trace id of a record's `traceparent`.
fn trace_id(record: &BorrowedMessage<'_>) -> Option<String> {
    let traceparent = wa_platform::kafka::header_str(record.headers(), wa_platform::kafka::TRACEPARENT)?;
    traceparent.split('-').nth(1).map(str::to_owned)
}

/// Reads `spec` to its end, handing each record to `each`.
fn read(kafka: &KafkaConfig, spec: &TopicSpec, each: impl FnMut(&BorrowedMessage<'_>)) -> anyhow::Result<()> {
    wa_platform::kafka::read_to_end(kafka, "wactl", &[kafka.topic(spec)], None, each, |_| {})?;
    Ok(())
}

fn decode<E: Event>(record: &BorrowedMessage<'_>) -> Option<E> {
    E::decode(record.payload().unwrap_or_default()).ok()
}

fn time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| millis.to_string())
}

fn request(kafka: &KafkaConfig, request_id: &str, json: bool) -> anyhow::Result<()> {
    let mut steps: Vec<Step> = Vec::new();
    let mut push = |at, topic, what: String, record: &BorrowedMessage<'_>| {
        steps.push(Step { at, topic, what, trace_id: trace_id(record) });
    };
    // One pass over every topic a request touches.
    let topics = [
        &OUTBOUND_REQUESTED,
        &OUTBOUND_CHECKED,
        &OUTBOUND_AUTHORIZED,
        &OUTBOUND_REJECTED,
        &OUTBOUND_DISPATCHED,
        &DELIVERY,
    ];
    let names: Vec<String> = topics.iter().map(|spec| kafka.topic(spec)).collect();
    wa_platform::kafka::read_to_end(
        kafka,
        "wactl",
        &names,
        None,
        |record| {
            let topic = record.topic();
            if topic == names[0] {
                if let Some(event) = decode::<OutboundRequested>(record).filter(|e| e.request_id == request_id) {
                    let content = match &event.template {
                        Some(template) => format!("template {} ({})", template.name, template.language),
                        None => format!(
                            "free-form, {} characters, {} media",
                            event.body.as_deref().unwrap_or_default().chars().count(),
                            event.media_urls.len()
                        ),
                    };
                    push(
                        event.occurred_at,
                        "requested",
                        format!("{content}, conversation {}", event.conversation_id),
                        record,
                    );
                }
            } else if topic == names[1] {
                if let Some(event) = decode::<OutboundWindowChecked>(record).filter(|e| e.request_id == request_id) {
                    let verdict = match (&event.refusal_reason, event.allowed) {
                        (_, true) => "window: allowed".to_owned(),
                        (Some(reason), false) => format!("window: refused ({reason})"),
                        (None, false) => "window: refused".to_owned(),
                    };
                    push(event.occurred_at, "checked", verdict, record);
                }
            } else if topic == names[2] {
                if let Some(event) = decode::<OutboundAuthorized>(record).filter(|e| e.request_id == request_id) {
                    let mut what = match (&event.content_sid, &event.template_name) {
                        (Some(sid), Some(name)) => format!("authorized: template {name} as {sid}"),
                        _ => "authorized: free-form".to_owned(),
                    };
                    // Which rule let it go and how Meta prices it, when the record says.
                    for (name, value) in [
                        ("rule", &event.rule),
                        ("pricing", &event.pricing_category),
                        ("pricing_type", &event.pricing_type),
                    ] {
                        if let Some(value) = value {
                            what.push_str(&format!(" {name}={value}"));
                        }
                    }
                    push(event.occurred_at, "authorized", what, record);
                }
            } else if topic == names[3] {
                if let Some(event) = decode::<OutboundRejected>(record).filter(|e| e.request_id == request_id) {
                    push(
                        event.occurred_at,
                        "rejected",
                        format!("rejected: {} ({})", event.reason, event.message),
                        record,
                    );
                }
            } else if topic == names[4] {
                if let Some(event) = decode::<OutboundDispatched>(record).filter(|e| e.request_id == request_id) {
                    let mut what = event.outcome.clone();
                    for (name, value) in [
                        ("status", event.twilio_status.clone()),
                        ("sid", event.message_sid.clone()),
                        ("reason", event.failure_reason.clone()),
                        ("error", event.error_code.map(|code| code.to_string())),
                        ("by", event.claimed_by.clone()),
                    ] {
                        if let Some(value) = value {
                            what.push_str(&format!(" {name}={value}"));
                        }
                    }
                    if event.attempts > 0 {
                        what.push_str(&format!(" attempts={}", event.attempts));
                    }
                    push(event.occurred_at, "dispatched", what, record);
                }
            } else if topic == names[5] {
                if let Some(event) =
                    decode::<DeliveryStatusReceived>(record).filter(|e| e.request_id.as_deref() == Some(request_id))
                {
                    let error = event.error_code.as_deref().map(|code| format!(" error={code}")).unwrap_or_default();
                    push(event.occurred_at, "delivery", format!("callback {}{error}", event.message_status), record);
                }
            }
        },
        |_| {},
    )?;
    anyhow::ensure!(!steps.is_empty(), "no request {request_id:?} on {}", kafka.topic(&OUTBOUND_REQUESTED));
    steps.sort_by_key(|step| step.at);
    if json {
        let steps: Vec<_> = steps
            .iter()
            .map(|s| json!({"at": time(s.at), "topic": s.topic, "what": s.what, "trace_id": s.trace_id}))
            .collect();
        println!("{}", json!({"request_id": request_id, "steps": steps}));
    } else {
        println!("request {request_id}");
        for step in &steps {
            let trace = step.trace_id.as_deref().map(|id| format!("  trace {id}")).unwrap_or_default();
            println!("  {}  {:<10}  {}{trace}", time(step.at), step.topic, step.what);
        }
    }
    Ok(())
}

/// The last outcome of each request that settles it (claims and status moves aside): a `sent`
/// or `failed` stays, an `in_doubt` published after it (a slow watcher) does not undo it.
fn settled(kafka: &KafkaConfig) -> anyhow::Result<BTreeMap<String, OutboundDispatched>> {
    let mut last: BTreeMap<String, OutboundDispatched> = BTreeMap::new();
    read(kafka, &OUTBOUND_DISPATCHED, |record| {
        if let Some(event) = decode::<OutboundDispatched>(record) {
            let settling = matches!(
                event.kind(),
                Some(DispatchOutcome::Sent | DispatchOutcome::Failed | DispatchOutcome::InDoubt)
            );
            if settling {
                let settled_before =
                    last.get(&event.request_id).is_some_and(|e| e.kind() != Some(DispatchOutcome::InDoubt));
                if !settled_before {
                    last.insert(event.request_id.clone(), event);
                }
            }
        }
    })?;
    Ok(last)
}

fn in_doubt(kafka: &KafkaConfig, json: bool) -> anyhow::Result<()> {
    let last = settled(kafka)?;
    let doubtful: Vec<&OutboundDispatched> =
        last.values().filter(|e| e.kind() == Some(DispatchOutcome::InDoubt)).collect();
    if json {
        let list: Vec<_> = doubtful
            .iter()
            .map(|e| {
                json!({"request_id": e.request_id, "at": time(e.occurred_at), "reason": e.failure_reason,
                       "conversation_id": e.conversation_id, "detail": e.error_message})
            })
            .collect();
        println!("{}", json!({ "in_doubt": list }));
    } else if doubtful.is_empty() {
        println!("no sends in doubt");
    } else {
        for event in doubtful {
            println!(
                "{}  {}  {}  {}",
                time(event.occurred_at),
                event.request_id,
                event.failure_reason.as_deref().unwrap_or("in_doubt"),
                event.error_message.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn lag(kafka: &KafkaConfig, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (group, topics) in GROUPS {
        let consumer: BaseConsumer =
            wa_platform::kafka::client_config(kafka, "wactl").set("group.id", kafka.group(group)).create()?;
        for spec in *topics {
            let topic = kafka.topic(spec);
            let mut query = TopicPartitionList::new();
            for partition in 0..spec.partitions {
                query.add_partition(&topic, partition);
            }
            // Asks the group's coordinator without joining the group.
            let committed = consumer.committed_offsets(query, TIMEOUT)?;
            for partition in 0..spec.partitions {
                let (_, end) = consumer.fetch_watermarks(&topic, partition, TIMEOUT)?;
                let committed = committed.find_partition(&topic, partition).and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
                let lag = end - committed.unwrap_or(0);
                rows.push((group.to_string(), topic.clone(), partition, committed, end, lag));
            }
        }
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(group, topic, partition, committed, end, lag)| {
                json!({"group": group, "topic": topic, "partition": partition, "committed": committed, "end": end, "lag": lag})
            })
            .collect();
        println!("{}", json!({ "lag": list }));
    } else {
        println!("{:<20} {:<40} {:>9} {:>10} {:>10} {:>8}", "group", "topic", "partition", "committed", "end", "lag");
        for (group, topic, partition, committed, end, lag) in rows {
            let committed = committed.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
            println!("{group:<20} {topic:<40} {partition:>9} {committed:>10} {end:>10} {lag:>8}");
        }
    }
    Ok(())
}

/// Settles an in-doubt send: `sent` with the sid an operator found at Twilio, or `failed` with
/// `not_sent`. Refused for a request that is not in doubt.
fn resolve(kafka: &KafkaConfig, request_id: &str, sid: Option<&str>) -> anyhow::Result<()> {
    if let Some(sid) = sid {
        let valid = sid.len() == 34 && sid.starts_with("SM") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit());
        anyhow::ensure!(valid, "{sid:?} is not a Twilio message SID (SM followed by 32 hex digits)");
    }
    let last = settled(kafka)?;
    let Some(doubtful) = last.get(request_id) else {
        anyhow::bail!("request {request_id:?} has no outcome on {}", kafka.topic(&OUTBOUND_DISPATCHED));
    };
    anyhow::ensure!(
        doubtful.kind() == Some(DispatchOutcome::InDoubt),
        "request {request_id:?} is not in doubt: it ended {}",
        doubtful.outcome
    );
    let outcome = if sid.is_some() { DispatchOutcome::Sent } else { DispatchOutcome::Failed };
    // The id dispatch would give the same outcome, so a later callback's `sent` is one event.
    let name = format!("wachannel:dispatched:{request_id}:{outcome}:");
    let mut settled = doubtful.clone();
    settled.event_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string();
    settled.occurred_at = wa_platform::now_millis();
    settled.outcome = outcome.as_str().to_owned();
    settled.message_sid = sid.map(str::to_owned);
    settled.twilio_status = sid.map(|_| "resolved_by_operator".to_owned());
    settled.error_code = None;
    settled.failure_reason = sid.is_none().then(|| "not_sent".to_owned());
    settled.error_message = Some(match sid {
        Some(_) => "settled by an operator: found sent at Twilio".to_owned(),
        None => {
            "settled by an operator: not sent at Twilio; the CRM may send it again under a new request_id".to_owned()
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let producer = wa_platform::kafka::EventProducer::new(kafka, "wachannel/wactl", TIMEOUT)?;
        producer.publish(&OUTBOUND_DISPATCHED, &settled).await?;
        anyhow::Ok(())
    })?;
    println!("request {request_id}: {}", settled.error_message.as_deref().unwrap_or_default());
    Ok(())
}

/// How many of a conversation's latest window and consent events are shown.
const RECENT_EVENTS: usize = 10;

fn conversation(kafka: &KafkaConfig, who: &str, json: bool) -> anyhow::Result<()> {
    let ids: Vec<String> = match uuid::Uuid::parse_str(who) {
        Ok(id) => vec![id.to_string()],
        Err(_) => {
            let customer = WhatsAppAddress::parse(who)
                .map_err(|err| anyhow::anyhow!("{who:?} is neither a conversation id nor a WhatsApp address: {err}"))?;
            let mut ids = Vec::new();
            read(kafka, &INBOUND, |record| {
                if let Some(event) = decode::<InboundMessageReceived>(record) {
                    let from = WhatsAppAddress::parse(&event.from).map(String::from).unwrap_or(event.from);
                    if from == customer.as_str() && !ids.contains(&event.conversation_id) {
                        ids.push(event.conversation_id);
                    }
                }
            })?;
            anyhow::ensure!(!ids.is_empty(), "the customer has not written on {}", kafka.topic(&INBOUND));
            ids
        }
    };
    // One pass over the state, window events and consent of the conversations.
    let mut states: BTreeMap<String, SessionState> = BTreeMap::new();
    let mut events: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let names = [kafka.topic(&SESSIONS), kafka.topic(&SESSION_EVENTS), kafka.topic(&CONSENT)];
    let each = |record: &BorrowedMessage<'_>| {
        let topic = record.topic();
        if topic == names[0] {
            let key = record.key().and_then(|k| std::str::from_utf8(k).ok()).unwrap_or_default();
            if ids.iter().any(|id| id == key) {
                match decode::<SessionState>(record) {
                    Some(state) => {
                        states.insert(key.to_owned(), state);
                    }
                    // A tombstone: the conversation's state was removed.
                    None => {
                        states.remove(key);
                    }
                }
            }
        } else if topic == names[1] {
            if let Some(event) = decode::<SessionEvent>(record).filter(|e| ids.contains(&e.conversation_id)) {
                let reason = event.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                events
                    .entry(event.conversation_id)
                    .or_default()
                    .push((event.occurred_at, format!("{}{reason}", event.kind)));
            }
        } else if let Some(event) = decode::<ConsentChanged>(record).filter(|e| ids.contains(&e.conversation_id)) {
            let what = format!("consent {} ({})", event.consent, event.reason);
            events.entry(event.conversation_id).or_default().push((event.occurred_at, what));
        }
    };
    wa_platform::kafka::read_to_end(kafka, "wactl", &names, None, each, |_| {})?;
    let now = wa_platform::now_millis();
    let mut documents = Vec::new();
    for id in &ids {
        let state = states.get(id);
        let mut recent = events.remove(id).unwrap_or_default();
        recent.sort_by_key(|(at, _)| *at);
        let recent: Vec<(i64, String)> = recent.into_iter().rev().take(RECENT_EVENTS).rev().collect();
        let window_open = state.and_then(|s| s.window_expires_at).is_some_and(|expires| expires > now);
        if json {
            documents.push(json!({
                "conversation_id": id,
                "known": state.is_some(),
                "window_open": window_open,
                "last_customer_message_at": state.and_then(|s| s.last_customer_message_at).map(time),
                "window_expires_at": state.and_then(|s| s.window_expires_at).map(time),
                "entry_point_expires_at": state.and_then(|s| s.entry_point_expires_at).map(time),
                "opted_out": state.is_some_and(|s| s.opted_out),
                "notified": state.map(|s| s.notified.clone()),
                "recent_events": recent.iter().map(|(at, what)| json!({"at": time(*at), "what": what})).collect::<Vec<_>>(),
            }));
            continue;
        }
        println!("conversation {id}");
        match state {
            None => println!("  no session state on {}", kafka.topic(&SESSIONS)),
            Some(state) => {
                let at = |millis: Option<i64>| millis.map_or_else(|| "-".to_owned(), time);
                println!("  last customer message  {}", at(state.last_customer_message_at));
                println!(
                    "  24-hour window         {} (until {})",
                    if window_open { "open" } else { "closed" },
                    at(state.window_expires_at)
                );
                println!("  free entry point until {}", at(state.entry_point_expires_at));
                println!("  opted out              {}", if state.opted_out { "yes" } else { "no" });
            }
        }
        for (at, what) in &recent {
            println!("  {}  {what}", time(*at));
        }
    }
    if json {
        println!("{}", json!({ "conversations": documents }));
    }
    Ok(())
}

/// The header that marks a replayed dead letter on its original topic: the dead letter's offset.
const REPLAY_OF: &str = "wactl.replay_of";

/// A record as read, headers by name.
struct Raw {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

impl Raw {
    fn of(record: &BorrowedMessage<'_>) -> Self {
        let headers = wa_platform::kafka::header_pairs(record.headers()).into_iter().collect();
        Self {
            offset: record.offset(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

fn dead_letters(kafka: &KafkaConfig) -> anyhow::Result<Vec<Raw>> {
    let mut letters = Vec::new();
    read(kafka, &DEAD_LETTER, |record| letters.push(Raw::of(record)))?;
    Ok(letters)
}

fn dlq_list(kafka: &KafkaConfig, json: bool) -> anyhow::Result<()> {
    let letters = dead_letters(kafka)?;
    if json {
        let list: Vec<_> = letters
            .iter()
            .map(|l| {
                json!({"offset": l.offset, "failed_at": l.header("dlq.failed_at"), "service": l.header("dlq.service"),
                       "topic": l.header("dlq.topic"), "partition": l.header("dlq.partition"),
                       "original_offset": l.header("dlq.offset"), "reason": l.header("dlq.reason")})
            })
            .collect();
        println!("{}", json!({ "dead_letters": list }));
    } else if letters.is_empty() {
        println!("no dead letters");
    } else {
        for l in &letters {
            println!(
                "{:>6}  {}  {:<18}  {}:{}@{}  {}",
                l.offset,
                l.header("dlq.failed_at"),
                l.header("dlq.service"),
                l.header("dlq.topic"),
                l.header("dlq.partition"),
                l.header("dlq.offset"),
                l.header("dlq.reason")
            );
        }
    }
    Ok(())
}

fn parse_offset(text: &str) -> anyhow::Result<i64> {
    text.parse().map_err(|_| anyhow::anyhow!("{text:?} is not an offset of the dead-letter topic (see wactl dlq list)"))
}

fn dlq_show(kafka: &KafkaConfig, offset: &str, json: bool) -> anyhow::Result<()> {
    let offset = parse_offset(offset)?;
    let letters = dead_letters(kafka)?;
    let letter = letters
        .iter()
        .find(|l| l.offset == offset)
        .ok_or_else(|| anyhow::anyhow!("no dead letter at offset {offset}"))?;
    // The value may hold a customer's message: its size and first bytes, not its text.
    let start: String = letter.payload.iter().take(32).map(|b| format!("{b:02x}")).collect();
    let key = letter.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
    if json {
        println!(
            "{}",
            json!({"offset": letter.offset, "key": key, "value_bytes": letter.payload.len(), "value_start_hex": start, "headers": letter.headers})
        );
    } else {
        println!("dead letter {offset}");
        println!("  key    {key}");
        println!("  value  {} bytes, starting {start}", letter.payload.len());
        for (name, value) in &letter.headers {
            println!("  {name}: {value}");
        }
    }
    Ok(())
}

fn dlq_replay(kafka: &KafkaConfig, offsets: &[&str]) -> anyhow::Result<()> {
    let offsets = offsets.iter().map(|o| parse_offset(o)).collect::<anyhow::Result<Vec<i64>>>()?;
    let letters = dead_letters(kafka)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let producer =
        runtime.block_on(async { wa_platform::kafka::EventProducer::new(kafka, "wachannel/wactl", TIMEOUT) })?;
    let mut chosen = Vec::new();
    for offset in offsets {
        let letter = letters
            .iter()
            .find(|l| l.offset == offset)
            .ok_or_else(|| anyhow::anyhow!("no dead letter at offset {offset}"))?;
        let topic = letter.header("dlq.topic").to_owned();
        anyhow::ensure!(!topic.is_empty(), "dead letter {offset} names no original topic (dlq.topic)");
        chosen.push((offset, letter, topic));
    }
    // Once: the copies already on the original topics, by the dead letter they replay (each
    // topic read once, whatever the number of letters).
    let mut replayed: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut topics: Vec<String> = chosen.iter().map(|(_, _, topic)| topic.clone()).collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        wa_platform::kafka::read_to_end(
            kafka,
            "wactl",
            std::slice::from_ref(&topic),
            None,
            |record| {
                if let Some(marker) = wa_platform::kafka::header_str(record.headers(), REPLAY_OF) {
                    replayed.insert((topic.clone(), marker.to_owned()), record.offset());
                }
            },
            |_| {},
        )?;
    }
    for (offset, letter, topic) in chosen {
        if let Some(at) = replayed.get(&(topic.clone(), offset.to_string())) {
            anyhow::bail!("dead letter {offset} was already replayed to {topic} (offset {at})");
        }
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (name, value) in letter.headers.iter().filter(|(name, _)| !name.starts_with("dlq.")) {
            headers = headers.insert(rdkafka::message::Header { key: name, value: Some(value.as_str()) });
        }
        let marker = offset.to_string();
        headers = headers.insert(rdkafka::message::Header { key: REPLAY_OF, value: Some(marker.as_str()) });
        let (partition, at) = runtime.block_on(async {
            let queued = producer
                .enqueue_record(&topic, letter.key.as_deref().unwrap_or_default(), Some(&letter.payload), headers, None)
                .await?;
            anyhow::Ok(queued.acknowledged().await?)
        })?;
        println!("dead letter {offset} replayed to {topic} (partition {partition}, offset {at})");
        replayed.insert((topic, offset.to_string()), at);
    }
    Ok(())
}

fn quarantined(kafka: &KafkaConfig) -> anyhow::Result<Vec<(i64, QuarantinedRequest)>> {
    let mut kept = Vec::new();
    read(kafka, &QUARANTINE, |record| {
        if let Some(request) = decode::<QuarantinedRequest>(record) {
            kept.push((record.offset(), request));
        }
    })?;
    Ok(kept)
}

fn quarantine_list(kafka: &KafkaConfig, json: bool) -> anyhow::Result<()> {
    let kept = quarantined(kafka)?;
    if json {
        let list: Vec<_> = kept
            .iter()
            .map(|(offset, q)| {
                json!({"offset": offset, "received_at": time(q.occurred_at), "reason": q.reason, "path": q.path,
                       "checked_url": q.checked_url, "detail": q.detail})
            })
            .collect();
        println!("{}", json!({ "quarantined": list }));
    } else if kept.is_empty() {
        println!("nothing quarantined");
    } else {
        for (offset, q) in &kept {
            println!(
                "{offset:>6}  {}  {:<18}  {}  checked against {}",
                time(q.occurred_at),
                q.reason,
                q.path,
                q.checked_url
            );
        }
    }
    Ok(())
}

fn find_quarantined(kafka: &KafkaConfig, offset: &str) -> anyhow::Result<QuarantinedRequest> {
    let wanted: i64 = offset.parse().map_err(|_| {
        anyhow::anyhow!("{offset:?} is not an offset of the quarantine topic (see wactl quarantine list)")
    })?;
    quarantined(kafka)?
        .into_iter()
        .find(|(offset, _)| *offset == wanted)
        .map(|(_, request)| request)
        .ok_or_else(|| anyhow::anyhow!("nothing quarantined at offset {wanted}"))
}

fn quarantine_show(kafka: &KafkaConfig, offset: &str, json: bool) -> anyhow::Result<()> {
    let q = find_quarantined(kafka, offset)?;
    // The body is a customer's message: its size, not its text.
    if json {
        println!(
            "{}",
            json!({"received_at": time(q.occurred_at), "reason": q.reason, "detail": q.detail, "method": q.method,
                   "path": q.path, "checked_url": q.checked_url, "headers": q.headers, "body_bytes": q.body.len()})
        );
    } else {
        println!("quarantined {offset}: {} ({})", q.reason, q.detail);
        println!("  {} {}  checked against {}", q.method, q.path, q.checked_url);
        println!("  received {}, body {} bytes", time(q.occurred_at), q.body.len());
        for (name, value) in &q.headers {
            println!("  {name}: {value}");
        }
    }
    Ok(())
}

fn quarantine_replay(kafka: &KafkaConfig, offset: &str, url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        url.starts_with("https://") || url.starts_with("http://"),
        "--url takes the public base URL Twilio calls, e.g. https://wa.example.com"
    );
    let q = find_quarantined(kafka, offset)?;
    let tokens = ingress::replay::auth_tokens_from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let replayed = runtime.block_on(ingress::replay::replay_quarantined(kafka, &tokens, url, &q))?;
    match replayed {
        ingress::replay::Replayed::Published(sid) => {
            println!("quarantined {offset}: message {sid} verified against {url} and published")
        }
        ingress::replay::Replayed::AlreadyPublished(sid) => {
            println!("quarantined {offset}: message {sid} is already on the inbound topic; nothing published")
        }
    }
    Ok(())
}
