//! `X-Twilio-Signature`: HMAC-SHA1 over the full request URL followed by the POST parameters
//! sorted by name (each name's distinct values sorted too, name and value concatenated), keyed
//! with the auth token and base64-encoded; as Twilio's helper libraries compute it.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The header Twilio signs requests with.
pub const HEADER: &str = "X-Twilio-Signature";

/// The signature Twilio sends for `url` and form `params`, with `auth_token`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("hmac takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is valid for the request under any of `auth_tokens` (several during a
/// token rotation). Like Twilio's helpers, the URL is tried both with and without its default
/// port, since Twilio is not consistent about it. The comparison is constant-time.
pub fn verify(auth_tokens: &[String], url: &str, params: &[(String, String)], signature: &str) -> bool {
    let variants = [with_default_port(url), without_port(url)];
    let mut valid = false;
    for token in auth_tokens {
        for variant in &variants {
            let expected = compute(token, variant, params);
            valid |= bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes()));
        }
    }
    valid
}

/// Splits `scheme://authority/rest` into its three parts.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

fn host_and_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        _ => (authority, None),
    }
}

/// The URL with an explicit port (443 for https, 80 otherwise) when it has none.
fn with_default_port(url: &str) -> String {
    let Some((scheme, authority, rest)) = split_url(url) else {
        return url.to_owned();
    };
    match host_and_port(authority) {
        (_, Some(_)) => url.to_owned(),
        (host, None) => {
            let port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
            format!("{scheme}://{host}:{port}{rest}")
        }
    }
}

/// The URL without its port.
fn without_port(url: &str) -> String {
    let Some((scheme, authority, rest)) = split_url(url) else {
        return url.to_owned();
    };
    let (host, _) = host_and_port(authority);
    format!("{scheme}://{host}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// Vectors computed with Twilio's official helper library; see
    /// `fixtures/make_signature_fixtures.py`.
    #[test]
    fn matches_twilio_helper_library_vectors() {
        let text = include_str!("../fixtures/twilio_signatures.json");
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let token = case["auth_token"].as_str().unwrap();
            let url = case["url"].as_str().unwrap();
            let params: Vec<(String, String)> = case["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_str().unwrap().to_owned()))
                .collect();
            let signature = case["signature"].as_str().unwrap();
            assert_eq!(compute(token, url, &params), signature, "{name}");
            for other in case["also_valid_urls"].as_array().unwrap() {
                let other = other.as_str().unwrap();
                assert!(verify(&[token.to_owned()], other, &params, signature), "{name}: {other}");
            }
        }
    }

    #[test]
    fn any_change_to_url_params_or_token_invalidates() {
        let params = pairs(&[("Body", "hi"), ("From", "whatsapp:+15551234567")]);
        let url = "https://example.com/twilio/inbound";
        let token = "secret".to_owned();
        let signature = compute(&token, url, &params);
        assert!(verify(std::slice::from_ref(&token), url, &params, &signature));
        assert!(!verify(&["other".to_owned()], url, &params, &signature));
        assert!(!verify(std::slice::from_ref(&token), "https://example.com/twilio/inbound2", &params, &signature));
        let tampered = pairs(&[("Body", "hi!"), ("From", "whatsapp:+15551234567")]);
        assert!(!verify(std::slice::from_ref(&token), url, &tampered, &signature));
        assert!(!verify(std::slice::from_ref(&token), url, &params, ""));
    }

    #[test]
    fn a_second_token_is_accepted_during_rotation() {
        let params = pairs(&[("MessageSid", "SM1")]);
        let url = "https://example.com/twilio/inbound";
        let signature = compute("new", url, &params);
        assert!(verify(&["old".to_owned(), "new".to_owned()], url, &params, &signature));
    }

    #[test]
    fn port_variants() {
        assert_eq!(with_default_port("https://a.io/x?y=1"), "https://a.io:443/x?y=1");
        assert_eq!(with_default_port("http://a.io"), "http://a.io:80");
        assert_eq!(with_default_port("http://a.io:8080/x"), "http://a.io:8080/x");
        assert_eq!(without_port("https://a.io:443/x"), "https://a.io/x");
        assert_eq!(without_port("https://a.io/x"), "https://a.io/x");
    }
}
