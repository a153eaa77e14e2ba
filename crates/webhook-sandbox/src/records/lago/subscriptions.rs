//! The Lago subscription record and the plan-change rules over the list of them (contracts
//! §3.2, §3.3), following `Subscriptions::CreateService`, `PlanUpgradeService`,
//! `PlanDowngradeService` and `TerminateService`:
//!
//! - `external_id` is the idempotency key: the same plan again returns the subscription as is;
//! - a plan with a yearly price `>=` is an upgrade: the current subscription is terminated and a
//!   new active one (same `external_id`, `previous_plan_code` set) replaces it at once;
//! - a cheaper plan is a downgrade: a `pending` next subscription is scheduled for the end of the
//!   period and the current one is returned with `next_plan_code` and `downgrade_plan_date`;
//! - terminate is not idempotent (a second DELETE is a 404), and a terminated subscription's
//!   `external_id` can be used again.
//!
//! Choosing between these needs the customer too; that choice is `store`'s.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::common::{LagoError, iso, param_str, parse_time};
use super::plans::{BillingTime, Plan, period};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Active,
    Pending,
    Terminated,
    Canceled,
}

impl Status {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "pending" => Self::Pending,
            "terminated" => Self::Terminated,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Pending => "pending",
            Self::Terminated => "terminated",
            Self::Canceled => "canceled",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub(crate) lago_id: String,
    pub(crate) external_id: String,
    pub(crate) customer_lago_id: String,
    pub(crate) external_customer_id: String,
    pub(crate) plan_code: String,
    pub(crate) status: Status,
    pub(crate) name: Option<String>,
    billing_time: BillingTime,
    created_at: DateTime<Utc>,
    subscription_at: DateTime<Utc>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    terminated_at: Option<DateTime<Utc>>,
    canceled_at: Option<DateTime<Utc>>,
    ending_at: Option<DateTime<Utc>>,
    /// The subscription this one replaced (upgrade) or follows (downgrade), by `lago_id`.
    previous: Option<String>,
    /// The latest subscription that replaced or will replace this one.
    next: Option<String>,
}

impl Subscription {
    /// Lago's `starting_in_the_future?`: pending, and not the scheduled half of a downgrade.
    pub(crate) fn starting_in_the_future(&self) -> bool {
        self.status == Status::Pending && self.previous.is_none()
    }
}

/// The parsed request, in the order Lago validates it.
pub(crate) struct Request<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) external_customer_id: String,
    pub(crate) external_id: String,
    name: Option<String>,
    billing_time: Option<Value>,
    subscription_at: DateTime<Utc>,
    ending_at: Option<Option<DateTime<Utc>>>,
}

pub(crate) fn parse_request<'a>(
    params: &Map<String, Value>,
    plans: &'a [Plan],
    now: DateTime<Utc>,
) -> Result<Request<'a>, LagoError> {
    let plan = param_str(params, "plan_code")
        .and_then(|code| plans.iter().find(|p| p.code == code))
        .ok_or(LagoError::NotFound("plan"))?;
    let subscription_at = match params.get("subscription_at") {
        None | Some(Value::Null) => now,
        Some(value) => parse_time(value).ok_or(LagoError::Validation("subscription_at", "invalid_date"))?,
    };
    let ending_at = match params.get("ending_at") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(value) => match parse_time(value) {
            Some(t) if t > subscription_at && t > now => Some(Some(t)),
            _ => return Err(LagoError::Validation("ending_at", "invalid_date")),
        },
    };
    let external_customer_id = param_str(params, "external_customer_id").unwrap_or_default();
    if external_customer_id.is_empty() {
        return Err(LagoError::Validation(
            "external_customer_id",
            "value_is_mandatory",
        ));
    }
    Ok(Request {
        plan,
        external_customer_id,
        external_id: param_str(params, "external_id").unwrap_or_default(),
        name: param_str(params, "name").filter(|n| !n.is_empty()),
        billing_time: params.get("billing_time").filter(|v| !v.is_null()).cloned(),
        subscription_at,
        ending_at,
    })
}

