//! Credentials out of URLs, before a URL is shown anywhere: every log line, error and CLI
//! message that shows a configured URL passes it through [`url`] (or a library's error text
//! through [`scrub`]).

use url::Url;

use crate::url_list;

/// What a hidden credential is shown as.
pub const MASK: &str = "***";

/// `raw` (a URL, or a comma-separated list of them, well-formed or not) made fit to show in a
/// log line, an error or a terminal:
///
/// - a URL that parses: its password becomes `***` (the user name stays), and so does the value
///   of any query parameter that carries a secret (`password=`, `sslpassword=`, `…token=`,
///   `…secret=`, `…key=`);
/// - anything else (a missing `//`, a password with an unencoded `/`, a bad port, …): everything
///   between the start of the authority (after `scheme://`, else after `scheme:`, else the
///   start) and the last `@` becomes `***`, user name included. Without an `@` there is no
///   user information to hide and the text is returned as it is.
///
/// A parsed URL with an `@` after its authority (`amqp://u:1/x@h`: the password's tail landed
/// in the path) is treated as unparsable, so that tail is hidden too.
pub fn url(raw: &str) -> String {
    let parts: Vec<String> = url_list::split_list(raw).into_iter().map(one).collect();
    if parts.is_empty() {
        return raw.trim().to_owned();
    }
    parts.join(",")
}

/// [`url`] of a URL kept as a secret (`DATABASE_URL`, `AMQP_URL` in the settings).
pub fn secret_url(secret: &secrecy::SecretString) -> String {
    use secrecy::ExposeSecret;
    url(secret.expose_secret())
}

/// `text` (typically a library's error message about the URL `raw`) with `raw` and each of its
/// URLs replaced by their [`url`] form, and with each password they hold (as written and
/// percent-decoded, when at least 4 characters long) replaced by `***`.
pub fn scrub(text: &str, raw: &str) -> String {
    let raw = raw.trim();
    if raw.is_empty() {
        return text.to_owned();
    }
    let mut out = text.replace(raw, &url(raw));
    for element in url_list::split_list(raw) {
        out = out.replace(element, &one(element));
        for secret in secrets(element) {
            if secret.chars().count() >= 4 {
                out = out.replace(&secret, MASK);
            }
        }
    }
    out
}

/// One URL, redacted. The text is kept as written (no normalisation) but for what is hidden.
fn one(raw: &str) -> String {
    let parsed = parse_with_authority(raw).is_some();
    let start = authority_start(raw);
    // When `raw` parses, its last `@` ends its user information (none may follow the host).
    let (mut out, rest_from) = match raw[start..].rfind('@') {
        Some(at) => {
            let at = start + at;
            let userinfo = &raw[start..at];
            let kept = match userinfo.split_once(':') {
                Some((user, _)) if parsed => format!("{user}:{MASK}"),
                None if parsed => userinfo.to_owned(),
                _ => MASK.to_owned(),
            };
            (format!("{}{kept}", &raw[..start]), at)
        }
        None => (raw[..start].to_owned(), start),
    };
    let rest = &raw[rest_from..];
    match rest.find('?').filter(|_| parsed) {
        Some(q) => {
            let (before, query) = rest.split_at(q + 1);
            let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
            out.push_str(before);
            out.push_str(&mask_query(query));
            out.push_str(fragment);
        }
        None => out.push_str(rest),
    }
    out
}

/// `raw` parsed, if it is a URL with an authority (`scheme://…`) and no `@` after it.
fn parse_with_authority(raw: &str) -> Option<Url> {
    let parsed = Url::parse(raw).ok()?;
    if parsed.cannot_be_a_base() || !raw[url_list::scheme_len(raw)..].starts_with("://") {
        return None;
    }
    let after_authority = [Some(parsed.path()), parsed.query(), parsed.fragment()];
    if after_authority.into_iter().flatten().any(|s| s.contains('@')) {
        return None;
    }
    Some(parsed)
}

/// Byte offset where the authority (or what stands in its place) begins: after `scheme://`,
/// else after `scheme:`, else 0.
fn authority_start(raw: &str) -> usize {
    let scheme = url_list::scheme_len(raw);
    if scheme == 0 {
        return 0;
    }
    let rest = &raw[scheme..];
    if rest.starts_with("://") {
        scheme + 3
    } else if rest.starts_with(':') {
        scheme + 1
    } else {
        0
    }
}

