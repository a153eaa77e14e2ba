//! A message's properties: [`Properties`], and the standard ones of a job ([`job_properties`]).

use std::sync::LazyLock;

use lapin::BasicProperties;

use crate::headers::Headers;

/// The properties of a message (its id, type, content type, persistence, timestamp, headers),
/// as received or to publish. Every property a message came with is kept, so a copy of a
/// received message is published unchanged.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    /// Everything but the headers (`inner`'s own are ignored: `headers` is the truth).
    inner: BasicProperties,
    headers: Option<Headers>,
}

/// Equal when they would be published the same.
impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        BasicProperties::from(self.clone()) == BasicProperties::from(other.clone())
    }
}

static NO_HEADERS: LazyLock<Headers> = LazyLock::new(Headers::new);

impl Properties {
    /// Persistent delivery (written to disk, survives a broker restart), nothing else set.
    pub fn persistent() -> Self {
        Self::default().with_delivery_mode(2)
    }

    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id().as_ref().map(|s| s.as_str())
    }

    /// The `type` property: the event type of a job.
    pub fn kind(&self) -> Option<&str> {
        self.inner.kind().as_ref().map(|s| s.as_str())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.inner.content_type().as_ref().map(|s| s.as_str())
    }

    /// Seconds since the Unix epoch.
    pub fn timestamp(&self) -> Option<u64> {
        *self.inner.timestamp()
    }

    /// 2: persistent, 1: transient.
    pub fn delivery_mode(&self) -> Option<u8> {
        *self.inner.delivery_mode()
    }

    /// The headers (empty when the message has none).
    pub fn headers(&self) -> &Headers {
        self.headers.as_ref().unwrap_or(&NO_HEADERS)
    }

    /// Whether the message has a header table at all (even an empty one).
    pub fn has_headers(&self) -> bool {
        self.headers.is_some()
    }

    pub fn with_message_id(mut self, id: &str) -> Self {
        self.inner = self.inner.with_message_id(id.into());
        self
    }

    pub fn with_kind(mut self, kind: &str) -> Self {
        self.inner = self.inner.with_type(kind.into());
        self
    }

    pub fn with_content_type(mut self, content_type: &str) -> Self {
        self.inner = self.inner.with_content_type(content_type.into());
        self
    }

    pub fn with_timestamp(mut self, seconds: u64) -> Self {
        self.inner = self.inner.with_timestamp(seconds);
        self
    }

    pub fn with_delivery_mode(mut self, mode: u8) -> Self {
        self.inner = self.inner.with_delivery_mode(mode);
        self
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = Some(headers);
        self
    }

    /// The headers as they are (`None`: the message has no header table).
    pub(crate) fn header_table(&self) -> Option<&Headers> {
        self.headers.as_ref()
    }
}

/// The standard properties of a job message (see `webhook_core::message`).
pub fn job_properties(message_id: &str, event_type: &str, headers: Headers) -> Properties {
    Properties::persistent()
        .with_message_id(message_id)
        .with_kind(event_type)
        .with_content_type(webhook_core::message::CONTENT_TYPE_JSON)
        .with_timestamp(webhook_core::unix_now().max(0) as u64)
        .with_headers(headers)
}

impl From<BasicProperties> for Properties {
    fn from(inner: BasicProperties) -> Self {
        let headers = inner.headers().clone().map(Headers::from);
        Self { inner, headers }
    }
}

impl From<Properties> for BasicProperties {
    fn from(p: Properties) -> Self {
        match p.headers {
            Some(h) => p.inner.with_headers(h.into()),
            None => p.inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_persistent_json_with_its_id_type_and_headers() {
        let mut h = Headers::new();
        h.set_str("traceparent", "00-…");
        let p = job_properties("evt_1", "invoice.paid", h.clone());
        assert_eq!(p.message_id(), Some("evt_1"));
        assert_eq!(p.kind(), Some("invoice.paid"));
        assert_eq!(p.content_type(), Some("application/json"));
        assert_eq!(p.delivery_mode(), Some(2));
        assert!(p.timestamp().is_some());
        assert_eq!(p.headers(), &h);
        let wire = BasicProperties::from(p.clone());
        assert_eq!(Properties::from(wire), p, "to the client's and back, unchanged");
    }

    #[test]
    fn no_header_table_stays_none() {
        let p = Properties::from(BasicProperties::default());
        assert!(!p.has_headers());
        assert!(p.headers().is_empty());
        assert!(BasicProperties::from(p).headers().is_none());
    }
}
