//! `X-Twilio-Signature`, as Twilio's helper libraries compute and check it.
//!
//! - **Form bodies**: HMAC-SHA1 over the full request URL followed by the POST parameters sorted
//!   by name (a repeated name's values sorted too, each name and value concatenated), keyed with
//!   the auth token, base64-encoded.
//! - **JSON bodies**: the URL carries `bodySHA256=<hex SHA-256 of the body>` in its query; the
//!   signature is the HMAC over the URL alone, and the body must hash to that value.
//!
//! The URL is tried with and without its default port (Twilio is not consistent about it), every
//! configured auth token is tried (a rotation has two), and comparisons are constant-time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header Twilio signs requests with.
pub const HEADER: &str = "X-Twilio-Signature";

/// The query parameter that carries the SHA-256 of a JSON body.
pub const BODY_SHA256_PARAM: &str = "bodySHA256";

/// The signature Twilio sends for `url` and form `params`, with `auth_token`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    sign(auth_token, url, &sorted(params))
}

/// The parameters in the order Twilio signs them: sorted by name, then value.
fn sorted(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

fn sign(auth_token: &str, url: &str, sorted: &[(&str, &str)]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("hmac takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The lowercase hex SHA-256 of a body, as `bodySHA256` carries it.
pub fn body_sha256(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `signature` is valid for a form request under any of `auth_tokens` (several during a
/// token rotation).
pub fn verify(auth_tokens: &[String], url: &str, params: &[(String, String)], signature: &str) -> bool {
    let sorted = sorted(params);
    let presented = signature.trim().as_bytes();
    // Twilio signs the URL as configured, usually without a port: that form is tried first. Each
    // comparison takes constant time; which token or URL form matched is no secret.
    let (bare, with_port) = (without_port(url), with_default_port(url));
    let forms = if bare == with_port { vec![bare] } else { vec![bare, with_port] };
    auth_tokens
        .iter()
        .any(|token| forms.iter().any(|form| bool::from(sign(token, form, &sorted).as_bytes().ct_eq(presented))))
}

/// Whether `signature` is valid for a JSON (or any non-form) request: the URL's `bodySHA256`
/// must equal the body's hash and the signature must cover the URL. A URL without
/// `bodySHA256` never verifies, since nothing would then protect the body.
pub fn verify_json(auth_tokens: &[String], url: &str, body: &[u8], signature: &str) -> bool {
    let Some(claimed) = query_param(url, BODY_SHA256_PARAM) else {
        return false;
    };
    let hash_matches = bool::from(body_sha256(body).as_bytes().ct_eq(claimed.to_ascii_lowercase().as_bytes()));
    hash_matches & verify(auth_tokens, url, &[], signature)
}

/// The first value of query parameter `name` in `url`, percent-decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
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
            if let Some(body) = case["json_body"].as_str() {
                assert!(verify_json(&[token.to_owned()], url, body.as_bytes(), signature), "{name}");
                assert!(!verify_json(&[token.to_owned()], url, b"{}", signature), "{name}: other body");
                assert!(!verify(&[token.to_owned()], url, &params, "x"), "{name}");
                continue;
            }
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

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn a_json_body_needs_its_hash_in_the_url() {
        let body = br#"{"MessageSid":"SM1"}"#;
        let url = format!("https://wa.example.com/twilio/status?{BODY_SHA256_PARAM}={}", body_sha256(body));
        let signature = compute("tok", &url, &[]);
        assert!(verify_json(&["tok".to_owned()], &url, body, &signature));
        assert!(!verify_json(&["tok".to_owned()], &url, br#"{"MessageSid":"SM2"}"#, &signature));
        let no_hash = "https://wa.example.com/twilio/status";
        assert!(!verify_json(&["tok".to_owned()], no_hash, body, &compute("tok", no_hash, &[])));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("http://a/x?request_id=a%2Fb&x=1", "request_id").as_deref(), Some("a/b"));
        assert_eq!(query_param("http://a/x?x=1", "request_id"), None);
        assert_eq!(query_param("http://a/x", "x"), None);
    }
}
