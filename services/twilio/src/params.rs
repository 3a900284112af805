//! A webhook's parameters, from a form body or a JSON body, in the order they were sent.
//! Repeated names are kept (the signature covers every value).

use std::collections::HashMap;

/// Why a body could not be read as parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsError {
    /// A form body that is not UTF-8 text.
    FormNotUtf8,
    /// A JSON body that does not parse, with the parser's message.
    JsonInvalid(String),
    /// A JSON body that parses but is not an object.
    JsonNotObject,
}

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FormNotUtf8 => write!(f, "the form body is not UTF-8 text"),
            Self::JsonInvalid(message) => write!(f, "the JSON body does not parse: {message}"),
            Self::JsonNotObject => write!(f, "the JSON body must be an object of parameters"),
        }
    }
}

impl std::error::Error for ParamsError {}

/// Parameters in the order they were sent.
pub type Params = Vec<(String, String)>;

/// Parses an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> Result<Params, ParamsError> {
    std::str::from_utf8(body).map_err(|_| ParamsError::FormNotUtf8)?;
    Ok(form_urlencoded::parse(body).map(|(name, value)| (name.into_owned(), value.into_owned())).collect())
}

/// Parses a JSON object body into parameters: strings as they are, numbers and booleans as
/// their JSON text, `null` as empty, nested arrays and objects as compact JSON text.
pub fn parse_json(body: &[u8]) -> Result<Params, ParamsError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| ParamsError::JsonInvalid(err.to_string()))?;
    let serde_json::Value::Object(object) = value else {
        return Err(ParamsError::JsonNotObject);
    };
    Ok(object
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect())
}

/// The parameters by name (the last value of a repeated name wins), for field lookup.
pub(crate) fn by_name(params: &[(String, String)]) -> HashMap<&str, &str> {
    params.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_keep_order_repeats_and_decoding() {
        let params = parse_form(b"B=2&A=x%20y+z&B=1&Empty=").unwrap();
        let expected: Params = [("B", "2"), ("A", "x y z"), ("B", "1"), ("Empty", "")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(params, expected);
        assert_eq!(parse_form(b"\xff\xfe=1"), Err(ParamsError::FormNotUtf8));
    }

    #[test]
    fn json_values_become_text() {
        let params = parse_json(br#"{"A":"x","N":3,"T":true,"Z":null,"O":{"k":[1]}}"#).unwrap();
        let map = by_name(&params);
        assert_eq!(map["A"], "x");
        assert_eq!(map["N"], "3");
        assert_eq!(map["T"], "true");
        assert_eq!(map["Z"], "");
        assert_eq!(map["O"], r#"{"k":[1]}"#);
        assert_eq!(parse_json(b"[1]"), Err(ParamsError::JsonNotObject));
        assert!(matches!(parse_json(b"{"), Err(ParamsError::JsonInvalid(_))));
    }
}
