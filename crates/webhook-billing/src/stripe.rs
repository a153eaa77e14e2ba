//! The Stripe objects the handlers read (a Checkout Session, a Subscription, an Invoice),
//! parsed from untrusted JSON into what they mean for us: who bought which tier. A malformed
//! object is an [`ObjectError`]: permanent, since the event will never change.

use std::fmt;

use serde_json::Value;

use crate::plans::{Cycle, PlanMap, Tier};

/// Why a Stripe object cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// A field the object must have (the message says which, and where it comes from).
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0:?} is not an email address")]
    Email(String),
    #[error("{field} {value:?} must be letters, digits, '_' or '-'")]
    Token { field: &'static str, value: String },
}

/// A lowercased email address (Keycloak stores and matches emails lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ObjectError> {
        let e = raw.trim().to_lowercase();
        let valid = e.len() <= 254
            && !e.chars().any(char::is_whitespace)
            && e.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.contains('@')
            });
        if valid {
            Ok(Self(e))
        } else {
            Err(ObjectError::Email(raw.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A subscription's status, as Stripe names it (`active`, `past_due`, …). A status this code
/// does not know yet is kept by its name: the entitlement table (`[plans.access]`) may still
/// list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Incomplete,
    Trialing,
    Active,
    PastDue,
    Unpaid,
    Paused,
    IncompleteExpired,
    Canceled,
    Other(String),
}

impl SubscriptionStatus {
    pub fn parse(raw: &str) -> Self {
        match raw {
            "incomplete" => Self::Incomplete,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "unpaid" => Self::Unpaid,
            "paused" => Self::Paused,
            "incomplete_expired" => Self::IncompleteExpired,
            "canceled" => Self::Canceled,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Incomplete => "incomplete",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Canceled => "canceled",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A paid (or free) checkout to provision.
#[derive(Debug, Clone)]
pub struct CheckoutOrder {
    pub session_id: String,
    pub payment_status: String,
    pub email: Email,
    pub tier: Tier,
    pub cycle: Cycle,
    /// Stripe subscription id, else the session id: the Lago subscription's `external_id`.
    pub subscription_external_id: String,
    pub stripe_customer: Option<String>,
    /// The Stripe subscription (subscription-mode checkouts).
    pub stripe_subscription: Option<String>,
    pub customer_name: Option<String>,
}

impl CheckoutOrder {
    /// Reads a `checkout.session` object; `default_cycle` when its metadata names none.
    pub fn from_session(session: &Value, default_cycle: &Cycle) -> Result<Self, ObjectError> {
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
        let session_id =
            str_at(session, &["id"]).ok_or(ObjectError::Missing("the checkout session has no id"))?;
        let payment_status = str_at(session, &["payment_status"]).unwrap_or_else(|| "unknown".into());
        let raw_email = str_at(session, &["metadata", "user_email"])
            .or_else(|| str_at(session, &["customer_details", "email"]))
            .or_else(|| str_at(session, &["customer_email"]))
            .ok_or(ObjectError::Missing(
                "no email in metadata.user_email, customer_details.email or customer_email",
            ))?;
        let email = Email::parse(&raw_email)?;
        // Never blank here (`str_at` drops blank values), so only the token's shape can fail.
        let token = |field, raw: String| ObjectError::Token {
            field,
            value: raw.to_lowercase(),
        };
        let raw_tier = str_at(session, &["metadata", "tier_id"]).ok_or(ObjectError::Missing(
            "metadata.tier_id is missing: the Checkout Session must be created with the tier in its metadata",
        ))?;
        let tier = Tier::parse(&raw_tier).ok_or_else(|| token("metadata.tier_id", raw_tier))?;
        let cycle = match str_at(session, &["metadata", "billing_cycle"]) {
            Some(raw) => Cycle::parse(&raw).ok_or_else(|| token("metadata.billing_cycle", raw))?,
            None => default_cycle.clone(),
        };
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
            stripe_subscription: str_at(session, &["subscription"]),
            customer_name: str_at(session, &["customer_details", "name"]),
        })
    }

    /// Stripe: `paid`, or `no_payment_required` (100 % coupons, free trials).
    pub fn is_paid(&self) -> bool {
        matches!(self.payment_status.as_str(), "paid" | "no_payment_required")
    }
}

/// A `customer.subscription.*` event's object.
#[derive(Debug, Clone)]
pub struct SubscriptionChange {
    pub subscription_id: String,
    pub customer: String,
    pub status: SubscriptionStatus,
    /// `None` when the price cannot be mapped to a tier.
    pub tier: Option<(Tier, Cycle)>,
    pub price_id: Option<String>,
    /// `metadata.user_email`: the Keycloak account the subscription is for, when the checkout
    /// (`subscription_data.metadata`) or the API call that created it says so.
    pub user_email: Option<Email>,
}

impl SubscriptionChange {
    pub fn from_object(sub: &Value, plans: &PlanMap) -> Result<Self, ObjectError> {
        let subscription_id = text(sub, "id").ok_or(ObjectError::Missing("the subscription has no id"))?;
        let customer =
            text(sub, "customer").ok_or(ObjectError::Missing("the subscription has no customer"))?;
        let status = SubscriptionStatus::parse(&text(sub, "status").unwrap_or_else(|| "unknown".into()));
        let price = &sub["items"]["data"][0]["price"];
        let tier = plans.tier_of_price(price).or_else(|| {
            // Checkout usually copies the tier into the subscription's metadata too; read as
            // the checkout reads it, so that both give the same plan code.
            let t = sub["metadata"]["tier_id"].as_str().and_then(Tier::parse)?;
            let c = match sub["metadata"]["billing_cycle"]
                .as_str()
                .map(str::trim)
                .filter(|c| !c.is_empty())
            {
                // A cycle that is no token tells no plan (the checkout refuses it).
                Some(c) => Cycle::parse(c)?,
                None => plans.default_cycle.clone(),
            };
            Some((t, c))
        });
        Ok(Self {
            subscription_id,
            customer,
            status,
            tier,
            price_id: text(price, "id"),
            user_email: sub["metadata"]["user_email"]
                .as_str()
                .and_then(|e| Email::parse(e).ok()),
        })
    }
}

/// An `invoice.*` event's object.
#[derive(Debug, Clone)]
pub struct InvoiceChange {
    pub invoice_id: String,
    /// `parent.subscription_details.subscription` (current API versions), else the legacy
    /// top-level `subscription`.
    pub subscription_id: Option<String>,
    pub customer: Option<String>,
    pub customer_email: Option<Email>,
}

impl InvoiceChange {
    pub fn from_object(inv: &Value) -> Result<Self, ObjectError> {
        let invoice_id = text(inv, "id").ok_or(ObjectError::Missing("the invoice has no id"))?;
        let subscription_id = inv["parent"]["subscription_details"]["subscription"]
            .as_str()
            .or_else(|| inv["subscription"].as_str())
            .map(str::to_owned)
            .filter(|s| !s.is_empty());
        Ok(Self {
            invoice_id,
            subscription_id,
            customer: text(inv, "customer"),
            customer_email: inv["customer_email"].as_str().and_then(|e| Email::parse(e).ok()),
        })
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v[key]
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;
    use webhook_core::settings::PlanSettings;

    fn monthly() -> Cycle {
        Cycle::parse("monthly").unwrap()
    }

    fn tc(tier: &str, cycle: &str) -> (Tier, Cycle) {
        (Tier::parse(tier).unwrap(), Cycle::parse(cycle).unwrap())
    }

    #[test]
    fn reads_the_fixture_session_with_metadata() {
        let event: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/checkout_session_completed_event.json"
        ))
        .unwrap();
        let mut session = event["data"]["object"].clone();
        // The raw fixture has no tier: that is a permanent error.
        assert!(
            CheckoutOrder::from_session(&session, &monthly())
                .unwrap_err()
                .to_string()
                .contains("tier_id")
        );
        session["metadata"] = json!({"tier_id": "Professional", "billing_cycle": "yearly"});
        let o = CheckoutOrder::from_session(&session, &monthly()).unwrap();
        assert_eq!(o.email.as_str(), "example@example.com");
        assert_eq!(o.tier.as_str(), "professional");
        assert_eq!(o.cycle.as_str(), "yearly");
        assert_eq!(o.subscription_external_id, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
        assert!(o.is_paid());
    }

    #[test]
    fn email_precedence_and_validation() {
        let s = json!({"id": "cs_1", "metadata": {"tier_id": "pro", "user_email": " Boss@Example.COM "},
                       "customer_details": {"email": "other@example.com"}, "payment_status": "unpaid"});
        let o = CheckoutOrder::from_session(&s, &monthly()).unwrap();
        assert_eq!(o.email.as_str(), "boss@example.com");
        assert_eq!(o.cycle, monthly());
        assert_eq!(o.subscription_external_id, "cs_1");
        assert!(!o.is_paid());
        let s = json!({"id": "cs_1", "metadata": {"tier_id": "pro"}, "customer_email": "not-an-email"});
        assert!(CheckoutOrder::from_session(&s, &monthly()).is_err());
        let s = json!({"id": "cs_1", "metadata": {"tier_id": "pro/../x"}, "customer_email": "a@b.co"});
        assert!(CheckoutOrder::from_session(&s, &monthly()).is_err());
    }

    #[test]
    fn emails_are_validated() {
        assert_eq!(
            Email::parse(" A.B@Example.COM ").unwrap().as_str(),
            "a.b@example.com"
        );
        let long_local = "a".repeat(254 - "@example.com".len());
        assert!(
            Email::parse(&format!("{long_local}@example.com")).is_ok(),
            "254 characters"
        );
        for bad in [
            format!("a{long_local}@example.com"),
            "a b@example.com".into(),
            "a@exa mple.com".into(),
            "@example.com".into(),
            "a@localhost".into(),
            "a@b@example.com".into(),
            "no-at.example.com".into(),
        ] {
            assert!(Email::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tier_and_cycle_are_tokens_of_at_most_64_characters() {
        let session = |tier: &str| {
            json!({"id": "cs_1", "customer_email": "a@b.co",
                   "metadata": {"tier_id": tier, "billing_cycle": "Yearly"}})
        };
        let o = CheckoutOrder::from_session(&session("Pro_Plus-2"), &monthly()).unwrap();
        assert_eq!((o.tier.as_str(), o.cycle.as_str()), ("pro_plus-2", "yearly"));
        assert!(CheckoutOrder::from_session(&session(&"t".repeat(64)), &monthly()).is_ok());
        let err = CheckoutOrder::from_session(&session(&"t".repeat(65)), &monthly()).unwrap_err();
        assert!(err.to_string().contains("metadata.tier_id"), "{err}");
        for bad in ["pro plus", "pro.plus", "pro/plus", "é"] {
            assert!(
                CheckoutOrder::from_session(&session(bad), &monthly()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_subscriptions_metadata_is_read_as_its_checkouts_is() {
        let plans = PlanMap::new(&crate::plans::test_settings()).unwrap();
        let metadata = json!({"tier_id": " Starter ", "billing_cycle": " Yearly "});
        let sub = json!({"id": "sub_1", "customer": "cus_1", "status": "active", "metadata": metadata});
        let session = json!({"id": "cs_1", "customer_email": "a@b.co", "metadata": metadata});
        let from_checkout = CheckoutOrder::from_session(&session, &monthly()).unwrap();
        let change = SubscriptionChange::from_object(&sub, &plans).unwrap();
        assert_eq!(change.tier, Some((from_checkout.tier, from_checkout.cycle)));
        assert_eq!(change.tier, Some(tc("starter", "yearly")));
        // A cycle that is no token tells no plan (the checkout refuses it): the record keeps its plan.
        let mut odd = sub.clone();
        odd["metadata"]["billing_cycle"] = json!("year/../ly");
        assert_eq!(SubscriptionChange::from_object(&odd, &plans).unwrap().tier, None);
        // None, or blank: the default cycle.
        for metadata in [
            json!({"tier_id": "starter"}),
            json!({"tier_id": "starter", "billing_cycle": " "}),
        ] {
            let mut default = sub.clone();
            default["metadata"] = metadata;
            assert_eq!(
                SubscriptionChange::from_object(&default, &plans).unwrap().tier,
                Some(tc("starter", "monthly"))
            );
        }
    }

    #[test]
    fn subscription_and_invoice_fixtures() {
        let mut prices = HashMap::new();
        prices.insert(
            "price_1PgafmB7WZ01zgkW6dKueIc5".to_string(),
            "Enterprise:yearly".to_string(),
        );
        let settings = PlanSettings {
            prices,
            ..crate::plans::test_settings()
        };
        let plans = PlanMap::new(&settings).unwrap();
        let sub: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/subscription_fixture.json")).unwrap();
        let change = SubscriptionChange::from_object(&sub, &plans).unwrap();
        assert_eq!(change.subscription_id, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
        assert_eq!(change.customer, "cus_QXg1o8vcGmoR32");
        assert_eq!(change.status, SubscriptionStatus::Active);
        assert_eq!(change.tier, Some(tc("enterprise", "yearly")));
        // Without a map entry: the price's metadata and interval.
        let plain = PlanMap::new(&PlanSettings {
            prices: HashMap::new(),
            ..settings.clone()
        })
        .unwrap();
        assert_eq!(SubscriptionChange::from_object(&sub, &plain).unwrap().tier, None);
        let mut with_meta = sub.clone();
        with_meta["items"]["data"][0]["price"]["metadata"] = json!({"tier_id": "starter"});
        assert_eq!(
            SubscriptionChange::from_object(&with_meta, &plain).unwrap().tier,
            Some(tc("starter", "monthly"))
        );
        let bad = PlanSettings {
            prices: [("p".to_string(), "nocolon".to_string())].into(),
            ..settings
        };
        assert!(
            PlanMap::new(&bad)
                .unwrap_err()
                .to_string()
                .contains("plans.prices")
        );

        let inv: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/invoice_fixture.json")).unwrap();
        let change = InvoiceChange::from_object(&inv).unwrap();
        assert_eq!(change.invoice_id, "in_1Pgc6tB7WZ01zgkWu9fdqL6I");
        assert_eq!(
            change.subscription_id.as_deref(),
            Some("subscription"),
            "parent.subscription_details.subscription"
        );
        assert_eq!(change.customer.as_deref(), Some("cus_QXg1o8vcGmoR32"));
        assert!(change.customer_email.is_none());
    }

    #[test]
    fn a_status_reads_back_as_stripe_names_it() {
        for name in [
            "incomplete",
            "trialing",
            "active",
            "past_due",
            "unpaid",
            "paused",
            "incomplete_expired",
            "canceled",
            "a_status_stripe_adds_later",
        ] {
            let status = SubscriptionStatus::parse(name);
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
        }
        assert_eq!(SubscriptionStatus::parse("past_due"), SubscriptionStatus::PastDue);
    }
}
