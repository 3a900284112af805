//! The Content API's values the channel reads: approval statuses, and what a content's `types`
//! say (its variables, which types WhatsApp allows in session, what may be submitted), pure.

use std::collections::{BTreeMap, BTreeSet};

wa_schemas::wire_strings! {
    /// The status of a content's WhatsApp approval request (`approval_requests.whatsapp.status`
    /// in `GET /v1/ContentAndApprovals` and `GET /v1/Content/{sid}/ApprovalRequests`).
    pub enum ApprovalStatus {
        /// Twilio received the request.
        Received = "received",
        /// Meta is reviewing it.
        Pending = "pending",
        /// Meta approved it.
        Approved = "approved",
        /// Meta rejected it (`rejection_reason`).
        Rejected = "rejected",
        /// Meta paused it (quality).
        Paused = "paused",
        /// Meta disabled it.
        Disabled = "disabled",
        /// Never submitted.
        Unsubmitted = "unsubmitted",
    }
}

impl ApprovalStatus {
    /// Whether it is Meta's verdict (approved, rejected, paused, disabled) rather than a step
    /// on the way.
    pub const fn is_verdict(self) -> bool {
        matches!(self, Self::Approved | Self::Rejected | Self::Paused | Self::Disabled)
    }
}

/// A content's `types` object as Twilio's Content API holds it: each content type's name
/// (`twilio/text`, `twilio/quick-reply`, `whatsapp/authentication`, ...) and its fields.
pub type Types = serde_json::Map<String, serde_json::Value>;

/// What Twilio's Content API accepts for one content type (its OpenAPI `types` schema, whose
/// objects take no other fields): the fields, those required, and for the arrays of objects
/// (buttons, list items, cards) their fields, required fields and the `type` values allowed.
pub struct TypeSpec {
    /// `twilio/text`, `whatsapp/authentication`, ...
    pub name: &'static str,
    /// Every field it may have.
    pub fields: &'static [&'static str],
    /// The fields it must have.
    pub required: &'static [&'static str],
    /// Its arrays of objects.
    pub items: &'static [ItemSpec],
}

/// An array of objects in a content type (buttons, list items, cards, pages).
pub struct ItemSpec {
    /// The array's field.
    pub field: &'static str,
    /// Every field an item may have.
    pub fields: &'static [&'static str],
    /// The fields an item must have.
    pub required: &'static [&'static str],
    /// The `type` values an item may have (empty: any).
    pub kinds: &'static [&'static str],
}

const CARD_ACTION: &[&str] = &["type", "title", "url", "phone", "id", "code", "webview_size"];
const CARD_ACTION_TYPES: &[&str] = &["URL", "PHONE_NUMBER", "QUICK_REPLY", "COPY_CODE", "VOICE_CALL"];

