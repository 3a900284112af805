//! Twilio's incoming WhatsApp message webhook, parameter by parameter, into
//! [`InboundMessageReceived`]. Every parameter Twilio documents for WhatsApp is typed; any
//! other one (Twilio adds fields without notice) is kept verbatim in `other_params`.

use std::collections::HashMap;

use uuid::Uuid;
use wa_schemas::{conversation_id, InboundMessageReceived, Location, Media, Referral};

use crate::params::by_name;
use crate::FieldError;

/// More media than any Twilio message carries (WhatsApp sends one, MMS up to ten).
const MAX_MEDIA: usize = 100;

/// Parameters read into typed fields (media, location and referral ones are added as read).
const TYPED: &[&str] = &[
    "MessageSid",
    "AccountSid",
    "MessagingServiceSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "ProfileName",
    "WaId",
    "MessageType",
    "Forwarded",
    "FrequentlyForwarded",
    "ButtonText",
    "ButtonPayload",
    "ButtonType",
    "InteractiveData",
    "FlowData",
    "OriginalRepliedMessageSid",
    "OriginalRepliedMessageSender",
    "ExternalUserId",
    "ParentExternalUserId",
    "ProfileUsername",
];

/// The `Referral*` parameters of a click-to-WhatsApp ad, with the field each fills.
const REFERRAL: &[&str] = &[
    "ReferralSourceId",
    "ReferralSourceType",
    "ReferralSourceUrl",
    "ReferralHeadline",
    "ReferralBody",
    "ReferralCtwaClid",
    "ReferralMediaId",
    "ReferralMediaUrl",
    "ReferralMediaContentType",
    "ReferralNumMedia",
];

const LOCATION: &[&str] = &["Latitude", "Longitude", "Address", "Label"];

/// The event id of a message: the same `MessageSid` always gives the same id, so any duplicate
/// that escapes ingress's dedupe is still recognisable downstream.
pub fn event_id(message_sid: &str) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("wachannel:inbound:{message_sid}").as_bytes()).to_string()
}

/// Reads an inbound message webhook received at `received_at` (Unix millis).
pub fn inbound_event(params: &[(String, String)], received_at: i64) -> Result<InboundMessageReceived, FieldError> {
    let fields = by_name(params);
    let optional = |name: &str| fields.get(name).filter(|value| !value.is_empty()).map(|value| (*value).to_owned());
    let required = |name: &str| {
        optional(name)
            .filter(|value| !value.trim().is_empty())
            .ok_or_else(|| FieldError::new(name, format!("{name} is required")))
    };
    let flag = |name: &str| -> Result<Option<bool>, FieldError> {
        match fields.get(name).map(|value| value.trim()) {
            None | Some("") => Ok(None),
            Some(value) if value.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(value) if value.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(_) => Err(FieldError::new(name, format!("{name} must be true or false"))),
        }
    };

    let message_sid = required("MessageSid")?;
    let account_sid = required("AccountSid")?;
    let from = crate::address_field("From", &required("From")?)?;
    let to = crate::address_field("To", &required("To")?)?;

    let referral = referral(&fields);
    // Twilio sends `ReferralNumMedia=0` on every message; without a referral it stays a plain
    // parameter rather than vanish.
    let referral_fields = if referral.is_some() { REFERRAL } else { &[] };
    let typed = |name: &str| TYPED.contains(&name) || referral_fields.contains(&name) || LOCATION.contains(&name);
    let num_media: usize = match fields.get("NumMedia").map(|value| value.trim()) {
        None | Some("") => 0,
        Some(n) => n.parse().map_err(|_| FieldError::new("NumMedia", "NumMedia must be a whole number"))?,
    };
    if num_media > MAX_MEDIA {
        return Err(FieldError::new("NumMedia", format!("NumMedia={num_media} is more than {MAX_MEDIA}")));
    }
    let mut media = Vec::with_capacity(num_media);
    for index in 0..num_media {
        let url_key = format!("MediaUrl{index}");
        let type_key = format!("MediaContentType{index}");
        let url = fields
            .get(url_key.as_str())
            .ok_or_else(|| FieldError::new(&url_key, format!("NumMedia={num_media} but {url_key} is missing")))?;
        media.push(Media {
            url: (*url).to_owned(),
            content_type: fields.get(type_key.as_str()).map(|v| (*v).to_owned()).unwrap_or_default(),
        });
    }

    let other_params: HashMap<String, String> = params
        .iter()
        .filter(|(name, _)| !typed(name) && !is_media_param(name, num_media))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(InboundMessageReceived {
        event_id: event_id(&message_sid),
        occurred_at: received_at,
        conversation_id: conversation_id(&to, &from),
        messaging_service_sid: optional("MessagingServiceSid"),
        body: fields.get("Body").map(|v| (*v).to_owned()).unwrap_or_default(),
        media,
        profile_name: optional("ProfileName"),
        wa_id: optional("WaId"),
        message_type: optional("MessageType"),
        other_params,
        forwarded: flag("Forwarded")?,
        frequently_forwarded: flag("FrequentlyForwarded")?,
        button_text: optional("ButtonText"),
        button_payload: optional("ButtonPayload"),
        button_type: optional("ButtonType"),
        interactive_data: optional("InteractiveData"),
        flow_data: optional("FlowData"),
        external_user_id: optional("ExternalUserId").map(|id| id.trim().to_owned()),
        parent_external_user_id: optional("ParentExternalUserId").map(|id| id.trim().to_owned()),
        profile_username: optional("ProfileUsername"),
        location: location(&fields)?,
        referral,
        original_replied_message_sid: optional("OriginalRepliedMessageSid"),
        original_replied_message_sender: optional("OriginalRepliedMessageSender"),
        message_sid,
        account_sid,
        from,
        to,
    })
}

