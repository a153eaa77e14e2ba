//! The Lago customer record (contracts §3.1): the keys ever sent, and its rendering as a
//! CustomerObjectExtended. The upsert that writes it is in `store`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::common::iso;

/// Customer parameters the sandbox stores and echoes; others are ignored, like parameters that
/// Rails' strong parameters do not permit.
const WRITABLE: [&str; 25] = [
    "name",
    "firstname",
    "lastname",
    "email",
    "currency",
    "timezone",
    "country",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "zipcode",
    "phone",
    "url",
    "legal_name",
    "legal_number",
    "tax_identification_number",
    "logo_url",
    "net_payment_term",
    "customer_type",
    "account_type",
    "billing_configuration",
    "shipping_address",
    "metadata",
    "finalize_zero_amount_invoice",
];

#[derive(Clone, Debug)]
pub(crate) struct Customer {
    pub(crate) lago_id: String,
    sequential_id: usize,
    pub(crate) external_id: String,
    /// Values of [`WRITABLE`] keys that were ever sent.
    fields: Map<String, Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Customer {
    pub(crate) fn new(external_id: &str, sequential_id: usize, now: DateTime<Utc>) -> Self {
        Self {
            lago_id: uuid::Uuid::new_v4().to_string(),
            sequential_id,
            external_id: external_id.to_owned(),
            fields: Map::new(),
            created_at: now,
            updated_at: now,
        }
    }

    pub(crate) fn currency(&self) -> Option<&str> {
        self.fields.get("currency").and_then(Value::as_str)
    }

    pub(crate) fn set_currency(&mut self, currency: &str, now: DateTime<Utc>) {
        self.fields.insert("currency".into(), json!(currency));
        self.updated_at = now;
    }

    /// Stores the [`WRITABLE`] keys that `params` has (null included: it clears the value);
    /// the others are left as they are.
    pub(crate) fn apply(&mut self, params: &Map<String, Value>, now: DateTime<Utc>) {
        for key in WRITABLE {
            if let Some(value) = params.get(key) {
                self.fields.insert(key.into(), value.clone());
            }
        }
        self.updated_at = now;
    }

    /// A CustomerObjectExtended: every field of the schema, null when never set.
    pub(crate) fn render(&self) -> Value {
        let field = |key: &str| self.fields.get(key).cloned().unwrap_or(Value::Null);
        let mut out = Map::new();
        for key in WRITABLE {
            out.insert(key.into(), field(key));
        }
        let timezone = self
            .fields
            .get("timezone")
            .and_then(Value::as_str)
            .unwrap_or("UTC")
            .to_owned();
        let defaults = [
            ("lago_id", json!(self.lago_id)),
            ("sequential_id", json!(self.sequential_id)),
            ("slug", json!(format!("SBX-{:04}", self.sequential_id))),
            ("external_id", json!(self.external_id)),
            ("billing_entity_code", json!("default")),
            ("applicable_timezone", json!(timezone)),
            ("created_at", json!(iso(self.created_at))),
            ("updated_at", json!(iso(self.updated_at))),
            ("account_type", json!("customer")),
            ("finalize_zero_amount_invoice", json!("inherit")),
            ("skip_invoice_custom_sections", json!(false)),
            ("metadata", json!([])),
            (
                "billing_configuration",
                json!({"invoice_grace_period": null, "payment_provider": null, "document_locale": null}),
            ),
            ("integration_customers", json!([])),
            ("taxes", json!([])),
            ("applicable_invoice_custom_sections", json!([])),
            ("error_details", json!([])),
        ];
        for (key, value) in defaults {
            let current = out.entry(key).or_insert(Value::Null);
            if current.is_null() {
                *current = value;
            }
        }
        Value::Object(out)
    }
}

/// Lago's `EmailValidator`: a comma-separated list where each entry looks like `a@b.c`.
pub(crate) fn is_lago_email(value: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .all(|email| match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !email.chars().any(char::is_whitespace)
                    && !domain.contains('@')
                    && domain
                        .split_once('.')
                        .is_some_and(|(host, tld)| !host.is_empty() && !tld.is_empty())
            }
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lago_email_lists() {
        assert!(is_lago_email("a@b.co, c@d.io"));
        assert!(!is_lago_email("a@b.co,,"));
        assert!(!is_lago_email("a@b"));
    }
}