/// Every content type Twilio's Content API defines, as its OpenAPI describes it.
pub const TYPES: &[TypeSpec] = &[
    TypeSpec { name: "twilio/text", fields: &["body"], required: &["body"], items: &[] },
    TypeSpec { name: "twilio/media", fields: &["body", "media"], required: &["media"], items: &[] },
    TypeSpec {
        name: "twilio/location",
        fields: &["latitude", "longitude", "label", "id", "address"],
        required: &["latitude", "longitude"],
        items: &[],
    },
    TypeSpec {
        name: "twilio/list-picker",
        fields: &["body", "button", "items"],
        required: &["body", "button", "items"],
        items: &[ItemSpec {
            field: "items",
            fields: &["id", "item", "description"],
            required: &["id", "item"],
            kinds: &[],
        }],
    },
    TypeSpec {
        name: "twilio/call-to-action",
        fields: &["body", "actions"],
        required: &["body", "actions"],
        items: &[ItemSpec {
            field: "actions",
            fields: &["type", "title", "url", "phone", "code", "id"],
            required: &["type", "title"],
            kinds: &["URL", "PHONE_NUMBER", "COPY_CODE", "VOICE_CALL", "VOICE_CALL_REQUEST"],
        }],
    },
    TypeSpec {
        name: "twilio/quick-reply",
        fields: &["body", "actions"],
        required: &["body", "actions"],
        items: &[ItemSpec {
            field: "actions",
            fields: &["type", "title", "id"],
            required: &["title"],
            kinds: &["QUICK_REPLY"],
        }],
    },
    TypeSpec {
        name: "twilio/card",
        fields: &["title", "subtitle", "media", "actions"],
        required: &[],
        items: &[ItemSpec {
            field: "actions",
            fields: CARD_ACTION,
            required: &["type", "title"],
            kinds: CARD_ACTION_TYPES,
        }],
    },
    TypeSpec {
        name: "twilio/catalog",
        fields: &["title", "body", "subtitle", "id", "items", "dynamic_items"],
        required: &["body"],
        items: &[ItemSpec {
            field: "items",
            fields: &["id", "section_title", "name", "media_url", "price", "description"],
            required: &[],
            kinds: &[],
        }],
    },
    TypeSpec {
        name: "twilio/carousel",
        fields: &["body", "cards"],
        required: &["body", "cards"],
        items: &[ItemSpec {
            field: "cards",
            fields: &["title", "body", "media", "actions"],
            required: &[],
            kinds: &[],
        }],
    },
    TypeSpec {
        name: "twilio/flows",
        fields: &["body", "button_text", "subtitle", "media_url", "pages", "type"],
        required: &["body", "button_text", "pages", "type"],
        items: &[ItemSpec {
            field: "pages",
            fields: &["id", "next_page_id", "title", "subtitle", "layout"],
            required: &[],
            kinds: &[],
        }],
    },
    TypeSpec {
        name: "twilio/schedule",
        fields: &["id", "title", "timeSlots"],
        required: &["id", "title", "timeSlots"],
        items: &[],
    },
    TypeSpec {
        name: "whatsapp/card",
        fields: &["body", "footer", "media", "header_text", "actions"],
        required: &["body"],
        items: &[ItemSpec {
            field: "actions",
            fields: CARD_ACTION,
            required: &["type", "title"],
            kinds: CARD_ACTION_TYPES,
        }],
    },
    TypeSpec {
        name: "whatsapp/authentication",
        fields: &["add_security_recommendation", "code_expiration_minutes", "actions"],
        required: &["actions"],
        items: &[ItemSpec {
            field: "actions",
            fields: &["type", "copy_code_text"],
            required: &["type", "copy_code_text"],
            kinds: &["COPY_CODE"],
        }],
    },
    TypeSpec {
        name: "whatsapp/flows",
        fields: &[
            "body",
            "button_text",
            "subtitle",
            "media_url",
            "flow_id",
            "flow_token",
            "flow_first_page_id",
            "is_flow_first_page_endpoint",
        ],
        required: &["body", "button_text", "flow_id"],
        items: &[],
    },
];

/// The spec of content type `name`, if Twilio has it.
pub fn type_spec(name: &str) -> Option<&'static TypeSpec> {
    TYPES.iter().find(|spec| spec.name == name)
}

