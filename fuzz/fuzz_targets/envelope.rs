//! The event envelope parser on arbitrary bytes (the worker parses untrusted queue messages
//! with it): never panics, deep nesting is an error, not a stack overflow.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use webhook_core::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::parse(Bytes::copy_from_slice(data)) {
        assert!(!e.id.as_str().is_empty());
        assert!(!e.event_type.is_empty());
    }
});
