//! What every Lago endpoint shares: its error kinds (`api_errors.rb`; the HTTP bodies are in
//! `crate::lago`), how Rails reads the parameters, and Lago's time formats.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Lago's API errors (`api_errors.rb`).
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum LagoError {
    #[error("missing or unknown API key")]
    Unauthorized,
    /// 400 `BadRequest: <message>`: the root key is missing or the body is not JSON.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 404 with code `<resource>_not_found`.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 422 `validation_errors` with `{field: [code]}`.
    #[error("validation failed on {0}: {1}")]
    Validation(&'static str, &'static str),
}

/// The object under `root` (`params.require(:customer)`): missing, not an object or empty is a 400.
pub(crate) fn require_root(body: &[u8], root: &str) -> Result<Map<String, Value>, LagoError> {
    let missing = || LagoError::BadRequest(format!("param is missing or the value is empty: {root}"));
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(missing());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| LagoError::BadRequest("Error occurred while parsing request parameters".into()))?;
    match value.get(root) {
        Some(Value::Object(map)) if !map.is_empty() => Ok(map.clone()),
        _ => Err(missing()),
    }
}

/// A scalar parameter as Rails sees it (`to_s`), stripped; `None` when absent or null.
pub(crate) fn param_str(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key)? {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// ISO 4217 shape (Lago checks a fixed list; any three capitals will do here).
pub(crate) fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Lago's timestamp format: ISO 8601 in UTC, whole seconds.
pub(crate) fn iso(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What `Time.zone.parse` accepts in practice from API clients: RFC 3339, a naive date-time
/// (taken as UTC) or a bare date (midnight UTC).
pub(crate) fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    let text = value.as_str()?.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn require_root_mirrors_params_require() {
        assert!(require_root(br#"{"customer":{"external_id":"a"}}"#, "customer").is_ok());
        for body in [&b""[..], b"{}", br#"{"customer":{}}"#, br#"{"customer":"x"}"#] {
            assert_eq!(
                require_root(body, "customer"),
                Err(LagoError::BadRequest(
                    "param is missing or the value is empty: customer".into()
                ))
            );
        }
        assert!(matches!(
            require_root(b"{", "customer"),
            Err(LagoError::BadRequest(_))
        ));
    }

    #[test]
    fn parse_time_accepts_common_forms() {
        let midnight = "2030-01-02T00:00:00Z";
        for text in [
            "2030-01-02T00:00:00Z",
            "2030-01-02T01:00:00+01:00",
            "2030-01-02 00:00:00",
            "2030-01-02",
        ] {
            assert_eq!(
                parse_time(&json!(text)).map(iso).as_deref(),
                Some(midnight),
                "{text}"
            );
        }
        assert_eq!(parse_time(&json!("yesterday")), None);
        assert_eq!(parse_time(&json!(5)), None);
    }
}
