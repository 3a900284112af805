//! Content SIDs: the id of a Twilio content (a WhatsApp template is sent by it).

use std::fmt;

/// A Content SID as Twilio makes them: `HX` and 32 hex digits.
///
/// Made only by [`ContentSid::parse`], so holding one means the SID was checked where it
/// entered (the admin API, the simulator).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentSid(String);

/// A text that is not a Content SID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Twilio Content SID: HX followed by 32 hex digits")]
pub struct ContentSidError(pub String);

impl ContentSid {
    /// Checks `text` (surrounding spaces ignored).
    pub fn parse(text: &str) -> Result<Self, ContentSidError> {
        let sid = text.trim();
        let valid = sid.len() == 34 && sid.starts_with("HX") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(Self(sid.to_owned()))
        } else {
            Err(ContentSidError(text.to_owned()))
        }
    }

    /// The SID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ContentSid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<ContentSid> for String {
    fn from(sid: ContentSid) -> Self {
        sid.0
    }
}

impl PartialEq<str> for ContentSid {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl serde::Serialize for ContentSid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sids_are_hx_and_32_hex_digits() {
        assert_eq!(
            ContentSid::parse(" HX0123456789abcdef0123456789ABCDEF ").unwrap().as_str(),
            "HX0123456789abcdef0123456789ABCDEF"
        );
        assert!(ContentSid::parse("HX0123456789abcdef0123456789abcde").is_err(), "31 digits");
        assert!(ContentSid::parse("MG0123456789abcdef0123456789abcdef").is_err(), "a Messaging Service SID");
        assert!(ContentSid::parse("HX0123456789abcdef0123456789abcdeg").is_err(), "not hex");
        assert!(ContentSid::parse("HXé123456789abcdef0123456789abcde").is_err(), "not ASCII");
        let error = ContentSid::parse("HX1").unwrap_err().to_string();
        assert!(error.contains("HX followed by 32 hex digits"), "{error}");
    }
}
