//! The sandbox's memory: users, tokens, Lago's customers and subscriptions, the Stripe account,
//! call counters and faults behind one mutex, plus the immutable parts of the configuration.
//! [`SandboxState`] is also the in-process handle for tests: inspection, seeding, faults, and
//! changes made "by hand" (as a person would in the Keycloak or Lago console).
//!
//! One `std::sync::Mutex` for everything: requests are tiny, never hold it across an `.await`, and
//! a single lock makes every request atomic, as the real servers' transactions are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use serde_json::{Value, json};

use crate::config::{SandboxConfig, SeedPlan, SeedUser};
use crate::error::SandboxError;
use crate::faults::{self, Fault, FaultBook, Route, Stall};
use crate::records::keycloak::{Profile, User, View};
use crate::records::lago::customers::Customer;
use crate::records::lago::plans::Plan;
use crate::records::lago::store::LagoStore;
use crate::records::stripe::store::{Kind, StripeStore};

/// Cheap to clone: all clones share the same sandbox.
#[derive(Clone)]
pub struct SandboxState {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: SandboxConfig,
    pub(crate) profile: Profile,
    pub(crate) plans: Vec<Plan>,
    data: Mutex<Data>,
}

#[derive(Default)]
pub(crate) struct Data {
    /// In creation order; searches sort by username like Keycloak.
    pub(crate) users: Vec<User>,
    /// Issued access tokens and when they stop being accepted.
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) lago: LagoStore,
    /// The Stripe API stand-in's account: events, current subscriptions and customers.
    pub(crate) stripe: StripeStore,
    pub(crate) faults: FaultBook,
    pub(crate) calls: HashMap<Route, u64>,
    /// When each call arrived, per route: lets a test measure the wait between a refused call
    /// and its retry (a `Retry-After` honoured) from the server's side.
    pub(crate) arrivals: HashMap<Route, Vec<Instant>>,
}

