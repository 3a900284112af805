//! The encoding contract: every schema round-trips, and a third-party implementation (fastavro,
//! see fixtures/make_fastavro_fixtures.py) computes the same fingerprints and bytes as we do.

use serde_json::Value as Json;
use wa_schemas::{
    all_schemas, history_schemas, split_single_object, CodecError, ConsentChanged, DeliveryStatusReceived, Event,
    InboundMessageReceived, OutboundAuthorized, OutboundDispatched, OutboundRejected, OutboundRequested,
    OutboundWindowChecked, PartitionOwner, QuarantinedRequest, SchemaInfo, SessionEvent, SessionState, TemplateEvent,
};

struct Fixture {
    file: String,
    canonical_form: String,
    fingerprint_le_hex: String,
    sample: Json,
    bytes: Vec<u8>,
}

fn fixtures() -> Vec<Fixture> {
    let text = include_str!("../fixtures/fastavro.json");
    let doc: Json = serde_json::from_str(text).expect("fixture is json");
    doc["schemas"]
        .as_array()
        .expect("schemas array")
        .iter()
        .map(|entry| Fixture {
            file: entry["file"].as_str().unwrap().to_owned(),
            canonical_form: entry["canonical_form"].as_str().unwrap().to_owned(),
            fingerprint_le_hex: entry["fingerprint_le_hex"].as_str().unwrap().to_owned(),
            sample: entry["sample"].clone(),
            bytes: hex::decode(entry["single_object_hex"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

fn fixture(file: &str) -> Fixture {
    fixtures().into_iter().find(|f| f.file == file).unwrap_or_else(|| panic!("no fixture {file}"))
}

fn info_for(file: &str) -> &'static SchemaInfo {
    let source = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    all_schemas().into_iter().chain(history_schemas()).find(|info| info.source == source).expect("schema is registered")
}

/// Decodes fastavro's bytes into our type, compares with the sample, and re-encodes to the
/// same bytes.
fn check_against_fastavro<E: Event + std::fmt::Debug + PartialEq>(file: &str) {
    let fixture = fixture(file);
    let info = E::schema_info();
    assert_eq!(info.schema.canonical_form(), fixture.canonical_form, "{file}: canonical form");
    assert_eq!(
        hex::encode(info.fingerprint.to_le_bytes()),
        fixture.fingerprint_le_hex,
        "{file}: CRC-64-AVRO fingerprint"
    );
    let decoded = E::decode(&fixture.bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let expected: E = serde_json::from_value(fixture.sample.clone()).unwrap();
    assert_eq!(decoded, expected, "{file}: decoded value");
    assert_eq!(decoded.encode().unwrap(), fixture.bytes, "{file}: our bytes equal fastavro's");
}

#[test]
fn every_schema_file_is_registered_and_has_a_fixture() {
    let mut files: Vec<String> = std::fs::read_dir(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".avsc"))
        .collect();
    files.extend(
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/history"))
            .unwrap()
            .map(|e| format!("history/{}", e.unwrap().file_name().into_string().unwrap())),
    );
    files.sort();
    let mut fixture_files: Vec<String> = fixtures().into_iter().map(|f| f.file).collect();
    fixture_files.sort();
    assert_eq!(files, fixture_files);
    for file in &files {
        info_for(file);
    }
}

#[test]
fn inbound_message_received_matches_fastavro() {
    check_against_fastavro::<InboundMessageReceived>("inbound_message_received.avsc");
}

#[test]
fn delivery_status_received_matches_fastavro() {
    check_against_fastavro::<DeliveryStatusReceived>("delivery_status_received.avsc");
}

#[test]
fn quarantined_request_matches_fastavro() {
    check_against_fastavro::<QuarantinedRequest>("quarantined_request.avsc");
}

/// A value written before the inbound schema grew its WhatsApp fields still decodes, with the
/// new fields absent.
#[test]
fn values_written_with_an_earlier_schema_version_still_decode() {
    let old = fixture("history/inbound_message_received.1.avsc");
    let (writer, _) = split_single_object(&old.bytes).unwrap();
    assert_ne!(writer.fingerprint, InboundMessageReceived::schema_info().fingerprint);
    let event = InboundMessageReceived::decode(&old.bytes).unwrap();
    assert_eq!(event.message_sid, old.sample["message_sid"].as_str().unwrap());
    assert_eq!(event.body, old.sample["body"].as_str().unwrap());
    assert_eq!(event.referral, None);
    assert_eq!(event.location, None);
    assert_eq!(event.forwarded, None);
}

/// Dispatch outcomes written before claims existed, and session states written before they
/// remembered recent messages, still decode: the new fields are absent.
#[test]
fn dispatch_outcomes_and_session_states_of_the_first_versions_still_decode() {
    let old = fixture("history/outbound_dispatched.1.avsc");
    let event = OutboundDispatched::decode(&old.bytes).unwrap();
    assert_eq!(event.outcome, "failed");
    assert_eq!(event.error_code, Some(63016));
    assert_eq!((event.claim_id, event.claimed_by), (None, None));
    let old = fixture("history/session_state.1.avsc");
    let state = SessionState::decode(&old.bytes).unwrap();
    assert_eq!(state.notified, "expiring");
    assert!(state.recent_messages.is_empty());
}

/// Outbound events written before they carried the CRM's metadata still decode, with none.
#[test]
fn outbound_events_from_before_metadata_decode_with_none() {
    let requested = OutboundRequested::decode(&fixture("history/outbound_requested.1.avsc").bytes).unwrap();
    assert_eq!(requested.body.as_deref(), Some("Your parcel ships today."));
    assert!(requested.metadata.is_empty());
    let checked = OutboundWindowChecked::decode(&fixture("history/outbound_window_checked.1.avsc").bytes).unwrap();
    assert!(checked.allowed && checked.metadata.is_empty());
    let authorized = OutboundAuthorized::decode(&fixture("history/outbound_authorized.1.avsc").bytes).unwrap();
    assert!(authorized.content_sid.is_some() && authorized.metadata.is_empty());
    let rejected = OutboundRejected::decode(&fixture("history/outbound_rejected.1.avsc").bytes).unwrap();
    assert_eq!((rejected.reason.as_str(), rejected.metadata.len()), ("no_window", 0));
    let dispatched = OutboundDispatched::decode(&fixture("history/outbound_dispatched.2.avsc").bytes).unwrap();
    assert_eq!((dispatched.outcome.as_str(), dispatched.metadata.len()), ("sending", 0));
}

#[test]
fn inbound_media_stored_matches_fastavro() {
    check_against_fastavro::<wa_schemas::InboundMediaStored>("inbound_media_stored.avsc");
}

#[test]
fn identity_linked_matches_fastavro() {
    check_against_fastavro::<wa_schemas::IdentityLinked>("identity_linked.avsc");
}

/// Inbound messages written before the identity parameters were typed decode without them.
#[test]
fn inbound_messages_from_before_bsuids_decode_without_them() {
    let event = InboundMessageReceived::decode(&fixture("history/inbound_message_received.2.avsc").bytes).unwrap();
    assert_eq!(event.profile_name.as_deref(), Some("Ana"));
    assert_eq!((event.external_user_id, event.parent_external_user_id, event.profile_username), (None, None, None));
}

#[test]
fn consent_changed_matches_fastavro() {
    check_against_fastavro::<ConsentChanged>("consent_changed.avsc");
}

#[test]
fn outbound_requested_matches_fastavro() {
    check_against_fastavro::<OutboundRequested>("outbound_requested.avsc");
}

#[test]
fn outbound_window_checked_matches_fastavro() {
    check_against_fastavro::<OutboundWindowChecked>("outbound_window_checked.avsc");
}

#[test]
fn outbound_authorized_matches_fastavro() {
    check_against_fastavro::<OutboundAuthorized>("outbound_authorized.avsc");
}

#[test]
fn outbound_rejected_matches_fastavro() {
    check_against_fastavro::<OutboundRejected>("outbound_rejected.avsc");
}

#[test]
fn outbound_dispatched_matches_fastavro() {
    check_against_fastavro::<OutboundDispatched>("outbound_dispatched.avsc");
}

#[test]
fn template_event_matches_fastavro() {
    check_against_fastavro::<TemplateEvent>("template_event.avsc");
}

#[test]
fn session_state_matches_fastavro() {
    check_against_fastavro::<SessionState>("session_state.avsc");
}

#[test]
fn partition_owner_matches_fastavro() {
    check_against_fastavro::<PartitionOwner>("partition_owner.avsc");
}

#[test]
fn session_event_matches_fastavro() {
    check_against_fastavro::<SessionEvent>("session_event.avsc");
}

#[test]
fn round_trip_keeps_every_field_including_empty_and_absent_ones() {
    let event = InboundMessageReceived {
        event_id: "e".into(),
        occurred_at: -1,
        conversation_id: "c".into(),
        message_sid: "SM1".into(),
        account_sid: "AC1".into(),
        messaging_service_sid: Some("MG1".into()),
        from: "whatsapp:US.123".into(),
        to: "whatsapp:+1".into(),
        body: String::new(),
        media: vec![],
        profile_name: None,
        wa_id: None,
        message_type: None,
        other_params: [("A".to_owned(), "1".to_owned()), ("B".to_owned(), String::new())].into(),
        forwarded: Some(false),
        location: Some(wa_schemas::Location {
            latitude: 0.5,
            longitude: -180.0,
            address: None,
            label: Some(String::new()),
        }),
        referral: Some(wa_schemas::Referral { ctwa_clid: Some("c".into()), ..Default::default() }),
        ..Default::default()
    };
    let bytes = event.encode().unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(InboundMessageReceived::decode(&bytes).unwrap(), event);
}

#[test]
fn decoding_refuses_other_types_and_garbage_with_a_reason() {
    let requested = OutboundRequested::decode(&fixture("outbound_requested.avsc").bytes).unwrap();
    let bytes = requested.encode().unwrap();
    assert!(matches!(OutboundRejected::decode(&bytes), Err(CodecError::WrongType { .. })));
    assert!(matches!(OutboundRequested::decode(b"{\"json\":1}"), Err(CodecError::NotSingleObject(_))));
    let mut unknown = bytes.clone();
    unknown[2] ^= 0xFF;
    assert!(matches!(OutboundRequested::decode(&unknown), Err(CodecError::UnknownFingerprint(_))));
    let truncated = &bytes[..bytes.len() - 3];
    assert!(matches!(OutboundRequested::decode(truncated), Err(CodecError::Avro(_))));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(OutboundRequested::decode(&trailing).is_err());
    let (writer, _) = split_single_object(&bytes).unwrap();
    assert_eq!(writer.full_name, "wachannel.v1.OutboundRequested");
}

#[test]
fn any_value_decodes_to_json_with_nothing_but_the_schema_files() {
    for fixture in fixtures() {
        let (schema, json) = wa_schemas::decode_to_json(&fixture.bytes).unwrap();
        assert!(schema.starts_with("wachannel.v1."), "{schema}");
        let mut expected = fixture.sample.clone();
        if let Some(Json::String(body)) = expected.get("body").filter(|_| fixture.file == "quarantined_request.avsc") {
            // Avro bytes come out of the generic decoder as an array of byte values.
            expected["body"] = body.bytes().map(Json::from).collect();
        }
        assert_eq!(json, expected, "{}", fixture.file);
    }
}

/// Template events written before content types, and verdicts and authorizations written before
/// the window's state and the rule, still decode: the new fields are absent.
#[test]
fn template_events_and_verdicts_from_before_content_types_decode() {
    let event = TemplateEvent::decode(&fixture("history/template_event.1.avsc").bytes).unwrap();
    assert_eq!((event.kind.as_str(), event.content_types, event.previous_category), ("registered", None, None));
    let checked = OutboundWindowChecked::decode(&fixture("history/outbound_window_checked.2.avsc").bytes).unwrap();
    assert!(!checked.window_open);
    let authorized = OutboundAuthorized::decode(&fixture("history/outbound_authorized.2.avsc").bytes).unwrap();
    assert_eq!(authorized.rule, None);
}

/// Session states written before the marketing cool-down still decode, with none.
#[test]
fn session_states_from_before_the_marketing_limit_decode_with_none() {
    let state = SessionState::decode(&fixture("history/session_state.2.avsc").bytes).unwrap();
    assert_eq!((state.marketing_limited_at, state.recent_messages.len()), (None, 1));
}
