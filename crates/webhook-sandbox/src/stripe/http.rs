//! What every Stripe endpoint shares: the API key check (Bearer, or HTTP Basic with the key as
//! the user name), Stripe's error bodies, and the decoded query.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine;

use crate::records::stripe::query::StripeError;
use crate::state::SandboxState;

/// Stripe's answer to a request without a key.
const NO_KEY: &str = "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.";

impl ResponseError for StripeError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.body())
    }
}

/// Accepts only `SandboxConfig::stripe_api_key`; a wrong key is named masked, as Stripe does.
pub(crate) fn authorize(state: &SandboxState, req: &HttpRequest) -> Result<(), StripeError> {
    let header = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    let (scheme, credentials) = header.split_once(' ').unwrap_or((header, ""));
    let credentials = credentials.trim();
    let key = if scheme.eq_ignore_ascii_case("bearer") {
        credentials.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        // `curl -u sk_…:`: the key is the user name, the password is empty.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        decoded
            .split_once(':')
            .map_or(decoded.as_str(), |(user, _)| user)
            .to_owned()
    } else {
        String::new()
    };
    if key.is_empty() {
        return Err(StripeError::Unauthorized(NO_KEY.into()));
    }
    if key != state.config().stripe_api_key {
        return Err(StripeError::Unauthorized(format!(
            "Invalid API Key provided: {}",
            mask_key(&key)
        )));
    }
    Ok(())
}

/// A key as Stripe shows it in errors: its kind prefix (`sk_test_`, `rk_live_`, `tok_`) and
/// its last four characters, the rest as `*`.
pub(crate) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let words: Vec<&str> = key.split('_').collect();
    let prefix_len = match words.as_slice() {
        [kind, mode, _, ..]
            if matches!(*mode, "test" | "live") && kind.chars().all(|c| c.is_ascii_lowercase()) =>
        {
            kind.len() + mode.len() + 2
        }
        [kind, _, ..] if !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase()) => kind.len() + 1,
        _ => 0,
    };
    let rest = chars.len() - prefix_len;
    let shown = if rest > 4 { 4 } else { 0 };
    let mut masked: String = chars[..prefix_len].iter().collect();
    masked.extend(std::iter::repeat_n('*', rest - shown));
    masked.extend(&chars[chars.len() - shown..]);
    masked
}

/// The query's pairs, percent-decoded, repeated keys kept (`types[]=a&types[]=b`).
pub(crate) fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, StripeError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| StripeError::Invalid {
            message: format!("Invalid query string: {e}"),
            param: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_like_stripe() {
        assert_eq!(
            mask_key("sk_test_wrongwrongwrong1234"),
            "sk_test_***************1234"
        );
        assert_eq!(mask_key("rk_live_abcdefgh"), "rk_live_****efgh");
        assert_eq!(mask_key("tok_abcdefgh"), "tok_****efgh");
        assert_eq!(mask_key("undefined"), "*****ined");
        assert_eq!(mask_key("sk_test_ab"), "sk_test_**");
        assert_eq!(mask_key("abc"), "***");
        assert!(!mask_key("sk_test_secretsecret9876").contains("secret"));
    }
}