/// Whether `name` is `MediaUrl<i>` or `MediaContentType<i>` for an `i` below `num_media`.
fn is_media_param(name: &str, num_media: usize) -> bool {
    let index = name.strip_prefix("MediaUrl").or_else(|| name.strip_prefix("MediaContentType"));
    let canonical =
        |i: &str| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && (i == "0" || !i.starts_with('0'));
    index.is_some_and(|i| canonical(i) && i.parse::<usize>().is_ok_and(|i| i < num_media))
}

fn location(fields: &HashMap<&str, &str>) -> Result<Option<Location>, FieldError> {
    let coordinate = |name: &str, limit: f64| -> Result<Option<f64>, FieldError> {
        match fields.get(name).map(|value| value.trim()).filter(|value| !value.is_empty()) {
            None => Ok(None),
            Some(text) => match text.parse::<f64>() {
                Ok(value) if value.is_finite() && value.abs() <= limit => Ok(Some(value)),
                _ => Err(FieldError::new(name, format!("{name} must be a number between -{limit} and {limit}"))),
            },
        }
    };
    let text = |name: &str| fields.get(name).filter(|value| !value.is_empty()).map(|value| (*value).to_owned());
    match (coordinate("Latitude", 90.0)?, coordinate("Longitude", 180.0)?) {
        (None, None) => Ok(None),
        (Some(latitude), Some(longitude)) => {
            Ok(Some(Location { latitude, longitude, address: text("Address"), label: text("Label") }))
        }
        (None, Some(_)) => Err(FieldError::new("Latitude", "Longitude is given but Latitude is missing")),
        (Some(_), None) => Err(FieldError::new("Longitude", "Latitude is given but Longitude is missing")),
    }
}

