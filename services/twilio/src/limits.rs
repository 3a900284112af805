//! What Twilio and WhatsApp refuse in an outbound message, checked before the message leaves:
//! the limits of the Messages API and of WhatsApp template parameters.

/// Longest `Body` Twilio's Messages API accepts, in characters (error 21617 beyond it).
pub const MAX_BODY_CHARS: usize = 1600;
/// Media items WhatsApp delivers with one message (Twilio takes up to 10 `MediaUrl`s for MMS,
/// but WhatsApp sends one per message).
pub const MAX_MEDIA: usize = 1;
/// Longest body of a WhatsApp template message once its variables are filled in.
pub const MAX_TEMPLATE_BODY_CHARS: usize = 1024;
/// Most consecutive spaces WhatsApp accepts in a template parameter.
pub const MAX_CONSECUTIVE_SPACES: usize = 4;

/// Why WhatsApp would refuse `value` as a template parameter (error 132018: parameters may
/// not contain newlines or tabs, nor more than four consecutive spaces), if it would.
pub fn template_value_problem(value: &str) -> Option<String> {
    if value.contains(['\n', '\r']) {
        return Some("contains a newline, which WhatsApp refuses in template variables".to_owned());
    }
    if value.contains('\t') {
        return Some("contains a tab, which WhatsApp refuses in template variables".to_owned());
    }
    let mut run = 0;
    for c in value.chars() {
        run = if c == ' ' { run + 1 } else { 0 };
        if run > MAX_CONSECUTIVE_SPACES {
            return Some(format!(
                "has more than {MAX_CONSECUTIVE_SPACES} consecutive spaces, which WhatsApp refuses in template variables"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_values_without_newlines_tabs_or_long_runs_of_spaces_pass() {
        assert_eq!(template_value_problem("Ana"), None);
        assert_eq!(template_value_problem("order  1234    shipped"), None);
        assert!(template_value_problem("line one\nline two").unwrap().contains("newline"));
        assert!(template_value_problem("a\r\nb").unwrap().contains("newline"));
        assert!(template_value_problem("a\tb").unwrap().contains("tab"));
        assert!(template_value_problem("a     b").unwrap().contains("consecutive spaces"));
    }
}