/// What in `types` Twilio's Content API would refuse, or `None`: a type it does not have, a
/// field a type does not have or lacks, a button or item with a field it does not have or lacks,
/// or a button `type` it does not know.
pub fn shape_problem(types: &Types) -> Option<String> {
    if types.is_empty() {
        return Some("give at least one content type, e.g. {\"twilio/text\": {\"body\": ...}}".to_owned());
    }
    for (name, value) in types {
        let Some(spec) = type_spec(name) else {
            let known: Vec<&str> = TYPES.iter().map(|spec| spec.name).collect();
            return Some(format!("{name} is not a Twilio content type ({})", known.join(", ")));
        };
        let Some(fields) = value.as_object() else {
            return Some(format!("{name} must be an object of its fields"));
        };
        if let Some(unknown) = fields.keys().find(|field| !spec.fields.contains(&field.as_str())) {
            return Some(format!("{name} has no field {unknown} (it has {})", spec.fields.join(", ")));
        }
        if let Some(missing) = spec.required.iter().find(|field| fields.get(**field).is_none_or(|v| v.is_null())) {
            return Some(format!("{name} needs {missing}"));
        }
        for ItemSpec { field: array, fields: item_fields, required: item_required, kinds } in spec.items {
            let Some(items) = fields.get(*array) else { continue };
            let Some(items) = items.as_array() else {
                return Some(format!("{name}.{array} must be a list"));
            };
            for (index, item) in items.iter().enumerate() {
                let at = format!("{name}.{array}[{index}]");
                let Some(item) = item.as_object() else {
                    return Some(format!("{at} must be an object"));
                };
                if let Some(unknown) = item.keys().find(|field| !item_fields.contains(&field.as_str())) {
                    return Some(format!("{at} has no field {unknown} (it has {})", item_fields.join(", ")));
                }
                if let Some(missing) = item_required.iter().find(|field| item.get(**field).is_none_or(|v| v.is_null()))
                {
                    return Some(format!("{at} needs {missing}"));
                }
                if let Some(kind) = item.get("type").and_then(|t| t.as_str()) {
                    if !kinds.is_empty() && !kinds.contains(&kind) {
                        return Some(format!("{at}: type {kind} is not one of {}", kinds.join(", ")));
                    }
                }
            }
        }
    }
    None
}

/// The content types WhatsApp lets a business send inside the customer-service window without
/// Meta's approval (Twilio's content type pages): text, media, location, quick replies and
/// call-to-action buttons (at most [`MAX_SESSION_BUTTONS`] each) and list pickers (at most
/// [`MAX_LIST_ITEMS`] items). Cards, carousels, catalogs, flows and authentication need approval.
pub const SESSION_TYPES: &[&str] = &[
    "twilio/text",
    "twilio/media",
    "twilio/location",
    "twilio/quick-reply",
    "twilio/call-to-action",
    "twilio/list-picker",
];

/// Buttons a quick reply or call to action may have when sent in session without approval.
pub const MAX_SESSION_BUTTONS: usize = 3;
/// Items a list picker may have.
pub const MAX_LIST_ITEMS: usize = 10;
/// Quick-reply buttons an approved template may have.
pub const MAX_QUICK_REPLIES: usize = 10;
/// Longest body of a content type WhatsApp accepts.
pub const MAX_BODY_CHARS: usize = 1024;
/// The body Meta gives every authentication template (its code is variable 1).
pub const AUTHENTICATION_BODY: &str = "{{1}} is your verification code.";

/// The content types that can never be submitted for WhatsApp approval: they exist only
/// inside the window.
const SESSION_ONLY_TYPES: &[&str] = &["twilio/list-picker", "twilio/location"];

/// Whether the content is an authentication template (`whatsapp/authentication`).
pub fn is_authentication(types: &Types) -> bool {
    types.contains_key("whatsapp/authentication")
}

/// The `{{...}}` placeholders every string field of the content uses (their inner text,
/// trimmed), plus the code (`1`) of an authentication template, whose body Meta writes.
pub fn placeholders(types: &Types) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for value in types.values() {
        collect_placeholders(value, &mut found);
    }
    if is_authentication(types) {
        found.insert("1".to_owned());
    }
    found
}

fn collect_placeholders(value: &serde_json::Value, found: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::String(text) => found.extend(placeholders_in(text)),
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_placeholders(item, found)),
        serde_json::Value::Object(fields) => fields.values().for_each(|field| collect_placeholders(field, found)),
        _ => {}
    }
}

/// The placeholders of one string: `Hi {{1}}` → `1`.
pub fn placeholders_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        found.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    found
}

