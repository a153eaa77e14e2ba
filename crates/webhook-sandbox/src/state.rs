//! The sandbox's memory: users, tokens, customers, subscriptions, call counters and faults behind
//! one mutex, plus the immutable parts of the configuration. [`SandboxState`] is also the
//! in-process inspection handle for tests.
//!
//! One `std::sync::Mutex` for everything: requests are tiny, never hold it across an `.await`, and
//! a single lock makes every request atomic, as the real servers' transactions are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use serde_json::{Value, json};

use crate::config::{SandboxConfig, SeedPlan, SeedUser};
use crate::faults::{self, Fault, FaultBook, Route, Stall};
use crate::records::keycloak::{Profile, User, View};
use crate::records::lago::customers::Customer;
use crate::records::lago::plans::Plan;
use crate::records::lago::store::LagoStore;

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
        let now = Instant::now();
        json!({
            "users": users,
            "customers": customers,
            "subscriptions": subscriptions,
            "calls": calls,
            "plans": shared.plans.iter().map(Plan::render).collect::<Vec<_>>(),
            "faults": data.faults.snapshot(),
            "active_tokens": data.tokens.values().filter(|exp| **exp > now).count(),
        })
    }
}
