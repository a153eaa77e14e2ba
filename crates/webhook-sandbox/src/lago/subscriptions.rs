//! Lago subscriptions (contracts §3.2, §3.3), following `Subscriptions::CreateService`,
//! `PlanUpgradeService`, `PlanDowngradeService` and `TerminateService`:
//!
//! - `external_id` is the idempotency key: the same plan again returns the subscription as is;
//! - a plan with a yearly price `>=` is an upgrade: the current subscription is terminated and a
//!   new active one (same `external_id`, `previous_plan_code` set) replaces it at once;
//! - a cheaper plan is a downgrade: a `pending` next subscription is scheduled for the end of the
//!   period and the current one is returned with `next_plan_code` and `downgrade_plan_date`;
//! - terminate is not idempotent (a second DELETE is a 404), and a terminated subscription's
//!   `external_id` can be used again.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::plans::{BillingTime, Plan, period};
use super::{LagoError, authorize, customers, iso, param_str, parse_time, require_root};
use crate::faults::Route;
use crate::state::{Data, SandboxState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Active,
    Pending,
    Terminated,
    Canceled,
}

impl Status {
    fn parse(text: &str) -> Option<Self> {
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
    name: Option<String>,
    billing_time: BillingTime,
    created_at: DateTime<Utc>,
    subscription_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
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
    fn starting_in_the_future(&self) -> bool {
        self.status == Status::Pending && self.previous.is_none()
    }
}

/// The parsed request, in the order Lago validates it.
struct Request<'a> {
    plan: &'a Plan,
    external_customer_id: String,
    external_id: String,
    name: Option<String>,
    billing_time: Option<Value>,
    subscription_at: DateTime<Utc>,
    ending_at: Option<Option<DateTime<Utc>>>,
}

fn parse_request<'a>(
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

