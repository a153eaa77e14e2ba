//! Lago's customers and subscriptions together: the operations whose rules look at both (a
//! customer's currency is fixed once it has subscriptions; a subscription auto-creates its
//! customer), as the API's create, upsert and terminate services do.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::common::{LagoError, is_currency, param_str};
use super::customers::{Customer, is_lago_email};
use super::plans::Plan;
use super::subscriptions::{self, Status, Subscription};

/// Every Lago customer and subscription the sandbox holds.
#[derive(Debug, Default)]
pub(crate) struct LagoStore {
    pub(crate) customers: Vec<Customer>,
    /// Every subscription ever created, terminated and canceled ones included: Lago keeps them
    /// and they stay reachable through `GET …?status=terminated`.
    pub(crate) subscriptions: Vec<Subscription>,
}

impl LagoStore {
    /// The customer with this external id, created if needed (the subscription endpoint does
    /// the same); returns its index.
    pub(crate) fn find_or_create_customer(&mut self, external_id: &str, now: DateTime<Utc>) -> usize {
        if let Some(index) = self.customers.iter().position(|c| c.external_id == external_id) {
            return index;
        }
        let sequential_id = self.customers.len() + 1;
        self.customers
            .push(Customer::new(external_id, sequential_id, now));
        self.customers.len() - 1
    }