/// A first subscription with this `external_id` for the customer.
pub(crate) fn create_new(
    subscriptions: &mut Vec<Subscription>,
    customer_lago_id: String,
    request: &Request<'_>,
    now: DateTime<Utc>,
) -> Result<usize, LagoError> {
    let billing_time = match &request.billing_time {
        None => BillingTime::Calendar,
        Some(value) => value
            .as_str()
            .and_then(BillingTime::parse)
            .ok_or(LagoError::Validation("billing_time", "value_is_invalid"))?,
    };
    if request.external_id.is_empty() {
        return Err(LagoError::Validation("external_id", "value_is_mandatory"));
    }
    // Today or a past date activates at once (backdated); a future date waits as pending.
    let future = request.subscription_at.date_naive() > now.date_naive();
    subscriptions.push(Subscription {
        lago_id: uuid::Uuid::new_v4().to_string(),
        external_id: request.external_id.clone(),
        customer_lago_id,
        external_customer_id: request.external_customer_id.clone(),
        plan_code: request.plan.code.clone(),
        status: if future { Status::Pending } else { Status::Active },
        name: request.name.clone(),
        billing_time,
        created_at: now,
        subscription_at: request.subscription_at,
        started_at: (!future).then_some(request.subscription_at),
        terminated_at: None,
        canceled_at: None,
        ending_at: request.ending_at.flatten(),
        previous: None,
        next: None,
    });
    Ok(subscriptions.len() - 1)
}

/// A subscription that has not started yet just changes plan, in either direction.
fn change_pending_plan(subscriptions: &mut [Subscription], index: usize, request: &Request<'_>) -> usize {
    let current = &mut subscriptions[index];
    current.plan_code = request.plan.code.clone();
    if let Some(name) = &request.name {
        current.name = Some(name.clone());
    }
    index
}

/// A downgrade scheduled earlier is dropped by any later plan change.
fn cancel_pending_next(subscriptions: &mut [Subscription], index: usize, now: DateTime<Utc>) {
    let Some(next_id) = subscriptions[index].next.clone() else {
        return;
    };
    if let Some(next) = subscriptions
        .iter_mut()
        .find(|s| s.lago_id == next_id && s.status == Status::Pending)
    {
        next.status = Status::Canceled;
        next.canceled_at = Some(now);
    }
}

/// A successor of `current` with the new plan; it keeps the original `subscription_at`,
/// `billing_time` and `external_id`, takes `name` from the request.
fn successor(
    current: &Subscription,
    request: &Request<'_>,
    status: Status,
    now: DateTime<Utc>,
) -> Subscription {
    Subscription {
        lago_id: uuid::Uuid::new_v4().to_string(),
        plan_code: request.plan.code.clone(),
        status,
        name: request.name.clone(),
        created_at: now,
        started_at: (status == Status::Active).then_some(now),
        terminated_at: None,
        canceled_at: None,
        ending_at: request.ending_at.unwrap_or(current.ending_at),
        previous: Some(current.lago_id.clone()),
        next: None,
        ..current.clone()
    }
}

/// A plan at least as expensive per year: the current subscription is replaced at once.
pub(crate) fn upgrade(
    subscriptions: &mut Vec<Subscription>,
    index: usize,
    request: &Request<'_>,
    now: DateTime<Utc>,
) -> usize {
    if subscriptions[index].starting_in_the_future() {
        return change_pending_plan(subscriptions, index, request);
    }
    cancel_pending_next(subscriptions, index, now);
    let new = successor(&subscriptions[index], request, Status::Active, now);
    let current = &mut subscriptions[index];
    current.status = Status::Terminated;
    current.terminated_at = Some(now);
    current.next = Some(new.lago_id.clone());
    subscriptions.push(new);
    subscriptions.len() - 1
}

/// A cheaper plan: scheduled for the end of the current period.
pub(crate) fn downgrade(
    subscriptions: &mut Vec<Subscription>,
    index: usize,
    request: &Request<'_>,
    now: DateTime<Utc>,
) -> usize {
    if subscriptions[index].starting_in_the_future() {
        return change_pending_plan(subscriptions, index, request);
    }
    cancel_pending_next(subscriptions, index, now);
    let next = successor(&subscriptions[index], request, Status::Pending, now);
    subscriptions[index].next = Some(next.lago_id.clone());
    subscriptions.push(next);
    index
}

