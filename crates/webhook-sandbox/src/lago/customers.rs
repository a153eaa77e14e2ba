//! Lago customers (contracts §3.1): `POST /api/v1/customers` is an upsert on `external_id` that
//! changes only the keys sent, and `GET /api/v1/customers/{external_id}`.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{LagoError, authorize, iso, param_str, require_root};
use crate::faults::Route;
use crate::state::{Data, SandboxState};

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
    fn new(external_id: &str, sequential_id: usize, now: DateTime<Utc>) -> Self {
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

/// ISO 4217 shape (Lago checks a fixed list; any three capitals will do here).
pub(crate) fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Lago's `EmailValidator`: a comma-separated list where each entry looks like `a@b.c`.
fn is_lago_email(value: &str) -> bool {
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

/// The customer with this external id, created if needed (the subscription endpoint does the
/// same); returns its index.
pub(crate) fn find_or_create(data: &mut Data, external_id: &str, now: DateTime<Utc>) -> usize {
    if let Some(index) = data.customers.iter().position(|c| c.external_id == external_id) {
        return index;
    }
    let sequential_id = data.customers.len() + 1;
    data.customers
        .push(Customer::new(external_id, sequential_id, now));
    data.customers.len() - 1
}

/// `Customers::UpsertFromApiService`: find or initialize by `external_id`, then change only the
/// keys that were sent (`if params.key?(:x)`).
pub(crate) fn upsert(
    data: &mut Data,
    params: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<usize, LagoError> {
    let external_id = param_str(params, "external_id").unwrap_or_default();
    if external_id.is_empty() {
        return Err(LagoError::Validation("external_id", "value_is_mandatory"));
    }
    if let Some(Value::String(email)) = params.get("email")
        && !email.trim().is_empty()
        && !is_lago_email(email)
    {
        return Err(LagoError::Validation("email", "invalid_email_format"));
    }
    if let Some(currency) = params.get("currency") {
        match currency {
            Value::Null => {}
            Value::String(code) if is_currency(code) => {}
            _ => return Err(LagoError::Validation("currency", "value_is_invalid")),
        }
        // Before v1.51's multi-currency work, a customer that already has subscriptions cannot
        // change currency.
        if let Some(existing) = data.customers.iter().find(|c| c.external_id == external_id) {
            let has_subscriptions = data
                .subscriptions
                .iter()
                .any(|s| s.customer_lago_id == existing.lago_id);
            if has_subscriptions && existing.currency() != currency.as_str() {
                return Err(LagoError::Validation("currency", "currencies_does_not_match"));
            }
        }
    }
    let index = find_or_create(data, &external_id, now);
    let customer = &mut data.customers[index];
    for key in WRITABLE {
        if let Some(value) = params.get(key) {
            customer.fields.insert(key.into(), value.clone());
        }
    }
    customer.updated_at = now;
    Ok(index)
}

pub(crate) async fn post(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoCreateCustomer).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let params = require_root(&body, "customer")?;
    let mut data = state.lock();
    let index = upsert(&mut data, &params, Utc::now())?;
    Ok(HttpResponse::Ok().json(json!({"customer": data.customers[index].render()})))
}

pub(crate) async fn get(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    external_id: web::Path<String>,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoGetCustomer).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let data = state.lock();
    let customer = data
        .customers
        .iter()
        .find(|c| c.external_id == *external_id)
        .ok_or(LagoError::NotFound("customer"))?;
    Ok(HttpResponse::Ok().json(json!({"customer": customer.render()})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn upsert_is_a_partial_update() {
        let mut data = Data::default();
        let now = Utc::now();
        let sent = json!({"external_id": "c1", "name": "Ann", "email": "ann@example.com", "currency": "USD"});
        upsert(&mut data, &params(sent), now).unwrap();
        let index = upsert(
            &mut data,
            &params(json!({"external_id": " c1 ", "name": "Ann Lee", "city": null})),
            now,
        )
        .unwrap();
        let customer = data.customers[index].render();
        assert_eq!(data.customers.len(), 1);
        assert_eq!(customer["name"], "Ann Lee");
        assert_eq!(customer["email"], "ann@example.com");
        assert_eq!(customer["currency"], "USD");
        assert_eq!(customer["city"], Value::Null);
        assert_eq!(customer["applicable_timezone"], "UTC");
    }

    #[test]
    fn upsert_validates() {
        let mut data = Data::default();
        let now = Utc::now();
        let check = |data: &mut Data, sent: Value| upsert(data, &params(sent), now).unwrap_err();
        assert_eq!(
            check(&mut data, json!({"external_id": "  "})),
            LagoError::Validation("external_id", "value_is_mandatory")
        );
        assert_eq!(
            check(&mut data, json!({"external_id": "c", "email": "nope"})),
            LagoError::Validation("email", "invalid_email_format")
        );
        assert_eq!(
            check(&mut data, json!({"external_id": "c", "currency": "usd"})),
            LagoError::Validation("currency", "value_is_invalid")
        );
        assert!(data.customers.is_empty(), "a rejected upsert creates nothing");
        assert!(is_lago_email("a@b.co, c@d.io"));
        assert!(!is_lago_email("a@b.co,,"));
    }
}
