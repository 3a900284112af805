//! The 24-hour customer-service window: pure rules, no IO, no clock (time is passed in).

/// How long a customer message keeps the window open.
pub const WINDOW_MILLIS: i64 = 24 * 60 * 60 * 1000;

/// A conversation's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the customer last wrote, Unix millis.
    pub last_customer_message_at: i64,
    /// When free-form replies stop being allowed, Unix millis.
    pub expires_at: i64,
}

/// The window after a customer message at `at`: it lasts 24 hours from the customer's most
/// recent message. Applying a message twice, or messages in any order, gives the same window.
pub fn apply_customer_message(window: Option<Window>, at: i64) -> Window {
    let last = window.map_or(at, |w| w.last_customer_message_at.max(at));
    Window { last_customer_message_at: last, expires_at: last.saturating_add(WINDOW_MILLIS) }
}

/// Why a free-form message may not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The customer never wrote to this sender.
    NoWindow,
    /// The customer's last message is more than 24 hours old (less the safety margin).
    WindowClosed,
}

impl Refusal {
    /// The machine-readable reason carried by events.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoWindow => "no_window",
            Self::WindowClosed => "window_closed",
        }
    }
}

/// Whether a free-form message may be sent at `now`: only while
/// `now < expires_at - safety_margin`, so a message does not reach Twilio just after the window
/// closed.
pub fn check_free_form(window: Option<&Window>, now: i64, safety_margin_millis: i64) -> Result<(), Refusal> {
    match window {
        None => Err(Refusal::NoWindow),
        Some(w) if now < w.expires_at.saturating_sub(safety_margin_millis) => Ok(()),
        Some(_) => Err(Refusal::WindowClosed),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: i64 = 60 * 60 * 1000;

    fn fold(messages: &[i64]) -> Option<Window> {
        messages.iter().fold(None, |w, at| Some(apply_customer_message(w, *at)))
    }

    #[test]
    fn a_message_opens_24_hours_and_a_later_one_extends() {
        let w = apply_customer_message(None, 0);
        assert_eq!(w.expires_at, 24 * HOUR);
        let w = apply_customer_message(Some(w), 10 * HOUR);
        assert_eq!(w.expires_at, 34 * HOUR);
    }

    #[test]
    fn free_form_needs_an_open_window_with_margin() {
        let w = apply_customer_message(None, 0);
        assert_eq!(check_free_form(None, 0, 0), Err(Refusal::NoWindow));
        assert_eq!(check_free_form(Some(&w), 24 * HOUR - 61_000, 60_000), Ok(()));
        assert_eq!(check_free_form(Some(&w), 24 * HOUR - 60_000, 60_000), Err(Refusal::WindowClosed));
        assert_eq!(check_free_form(Some(&w), 24 * HOUR, 0), Err(Refusal::WindowClosed));
    }

    proptest! {
        #[test]
        fn order_and_duplicates_do_not_matter(mut messages in prop::collection::vec(0i64..10_000 * HOUR, 1..20), seed in any::<u64>()) {
            let expected = fold(&messages);
            let mut doubled = messages.clone();
            doubled.extend(messages.iter().copied());
            prop_assert_eq!(fold(&doubled), expected);
            let len = messages.len();
            messages.rotate_left((seed as usize) % len);
            messages.reverse();
            prop_assert_eq!(fold(&messages), expected);
        }

        #[test]
        fn the_window_is_24_hours_from_the_latest_message(messages in prop::collection::vec(0i64..10_000 * HOUR, 1..20)) {
            let window = fold(&messages).unwrap();
            let latest = *messages.iter().max().unwrap();
            prop_assert_eq!(window.expires_at, latest + WINDOW_MILLIS);
        }

        #[test]
        fn allowed_exactly_before_expiry_less_margin(at in 0i64..1_000 * HOUR, offset in -48 * HOUR..48 * HOUR, margin in 0i64..HOUR) {
            let window = apply_customer_message(None, at);
            let now = at + offset;
            let allowed = check_free_form(Some(&window), now, margin).is_ok();
            prop_assert_eq!(allowed, now < at + WINDOW_MILLIS - margin);
        }
    }
}