/// The newest subscription with this external id and status.
pub(crate) fn find(subscriptions: &[Subscription], external_id: &str, status: Status) -> Option<usize> {
    subscriptions
        .iter()
        .enumerate()
        .filter(|(_, s)| s.external_id == external_id && s.status == status)
        .max_by_key(|(_, s)| s.created_at)
        .map(|(index, _)| index)
}

/// `DELETE /subscriptions/{external_id}[?status=pending]`: terminates the active subscription
/// (canceling a scheduled downgrade with it) or cancels a pending one.
pub(crate) fn terminate(
    subscriptions: &mut [Subscription],
    external_id: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Result<usize, LagoError> {
    let status = Status::parse(status).filter(|s| matches!(s, Status::Active | Status::Pending));
    let index = status
        .and_then(|s| find(subscriptions, external_id, s))
        .ok_or(LagoError::NotFound("subscription"))?;
    if subscriptions[index].status == Status::Pending {
        let subscription = &mut subscriptions[index];
        subscription.status = Status::Canceled;
        subscription.canceled_at = Some(now);
    } else {
        cancel_pending_next(subscriptions, index, now);
        let subscription = &mut subscriptions[index];
        subscription.status = Status::Terminated;
        subscription.terminated_at = Some(now);
    }
    Ok(index)
}

/// A SubscriptionObject; `all` is every subscription, for the previous and next plans.
pub(crate) fn render(subscription: &Subscription, all: &[Subscription], plans: &[Plan]) -> Value {
    let by_id = |id: &Option<String>| id.as_ref().and_then(|id| all.iter().find(|s| &s.lago_id == id));
    let plan = plans.iter().find(|p| p.code == subscription.plan_code);
    let previous = by_id(&subscription.previous);
    // Lago's `next_subscription` ignores canceled ones.
    let next = by_id(&subscription.next).filter(|n| n.status != Status::Canceled);
    let today = Utc::now().date_naive();
    let current_period = plan
        .filter(|_| subscription.status == Status::Active)
        .map(|plan| {
            let (start, next_start) = period(
                plan.interval,
                subscription.billing_time,
                subscription.subscription_at.date_naive(),
                today,
            );
            let started = subscription
                .started_at
                .map_or(start, |t| t.date_naive().max(start));
            (started, next_start)
        });
    let downgrade_plan_date = next
        .filter(|n| n.status == Status::Pending && subscription.status == Status::Active)
        .and(current_period)
        .map(|(_, next_start)| next_start.to_string());
    let time = |t: Option<DateTime<Utc>>| t.map(iso);
    json!({
        "lago_id": subscription.lago_id,
        "external_id": subscription.external_id,
        "lago_customer_id": subscription.customer_lago_id,
        "external_customer_id": subscription.external_customer_id,
        "billing_entity_code": "default",
        "billing_time": subscription.billing_time.as_str(),
        "name": subscription.name,
        "plan_code": subscription.plan_code,
        "plan_amount_cents": plan.map(|p| p.amount_cents),
        "plan_amount_currency": plan.map(|p| p.currency.as_str()),
        "status": subscription.status.as_str(),
        "created_at": iso(subscription.created_at),
        "canceled_at": time(subscription.canceled_at),
        "started_at": time(subscription.started_at),
        "activated_at": time(subscription.started_at),
        "ending_at": time(subscription.ending_at),
        "subscription_at": iso(subscription.subscription_at),
        "terminated_at": time(subscription.terminated_at),
        "previous_plan_code": previous.map(|p| p.plan_code.as_str()),
        "next_plan_code": next.map(|n| n.plan_code.as_str()),
        "downgrade_plan_date": downgrade_plan_date,
        "trial_ended_at": null,
        "current_billing_period_started_at": current_period
            .map(|(start, _)| format!("{start}T00:00:00Z")),
        "current_billing_period_ending_at": current_period
            .and_then(|(_, next_start)| next_start.pred_opt())
            .map(|end| format!("{end}T23:59:59Z")),
        "on_termination_credit_note": null,
        "on_termination_invoice": "generate",
        "payment_method": {"payment_method_type": "provider", "payment_method_id": null},
        "consolidate_invoice": false,
        "cancellation_reason": null,
        "activation_rules": [],
        "purchase_order_number": null,
    })
}