fn referral(fields: &HashMap<&str, &str>) -> Option<Referral> {
    let text = |name: &str| fields.get(name).filter(|value| !value.is_empty()).map(|value| (*value).to_owned());
    if !REFERRAL.iter().filter(|name| **name != "ReferralNumMedia").any(|name| text(name).is_some()) {
        return None;
    }
    Some(Referral {
        source_id: text("ReferralSourceId"),
        source_type: text("ReferralSourceType"),
        source_url: text("ReferralSourceUrl"),
        headline: text("ReferralHeadline"),
        body: text("ReferralBody"),
        ctwa_clid: text("ReferralCtwaClid"),
        media_id: text("ReferralMediaId"),
        media_url: text("ReferralMediaUrl"),
        media_content_type: text("ReferralMediaContentType"),
        num_media: text("ReferralNumMedia"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("MessageSid", "SM1"),
        ("AccountSid", "AC1"),
        ("From", "whatsapp:+15551234567"),
        ("To", "whatsapp:+14155238886"),
        ("Body", "hello"),
    ];

    #[test]
    fn every_whatsapp_parameter_lands_in_its_field() {
        let mut form = params(BASE);
        form.extend(params(&[
            ("MessagingServiceSid", "MG1"),
            ("NumMedia", "1"),
            ("MediaUrl0", "https://api.twilio.com/m/1"),
            ("MediaContentType0", "image/png"),
            ("ProfileName", "Ana"),
            ("WaId", "15551234567"),
            ("MessageType", "button"),
            ("Forwarded", "true"),
            ("FrequentlyForwarded", "False"),
            ("ButtonText", "Track"),
            ("ButtonPayload", "track:1"),
            ("ButtonType", "QUICK_REPLY"),
            ("InteractiveData", r#"{"type":"list_reply"}"#),
            ("FlowData", r#"{"flow_token":"t"}"#),
            ("Latitude", "-23.5505"),
            ("Longitude", "-46.6333"),
            ("Address", "Av. Paulista"),
            ("Label", "Office"),
            ("ReferralSourceId", "120"),
            ("ReferralSourceType", "ad"),
            ("ReferralSourceUrl", "https://fb.me/x"),
            ("ReferralHeadline", "Sale"),
            ("ReferralBody", "20% off"),
            ("ReferralCtwaClid", "ARAk"),
            ("ReferralMediaId", "M1"),
            ("ReferralMediaUrl", "https://m/1"),
            ("ReferralMediaContentType", "image/jpeg"),
            ("ReferralNumMedia", "1"),
            ("OriginalRepliedMessageSid", "SM0"),
            ("OriginalRepliedMessageSender", "whatsapp:+14155238886"),
            ("SomethingNew", "42"),
            ("ReferralSomethingNew", "7"),
            ("MediaUrl1", "beyond NumMedia"),
            ("MediaUrl00", "not canonical"),
        ]));
        let event = inbound_event(&form, 1_000).unwrap();
        assert_eq!(event.occurred_at, 1_000);
        assert_eq!(event.messaging_service_sid.as_deref(), Some("MG1"));
        assert_eq!(
            event.media,
            vec![Media { url: "https://api.twilio.com/m/1".into(), content_type: "image/png".into() }]
        );
        assert_eq!(event.profile_name.as_deref(), Some("Ana"));
        assert_eq!(event.wa_id.as_deref(), Some("15551234567"));
        assert_eq!(event.message_type.as_deref(), Some("button"));
        assert_eq!((event.forwarded, event.frequently_forwarded), (Some(true), Some(false)));
        assert_eq!(event.button_text.as_deref(), Some("Track"));
        assert_eq!(event.button_payload.as_deref(), Some("track:1"));
        assert_eq!(event.button_type.as_deref(), Some("QUICK_REPLY"));
        assert_eq!(event.interactive_data.as_deref(), Some(r#"{"type":"list_reply"}"#));
        assert_eq!(event.flow_data.as_deref(), Some(r#"{"flow_token":"t"}"#));
        assert_eq!(
            event.location,
            Some(Location {
                latitude: -23.5505,
                longitude: -46.6333,
                address: Some("Av. Paulista".into()),
                label: Some("Office".into())
            })
        );
        assert_eq!(
            event.referral,
            Some(Referral {
                source_id: Some("120".into()),
                source_type: Some("ad".into()),
                source_url: Some("https://fb.me/x".into()),
                headline: Some("Sale".into()),
                body: Some("20% off".into()),
                ctwa_clid: Some("ARAk".into()),
                media_id: Some("M1".into()),
                media_url: Some("https://m/1".into()),
                media_content_type: Some("image/jpeg".into()),
                num_media: Some("1".into()),
            })
        );
        assert_eq!(event.original_replied_message_sid.as_deref(), Some("SM0"));
        assert_eq!(event.original_replied_message_sender.as_deref(), Some("whatsapp:+14155238886"));
        let mut others: Vec<_> = event.other_params.iter().collect();
        others.sort();
        let others: Vec<(&str, &str)> = others.into_iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            others,
            [
                ("MediaUrl00", "not canonical"),
                ("MediaUrl1", "beyond NumMedia"),
                ("ReferralSomethingNew", "7"),
                ("SomethingNew", "42")
            ]
        );
        assert_eq!(event.conversation_id, conversation_id("whatsapp:+14155238886", "whatsapp:+15551234567"));
    }

    #[test]
    fn a_plain_text_message_has_no_optional_parts() {
        let mut form = params(BASE);
        form.push(("ReferralNumMedia".into(), "0".into()));
        let event = inbound_event(&form, 0).unwrap();
        assert_eq!((event.location, event.referral, event.forwarded), (None, None, None));
        assert_eq!(event.other_params, [("ReferralNumMedia".to_owned(), "0".to_owned())].into());
    }

    #[test]
    fn a_business_scoped_user_id_is_a_valid_sender() {
        let mut form = params(BASE);
        form.retain(|(k, _)| k != "From");
        form.push(("From".into(), "whatsapp:US.13491208655302741918".into()));
        assert_eq!(inbound_event(&form, 0).unwrap().from, "whatsapp:US.13491208655302741918");
    }

    #[test]
    fn the_same_sid_gives_the_same_event_id() {
        let a = inbound_event(&params(BASE), 1).unwrap();
        let b = inbound_event(&params(BASE), 2).unwrap();
        assert_eq!(a.event_id, b.event_id);
    }

    #[test]
    fn bad_parameters_are_named() {
        for missing in ["MessageSid", "AccountSid", "From", "To"] {
            let form: Vec<_> = params(BASE).into_iter().filter(|(k, _)| k != missing).collect();
            assert_eq!(inbound_event(&form, 0).unwrap_err().field, missing);
        }
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("NumMedia", "2"), ("MediaUrl0", "u")], "MediaUrl1"),
            (&[("NumMedia", "x")], "NumMedia"),
            (&[("NumMedia", "101")], "NumMedia"),
            (&[("Latitude", "91"), ("Longitude", "0")], "Latitude"),
            (&[("Latitude", "1")], "Longitude"),
            (&[("Longitude", "NaN"), ("Latitude", "1")], "Longitude"),
            (&[("Forwarded", "yes")], "Forwarded"),
        ];
        for (extra, field) in cases {
            let mut form = params(BASE);
            form.extend(params(extra));
            assert_eq!(inbound_event(&form, 0).unwrap_err().field, *field, "{extra:?}");
        }
    }
}
