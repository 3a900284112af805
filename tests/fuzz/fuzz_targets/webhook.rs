//! Fuzzes what ingress does with a webhook before anything is published: parse the body as a
//! form or as JSON, check signatures, and read the inbound-message and status-callback fields.
//! Nothing may panic, a signature computed for a request must verify for it, and every address
//! read (and any text read as an address) is canonical: it parses to itself.
//!
//! Input layout: one selector byte, then the URL and the body separated by the first 0 byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_schemas::WhatsAppAddress;
use wa_twilio::{inbound, params, signature, status};

const TOKEN: &str = "fuzz-auth-token";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let url = String::from_utf8_lossy(&rest[..split]).into_owned();
    let body = rest.get(split + 1..).unwrap_or_default();
    let tokens = [TOKEN.to_owned()];

    if let Ok(address) = WhatsAppAddress::parse(&url) {
        assert_canonical(address.as_str());
        let digits_or_bsuid = address.bsuid().is_some() || address.id()[1..].bytes().all(|b| b.is_ascii_digit());
        assert!(digits_or_bsuid, "{address} is neither +digits nor a BSUID");
    }

    let parsed = if selector & 1 == 0 { params::parse_form(body) } else { params::parse_json(body) };
    let presented = String::from_utf8_lossy(&body[..body.len().min(28)]).into_owned();
    let _ = signature::verify_json(&tokens, &url, body, &presented);
    let _ = signature::query_param(&url, "request_id");

    let Ok(params) = parsed else {
        return;
    };
    let _ = signature::verify(&tokens, &url, &params, &presented);
    let signed = signature::compute(TOKEN, &url, &params);
    assert!(signature::verify(&tokens, &url, &params, &signed), "a computed signature must verify");

    if let Ok(event) = inbound::inbound_event(&params, 0) {
        assert_eq!(event.event_id, inbound::event_id(&event.message_sid));
        assert_canonical(&event.from);
        assert_canonical(&event.to);
    }
    if let Ok(event) = status::status_event(&params, signature::query_param(&url, "request_id"), 0) {
        assert_eq!(event.message_status, event.message_status.to_ascii_lowercase());
        assert_canonical(&event.from);
        assert_canonical(&event.to);
    }
});

/// A canonical address parses to itself.
fn assert_canonical(address: &str) {
    let parsed = WhatsAppAddress::parse(address).expect("a canonical address parses");
    assert_eq!(parsed.as_str(), address, "the canonical form is a fixed point");
}