/// `POST /subscriptions`; returns the index of the subscription to answer with.
pub(crate) fn create(
    data: &mut Data,
    plans: &[Plan],
    params: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<usize, LagoError> {
    let request = parse_request(params, plans, now)?;
    // Lago saves an auto-created customer before anything below can fail, so it stays even
    // when the subscription is then refused.
    let customer_index = customers::find_or_create(data, &request.external_customer_id, now);
    let customer = &data.customers[customer_index];
    let customer_lago_id = customer.lago_id.clone();
    let editable = !data
        .subscriptions
        .iter()
        .any(|s| s.customer_lago_id == customer_lago_id);
    if !editable && customer.currency().is_some_and(|c| c != request.plan.currency) {
        return Err(LagoError::Validation("currency", "currencies_does_not_match"));
    }

    let current = data
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
        && data
            .subscriptions
            .iter()
            .any(|s| s.status == Status::Active && s.external_id == request.external_id)
    {
        return Err(LagoError::Validation("external_id", "value_already_exist"));
    }

    let index = match current {
        Some(index) if data.subscriptions[index].plan_code == request.plan.code => index,
        Some(index) => {
            let current_yearly = plans
                .iter()
                .find(|p| p.code == data.subscriptions[index].plan_code)
                .map_or(0, Plan::yearly_amount_cents);
            if request.plan.yearly_amount_cents() >= current_yearly {
                upgrade(data, index, &request, now)
            } else {
                downgrade(data, index, &request, now)
            }
        }
        None => create_new(data, customer_lago_id, &request, now)?,
    };
    if editable {
        data.customers[customer_index].set_currency(&request.plan.currency, now);
    }
    Ok(index)
}

fn create_new(
    data: &mut Data,
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
    data.subscriptions.push(Subscription {
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
    Ok(data.subscriptions.len() - 1)
}

/// A subscription that has not started yet just changes plan, in either direction.
fn change_pending_plan(data: &mut Data, index: usize, request: &Request<'_>) -> usize {
    let current = &mut data.subscriptions[index];
    current.plan_code = request.plan.code.clone();
    if let Some(name) = &request.name {
        current.name = Some(name.clone());
    }
    index
}

/// A downgrade scheduled earlier is dropped by any later plan change.
fn cancel_pending_next(data: &mut Data, index: usize, now: DateTime<Utc>) {
    let Some(next_id) = data.subscriptions[index].next.clone() else {
        return;
    };
    if let Some(next) = data
        .subscriptions
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

fn upgrade(data: &mut Data, index: usize, request: &Request<'_>, now: DateTime<Utc>) -> usize {
    if data.subscriptions[index].starting_in_the_future() {
        return change_pending_plan(data, index, request);
    }
    cancel_pending_next(data, index, now);
    let new = successor(&data.subscriptions[index], request, Status::Active, now);
    let current = &mut data.subscriptions[index];
    current.status = Status::Terminated;
    current.terminated_at = Some(now);
    current.next = Some(new.lago_id.clone());
    data.subscriptions.push(new);
    data.subscriptions.len() - 1
}

fn downgrade(data: &mut Data, index: usize, request: &Request<'_>, now: DateTime<Utc>) -> usize {
    if data.subscriptions[index].starting_in_the_future() {
        return change_pending_plan(data, index, request);
    }
    cancel_pending_next(data, index, now);
    let next = successor(&data.subscriptions[index], request, Status::Pending, now);
    data.subscriptions[index].next = Some(next.lago_id.clone());
    data.subscriptions.push(next);
    index
}

/// The newest subscription with this external id and status.
fn find(data: &Data, external_id: &str, status: Status) -> Option<usize> {
    data.subscriptions
        .iter()
        .enumerate()
        .filter(|(_, s)| s.external_id == external_id && s.status == status)
        .max_by_key(|(_, s)| s.created_at)
        .map(|(index, _)| index)
}

/// `DELETE /subscriptions/{external_id}[?status=pending]`: terminates the active subscription
/// (canceling a scheduled downgrade with it) or cancels a pending one.
pub(crate) fn terminate(
    data: &mut Data,
    external_id: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Result<usize, LagoError> {
    let status = Status::parse(status).filter(|s| matches!(s, Status::Active | Status::Pending));
    let index = status
        .and_then(|s| find(data, external_id, s))
        .ok_or(LagoError::NotFound("subscription"))?;
    if data.subscriptions[index].status == Status::Pending {
        let subscription = &mut data.subscriptions[index];
        subscription.status = Status::Canceled;
        subscription.canceled_at = Some(now);
    } else {
        cancel_pending_next(data, index, now);
        let subscription = &mut data.subscriptions[index];
        subscription.status = Status::Terminated;
        subscription.terminated_at = Some(now);
    }
    Ok(index)
}

/// A SubscriptionObject.
pub(crate) fn render(subscription: &Subscription, data: &Data, plans: &[Plan]) -> Value {
    let by_id = |id: &Option<String>| {
        id.as_ref()
            .and_then(|id| data.subscriptions.iter().find(|s| &s.lago_id == id))
    };
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

fn respond(state: &SandboxState, data: &Data, index: usize) -> HttpResponse {
    let body = render(&data.subscriptions[index], data, &state.shared().plans);
    HttpResponse::Ok().json(json!({"subscription": body}))
}

pub(crate) async fn post(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoCreateSubscription).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let params = require_root(&body, "subscription")?;
    let mut data = state.lock();
    let index = create(&mut data, &state.shared().plans, &params, Utc::now())?;
    let response = respond(&state, &data, index);
    let sub = &data.subscriptions[index];
    tracing::info!(
        external_id = %sub.external_id, customer = %sub.external_customer_id, plan = %sub.plan_code,
        status = ?sub.status, "lago: subscription assigned"
    );
    Ok(response)
}

#[derive(serde::Deserialize)]
pub(crate) struct StatusQuery {
    status: Option<String>,
}

pub(crate) async fn get(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    external_id: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoGetSubscription).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let data = state.lock();
    let status = Status::parse(query.status.as_deref().unwrap_or("active"));
    let index = status
        .and_then(|s| find(&data, &external_id, s))
        .ok_or(LagoError::NotFound("subscription"))?;
    Ok(respond(&state, &data, index))
}

pub(crate) async fn delete(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    external_id: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoTerminateSubscription).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let mut data = state.lock();
    let status = query.status.as_deref().unwrap_or("active");
    let index = terminate(&mut data, &external_id, status, Utc::now())?;
    Ok(respond(&state, &data, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;

    fn plans() -> Vec<Plan> {
        SandboxConfig::default()
            .plans
            .iter()
            .map(|p| Plan::from_seed(p).unwrap())
            .collect()
    }

    fn params(customer: &str, plan: &str, external_id: &str) -> Map<String, Value> {
        json!({"external_customer_id": customer, "plan_code": plan, "external_id": external_id})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn same_plan_is_idempotent_and_ignores_other_params() {
        let (mut data, plans, now) = (Data::default(), plans(), Utc::now());
        let first = create(&mut data, &plans, &params("c1", "starter_monthly", "s1"), now).unwrap();
        let mut again = params("c1", "starter_monthly", "s1");
        again.insert("name".into(), json!("renamed"));
        let second = create(&mut data, &plans, &again, now).unwrap();
        assert_eq!(first, second);
        assert_eq!(data.subscriptions.len(), 1);
        assert_eq!(data.subscriptions[0].name, None);
        assert_eq!(data.customers[0].currency(), Some("USD"));
    }

    #[test]
    fn monthly_to_yearly_of_the_same_tier_is_a_downgrade() {
        // 12 × 1000 > 10000: Lago compares yearly prices, so the yearly discount makes this cheaper.
        let (mut data, plans, now) = (Data::default(), plans(), Utc::now());
        create(&mut data, &plans, &params("c1", "starter_monthly", "s1"), now).unwrap();
        let index = create(&mut data, &plans, &params("c1", "starter_yearly", "s1"), now).unwrap();
        let rendered = render(&data.subscriptions[index], &data, &plans);
        assert_eq!(rendered["plan_code"], "starter_monthly");
        assert_eq!(rendered["next_plan_code"], "starter_yearly");
        assert!(rendered["downgrade_plan_date"].is_string());
    }

    #[test]
    fn upgrade_after_downgrade_cancels_the_scheduled_one() {
        let (mut data, plans, now) = (Data::default(), plans(), Utc::now());
        create(
            &mut data,
            &plans,
            &params("c1", "professional_monthly", "s1"),
            now,
        )
        .unwrap();
        create(&mut data, &plans, &params("c1", "starter_monthly", "s1"), now).unwrap();
        let index = create(&mut data, &plans, &params("c1", "enterprise_monthly", "s1"), now).unwrap();
        let statuses: Vec<_> = data
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
            render(&data.subscriptions[index], &data, &plans)["previous_plan_code"],
            "professional_monthly"
        );
    }

    #[test]
    fn future_subscription_is_pending_and_changes_plan_in_place() {
        let (mut data, plans, now) = (Data::default(), plans(), Utc::now());
        let mut later = params("c1", "starter_monthly", "s1");
        later.insert("subscription_at".into(), json!("2999-01-01T00:00:00Z"));
        create(&mut data, &plans, &later, now).unwrap();
        assert_eq!(data.subscriptions[0].status, Status::Pending);
        create(&mut data, &plans, &params("c1", "enterprise_monthly", "s1"), now).unwrap();
        assert_eq!(data.subscriptions.len(), 1);
        assert_eq!(data.subscriptions[0].plan_code, "enterprise_monthly");
        // Canceling a pending subscription goes through `status=pending`.
        assert!(terminate(&mut data, "s1", "active", now).is_err());
        terminate(&mut data, "s1", "pending", now).unwrap();
        assert_eq!(data.subscriptions[0].status, Status::Canceled);
    }

    #[test]
    fn currency_of_a_customer_with_subscriptions_cannot_change() {
        let mut config = SandboxConfig::default();
        config.plans[0].currency = "EUR".into();
        let plans: Vec<_> = config.plans.iter().map(|p| Plan::from_seed(p).unwrap()).collect();
        let (mut data, now) = (Data::default(), Utc::now());
        create(
            &mut data,
            &plans,
            &params("c1", "professional_monthly", "s1"),
            now,
        )
        .unwrap();
        let err = create(&mut data, &plans, &params("c1", "starter_monthly", "s2"), now).unwrap_err();
        assert_eq!(
            err,
            LagoError::Validation("currency", "currencies_does_not_match")
        );
    }

    #[test]
    fn request_validation_order() {
        let (mut data, plans, now) = (Data::default(), plans(), Utc::now());
        let err = create(&mut data, &plans, &params("", "nope", "s1"), now).unwrap_err();
        assert_eq!(err, LagoError::NotFound("plan"));
        let err = create(&mut data, &plans, &params(" ", "starter_monthly", "s1"), now).unwrap_err();
        assert_eq!(
            err,
            LagoError::Validation("external_customer_id", "value_is_mandatory")
        );
        let mut bad_time = params("c1", "starter_monthly", "s1");
        bad_time.insert("billing_time".into(), json!("weekly"));
        let err = create(&mut data, &plans, &bad_time, now).unwrap_err();
        assert_eq!(err, LagoError::Validation("billing_time", "value_is_invalid"));
        assert_eq!(
            data.customers.len(),
            1,
            "the auto-created customer stays, as in Lago"
        );
        let err = create(&mut data, &plans, &params("c1", "starter_monthly", ""), now).unwrap_err();
        assert_eq!(err, LagoError::Validation("external_id", "value_is_mandatory"));
    }
}
