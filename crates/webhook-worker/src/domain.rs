//! What a checkout event means for us: who bought which tier, parsed from untrusted JSON.

use std::collections::HashMap;

use serde_json::Value;
use webhook_core::settings::PlanSettings;

/// A lowercased email address (Keycloak stores and matches emails lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let e = raw.trim().to_lowercase();
        let valid = e.len() <= 254
            && !e.chars().any(char::is_whitespace)
            && e.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.contains('@')
            });
        if valid {
            Ok(Self(e))
        } else {
            Err(format!("{raw:?} is not an email address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A paid (or free) checkout to provision.
#[derive(Debug, Clone)]
pub struct CheckoutOrder {
    pub session_id: String,
    pub payment_status: String,
    pub email: Email,
    pub tier: String,
    pub cycle: String,
    /// Stripe subscription id, else the session id: the Lago subscription's `external_id`.
    pub subscription_external_id: String,
    pub stripe_customer: Option<String>,
    pub customer_name: Option<String>,
}

impl CheckoutOrder {
    /// Reads a `checkout.session` object. Errors are permanent: the event will never change.
    pub fn from_session(session: &Value, default_cycle: &str) -> Result<Self, String> {
        let str_at = |v: &Value, path: &[&str]| -> Option<String> {
            let mut cur = v;
            for p in path {
                cur = cur.get(p)?;
            }
            cur.as_str()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let session_id = str_at(session, &["id"]).ok_or("the checkout session has no id")?;
        let payment_status = str_at(session, &["payment_status"]).unwrap_or_else(|| "unknown".into());
        let raw_email = str_at(session, &["metadata", "user_email"])
            .or_else(|| str_at(session, &["customer_details", "email"]))
            .or_else(|| str_at(session, &["customer_email"]))
            .ok_or("no email in metadata.user_email, customer_details.email or customer_email")?;
        let email = Email::parse(&raw_email)?;
        let tier = str_at(session, &["metadata", "tier_id"])
            .ok_or("metadata.tier_id is missing: the Checkout Session must be created with the tier in its metadata")?
            .to_lowercase();
        let cycle = str_at(session, &["metadata", "billing_cycle"])
            .unwrap_or_else(|| default_cycle.to_owned())
            .to_lowercase();
        for (name, v) in [("metadata.tier_id", &tier), ("metadata.billing_cycle", &cycle)] {
            if v.len() > 64
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("{name} {v:?} must be letters, digits, '_' or '-'"));
            }
        }
        let subscription_external_id =
            str_at(session, &["subscription"]).unwrap_or_else(|| session_id.clone());
        Ok(Self {
            session_id,
            payment_status,
            email,
            tier,
            cycle,
            subscription_external_id,
            stripe_customer: str_at(session, &["customer"]),
            customer_name: str_at(session, &["customer_details", "name"]),
        })
    }

    /// Stripe: `paid`, or `no_payment_required` (100 % coupons, free trials).
    pub fn is_paid(&self) -> bool {
        matches!(self.payment_status.as_str(), "paid" | "no_payment_required")
    }
}

/// Tier × cycle → Lago plan code.
#[derive(Debug, Clone)]
pub struct PlanMap {
    rule: String,
    map: HashMap<String, String>,
    pub default_cycle: String,
}

impl PlanMap {
    pub fn new(settings: &PlanSettings) -> Self {
        Self {
            rule: settings.default_rule.clone(),
            map: settings.map.clone(),
            default_cycle: settings.default_cycle.clone(),
        }
    }

    pub fn plan_code(&self, tier: &str, cycle: &str) -> String {
        self.map
            .get(&format!("{tier}_{cycle}"))
            .cloned()
            .unwrap_or_else(|| self.rule.replace("{tier}", tier).replace("{cycle}", cycle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_fixture_session_with_metadata() {
        let event: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/checkout_session_completed_event.json"
        ))
        .unwrap();
        let mut session = event["data"]["object"].clone();
        // The raw fixture has no tier: that is a permanent error.
        assert!(
            CheckoutOrder::from_session(&session, "monthly")
                .unwrap_err()
                .contains("tier_id")
        );
        session["metadata"] = json!({"tier_id": "Professional", "billing_cycle": "yearly"});
        let o = CheckoutOrder::from_session(&session, "monthly").unwrap();
        assert_eq!(o.email.as_str(), "example@example.com");
        assert_eq!(o.tier, "professional");
        assert_eq!(o.cycle, "yearly");
        assert_eq!(o.subscription_external_id, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
        assert!(o.is_paid());
    }

    #[test]
    fn email_precedence_and_validation() {
        let s = json!({"id": "cs_1", "metadata": {"tier_id": "pro", "user_email": " Boss@Example.COM "},
                       "customer_details": {"email": "other@example.com"}, "payment_status": "unpaid"});
        let o = CheckoutOrder::from_session(&s, "monthly").unwrap();
        assert_eq!(o.email.as_str(), "boss@example.com");
        assert_eq!(o.cycle, "monthly");
        assert_eq!(o.subscription_external_id, "cs_1");
        assert!(!o.is_paid());
        let s = json!({"id": "cs_1", "metadata": {"tier_id": "pro"}, "customer_email": "not-an-email"});
        assert!(CheckoutOrder::from_session(&s, "monthly").is_err());
        let s = json!({"id": "cs_1", "metadata": {"tier_id": "pro/../x"}, "customer_email": "a@b.co"});
        assert!(CheckoutOrder::from_session(&s, "monthly").is_err());
    }

    #[test]
    fn plan_codes() {
        let mut map = HashMap::new();
        map.insert("enterprise_yearly".to_string(), "ent-annual-2026".to_string());
        let plans = PlanMap::new(&PlanSettings {
            default_rule: "{tier}_{cycle}".into(),
            default_cycle: "monthly".into(),
            map,
        });
        assert_eq!(plans.plan_code("professional", "monthly"), "professional_monthly");
        assert_eq!(plans.plan_code("enterprise", "yearly"), "ent-annual-2026");
    }
}
