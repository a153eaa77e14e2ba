//! Stripe webhook signature verification (contracts/README.md §1.1).
//!
//! `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`. The signed payload is
//! `"{t}.{raw body}"`, the MAC is HMAC-SHA256 keyed with the endpoint secret string *as is*
//! (`whsec_…` is not base64-decoded). A request is genuine when ANY `v1` matches ANY configured
//! secret: Stripe signs once per active secret while a secret is being rolled. `v0` and unknown
//! schemes are ignored so that nobody can downgrade us to a weaker scheme.
//!
//! Verification is a type: [`VerifiedPayload`] can only be built by [`SignatureVerifier::verify`],
//! and everything downstream (envelope parsing, publishing) takes nothing else.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Headers longer than this are rejected before any parsing: a real header with a few
/// signatures is ~200 bytes, and this bounds the work a forged header can cause.
pub const MAX_HEADER_LEN: usize = 4096;
/// At most this many `v1` entries are considered (Stripe sends one per active secret).
pub const MAX_SIGNATURES: usize = 8;

/// Why a request's signature was refused. Every variant maps to a 400; the message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "the signed timestamp is {age_secs}s away from now, more than the {tolerance_secs}s tolerance (replayed request or clock skew)"
    )]
    OutsideTolerance { age_secs: i64, tolerance_secs: u64 },
    #[error("no v1 signature matches any configured webhook secret (wrong secret, or the body was changed)")]
    Mismatch,
}

impl SignatureError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Malformed(_) => "malformed_signature",
            SignatureError::OutsideTolerance { .. } => "timestamp_out_of_tolerance",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// The parsed header: the timestamp and every well-formed `v1` signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub timestamp: i64,
    pub v1: Vec<[u8; 32]>,
}

impl SignatureHeader {
    /// Parses the header like Stripe's own libraries: split on `,`, then on the first `=`.
    /// Exactly one `t` is required and at least one well-formed `v1`; `v1` values that are not
    /// 64 hex digits are skipped (they can never match), other schemes are ignored.
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(SignatureError::Malformed("header too long"));
        }
        let mut timestamp = None;
        let mut v1 = Vec::new();
        for item in header.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                continue;
            };
            match key.trim() {
                "t" => {
                    if timestamp.is_some() {
                        return Err(SignatureError::Malformed("more than one timestamp"));
                    }
                    let t: i64 = value
                        .trim()
                        .parse()
                        .map_err(|_| SignatureError::Malformed("timestamp is not an integer"))?;
                    timestamp = Some(t);
                }
                "v1" => {
                    let mut sig = [0u8; 32];
                    if v1.len() < MAX_SIGNATURES && hex::decode_to_slice(value.trim(), &mut sig).is_ok() {
                        v1.push(sig);
                    }
                }
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed("no t= timestamp"))?;
        if v1.is_empty() {
            return Err(SignatureError::Malformed("no v1 signature"));
        }
        Ok(Self { timestamp, v1 })
    }
}

/// A request body whose signature was checked. Only [`SignatureVerifier::verify`] builds one.
#[derive(Debug, Clone)]
pub struct VerifiedPayload {
    body: Bytes,
    signed_at: i64,
}

impl VerifiedPayload {
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// The `t` of the signature header (unix seconds).
    pub fn signed_at(&self) -> i64 {
        self.signed_at
    }
}

