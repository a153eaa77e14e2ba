//! The configured URLs (`AMQP_URL`, `DATABASE_URL`, `KEYCLOAK_URL`, `LAGO_API_URL`): checked at
//! start with real parsers, so that a malformed one stops the binary with a message instead of
//! a reconnect loop. The messages show a URL only through [`crate::redact::url`]: they never
//! echo a password.

use std::str::FromStr;

use url::Url;

use crate::redact;
pub use crate::url_list::{scheme_len, split_list};

/// The form an `AMQP_URL` node must have.
const AMQP_FORM: &str = "amqp://USER:PASSWORD@HOST:5672/VHOST (amqps:// for TLS; the default vhost / is %2f)";
/// How to list a cluster's nodes in `AMQP_URL`.
const LIST_HINT: &str = "In AMQP_URL a comma separates whole URLs, one per node: \
     amqp://USER:PASSWORD@HOST1:5672/VHOST,amqp://USER:PASSWORD@HOST2:5672/VHOST";
/// The form of `DATABASE_URL`.
const POSTGRES_FORM: &str = "postgres://USER:PASSWORD@HOST:5432/DATABASE";
/// How to write special characters of a password.
const ENCODE_HINT: &str = "percent-encode special characters of the password: @ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25";

/// Checks `AMQP_URL`: one `amqp://` or `amqps://` URL, or a comma-separated list of them (one
/// per node of a cluster), each accepted by the AMQP client's own parser. The error says what
/// is wrong and how to write it; URLs in it are redacted.
pub fn check_amqp(raw: &str) -> Result<(), String> {
    let nodes = split_list(raw);
    if nodes.is_empty() {
        return Err(format!("it is empty; write it as {AMQP_FORM}"));
    }
    for (i, node) in nodes.iter().enumerate() {
        check_amqp_node(node).map_err(|reason| {
            let which = if nodes.len() > 1 {
                format!("node {} of {} ", i + 1, nodes.len())
            } else {
                String::new()
            };
            let list_hint = if node.contains(',') && !reason.contains(LIST_HINT) {
                format!(". {LIST_HINT}")
            } else {
                String::new()
            };
            format!("{which}\"{}\": {reason}{list_hint}", redact::url(node))
        })?;
    }
    Ok(())
}

fn check_amqp_node(node: &str) -> Result<(), String> {
    let url = parse_with_authority(node, &["amqp", "amqps"], AMQP_FORM)?;
    match url.host() {
        None => return Err(format!("it names no host; write it as {AMQP_FORM}")),
        Some(url::Host::Domain("")) => return Err(format!("it names no host; write it as {AMQP_FORM}")),
        // The AMQP client reads only domain names from a URL and would connect to localhost.
        Some(url::Host::Ipv6(_)) => {
            return Err(
                "an IPv6 address is not supported by the AMQP client (it would connect to \
                        localhost instead): use a host name that resolves to it"
                    .into(),
            );
        }
        Some(_) => {}
    }
    // In AMQP_URL a comma separates nodes: one in the host, vhost or query is a list written
    // wrong (`amqp://u:p@h1,h2/…`, or a node without its `//`), not a name.
    let after_userinfo = [url.host_str(), Some(url.path()), url.query()];
    if after_userinfo.into_iter().flatten().any(|s| s.contains(',')) {
        return Err(format!(
            "it has a \",\" after its user name and password. {LIST_HINT} (percent-encode a \
             comma that belongs to the vhost as %2C)"
        ));
    }
    // The parser the connection will use (lapin's): query parameters (heartbeat, frame_max,
    // connection_timeout, auth_mechanism, …) and the percent-encoding of each part.
    amq_protocol_uri::AMQPUri::from_str(node)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the AMQP client refuses it ({}): check its query parameters (heartbeat, frame_max, \
                 channel_max and connection_timeout take whole numbers; auth_mechanism is plain, \
                 amqplain, external, anonymous or rabbit-cr-demo) and its percent-encoding",
                redact::scrub(&e, node)
            )
        })
}

/// Checks `DATABASE_URL`: a `postgres://` (or `postgresql://`) URL. The host may be empty (a
/// Unix socket named with `?host=/path`).
pub fn check_postgres(raw: &str) -> Result<(), String> {
    let raw = raw.trim();
    parse_with_authority(raw, &["postgres", "postgresql"], POSTGRES_FORM)
        .map(|_| ())
        .map_err(|reason| format!("\"{}\": {reason}", redact::url(raw)))
}