/// Whether a query parameter's value is a secret, by its name.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(&percent_decode(key)) => format!("{key}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The secrets a URL holds, as written and decoded: its password (or, unparsable, its whole
/// user information and the part after its first `:`) and its secret query values.
fn secrets(raw: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut push = |s: &str| {
        if !s.is_empty() {
            found.push(s.to_owned());
            let decoded = percent_decode(s);
            if decoded != s {
                found.push(decoded);
            }
        }
    };
    match parse_with_authority(raw) {
        Some(parsed) => {
            if let Some(password) = parsed.password() {
                push(password);
            }
            for pair in parsed.query().unwrap_or("").split('&') {
                if let Some((key, value)) = pair.split_once('=')
                    && is_secret_key(&percent_decode(key))
                {
                    push(value);
                }
            }
        }
        None => {
            let start = authority_start(raw);
            if let Some(at) = raw[start..].rfind('@') {
                let userinfo = &raw[start..start + at];
                push(userinfo);
                if let Some((_, password)) = userinfo.split_once(':') {
                    push(password);
                }
            }
        }
    }
    // Longest first, so that a secret that contains another is replaced whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `shown` has no trace of any of `secrets`.
    fn hides(shown: &str, secrets: &[&str]) {
        for s in secrets {
            assert!(!shown.contains(s), "{shown:?} shows {s:?}");
        }
    }

    #[test]
    fn a_well_formed_url_keeps_everything_but_its_password() {
        assert_eq!(
            url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            url("postgres://webhooks:s3cret@db.internal:5432/webhooks?sslmode=require"),
            "postgres://webhooks:***@db.internal:5432/webhooks?sslmode=require"
        );
        assert_eq!(
            url("amqps://user:pw@rabbit:5671/vhost?heartbeat=30"),
            "amqps://user:***@rabbit:5671/vhost?heartbeat=30"
        );
    }

    #[test]
    fn a_secret_url_is_redacted_like_any_other() {
        let secret = secrecy::SecretString::from("amqp://guest:hunter22@rabbit:5672/%2f".to_string());
        assert_eq!(secret_url(&secret), "amqp://guest:***@rabbit:5672/%2f");
    }

    #[test]
    fn a_special_scheme_without_its_double_slash_is_hidden_to_the_at() {
        // The URL parser reads `http:u:p@h` as `http://u:p@h`; what is shown stays as written,
        // so the whole user information is hidden, as for any URL without its `//`.
        assert_eq!(url("http:admin:hunter22@keycloak:8080"), "http:***@keycloak:8080");
    }

    #[test]
    fn a_secret_query_right_after_an_empty_authority_is_hidden() {
        assert_eq!(url("amqp://?password=hunter22"), "amqp://?password=***");
    }

    #[test]
    fn a_url_without_credentials_is_unchanged() {
        for raw in [
            "postgres://postgres@127.0.0.1:5432/webhooks",
            "http://keycloak.keycloak.svc:8080",
            "amqp://rabbit:5672/%2f",
            "postgres:///webhooks?host=/var/run/postgresql",
        ] {
            assert_eq!(url(raw), raw);
        }
        assert_eq!(url(""), "");
    }

    #[test]
    fn a_missing_double_slash_hides_everything_up_to_the_at() {
        let shown = url("amqp:guest:PASSWORD@host:5672/%2f");
        assert_eq!(shown, "amqp:***@host:5672/%2f");
        let shown = url("postgres:webhooks:PASSWORD@db/webhooks");
        assert_eq!(shown, "postgres:***@db/webhooks");
        // No scheme at all.
        assert_eq!(url("guest:PASSWORD@host:5672"), "guest:***@host:5672");
        assert_eq!(url("PASSWORD@host"), "***@host");
    }

    #[test]
    fn passwords_with_at_colon_slash_or_comma_are_hidden_whole() {
        let shown = url("amqp://user:p@ss:w@rd@host:5672/%2f");
        hides(&shown, &["p@ss", "w@rd", "ss:w", "p%40ss"]);
        assert!(shown.ends_with("@host:5672/%2f"), "{shown}");
        assert!(shown.starts_with("amqp://user:***@"), "{shown}");

        // An unencoded '/' ends the authority early: unparsable (port "pa"), hidden to the '@'.
        let shown = url("amqp://user:pa/ss@host:5672/%2f");
        assert_eq!(shown, "amqp://***@host:5672/%2f");
        // … or parsable with the password's tail in the path: hidden all the same.
        let shown = url("amqp://user:1234/secret@host:5672/%2f");
        hides(&shown, &["1234", "secret"]);
        assert!(shown.ends_with("@host:5672/%2f"), "{shown}");

        let shown = url("amqp://user:pa,ss@host/%2f");
        assert_eq!(shown, "amqp://user:***@host/%2f");
        let shown = url("amqp://user:pa?ss#x@host/%2f");
        hides(&shown, &["pa?ss", "ss#x"]);
    }

    #[test]
    fn percent_encoded_passwords_are_hidden_in_both_forms() {
        let shown = url("amqp://user:p%40ss%3Aword@host/%2f");
        assert_eq!(shown, "amqp://user:***@host/%2f");
        hides(&shown, &["p%40ss", "p@ss", "word"]);
        // Invalid percent-encoding is still a password.
        let shown = url("amqp://user:%zzsecret@host/%2f");
        hides(&shown, &["secret"]);
        // Non-ASCII passwords.
        let shown = url("postgres://u:pässwörd@h/db");
        hides(&shown, &["pässwörd", "p%C3%A4ssw"]);
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        let shown = url("postgres://u@h/db?sslmode=require&password=hunter22&application_name=x");
        assert_eq!(
            shown,
            "postgres://u@h/db?sslmode=require&password=***&application_name=x"
        );
        let shown = url("http://lago:3000/?api_key=abc123&Access%5FToken=t0k3n");
        hides(&shown, &["abc123", "t0k3n"]);
    }

    #[test]
    fn every_node_of_a_list_is_redacted() {
        let shown = url("amqp://u:one111@h1:5672/%2f, amqp://u:two222@h2:5672/%2f,amqps://h3");
        assert_eq!(
            shown,
            "amqp://u:***@h1:5672/%2f,amqp://u:***@h2:5672/%2f,amqps://h3"
        );
        // A node without its "//" is no list boundary (a password may hold ",x:"): it is
        // hidden as part of the node before it.
        let shown = url("amqp://u:one111@h1:5672/%2f,amqp:u:three333@h3");
        assert_eq!(shown, "amqp://***@h3");
    }

    #[test]
    fn scrub_cleans_a_library_error_that_quotes_the_url() {
        let raw = "amqp:guest:PASSWORD@host:5672/%2f";
        let lapin = format!("Invalid URL: '{raw}'");
        assert_eq!(scrub(&lapin, raw), "Invalid URL: 'amqp:***@host:5672/%2f'");
        // The password alone, decoded, in some other message.
        let raw = "amqp://user:p%40ssw0rd@host/%2f";
        let shown = scrub("auth failed for p@ssw0rd and p%40ssw0rd", raw);
        assert_eq!(shown, "auth failed for *** and ***");
        assert_eq!(scrub("nothing to hide", ""), "nothing to hide");
    }

    #[test]
    fn redaction_never_shows_a_generated_password() {
        // Passwords of every printable ASCII character, in well-formed and malformed URLs.
        let specials = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
        for (i, c) in specials.chars().enumerate() {
            let password = format!("Secr{c}et{i:02}X");
            let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
            for raw in [
                format!("amqp://guest:{password}@rabbit:5672/%2f"),
                format!("amqp:guest:{password}@rabbit:5672/%2f"),
                format!("amqp://guest:{encoded}@rabbit:5672/%2f"),
                format!("postgres://u:{password}@db:5432/x"),
                format!("amqp://a:b@h1/%2f,amqp://guest:{password}@rabbit:5672/%2f"),
            ] {
                let shown = url(&raw);
                for secret in [&password[..], &encoded[..], "Secr", "X"] {
                    if secret == "X" {
                        assert!(!shown.contains(&format!("{i:02}X")), "{raw} -> {shown}");
                    } else {
                        assert!(!shown.contains(secret), "{raw} -> {shown} shows {secret:?}");
                    }
                }
            }
        }
    }
}