    /// `Customers::UpsertFromApiService`: find or initialize by `external_id`, then change only
    /// the keys that were sent (`if params.key?(:x)`).
    pub(crate) fn upsert_customer(
        &mut self,
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
            // Before v1.51's multi-currency work, a customer that already has subscriptions
            // cannot change currency.
            if let Some(existing) = self.customers.iter().find(|c| c.external_id == external_id) {
                let has_subscriptions = self
                    .subscriptions
                    .iter()
                    .any(|s| s.customer_lago_id == existing.lago_id);
                if has_subscriptions && existing.currency() != currency.as_str() {
                    return Err(LagoError::Validation("currency", "currencies_does_not_match"));
                }
            }
        }
        let index = self.find_or_create_customer(&external_id, now);
        self.customers[index].apply(params, now);
        Ok(index)
    }

    /// `POST /subscriptions`; returns the index of the subscription to answer with.
    pub(crate) fn create_subscription(
        &mut self,
        plans: &[Plan],
        params: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<usize, LagoError> {
        let request = subscriptions::parse_request(params, plans, now)?;
        // Lago saves an auto-created customer before anything below can fail, so it stays even
        // when the subscription is then refused.
        let customer_index = self.find_or_create_customer(&request.external_customer_id, now);
        let customer = &self.customers[customer_index];
        let customer_lago_id = customer.lago_id.clone();
        let editable = !self
            .subscriptions
            .iter()
            .any(|s| s.customer_lago_id == customer_lago_id);
        if !editable && customer.currency().is_some_and(|c| c != request.plan.currency) {
            return Err(LagoError::Validation("currency", "currencies_does_not_match"));
        }

        let current = self
            .subscriptions
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.customer_lago_id == customer_lago_id
                    && s.external_id == request.external_id
                    && (s.status == Status::Active || s.starting_in_the_future())
            })
            .max_by_key(|(_, s)| s.started_at)
            .map(|(index, _)| index);
        if current.is_none()
            && self
                .subscriptions
                .iter()
                .any(|s| s.status == Status::Active && s.external_id == request.external_id)
        {
            return Err(LagoError::Validation("external_id", "value_already_exist"));
        }

        let index = match current {
            Some(index) if self.subscriptions[index].plan_code == request.plan.code => index,
            Some(index) => {
                let current_yearly = plans
                    .iter()
                    .find(|p| p.code == self.subscriptions[index].plan_code)
                    .map_or(0, Plan::yearly_amount_cents);
                if request.plan.yearly_amount_cents() >= current_yearly {
                    subscriptions::upgrade(&mut self.subscriptions, index, &request, now)
                } else {
                    subscriptions::downgrade(&mut self.subscriptions, index, &request, now)
                }
            }
            None => subscriptions::create_new(&mut self.subscriptions, customer_lago_id, &request, now)?,
        };
        if editable {
            self.customers[customer_index].set_currency(&request.plan.currency, now);
        }
        Ok(index)
    }

    /// `DELETE /subscriptions/{external_id}[?status=pending]`: terminates the active
    /// subscription (canceling a scheduled downgrade with it) or cancels a pending one.
    pub(crate) fn terminate_subscription(
        &mut self,
        external_id: &str,
        status: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, LagoError> {
        subscriptions::terminate(&mut self.subscriptions, external_id, status, now)
    }

    /// The newest subscription with this external id and status (Lago's status names).
    pub(crate) fn find_subscription(&self, external_id: &str, status: &str) -> Option<usize> {
        Status::parse(status).and_then(|s| subscriptions::find(&self.subscriptions, external_id, s))
    }

    /// The SubscriptionObject at `index`.
    pub(crate) fn render_subscription(&self, index: usize, plans: &[Plan]) -> Value {
        subscriptions::render(&self.subscriptions[index], &self.subscriptions, plans)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::records::lago::plans::Interval;

    /// The sandbox's default catalogue: a yearly plan costs ten monthly ones.
    fn plans() -> Vec<Plan> {
        [("starter", 1000), ("professional", 2000), ("enterprise", 5000)]
            .into_iter()
            .flat_map(|(tier, monthly)| {
                [
                    ("monthly", monthly, Interval::Monthly),
                    ("yearly", monthly * 10, Interval::Yearly),
                ]
                .map(|(cycle, amount_cents, interval)| Plan {
                    code: format!("{tier}_{cycle}"),
                    amount_cents,
                    currency: "USD".into(),
                    interval,
                })
            })
            .collect()
    }

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn sub(customer: &str, plan: &str, external_id: &str) -> Map<String, Value> {
        params(json!({"external_customer_id": customer, "plan_code": plan, "external_id": external_id}))
    }

    #[test]
    fn upsert_is_a_partial_update() {
        let mut store = LagoStore::default();
        let now = Utc::now();
        let sent = json!({"external_id": "c1", "name": "Ann", "email": "ann@example.com", "currency": "USD"});
        store.upsert_customer(&params(sent), now).unwrap();
        let index = store
            .upsert_customer(
                &params(json!({"external_id": " c1 ", "name": "Ann Lee", "city": null})),
                now,
            )
            .unwrap();
        let customer = store.customers[index].render();
        assert_eq!(store.customers.len(), 1);
        assert_eq!(customer["name"], "Ann Lee");
        assert_eq!(customer["email"], "ann@example.com");
        assert_eq!(customer["currency"], "USD");
        assert_eq!(customer["city"], Value::Null);
        assert_eq!(customer["applicable_timezone"], "UTC");
    }

    #[test]
    fn upsert_validates() {
        let mut store = LagoStore::default();
        let now = Utc::now();
        let check =
            |store: &mut LagoStore, sent: Value| store.upsert_customer(&params(sent), now).unwrap_err();
        assert_eq!(
            check(&mut store, json!({"external_id": "  "})),
            LagoError::Validation("external_id", "value_is_mandatory")
        );
        assert_eq!(
            check(&mut store, json!({"external_id": "c", "email": "nope"})),
            LagoError::Validation("email", "invalid_email_format")
        );
        assert_eq!(
            check(&mut store, json!({"external_id": "c", "currency": "usd"})),
            LagoError::Validation("currency", "value_is_invalid")
        );
        assert!(store.customers.is_empty(), "a rejected upsert creates nothing");
    }

    #[test]
    fn same_plan_is_idempotent_and_ignores_other_params() {
        let (mut store, plans, now) = (LagoStore::default(), plans(), Utc::now());
        let first = store
            .create_subscription(&plans, &sub("c1", "starter_monthly", "s1"), now)
            .unwrap();
        let mut again = sub("c1", "starter_monthly", "s1");
        again.insert("name".into(), json!("renamed"));
        let second = store.create_subscription(&plans, &again, now).unwrap();
        assert_eq!(first, second);
        assert_eq!(store.subscriptions.len(), 1);
        assert_eq!(store.subscriptions[0].name, None);
        assert_eq!(store.customers[0].currency(), Some("USD"));
    }

    #[test]
    fn monthly_to_yearly_of_the_same_tier_is_a_downgrade() {
        // 12 × 1000 > 10000: Lago compares yearly prices, so the yearly discount makes this cheaper.
        let (mut store, plans, now) = (LagoStore::default(), plans(), Utc::now());
        store
            .create_subscription(&plans, &sub("c1", "starter_monthly", "s1"), now)
            .unwrap();
        let index = store
            .create_subscription(&plans, &sub("c1", "starter_yearly", "s1"), now)
            .unwrap();
        let rendered = store.render_subscription(index, &plans);
        assert_eq!(rendered["plan_code"], "starter_monthly");
        assert_eq!(rendered["next_plan_code"], "starter_yearly");
        assert!(rendered["downgrade_plan_date"].is_string());
    }

    #[test]
    fn upgrade_after_downgrade_cancels_the_scheduled_one() {
        let (mut store, plans, now) = (LagoStore::default(), plans(), Utc::now());
        store
            .create_subscription(&plans, &sub("c1", "professional_monthly", "s1"), now)
            .unwrap();
        store
            .create_subscription(&plans, &sub("c1", "starter_monthly", "s1"), now)
            .unwrap();
        let index = store
            .create_subscription(&plans, &sub("c1", "enterprise_monthly", "s1"), now)
            .unwrap();
        let statuses: Vec<_> = store
            .subscriptions
            .iter()
            .map(|s| (s.plan_code.as_str(), s.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("professional_monthly", Status::Terminated),
                ("starter_monthly", Status::Canceled),
                ("enterprise_monthly", Status::Active)
            ]
        );
        assert_eq!(
            store.render_subscription(index, &plans)["previous_plan_code"],
            "professional_monthly"
        );
    }

    #[test]
    fn future_subscription_is_pending_and_changes_plan_in_place() {
        let (mut store, plans, now) = (LagoStore::default(), plans(), Utc::now());
        let mut later = sub("c1", "starter_monthly", "s1");
        later.insert("subscription_at".into(), json!("2999-01-01T00:00:00Z"));
        store.create_subscription(&plans, &later, now).unwrap();
        assert_eq!(store.subscriptions[0].status, Status::Pending);
        store
            .create_subscription(&plans, &sub("c1", "enterprise_monthly", "s1"), now)
            .unwrap();
        assert_eq!(store.subscriptions.len(), 1);
        assert_eq!(store.subscriptions[0].plan_code, "enterprise_monthly");
        // Canceling a pending subscription goes through `status=pending`.
        assert!(store.terminate_subscription("s1", "active", now).is_err());
        store.terminate_subscription("s1", "pending", now).unwrap();
        assert_eq!(store.subscriptions[0].status, Status::Canceled);
    }

    #[test]
    fn currency_of_a_customer_with_subscriptions_cannot_change() {
        let mut plans = plans();
        plans[0].currency = "EUR".into();
        let (mut store, now) = (LagoStore::default(), Utc::now());
        store
            .create_subscription(&plans, &sub("c1", "professional_monthly", "s1"), now)
            .unwrap();
        let err = store
            .create_subscription(&plans, &sub("c1", "starter_monthly", "s2"), now)
            .unwrap_err();
        assert_eq!(
            err,
            LagoError::Validation("currency", "currencies_does_not_match")
        );
    }

    #[test]
    fn request_validation_order() {
        let (mut store, plans, now) = (LagoStore::default(), plans(), Utc::now());
        let err = store
            .create_subscription(&plans, &sub("", "nope", "s1"), now)
            .unwrap_err();
        assert_eq!(err, LagoError::NotFound("plan"));
        let err = store
            .create_subscription(&plans, &sub(" ", "starter_monthly", "s1"), now)
            .unwrap_err();
        assert_eq!(
            err,
            LagoError::Validation("external_customer_id", "value_is_mandatory")
        );
        let mut bad_time = sub("c1", "starter_monthly", "s1");
        bad_time.insert("billing_time".into(), json!("weekly"));
        let err = store.create_subscription(&plans, &bad_time, now).unwrap_err();
        assert_eq!(err, LagoError::Validation("billing_time", "value_is_invalid"));
        assert_eq!(
            store.customers.len(),
            1,
            "the auto-created customer stays, as in Lago"
        );
        let err = store
            .create_subscription(&plans, &sub("c1", "starter_monthly", ""), now)
            .unwrap_err();
        assert_eq!(err, LagoError::Validation("external_id", "value_is_mandatory"));
    }
}