impl SandboxState {
    /// Validates the configuration and loads the seed data.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let plans = config
            .plans
            .iter()
            .map(SeedPlan::to_plan)
            .collect::<Option<Vec<_>>>();
        let plans = plans.ok_or_else(|| anyhow::anyhow!("invalid plan interval"))?;
        let profile = Profile::new(&config.managed_attributes, config.unmanaged_attribute_policy);
        let users = config.users.iter().cloned().map(SeedUser::into_user).collect();
        let data = Data {
            users,
            ..Data::default()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                profile,
                plans,
                data: Mutex::new(data),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// A panic in one handler must not turn every later request into a poison error: the data is
    /// only ever mutated after validation, so it stays consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Data> {
        self.shared.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called first by every external route: counts the call, applies the latency, and returns
    /// the stall or fault response if one is due.
    pub(crate) async fn enter(&self, route: Route) -> Option<HttpResponse> {
        let (latency, stall, fault) = {
            let mut data = self.lock();
            *data.calls.entry(route).or_default() += 1;
            data.arrivals.entry(route).or_default().push(Instant::now());
            let stall = data.faults.take_stall(route);
            let fault = if stall.is_none() {
                data.faults.take(route)
            } else {
                None
            };
            (data.faults.latency(route), stall, fault)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(delay) = stall {
            tokio::time::sleep(delay).await;
            tracing::info!(
                route = route.as_str(),
                delay_ms = delay.as_millis() as u64,
                "sandbox: stalled call"
            );
            return Some(faults::stalled(route));
        }
        let fault = fault?;
        tracing::info!(
            route = route.as_str(),
            status = fault.status,
            "sandbox: injected fault"
        );
        Some(faults::response(&fault))
    }

    /// Adds a Keycloak user as if it were already in the database. Duplicate emails are allowed
    /// on purpose: realms with "duplicate emails" exist, and the worker must handle 2+ matches.
    pub fn add_user(&self, user: SeedUser) -> String {
        let user = user.into_user();
        let id = user.id.clone();
        self.lock().users.push(user);
        id
    }

    /// Deletes the user with this email (as an admin would in the console); `false` if none.
    pub fn delete_user(&self, email: &str) -> bool {
        let email = email.to_lowercase();
        let mut data = self.lock();
        let before = data.users.len();
        data.users.retain(|u| u.email.as_deref() != Some(email.as_str()));
        data.users.len() != before
    }

    /// Changes a user's email (the user changed it in their account); `false` if none has `from`.
    pub fn change_email(&self, from: &str, to: &str) -> bool {
        let (from, to) = (from.to_lowercase(), to.to_lowercase());
        let mut data = self.lock();
        match data
            .users
            .iter_mut()
            .find(|u| u.email.as_deref() == Some(from.as_str()))
        {
            Some(u) => {
                u.email = Some(to);
                true
            }
            None => false,
        }
    }

    /// The stored user (first match, case-insensitive) as a full UserRepresentation, including
    /// attributes the admin API would hide under the current unmanaged-attribute policy.
    pub fn user_by_email(&self, email: &str) -> Option<Value> {
        let email = email.to_lowercase();
        let data = self.lock();
        let user = data
            .users
            .iter()
            .find(|u| u.email.as_deref() == Some(email.as_str()))?;
        Some(user.representation(&self.shared.profile, View::Stored))
    }

    /// Sets one attribute of a Keycloak user in the database, as an admin would by hand in the
    /// console: `user` is the user's id or email (first match, case-insensitive); empty
    /// `values` remove the attribute. Not subject to the unmanaged-attribute policy, and not a
    /// call of the admin API (no counter moves).
    pub fn set_user_attribute(
        &self,
        user: &str,
        name: &str,
        values: &[impl AsRef<str>],
    ) -> Result<(), SandboxError> {
        let email = user.to_lowercase();
        let mut data = self.lock();
        let index = data
            .users
            .iter()
            .position(|u| u.id == user)
            .or_else(|| {
                data.users
                    .iter()
                    .position(|u| u.email.as_deref() == Some(email.as_str()))
            })
            .ok_or_else(|| SandboxError::NotFound(format!("no Keycloak user with id or email {user:?}")))?;
        data.users[index]
            .set_attribute(name, values)
            .map_err(SandboxError::Invalid)?;
        tracing::info!(user, attribute = name, "keycloak: attribute set by hand");
        Ok(())
    }

    /// Terminates the active Lago subscription with this `external_id` by hand (status
    /// `terminated`, a scheduled downgrade canceled with it), as in Lago's UI: not a call of
    /// the API. Returns the terminated SubscriptionObject.
    pub fn terminate_subscription_by_hand(&self, external_id: &str) -> Result<Value, SandboxError> {
        let mut data = self.lock();
        let index = data
            .lago
            .terminate_subscription(external_id, "active", chrono::Utc::now())
            .map_err(|_| SandboxError::NotFound(format!("no active Lago subscription {external_id:?}")))?;
        tracing::info!(external_id, "lago: subscription terminated by hand");
        Ok(data.lago.render_subscription(index, &self.shared.plans))
    }

    /// Adds events to the Stripe account (what `GET /v1/events` lists), all or none: each
    /// needs an `evt_` id not stored yet ([`SandboxError::Conflict`] otherwise), a `type`, an
    /// integer `created` and a `data.object`. An event whose `data.object` is a subscription or
    /// a customer also makes it the current one, unless a newer event (by `created`) or a later
    /// put already changed it. Returns how many were added.
    pub fn stripe_add_events(&self, events: Vec<Value>) -> Result<usize, SandboxError> {
        let added = self.lock().stripe.add_events(events)?;
        Ok(added)
    }

    /// Sets Stripe's current subscription (`GET /v1/subscriptions/{id}`), by its `id`
    /// (`sub_…`), as a change made now: an event created before now no longer overrides it.
    pub fn stripe_put_subscription(&self, subscription: Value) -> Result<(), SandboxError> {
        self.stripe_put(Kind::Subscription, None, subscription).map(drop)
    }

    /// Sets Stripe's current customer (`GET /v1/customers/{id}`), by its `id` (`cus_…`), like
    /// [`Self::stripe_put_subscription`].
    pub fn stripe_put_customer(&self, customer: Value) -> Result<(), SandboxError> {
        self.stripe_put(Kind::Customer, None, customer).map(drop)
    }

    pub(crate) fn stripe_put(
        &self,
        kind: Kind,
        path_id: Option<&str>,
        body: Value,
    ) -> Result<Value, SandboxError> {
        let now = chrono::Utc::now().timestamp();
        self.lock().stripe.put(kind, path_id, body, now)
    }

    /// The stored Stripe event, as `GET /v1/events/{id}` returns it.
    pub fn stripe_event(&self, id: &str) -> Option<Value> {
        self.lock().stripe.event(id).cloned()
    }

    /// Stripe's current subscription, as `GET /v1/subscriptions/{id}` returns it.
    pub fn stripe_subscription(&self, id: &str) -> Option<Value> {
        self.lock().stripe.object(Kind::Subscription, id).cloned()
    }

    /// Stripe's current customer, as `GET /v1/customers/{id}` returns it.
    pub fn stripe_customer(&self, id: &str) -> Option<Value> {
        self.lock().stripe.object(Kind::Customer, id).cloned()
    }

    /// Makes every issued token invalid, as if they had all expired.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn inject_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Holds the next `stall.count` calls of its route, then answers 504 without handling them.
    pub fn inject_stall(&self, stall: Stall) {
        self.lock().faults.push_stall(stall);
    }

    /// Delay before handling; `None` = every route without a latency of its own.
    pub fn set_latency(&self, route: Option<Route>, latency: Duration) {
        self.lock().faults.set_latency(route, latency);
    }

    /// Removes pending faults and stalls, and every latency.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Requests that reached `route`, faulted and unauthorized ones included.
    pub fn calls(&self, route: Route) -> u64 {
        self.lock().calls.get(&route).copied().unwrap_or(0)
    }

    /// When each call of `route` arrived, oldest first (faulted, stalled and unauthorized
    /// ones included, like [`Self::calls`]).
    pub fn arrivals(&self, route: Route) -> Vec<Instant> {
        self.lock().arrivals.get(&route).cloned().unwrap_or_default()
    }

    /// Everything stored, as served by `GET /_sandbox/state`.
    pub fn snapshot(&self) -> Value {
        let shared = &self.shared;
        let data = self.lock();
        let users: Vec<_> = data
            .users
            .iter()
            .map(|u| u.representation(&shared.profile, View::Stored))
            .collect();
        let customers: Vec<_> = data.lago.customers.iter().map(Customer::render).collect();
        let subscriptions: Vec<_> = (0..data.lago.subscriptions.len())
            .map(|index| data.lago.render_subscription(index, &shared.plans))
            .collect();
        let calls: serde_json::Map<_, _> = Route::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str().to_owned(),
                    json!(data.calls.get(r).copied().unwrap_or(0)),
                )
            })
            .collect();
        let (events, stripe_subscriptions, stripe_customers) = data.stripe.counts();
        let stripe_calls: serde_json::Map<_, _> = Route::ALL
            .iter()
            .filter(|r| r.is_stripe())
            .map(|r| (r.as_str().to_owned(), calls[r.as_str()].clone()))
            .collect();
        let now = Instant::now();
        json!({
            "users": users,
            "customers": customers,
            "subscriptions": subscriptions,
            "calls": calls,
            "plans": shared.plans.iter().map(Plan::render).collect::<Vec<_>>(),
            "faults": data.faults.snapshot(),
            "active_tokens": data.tokens.values().filter(|exp| **exp > now).count(),
            "stripe": {
                "events": events,
                "subscriptions": stripe_subscriptions,
                "customers": stripe_customers,
                "calls": stripe_calls,
            },
        })
    }
}
