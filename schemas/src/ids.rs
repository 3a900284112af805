//! Conversation ids: the key of every message-level topic.

use uuid::Uuid;

/// The UUIDv5 namespace of conversation ids: UUIDv5(URL namespace, `urn:wachannel:conversation`).
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:wachannel:conversation")
}

/// Normalizes a WhatsApp address to `whatsapp:<id>`.
///
/// Accepts `whatsapp:+15551234567`, `+1 (555) 123-4567` or a Meta business-scoped user id
/// (`whatsapp:<BSUID>`). Phone numbers lose their spaces, dashes, dots and parentheses; other ids
/// are kept as they are (they are not assumed to be E.164). Returns `None` for an empty address.
pub fn normalize_whatsapp_address(address: &str) -> Option<String> {
    let trimmed = address.trim();
    let id = match trimmed.get(..9) {
        Some(prefix) if prefix.eq_ignore_ascii_case("whatsapp:") => trimmed[9..].trim(),
        _ => trimmed,
    };
    if id.is_empty() {
        return None;
    }
    let looks_like_phone = id.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')'));
    let id =
        if looks_like_phone { id.chars().filter(|c| c.is_ascii_digit() || *c == '+').collect() } else { id.to_owned() };
    Some(format!("whatsapp:{id}"))
}

/// The conversation id of a business sender and a customer: UUIDv5 over both normalized
/// addresses. The same pair always gives the same id, whichever service computes it.
pub fn conversation_id(business: &str, customer: &str) -> String {
    let business = normalize_whatsapp_address(business).unwrap_or_default();
    let customer = normalize_whatsapp_address(customer).unwrap_or_default();
    let name = format!("{business}\n{customer}");
    Uuid::new_v5(&namespace(), name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_of_one_number_normalize_alike() {
        let expected = Some("whatsapp:+15551234567".to_owned());
        assert_eq!(normalize_whatsapp_address("whatsapp:+15551234567"), expected);
        assert_eq!(normalize_whatsapp_address("WhatsApp:+1 (555) 123-4567"), expected);
        assert_eq!(normalize_whatsapp_address(" +1.555.123.4567 "), expected);
    }

    #[test]
    fn business_scoped_ids_are_kept_verbatim() {
        assert_eq!(
            normalize_whatsapp_address("whatsapp:US.13491208655302741918").as_deref(),
            Some("whatsapp:US.13491208655302741918")
        );
        assert_eq!(normalize_whatsapp_address("whatsapp:"), None);
    }

    #[test]
    fn conversation_id_depends_on_both_sides_only() {
        let a = conversation_id("whatsapp:+14155238886", "whatsapp:+15551234567");
        assert_eq!(a, conversation_id("+1 415 523 8886", "+15551234567"));
        assert_ne!(a, conversation_id("whatsapp:+15551234567", "whatsapp:+14155238886"));
        assert_ne!(a, conversation_id("whatsapp:+14155238886", "whatsapp:+15551234568"));
    }
}
