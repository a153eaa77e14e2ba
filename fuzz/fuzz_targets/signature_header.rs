//! The `Stripe-Signature` header parser and verifier on arbitrary input: never panics, never
//! accepts without the secret, and its work is bounded by the header length limit.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use webhook_core::signature::{SignatureHeader, SignatureVerifier};

fuzz_target!(|data: &[u8]| {
    // First line: the header; the rest: the body.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..split]);
    let body = Bytes::copy_from_slice(data.get(split + 1..).unwrap_or_default());
    let _ = SignatureHeader::parse(&header);
    let verifier = SignatureVerifier::new(vec![SecretString::from("whsec_fuzz".to_string())], 300);
    let t = 1_754_000_130;
    // A forged header must never verify (the fuzzer cannot compute the HMAC).
    assert!(verifier.verify(Some(&header), body, t).is_err());
});
