//! Conversation ids: the key of every message-level topic.

use uuid::Uuid;

use crate::WhatsAppAddress;

/// The UUIDv5 namespace of conversation ids: UUIDv5(URL namespace, `urn:wachannel:conversation`).
fn namespace() -> &'static Uuid {
    static NAMESPACE: std::sync::OnceLock<Uuid> = std::sync::OnceLock::new();
    NAMESPACE.get_or_init(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:wachannel:conversation"))
}

/// The conversation id of a business sender and a customer: UUIDv5 over both canonical
/// addresses ([`WhatsAppAddress`]). The same pair always gives the same id, whichever service
/// computes it and however the numbers were written. (Text that is no address is used trimmed,
/// so the function is total; callers check addresses before they key anything.)
pub fn conversation_id(business: &str, customer: &str) -> String {
    let canonical = |text: &str| {
        WhatsAppAddress::parse(text).map(WhatsAppAddress::into_string).unwrap_or_else(|_| text.trim().to_owned())
    };
    let name = format!("{}\n{}", canonical(business), canonical(customer));
    Uuid::new_v5(namespace(), name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_id_depends_on_both_sides_only() {
        let a = conversation_id("whatsapp:+14155238886", "whatsapp:+15551234567");
        assert_eq!(a, conversation_id("+1 415 523 8886", "+15551234567"));
        assert_eq!(a, conversation_id("whatsapp:14155238886", "15551234567"));
        assert_ne!(a, conversation_id("whatsapp:+15551234567", "whatsapp:+14155238886"));
        assert_ne!(a, conversation_id("whatsapp:+14155238886", "whatsapp:+15551234568"));
    }
}
