//! The text of a URL list (`AMQP_URL` may list a cluster's nodes): where one URL ends and the
//! next begins, and where a scheme ends. Below both [`crate::urls`] (the checks) and
//! [`crate::redact`] (what may be shown), which read lists the same way.

/// The URLs of a comma-separated list (`AMQP_URL` may list a cluster's nodes), trimmed, empty
/// ones dropped. A comma separates two URLs only when `scheme://` (or nothing) follows it, so a
/// comma inside a password (`amqp://u:a,b@h/`) does not split the URL.
pub fn split_list(raw: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in raw.match_indices(',') {
        let next = raw[i + 1..].trim_start();
        let scheme = scheme_len(next);
        if next.is_empty() || (scheme > 0 && next[scheme..].starts_with("://")) {
            parts.push(&raw[start..i]);
            start = i + 1;
        }
    }
    parts.push(&raw[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Length of the URL scheme `raw` starts with (RFC 3986: a letter, then letters, digits, `+`,
/// `-`, `.`), if a `:` follows it; else 0.
pub fn scheme_len(raw: &str) -> usize {
    let mut chars = raw.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_alphabetic() => {}
        _ => return 0,
    }
    for (i, c) in chars {
        if c == ':' {
            return i;
        }
        if !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
            return 0;
        }
    }
    0
}