/// Checks `Stripe-Signature` headers against one or more endpoint secrets.
pub struct SignatureVerifier {
    secrets: Vec<SecretString>,
    tolerance_secs: u64,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("secrets", &format_args!("[{} redacted]", self.secrets.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl SignatureVerifier {
    /// `secrets` must not be empty (settings validation guarantees it).
    pub fn new(secrets: Vec<SecretString>, tolerance_secs: u64) -> Self {
        assert!(!secrets.is_empty(), "at least one webhook secret is required");
        Self {
            secrets,
            tolerance_secs,
        }
    }

    /// Verifies `header` for `body` at time `now` (unix seconds).
    ///
    /// The timestamp check is two-sided: a timestamp more than the tolerance in the future is as
    /// suspicious as a stale one (Stripe signs at send time; skew beyond minutes is a broken clock
    /// or a forgery). The MAC is checked before the timestamp so that a forged header cannot learn
    /// anything from which error it gets.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: Bytes,
        now: i64,
    ) -> Result<VerifiedPayload, SignatureError> {
        let header = SignatureHeader::parse(header.ok_or(SignatureError::Missing)?)?;
        if !self.matches(&header, &body) {
            return Err(SignatureError::Mismatch);
        }
        let age = now.saturating_sub(header.timestamp);
        if age.unsigned_abs() > self.tolerance_secs {
            return Err(SignatureError::OutsideTolerance {
                age_secs: age,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(VerifiedPayload {
            body,
            signed_at: header.timestamp,
        })
    }

    fn matches(&self, header: &SignatureHeader, body: &[u8]) -> bool {
        let mut matched = subtle::Choice::from(0);
        for secret in &self.secrets {
            let expected = compute_signature(secret.expose_secret(), header.timestamp, body);
            for candidate in &header.v1 {
                // Constant time per comparison, and no early exit across secrets or signatures.
                matched |= expected.ct_eq(candidate);
            }
        }
        matched.into()
    }
}

/// HMAC-SHA256 of `"{timestamp}.{body}"` keyed with the secret string's UTF-8 bytes.
pub fn compute_signature(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Builds a `Stripe-Signature` header value like Stripe's `generateTestHeaderString`
/// (used by `webhookctl send-test-event`, tests and benchmarks).
pub fn sign_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(compute_signature(secret, timestamp, body))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/checkout_session_completed_event.json");
    const VECTOR_HEADER: &str =
        "t=1754000130,v1=4d341bb366bfd562e6b2dc201f925ab7a8290b2b1e3fdf2f56ce5f604a91f084";
    const VECTOR_T: i64 = 1_754_000_130;

    fn verifier(secrets: &[&str]) -> SignatureVerifier {
        SignatureVerifier::new(
            secrets
                .iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect(),
            300,
        )
    }

    #[test]
    fn contract_test_vector_verifies() {
        let v = verifier(&["whsec_test_secret"]);
        let ok = v
            .verify(Some(VECTOR_HEADER), Bytes::from_static(FIXTURE), VECTOR_T + 10)
            .unwrap();
        assert_eq!(ok.signed_at(), VECTOR_T);
        assert_eq!(ok.body().as_ref(), FIXTURE);
    }

    #[test]
    fn test_vector_matches_our_signer() {
        assert_eq!(sign_header("whsec_test_secret", VECTOR_T, FIXTURE), VECTOR_HEADER);
    }

    #[test]
    fn secret_is_used_as_is_not_base64_decoded() {
        // The same vector with the secret minus its prefix must fail.
        let v = verifier(&["test_secret"]);
        assert_eq!(
            v.verify(Some(VECTOR_HEADER), Bytes::from_static(FIXTURE), VECTOR_T)
                .unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn any_of_several_v1_may_match() {
        let v = verifier(&["whsec_test_secret"]);
        let sig = VECTOR_HEADER.split_once(",v1=").unwrap().1;
        let bogus = "0".repeat(64);
        for header in [
            format!("t={VECTOR_T},v1={bogus},v1={sig}"),
            format!("t={VECTOR_T},v1={sig},v1={bogus}"),
            format!("t={VECTOR_T},v1={sig},v1=potato"),
            format!("t={VECTOR_T},v0={bogus},v1={sig}"),
            format!(" t={VECTOR_T}, v1={sig}"),
        ] {
            v.verify(Some(&header), Bytes::from_static(FIXTURE), VECTOR_T)
                .unwrap_or_else(|e| panic!("{header}: {e}"));
        }
    }

    #[test]
    fn v0_alone_is_refused() {
        let v = verifier(&["whsec_test_secret"]);
        let sig = VECTOR_HEADER.split_once(",v1=").unwrap().1;
        let header = format!("t={VECTOR_T},v0={sig}");
        assert_eq!(
            v.verify(Some(&header), Bytes::from_static(FIXTURE), VECTOR_T)
                .unwrap_err(),
            SignatureError::Malformed("no v1 signature")
        );
    }

    #[test]
    fn either_of_two_secrets_verifies() {
        let v = verifier(&["whsec_new_secret", "whsec_test_secret"]);
        v.verify(Some(VECTOR_HEADER), Bytes::from_static(FIXTURE), VECTOR_T)
            .unwrap();
        let header = sign_header("whsec_new_secret", VECTOR_T, FIXTURE);
        v.verify(Some(&header), Bytes::from_static(FIXTURE), VECTOR_T)
            .unwrap();
        let header = sign_header("whsec_other", VECTOR_T, FIXTURE);
        assert_eq!(
            v.verify(Some(&header), Bytes::from_static(FIXTURE), VECTOR_T)
                .unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let v = verifier(&["whsec_test_secret"]);
        let body = Bytes::from_static(FIXTURE);
        assert!(
            v.verify(Some(VECTOR_HEADER), body.clone(), VECTOR_T + 300)
                .is_ok()
        );
        assert_eq!(
            v.verify(Some(VECTOR_HEADER), body.clone(), VECTOR_T + 301)
                .unwrap_err(),
            SignatureError::OutsideTolerance {
                age_secs: 301,
                tolerance_secs: 300
            }
        );
        assert!(
            v.verify(Some(VECTOR_HEADER), body.clone(), VECTOR_T - 300)
                .is_ok()
        );
        assert_eq!(
            v.verify(Some(VECTOR_HEADER), body, VECTOR_T - 301).unwrap_err(),
            SignatureError::OutsideTolerance {
                age_secs: -301,
                tolerance_secs: 300
            }
        );
    }

    #[test]
    fn one_byte_tamper_is_refused() {
        let v = verifier(&["whsec_test_secret"]);
        let mut body = FIXTURE.to_vec();
        let i = body.iter().position(|&b| b == b'2').unwrap(); // a digit inside the JSON
        body[i] = b'3';
        assert_eq!(
            v.verify(Some(VECTOR_HEADER), Bytes::from(body), VECTOR_T)
                .unwrap_err(),
            SignatureError::Mismatch
        );
        // Trailing newline removed: also a different body.
        let trimmed = Bytes::copy_from_slice(&FIXTURE[..FIXTURE.len() - 1]);
        assert_eq!(
            v.verify(Some(VECTOR_HEADER), trimmed, VECTOR_T).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn garbage_headers_are_malformed_not_panics() {
        let v = verifier(&["whsec_test_secret"]);
        let body = Bytes::from_static(FIXTURE);
        assert_eq!(
            v.verify(None, body.clone(), VECTOR_T).unwrap_err(),
            SignatureError::Missing
        );
        let long = "v1=".to_string() + &"a".repeat(MAX_HEADER_LEN);
        for header in [
            "",
            "garbage",
            "t=",
            "t=abc,v1=00",
            "v1=4d341bb366bfd562e6b2dc201f925ab7a8290b2b1e3fdf2f56ce5f604a91f084",
            "t=1754000130",
            "t=1754000130,v1=zz",
            "t=1,t=2,v1=4d341bb366bfd562e6b2dc201f925ab7a8290b2b1e3fdf2f56ce5f604a91f084",
            "t=99999999999999999999999,v1=00",
            ",,,,=,=,",
            long.as_str(),
        ] {
            let err = v.verify(Some(header), body.clone(), VECTOR_T).unwrap_err();
            assert!(
                matches!(err, SignatureError::Malformed(_)),
                "{header:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let v = verifier(&["whsec_very_secret_value", "whsec_other"]);
        let shown = format!("{v:?}");
        assert!(!shown.contains("very_secret"), "{shown}");
        assert!(
            shown.contains("[2 redacted]") && shown.contains("tolerance_secs: 300"),
            "{shown}"
        );
    }

    #[test]
    fn each_refusal_has_its_stable_code() {
        for (e, code) in [
            (SignatureError::Missing, "missing_signature"),
            (SignatureError::Malformed("x"), "malformed_signature"),
            (
                SignatureError::OutsideTolerance {
                    age_secs: 301,
                    tolerance_secs: 300,
                },
                "timestamp_out_of_tolerance",
            ),
            (SignatureError::Mismatch, "signature_mismatch"),
        ] {
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn a_header_of_the_maximum_length_is_read_one_byte_more_is_not() {
        let v = verifier(&["whsec_test_secret"]);
        let body = Bytes::from_static(FIXTURE);
        // Padding that parsers skip (no '='), to exactly MAX_HEADER_LEN bytes.
        let pad = |extra: usize| {
            let head = format!("{VECTOR_HEADER},");
            format!("{head}{}", "x".repeat(MAX_HEADER_LEN - head.len() + extra))
        };
        let header = pad(0);
        assert_eq!(header.len(), MAX_HEADER_LEN);
        v.verify(Some(&header), body.clone(), VECTOR_T).unwrap();
        let header = pad(1);
        assert_eq!(
            v.verify(Some(&header), body, VECTOR_T).unwrap_err(),
            SignatureError::Malformed("header too long")
        );
    }

    #[test]
    fn only_the_first_max_signatures_v1_are_considered() {
        let v = verifier(&["whsec_test_secret"]);
        let sig = VECTOR_HEADER.split_once(",v1=").unwrap().1;
        let bogus = format!(",v1={}", "0".repeat(64));
        let body = Bytes::from_static(FIXTURE);
        let header = format!("t={VECTOR_T}{},v1={sig}", bogus.repeat(MAX_SIGNATURES - 1));
        v.verify(Some(&header), body.clone(), VECTOR_T).unwrap();
        let header = format!("t={VECTOR_T}{},v1={sig}", bogus.repeat(MAX_SIGNATURES));
        assert_eq!(
            v.verify(Some(&header), body, VECTOR_T).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    proptest! {
        #[test]
        fn signed_body_always_verifies_and_any_changed_byte_never_does(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            secret in "whsec_[A-Za-z0-9]{8,40}",
            t in 1_000_000_000i64..4_000_000_000,
            index in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let v = verifier(&[secret.as_str()]);
            let header = sign_header(&secret, t, &body);
            prop_assert!(v.verify(Some(&header), Bytes::from(body.clone()), t).is_ok());
            let mut changed = body.clone();
            let i = index.index(changed.len());
            changed[i] ^= flip;
            prop_assert_eq!(v.verify(Some(&header), Bytes::from(changed), t).unwrap_err(), SignatureError::Mismatch);
        }

        #[test]
        fn parser_never_panics(header in ".{0,300}") {
            let _ = SignatureHeader::parse(&header);
        }
    }
}
