//! Business-scoped user ids (BSUIDs) and the phone numbers they came with.
//!
//! Meta identifies a customer who adopted a username by a BSUID (Twilio's `ExternalUserId`),
//! and may leave the phone number out. When a webhook carries both, ingress records the pair on
//! `wa.identities.v1` (compacted, keyed by BSUID) before it publishes the message; every ingress
//! instance follows that topic, so a later message carrying only the BSUID, and a CRM request
//! addressed to it, are keyed to the phone number's conversation. A BSUID never seen with a
//! number is its own conversation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::TopicFollower;
use wa_platform::topics::IDENTITIES;
use wa_platform::CancellationToken;
use wa_schemas::{Event as _, IdentityLinked, WhatsAppAddress};

/// BSUID → the customer's phone address, as far as this instance has read.
#[derive(Debug, Default)]
pub(crate) struct Identities {
    links: Mutex<HashMap<String, String>>,
}

impl Identities {
    /// The phone address a BSUID came with, if one was seen.
    pub(crate) fn phone_for(&self, bsuid: &str) -> Option<String> {
        self.links.lock().expect("identities lock").get(bsuid).cloned()
    }

    /// Remembers a pair (read from the topic, or just published).
    pub(crate) fn remember(&self, bsuid: &str, address: &str) {
        self.links.lock().expect("identities lock").insert(bsuid.to_owned(), address.to_owned());
    }

    /// How many BSUIDs are known.
    pub(crate) fn len(&self) -> usize {
        self.links.lock().expect("identities lock").len()
    }

    /// Reads the topic from the beginning, then keeps following it until `stop`.
    pub(crate) async fn follow(
        self: &Arc<Self>,
        kafka: &KafkaConfig,
        stop: &CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let follower = TopicFollower::start_since(kafka, &IDENTITIES, "ingress-identities", None).await?;
        let identities = self.clone();
        let running = follower.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            running
                .run(stopped, |record| {
                    let payload = rdkafka::Message::payload(record).unwrap_or_default();
                    match IdentityLinked::decode(payload) {
                        Ok(link) => identities.remember(&link.bsuid, &link.address),
                        Err(error) => tracing::warn!(error = %error, "unreadable identity link skipped"),
                    }
                })
                .await
        });
        follower.wait_caught_up(stop).await;
        tracing::info!(known = self.len(), "identity links caught up");
        Ok(task)
    }
}

/// The link a webhook makes, when it carries a BSUID (`ExternalUserId`, or a BSUID `From`)
/// and a phone `From` together, and this instance does not know that pair yet.
pub(crate) fn new_link(
    identities: &Identities,
    from: &str,
    external_user_id: Option<&str>,
    message_sid: &str,
    now: i64,
) -> Option<IdentityLinked> {
    let bsuid = bsuid_of(external_user_id)?;
    if !from.starts_with("whatsapp:+") || identities.phone_for(&bsuid).as_deref() == Some(from) {
        return None;
    }
    Some(IdentityLinked {
        event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("wachannel:identity:{bsuid}:{from}").as_bytes())
            .to_string(),
        occurred_at: now,
        bsuid,
        address: from.to_owned(),
        message_sid: message_sid.to_owned(),
    })
}

/// The customer's phone address for a BSUID-only sender (`From` a BSUID, or no phone at all
/// but an `ExternalUserId`), when that BSUID was seen with a number.
pub(crate) fn phone_behind(identities: &Identities, address: &str, external_user_id: Option<&str>) -> Option<String> {
    if address.starts_with("whatsapp:+") {
        return None;
    }
    let bsuid = bsuid_of(external_user_id)
        .or_else(|| WhatsAppAddress::parse(address).ok().and_then(|a| a.bsuid().map(str::to_owned)))?;
    identities.phone_for(&bsuid)
}

/// A well-formed BSUID from `ExternalUserId`.
fn bsuid_of(external_user_id: Option<&str>) -> Option<String> {
    WhatsAppAddress::parse(external_user_id?).ok()?.bsuid().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BSUID: &str = "US.13491208655302741918";
    const PHONE: &str = "whatsapp:+15551234567";

    #[test]
    fn a_pair_is_linked_once_and_then_keys_bsuid_only_senders() {
        let identities = Identities::default();
        assert_eq!(phone_behind(&identities, &format!("whatsapp:{BSUID}"), Some(BSUID)), None, "never seen");
        let link = new_link(&identities, PHONE, Some(BSUID), "SM1", 1).unwrap();
        assert_eq!((link.bsuid.as_str(), link.address.as_str(), link.key()), (BSUID, PHONE, BSUID));
        identities.remember(&link.bsuid, &link.address);
        assert_eq!(new_link(&identities, PHONE, Some(BSUID), "SM2", 2), None, "already known");
        assert_eq!(phone_behind(&identities, &format!("whatsapp:{BSUID}"), None).as_deref(), Some(PHONE));
        assert_eq!(phone_behind(&identities, &format!("whatsapp:{BSUID}"), Some(BSUID)).as_deref(), Some(PHONE));
        assert_eq!(phone_behind(&identities, PHONE, Some(BSUID)), None, "a phone sender keys itself");
        // The customer changed number: a new pair.
        assert!(new_link(&identities, "whatsapp:+15551234568", Some(BSUID), "SM3", 3).is_some());
    }

    #[test]
    fn malformed_external_user_ids_link_nothing() {
        let identities = Identities::default();
        assert_eq!(new_link(&identities, PHONE, Some("not a bsuid"), "SM1", 1), None);
        assert_eq!(new_link(&identities, PHONE, None, "SM1", 1), None);
        assert_eq!(new_link(&identities, &format!("whatsapp:{BSUID}"), Some(BSUID), "SM1", 1), None);
    }
}
