//! WhatsApp addresses in one canonical form, made in one place.
//!
//! A customer or business is `whatsapp:+<E.164 number>` or, for users Meta identifies by a
//! business-scoped user id, `whatsapp:<BSUID>` (`US.13491208655302741918`, or a parent BSUID
//! `US.ENT.11815799212886844830`). Every key, event and API answer uses this form, so a customer
//! is one conversation whichever way Twilio or the CRM wrote the number.

use std::fmt;
use std::str::FromStr;

/// The prefix of every WhatsApp address on Twilio.
const PREFIX: &str = "whatsapp:";

/// Fewest digits in a plausible E.164 number (country code included; Niue has 4-digit numbers).
const MIN_PHONE_DIGITS: usize = 7;
/// Most digits E.164 allows (ITU-T E.164: 15 including the country code).
const MAX_PHONE_DIGITS: usize = 15;
/// Most characters after the country prefix of a BSUID (Meta: up to 128 alphanumerics).
const MAX_BSUID_ID_CHARS: usize = 128;

/// A WhatsApp address in canonical form: `whatsapp:+<E.164>` or `whatsapp:<BSUID>`.
///
/// Made only by [`WhatsAppAddress::parse`], so holding one means the address was checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WhatsAppAddress(String);

/// Why a text is not a WhatsApp address; the message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing after the optional `whatsapp:` prefix.
    #[error("the address is empty")]
    Empty,
    /// Looks like a phone number but is not a plausible E.164 number.
    #[error("{0}")]
    NotE164(String),
    /// Neither a phone number nor a business-scoped user id.
    #[error(
        "neither a phone number nor a business-scoped user id; expected whatsapp:+<E.164 number> \
         (e.g. whatsapp:+14155238886) or whatsapp:<BSUID> (e.g. whatsapp:US.13491208655302741918)"
    )]
    Unrecognized,
}

impl WhatsAppAddress {
    /// Reads an address in any of the forms people and Twilio write: with or without the
    /// `whatsapp:` prefix (any case), with spaces, dashes, dots or parentheses between digits,
    /// and with or without the leading `+` (Twilio's `WaId` has none).
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let trimmed = text.trim();
        let id = match trimmed.get(..PREFIX.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => trimmed[PREFIX.len()..].trim(),
            _ => trimmed,
        };
        if id.is_empty() {
            return Err(AddressError::Empty);
        }
        if id.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')')) {
            return parse_phone(id).map(|digits| Self(format!("{PREFIX}+{digits}")));
        }
        if is_bsuid(id) {
            return Ok(Self(format!("{PREFIX}{id}")));
        }
        Err(AddressError::Unrecognized)
    }

    /// The canonical text, `whatsapp:+15551234567` or `whatsapp:US.1349…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `whatsapp:`: `+15551234567` or the BSUID.
    pub fn id(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The business-scoped user id, when the address is one rather than a phone number.
    pub fn bsuid(&self) -> Option<&str> {
        let id = self.id();
        (!id.starts_with('+')).then_some(id)
    }

    /// The address as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The digits of a plausible E.164 number, or why it is not one.
fn parse_phone(text: &str) -> Result<String, AddressError> {
    let pluses = text.matches('+').count();
    if pluses > 1 || (pluses == 1 && !text.starts_with('+')) {
        return Err(AddressError::NotE164("a + may only open the number".into()));
    }
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < MIN_PHONE_DIGITS || digits.len() > MAX_PHONE_DIGITS {
        return Err(AddressError::NotE164(format!(
            "an E.164 number has {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits with its country code; this has {}",
            digits.len()
        )));
    }
    if digits.starts_with('0') {
        return Err(AddressError::NotE164(
            "an E.164 number starts with its country code, which never starts with 0".into(),
        ));
    }
    // North American numbers (+1): a 3-digit area code starting with 2-9, then 7 digits. (The
    // exchange is not checked: fictional 555 numbers are common test data.)
    if let Some(national) = digits.strip_prefix('1') {
        if national.len() != 10 || national.as_bytes()[0] < b'2' {
            return Err(AddressError::NotE164(
                "a +1 number has a 3-digit area code starting with 2-9, then 7 digits".into(),
            ));
        }
    }
    Ok(digits)
}

/// `CC.<id>` or `CC.ENT.<id>`: an ISO 3166 alpha-2 country code, then up to 128 alphanumerics.
fn is_bsuid(text: &str) -> bool {
    let Some((country, rest)) = text.split_once('.') else {
        return false;
    };
    let id = rest.strip_prefix("ENT.").unwrap_or(rest);
    country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && !id.is_empty()
        && id.len() <= MAX_BSUID_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl FromStr for WhatsAppAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for WhatsAppAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for WhatsAppAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<WhatsAppAddress> for String {
    fn from(address: WhatsAppAddress) -> Self {
        address.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> Result<String, AddressError> {
        WhatsAppAddress::parse(text).map(WhatsAppAddress::into_string)
    }

    #[test]
    fn every_way_of_writing_a_number_gives_one_address() {
        for text in [
            "whatsapp:+15551234567",
            "WhatsApp:+1 (555) 123-4567",
            " +1.555.123.4567 ",
            "whatsapp:15551234567",
            "15551234567",
            "whatsapp: +1 555 123 4567",
        ] {
            assert_eq!(canonical(text).as_deref(), Ok("whatsapp:+15551234567"), "{text}");
        }
        assert_eq!(canonical("whatsapp:+44 20 7946 0958").as_deref(), Ok("whatsapp:+442079460958"));
        assert_eq!(canonical("+683 4002").as_deref(), Ok("whatsapp:+6834002"));
    }

    #[test]
    fn implausible_numbers_are_refused_with_the_reason() {
        assert_eq!(canonical("whatsapp:"), Err(AddressError::Empty));
        assert_eq!(canonical("  "), Err(AddressError::Empty));
        assert_eq!(canonical("whatsapp:not-a-number"), Err(AddressError::Unrecognized));
        for text in ["+1", "+12345", "+1234567890123456", "+0441234567", "1+5551234567", "++15551234567"] {
            let error = canonical(text).unwrap_err();
            assert!(matches!(error, AddressError::NotE164(_)), "{text}: {error:?}");
        }
        // +1 numbers: an area code starting with 2-9, 10 digits after the 1.
        assert!(canonical("+11551234567").is_err());
        assert!(canonical("+10551234567").is_err());
        assert!(canonical("+1555123456").is_err());
    }

    #[test]
    fn business_scoped_user_ids_are_kept_verbatim() {
        let address = WhatsAppAddress::parse("whatsapp:US.13491208655302741918").unwrap();
        assert_eq!(address.as_str(), "whatsapp:US.13491208655302741918");
        assert_eq!(address.bsuid(), Some("US.13491208655302741918"));
        assert_eq!(canonical("US.ENT.11815799212886844830").as_deref(), Ok("whatsapp:US.ENT.11815799212886844830"));
        assert_eq!(WhatsAppAddress::parse("whatsapp:+15551234567").unwrap().bsuid(), None);
        for text in ["us.1349", "USA.1349", "US.", "US.13-49", &format!("US.{}", "1".repeat(129))] {
            assert_eq!(canonical(text), Err(AddressError::Unrecognized), "{text}");
        }
    }

    #[test]
    fn canonical_addresses_parse_to_themselves() {
        for text in ["+1 (555) 123-4567", "whatsapp:BR.1502576394655843", "49 30 901820"] {
            let once = canonical(text).unwrap();
            assert_eq!(canonical(&once).as_deref(), Ok(once.as_str()));
        }
    }
}