/// Checks the base URL of an HTTP API (Keycloak, Lago): `http://` or `https://`, a host, no
/// credentials (`credentials` says where they go instead), no query or fragment.
pub fn check_http(raw: &str, example: &str, credentials: &str) -> Result<(), String> {
    let raw = raw.trim();
    let form = format!("a base URL such as {example}");
    let shown = redact::url(raw);
    let url = parse_with_authority(raw, &["http", "https"], &form)
        .map_err(|reason| format!("\"{shown}\": {reason}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "\"{shown}\" holds credentials; remove them from the URL and set {credentials} instead"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "\"{shown}\" has a query or fragment (?… or #…); give {form}"
        ));
    }
    Ok(())
}

/// Parses `raw` as a URL with one of `schemes` and an authority (`scheme://…`). The reasons
/// never quote `raw`.
fn parse_with_authority(raw: &str, schemes: &[&str], form: &str) -> Result<Url, String> {
    let wanted = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let url = Url::parse(raw).map_err(|e| {
        let hint = match e {
            url::ParseError::RelativeUrlWithoutBase => format!("it does not start with {wanted}"),
            url::ParseError::InvalidPort => {
                format!("its port is not a number from 0 to 65535 (or its password has an unencoded / ? or #: {ENCODE_HINT})")
            }
            other => format!("it is not a valid URL ({other})"),
        };
        format!("{hint}; write it as {form}")
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("it must start with {wanted}; write it as {form}"));
    }
    if url.cannot_be_a_base() || !raw[scheme_len(raw)..].starts_with("://") {
        return Err(format!(
            "the \"//\" after \"{}:\" is missing; write it as {form}",
            url.scheme()
        ));
    }
    let after_authority = [Some(url.path()), url.query(), url.fragment()];
    if after_authority.into_iter().flatten().any(|s| s.contains('@')) {
        return Err(format!(
            "it has an \"@\" after its host, so part of it would be read as the host or path \
             (an unencoded / ? or # in the password?); write it as {form} and {ENCODE_HINT}"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_only_before_a_scheme() {
        assert_eq!(
            split_list("amqp://a@h1/%2f, amqp://b@h2/%2f,"),
            ["amqp://a@h1/%2f", "amqp://b@h2/%2f"]
        );
        assert_eq!(split_list("amqp://u:pa,ss@h/%2f"), ["amqp://u:pa,ss@h/%2f"]);
        assert_eq!(split_list(" amqp://h "), ["amqp://h"]);
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn a_comma_splits_only_before_a_real_scheme() {
        // ",://" is not "scheme://": a password may hold it.
        assert_eq!(split_list("amqp://u:a,://b@h/%2f"), ["amqp://u:a,://b@h/%2f"]);
        assert_eq!(scheme_len("amqp://h"), 4);
        assert_eq!(scheme_len("svn+ssh.x-y://h"), 11);
        assert_eq!(scheme_len("1amqp://h"), 0, "a scheme starts with a letter");
        assert_eq!(scheme_len("+x://h"), 0);
        assert_eq!(scheme_len("am qp://h"), 0);
        assert_eq!(scheme_len("amqp"), 0, "no ':'");
    }

    #[test]
    fn the_list_hint_is_given_once_and_only_for_a_node_with_a_comma() {
        let hint = "a comma separates whole URLs";
        let err = check_amqp("amqp://guest:x@host:5672/%2f?heartbeat=often").unwrap_err();
        assert!(!err.contains(hint), "{err}");
        let err = check_amqp("amqp://guest:x@h1,h2/%2f").unwrap_err();
        assert_eq!(err.matches(hint).count(), 1, "{err}");
    }

    #[test]
    fn good_amqp_urls_pass() {
        for raw in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqps://user:p%40ss@rabbit.internal:5671/billing?heartbeat=30",
            "amqp://rabbit",
            "amqp://u:pw@r1:5672/%2f,amqp://u:pw@r2:5672/%2f",
            "amqp://user:p@ss@rabbit:5672/%2f",
        ] {
            check_amqp(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        }
    }

    #[test]
    fn malformed_amqp_urls_are_refused_without_their_password() {
        let cases = [
            (
                "amqp:guest:hunter2xyz@host:5672/%2f",
                "\"//\" after \"amqp:\" is missing",
            ),
            (
                "http://guest:hunter2xyz@host:5672/",
                "must start with amqp:// or amqps://",
            ),
            ("guest:hunter2xyz@host", "must start with amqp://"),
            ("host:5672", "must start with amqp://"),
            ("hunter2xyz@host", "does not start with amqp://"),
            ("amqp://guest:hunter2xyz@host:99999/%2f", "port"),
            ("amqp://guest:hunter/2xyz@host:5672/%2f", "port"),
            (
                "amqp://guest:1234/hunter2xyz@host:5672/%2f",
                "\"@\" after its host",
            ),
            (
                "amqp://guest:hunter2xyz@host:5672/%2f?heartbeat=often",
                "AMQP client refuses it",
            ),
            ("amqp://guest:hunter2xyz@[::1]:5672/%2f", "IPv6"),
            ("amqp://guest:hunter2xyz@:5672/%2f", "host"),
            (
                "amqp://guest:hunter2xyz@h1:5672,h2:5672/%2f",
                "a comma separates whole URLs",
            ),
            (
                "amqp://u:p@h1/%2f,amqp://guest:hunter2xyz@h2:port/%2f",
                "node 2 of 2",
            ),
            (
                "amqp://u:p@h1/%2f,amqp:guest:hunter2xyz@h2/%2f",
                "a comma separates whole URLs",
            ),
            (
                "amqp://guest:hunter2xyz@h1/%2f,h2/%2f",
                "a comma separates whole URLs",
            ),
            (
                "amqp://guest:hunter2xyz@h1,h2/%2f",
                "a comma separates whole URLs",
            ),
            ("", "empty"),
        ];
        for (raw, want) in cases {
            let err = check_amqp(raw).expect_err(raw);
            assert!(err.contains(want), "{raw}: {err}");
            assert!(!err.contains("hunter") && !err.contains("2xyz"), "{raw}: {err}");
            assert!(
                err.contains("amqp://USER:PASSWORD@HOST") || err.contains("IPv6") || err.contains("refuses"),
                "{raw}: {err}"
            );
        }
        let err = check_amqp("amqp:guest:hunter2xyz@host:5672/%2f").unwrap_err();
        assert!(err.starts_with("\"amqp:***@host:5672/%2f\": "), "{err}");
    }

    #[test]
    fn postgres_urls() {
        for raw in [
            "postgres://postgres@127.0.0.1:5432/webhooks",
            "postgresql://u:p%40ss@db:5432/webhooks?sslmode=require",
            "postgres:///webhooks?host=/var/run/postgresql",
        ] {
            check_postgres(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        }
        for (raw, want) in [
            (
                "postgres:webhooks:hunter2xyz@db/webhooks",
                "\"//\" after \"postgres:\" is missing",
            ),
            (
                "mysql://u:hunter2xyz@db/webhooks",
                "must start with postgres:// or postgresql://",
            ),
            ("postgres://u:hunter2xyz@db:port/webhooks", "port"),
            ("webhooks", "does not start with postgres://"),
        ] {
            let err = check_postgres(raw).expect_err(raw);
            assert!(err.contains(want), "{raw}: {err}");
            assert!(!err.contains("hunter2xyz"), "{raw}: {err}");
        }
    }

    #[test]
    fn http_base_urls() {
        let check = |raw| {
            check_http(
                raw,
                "http://keycloak:8080",
                "KEYCLOAK_ADMIN_USER and KEYCLOAK_ADMIN_PASSWORD",
            )
        };
        for raw in [
            "http://keycloak:8080",
            "https://sso.example.com/auth/",
            "http://127.0.0.1:8180",
        ] {
            check(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        }
        for (raw, want) in [
            ("keycloak:8080", "must start with http:// or https://"),
            ("http:keycloak:8080", "\"//\" after \"http:\" is missing"),
            ("http://admin:hunter2xyz@keycloak:8080", "holds credentials"),
            ("http://admin@keycloak:8080", "holds credentials"),
            ("http://keycloak:8080/?realm=x", "query or fragment"),
            ("http://", "not a valid URL"),
        ] {
            let err = check(raw).expect_err(raw);
            assert!(err.contains(want), "{raw}: {err}");
            assert!(!err.contains("hunter2xyz"), "{raw}: {err}");
        }
    }
}