/// `text` with each `{{name}}` replaced by its value (unknown ones left as they are).
pub fn fill(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        filled.push_str(&rest[..start]);
        match values.get(after[..end].trim()) {
            Some(value) => filled.push_str(value),
            None => filled.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    filled.push_str(rest);
    filled
}

/// The text a customer reads first: the body of the richest type that has one (an
/// authentication template's is Meta's), or a card's title.
pub fn body(types: &Types) -> String {
    if is_authentication(types) {
        return AUTHENTICATION_BODY.to_owned();
    }
    let text_of = |name: &str, field: &str| types.get(name).and_then(|t| t.get(field)).and_then(|b| b.as_str());
    [
        ("whatsapp/card", "body"),
        ("twilio/card", "title"),
        ("twilio/list-picker", "body"),
        ("twilio/call-to-action", "body"),
        ("twilio/quick-reply", "body"),
        ("twilio/media", "body"),
        ("twilio/text", "body"),
    ]
    .into_iter()
    .find_map(|(name, field)| text_of(name, field))
    .unwrap_or_default()
    .to_owned()
}

fn actions(value: &serde_json::Value, field: &str) -> usize {
    value.get(field).and_then(|a| a.as_array()).map_or(0, Vec::len)
}

/// Why the content may not be sent inside the window without approval, or `None` when it may:
/// every type is one WhatsApp allows in session, within its limits.
pub fn session_refusal(types: &Types) -> Option<String> {
    if types.is_empty() {
        return Some("the content has no types".to_owned());
    }
    for (name, value) in types {
        if !SESSION_TYPES.contains(&name.as_str()) {
            return Some(format!("{name} needs WhatsApp's approval even inside the window"));
        }
        let (limit, count, what) = match name.as_str() {
            "twilio/quick-reply" | "twilio/call-to-action" => {
                (MAX_SESSION_BUTTONS, actions(value, "actions"), "buttons")
            }
            "twilio/list-picker" => (MAX_LIST_ITEMS, actions(value, "items"), "items"),
            _ => continue,
        };
        if count > limit {
            return Some(format!("{name} has {count} {what}; without approval WhatsApp allows {limit}"));
        }
    }
    None
}

/// Why the content cannot be submitted for WhatsApp approval, or `None` when it can.
pub fn submit_refusal(types: &Types) -> Option<String> {
    types
        .keys()
        .find(|name| SESSION_ONLY_TYPES.contains(&name.as_str()))
        .map(|name| format!("{name} is sent only inside the window; WhatsApp does not approve it"))
}

/// What is wrong with a content definition (its `types` and the sample `variables`), as the
/// field at fault and a message; `None` when WhatsApp may approve it: what Twilio accepts
/// ([`shape_problem`]); numbered variables without gaps, each with a sample; bodies within
/// [`MAX_BODY_CHARS`] that (but for authentication, whose body is Meta's) neither start nor end
/// with a variable.
pub fn definition_problem(types: &Types, variables: &BTreeMap<String, String>) -> Option<(&'static str, String)> {
    if let Some(problem) = shape_problem(types) {
        return Some(("types", problem));
    }
    for (name, value) in types {
        if name == "twilio/quick-reply" && actions(value, "actions") > MAX_QUICK_REPLIES {
            return Some(("types", format!("twilio/quick-reply allows at most {MAX_QUICK_REPLIES} buttons")));
        }
        if name == "twilio/list-picker" && actions(value, "items") > MAX_LIST_ITEMS {
            return Some(("types", format!("twilio/list-picker allows at most {MAX_LIST_ITEMS} items")));
        }
        if let Some(body) = value.get("body").and_then(|b| b.as_str()) {
            let chars = body.chars().count();
            if chars > MAX_BODY_CHARS {
                return Some((
                    "types",
                    format!("{name}'s body has {chars} characters; WhatsApp allows {MAX_BODY_CHARS}"),
                ));
            }
            let trimmed = body.trim();
            if !is_authentication(types) && (trimmed.starts_with("{{") || trimmed.ends_with("}}")) {
                return Some((
                    "types",
                    format!("{name}: WhatsApp refuses a variable at the very start or end of the body"),
                ));
            }
        }
    }
    let used = placeholders(types);
    let mut numbers = BTreeSet::new();
    for name in &used {
        match name.parse::<u32>() {
            Ok(n) if n > 0 && name.chars().all(|c| c.is_ascii_digit()) => {
                numbers.insert(n);
            }
            _ => {
                return Some((
                    "types",
                    format!("{{{{{name}}}}} is not a numbered variable; use {{{{1}}}}, {{{{2}}}}, ..."),
                ))
            }
        }
    }
    if let Some(missing) = (1..=numbers.len() as u32).find(|n| !numbers.contains(n)) {
        return Some((
            "types",
            format!("variables are numbered from {{{{1}}}} without gaps; {{{{{missing}}}}} is missing"),
        ));
    }
    if let Some(name) = used.iter().find(|name| variables.get(*name).is_none_or(|v| v.trim().is_empty())) {
        return Some(("variables", format!("{{{{{name}}}}} needs a sample value")));
    }
    if let Some(name) = variables.keys().find(|name| !used.contains(*name)) {
        return Some(("variables", format!("the content uses no variable {{{{{name}}}}}")));
    }
    None
}

/// Why `values` cannot fill the content, or `None`: every variable it uses is given and no
/// other; media URLs, once filled, are http(s) URLs; button URLs too.
pub fn values_problem(types: &Types, values: &BTreeMap<String, String>) -> Option<String> {
    let used = placeholders(types);
    if let Some(unknown) = values.keys().find(|name| !used.contains(*name)) {
        return Some(format!("the content has no variable {{{{{unknown}}}}}"));
    }
    if let Some(missing) = used.iter().find(|name| values.get(*name).is_none_or(|v| v.trim().is_empty())) {
        return Some(format!("the content needs a value for {{{{{missing}}}}}"));
    }
    for (name, value) in types {
        let media = value.get("media").and_then(|m| m.as_array()).into_iter().flatten();
        let urls = value
            .get("actions")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter_map(|action| action.get("url"));
        for url in media.chain(urls).filter_map(|u| u.as_str()).filter(|u| u.contains("{{")) {
            let filled = fill(url, values);
            let scheme_ok = filled.starts_with("https://") || filled.starts_with("http://");
            if !scheme_ok || filled.chars().any(char::is_whitespace) {
                return Some(format!("{name}: {url} filled in is {filled:?}, not an http(s) URL"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn types(value: serde_json::Value) -> Types {
        value.as_object().unwrap().clone()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn variables_come_from_every_field_and_authentication_has_its_code() {
        let card = types(json!({"twilio/card": {"title": "Hi {{1}}", "media": ["https://cdn.example.com/{{2}}.jpg"],
            "actions": [{"type": "URL", "title": "Track", "url": "https://example.com/t/{{3}}"}]}}));
        assert_eq!(placeholders(&card), ["1", "2", "3"].map(String::from).into());
        let otp =
            types(json!({"whatsapp/authentication": {"actions": [{"type": "COPY_CODE", "copy_code_text": "Copy"}]}}));
        assert_eq!(placeholders(&otp), ["1".to_owned()].into());
        assert_eq!(body(&otp), AUTHENTICATION_BODY);
        assert_eq!(fill(&body(&otp), &map(&[("1", "482913")])), "482913 is your verification code.");
    }

    #[test]
    fn definitions_are_checked_as_whatsapp_would() {
        let text = |body: &str| types(json!({"twilio/text": {"body": body}}));
        assert_eq!(definition_problem(&text("Hi {{1}}, it ships."), &map(&[("1", "Ana")])), None);
        assert!(definition_problem(&text("{{1}} ships today"), &map(&[("1", "Ana")])).unwrap().1.contains("start"));
        assert!(definition_problem(&text("Hi {{2}}, ok"), &map(&[("2", "Ana")]))
            .unwrap()
            .1
            .contains("{{1}} is missing"));
        assert_eq!(definition_problem(&text("Hi {{1}}, ok"), &map(&[])).unwrap().0, "variables");
        assert_eq!(definition_problem(&text("Hi {{1}}, ok"), &map(&[("1", "A"), ("2", "B")])).unwrap().0, "variables");
        assert!(definition_problem(&types(json!({"twilio/fax": {}})), &map(&[])).unwrap().1.contains("not a Twilio"));
        // Twilio's schema takes no other fields, in a type or in its buttons.
        assert!(definition_problem(
            &text("Hi {{1}}.").into_iter().chain(types(json!({"twilio/text": {"body": "x", "footer": "y"}}))).collect(),
            &map(&[])
        )
        .unwrap()
        .1
        .contains("no field footer"));
        let bad_button =
            types(json!({"twilio/quick-reply": {"body": "Pick", "actions": [{"title": "Yes", "url": "https://x"}]}}));
        assert!(definition_problem(&bad_button, &map(&[])).unwrap().1.contains("actions[0] has no field url"));
        let bad_kind =
            types(json!({"twilio/call-to-action": {"body": "Go", "actions": [{"type": "WEBSITE", "title": "Go"}]}}));
        assert!(definition_problem(&bad_kind, &map(&[])).unwrap().1.contains("type WEBSITE"));
        assert!(definition_problem(&types(json!({"twilio/quick-reply": {"body": "Pick"}})), &map(&[])).is_some());
        // Meta's authentication body starts with the code: accepted.
        let otp = types(json!({"twilio/text": {"body": "{{1}} is your verification code"},
            "whatsapp/authentication": {"actions": [{"type": "COPY_CODE", "copy_code_text": "Copy code"}]}}));
        assert_eq!(definition_problem(&otp, &map(&[("1", "123456")])), None);
    }

    #[test]
    fn session_content_is_what_whatsapp_allows_without_approval() {
        let buttons =
            |n: usize| (0..n).map(|i| json!({"title": format!("b{i}"), "id": format!("{i}")})).collect::<Vec<_>>();
        assert_eq!(
            session_refusal(&types(json!({"twilio/quick-reply": {"body": "Pick", "actions": buttons(3)}}))),
            None
        );
        assert!(
            session_refusal(&types(json!({"twilio/quick-reply": {"body": "Pick", "actions": buttons(4)}}))).is_some()
        );
        assert_eq!(
            session_refusal(&types(json!({"twilio/list-picker": {"body": "b", "button": "x", "items": buttons(10)}}))),
            None
        );
        assert!(session_refusal(&types(json!({"twilio/card": {"title": "t"}}))).unwrap().contains("approval"));
        assert!(session_refusal(&types(json!({"whatsapp/authentication": {"actions": []}}))).is_some());
        assert!(submit_refusal(&types(json!({"twilio/list-picker": {}}))).is_some());
        assert_eq!(submit_refusal(&types(json!({"twilio/quick-reply": {}}))), None);
    }

    #[test]
    fn values_fill_every_variable_and_media_stays_http() {
        let media = types(json!({"twilio/media": {"body": "Your invoice {{1}}", "media": ["{{2}}"]}}));
        assert_eq!(values_problem(&media, &map(&[("1", "A-1"), ("2", "https://cdn.example.com/a.pdf")])), None);
        assert!(values_problem(&media, &map(&[("1", "A-1"), ("2", "ftp://x/a.pdf")])).unwrap().contains("http(s)"));
        assert!(values_problem(&media, &map(&[("1", "A-1")])).unwrap().contains("{{2}}"));
        assert!(values_problem(&media, &map(&[("1", "A"), ("2", "https://x"), ("3", "z")]))
            .unwrap()
            .contains("no variable"));
    }
}
