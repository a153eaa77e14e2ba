//! Fault injection and latency, so tests can exercise the worker's retry paths: the next N calls
//! of a route answer a chosen status (with a realistic body for that API and an optional
//! `Retry-After`) or stall until the client times out, and any route can be slowed down.
//!
//! A faulted call is counted but changes no state, like a proxy or overloaded server refusing it
//! before the application sees it; that is also why faults are checked before authentication.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Every external endpoint the sandbox serves, for counting calls and aiming faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    KeycloakToken,
    KeycloakSearchUsers,
    KeycloakGetUser,
    KeycloakPutUser,
    LagoCreateCustomer,
    LagoGetCustomer,
    LagoCreateSubscription,
    LagoGetSubscription,
    LagoTerminateSubscription,
    /// `GET /v1/events` and `GET /v1/events/{id}`.
    StripeEvents,
    /// `GET /v1/subscriptions` and `GET /v1/subscriptions/{id}`.
    StripeSubscriptions,
    /// `GET /v1/customers/{id}`.
    StripeCustomers,
}

impl Route {
    pub const ALL: [Route; 12] = [
        Route::KeycloakToken,
        Route::KeycloakSearchUsers,
        Route::KeycloakGetUser,
        Route::KeycloakPutUser,
        Route::LagoCreateCustomer,
        Route::LagoGetCustomer,
        Route::LagoCreateSubscription,
        Route::LagoGetSubscription,
        Route::LagoTerminateSubscription,
        Route::StripeEvents,
        Route::StripeSubscriptions,
        Route::StripeCustomers,
    ];

    /// The serde name, e.g. `lago_create_subscription`.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::KeycloakToken => "keycloak_token",
            Route::KeycloakSearchUsers => "keycloak_search_users",
            Route::KeycloakGetUser => "keycloak_get_user",
            Route::KeycloakPutUser => "keycloak_put_user",
            Route::LagoCreateCustomer => "lago_create_customer",
            Route::LagoGetCustomer => "lago_get_customer",
            Route::LagoCreateSubscription => "lago_create_subscription",
            Route::LagoGetSubscription => "lago_get_subscription",
            Route::LagoTerminateSubscription => "lago_terminate_subscription",
            Route::StripeEvents => "stripe_events",
            Route::StripeSubscriptions => "stripe_subscriptions",
            Route::StripeCustomers => "stripe_customers",
        }
    }

    /// The Stripe API stand-in's routes.
    pub fn is_stripe(self) -> bool {
        matches!(
            self,
            Route::StripeEvents | Route::StripeSubscriptions | Route::StripeCustomers
        )
    }
}

/// "Answer the next `count` calls of `route` with `status`."
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub route: Route,
    pub status: u16,
    #[serde(default = "one")]
    pub count: u32,
    /// Sent as `Retry-After: <secs>`, as Lago, Stripe and proxies do on 429/503.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// The response body; `None` gives the error body that API would send for `status`.
    #[serde(default)]
    pub body: Option<Value>,
}

fn one() -> u32 {
    1
}

/// "Hold the next `count` calls of `route` for `delay_ms`, then answer 504 without handling
/// them": an overloaded server behind a gateway. A client whose timeout is shorter than the
/// delay gives up first, so it sees a timeout of a call that changed nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    pub route: Route,
    #[serde(default = "one")]
    pub count: u32,
    pub delay_ms: u64,
}

/// Pending faults and configured latencies.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    /// In injection order: two faults for one route play one after the other.
    pending: Vec<Fault>,
    /// In injection order, like `pending`; a call that stalls takes no fault.
    stalls: Vec<Stall>,
    every_route: Option<Duration>,
    per_route: HashMap<Route, Duration>,
}

impl FaultBook {
    pub(crate) fn push(&mut self, fault: Fault) {
        if fault.count > 0 {
            self.pending.push(fault);
        }
    }

    pub(crate) fn push_stall(&mut self, stall: Stall) {
        if stall.count > 0 {
            self.stalls.push(stall);
        }
    }

    /// Consumes one use of the oldest stall for `route`; its delay.
    pub(crate) fn take_stall(&mut self, route: Route) -> Option<Duration> {
        let index = self.stalls.iter().position(|s| s.route == route)?;
        let stall = &mut self.stalls[index];
        stall.count -= 1;
        let delay = Duration::from_millis(stall.delay_ms);
        if stall.count == 0 {
            self.stalls.remove(index);
        }
        Some(delay)
    }

    /// Consumes one use of the oldest fault for `route`.
    pub(crate) fn take(&mut self, route: Route) -> Option<Fault> {
        let index = self.pending.iter().position(|f| f.route == route)?;
        let fault = &mut self.pending[index];
        fault.count -= 1;
        let hit = fault.clone();
        if fault.count == 0 {
            self.pending.remove(index);
        }
        Some(hit)
    }

    /// A per-route latency wins over the every-route one.
    pub(crate) fn latency(&self, route: Route) -> Duration {
        self.per_route
            .get(&route)
            .copied()
            .or(self.every_route)
            .unwrap_or_default()
    }

    pub(crate) fn set_latency(&mut self, route: Option<Route>, latency: Duration) {
        match route {
            Some(route) => {
                self.per_route.insert(route, latency);
            }
            None => self.every_route = Some(latency),
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn snapshot(&self) -> Value {
        json!({
            "pending": self.pending,
            "stalls": self.stalls,
            "latency_ms": {
                "every_route": self.every_route.map(|d| d.as_millis() as u64),
                "per_route": self.per_route.iter()
                    .map(|(r, d)| (r.as_str().to_owned(), json!(d.as_millis() as u64)))
                    .collect::<serde_json::Map<_, _>>(),
            },
        })
    }
}

/// The HTTP answer for a fault that fired.
pub(crate) fn response(fault: &Fault) -> HttpResponse {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    if let Some(secs) = fault.retry_after_secs {
        builder.insert_header(("Retry-After", secs.to_string()));
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return builder.finish();
    }
    let body = fault
        .body
        .clone()
        .unwrap_or_else(|| default_body(fault.route, status));
    builder.json(body)
}

/// The answer to a call that stalled: a gateway's timeout, in the API's error shape.
pub(crate) fn stalled(route: Route) -> HttpResponse {
    HttpResponse::GatewayTimeout().json(default_body(route, StatusCode::GATEWAY_TIMEOUT))
}

/// What the real API sends for `status` on that route, so a client's error parsing is exercised
/// and not just its status handling.
pub(crate) fn default_body(route: Route, status: StatusCode) -> Value {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    match route {
        Route::KeycloakToken => match code {
            400 => json!({"error": "invalid_request", "error_description": "Invalid request"}),
            401 => json!({"error": "invalid_grant", "error_description": "Invalid user credentials"}),
            500.. => json!({"error": "unknown_error"}),
            _ => json!({"error": format!("HTTP {code} {reason}")}),
        },
        Route::KeycloakSearchUsers | Route::KeycloakGetUser | Route::KeycloakPutUser => match code {
            404 if route != Route::KeycloakSearchUsers => json!({"error": "User not found"}),
            409 => json!({"errorMessage": "User exists with same username or email"}),
            500.. => json!({"error": "unknown_error"}),
            _ => json!({"error": format!("HTTP {code} {reason}")}),
        },
        Route::StripeEvents | Route::StripeSubscriptions | Route::StripeCustomers => {
            let (kind, code, message) = match code {
                401 => ("invalid_request_error", None, "Invalid API Key provided".to_owned()),
                403 => (
                    "invalid_request_error",
                    None,
                    "The provided key does not have the required permissions for this endpoint"
                        .to_owned(),
                ),
                404 => (
                    "invalid_request_error",
                    Some("resource_missing"),
                    "No such object".to_owned(),
                ),
                429 => (
                    "invalid_request_error",
                    Some("rate_limit"),
                    "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."
                        .to_owned(),
                ),
                500.. => (
                    "api_error",
                    None,
                    "An unknown error occurred. Please try again later.".to_owned(),
                ),
                _ => ("invalid_request_error", None, format!("HTTP {code} {reason}")),
            };
            let mut error = json!({"type": kind, "message": message});
            if let Some(code) = code {
                error["code"] = json!(code);
            }
            json!({"error": error})
        }
        _ => {
            let mut body = json!({"status": code, "error": reason});
            match code {
                404 => {
                    let resource = match route {
                        Route::LagoCreateCustomer | Route::LagoGetCustomer => "customer",
                        Route::LagoCreateSubscription => "plan",
                        _ => "subscription",
                    };
                    body["code"] = json!(format!("{resource}_not_found"));
                }
                422 => {
                    body["code"] = json!("validation_errors");
                    body["error_details"] = json!({});
                }
                _ => {}
            }
            body
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(route: Route, status: u16, count: u32) -> Fault {
        Fault {
            route,
            status,
            count,
            retry_after_secs: None,
            body: None,
        }
    }

    #[test]
    fn faults_fire_count_times_in_order_and_only_on_their_route() {
        let mut book = FaultBook::default();
        book.push(fault(Route::LagoGetCustomer, 503, 2));
        book.push(fault(Route::LagoGetCustomer, 429, 1));
        book.push(fault(Route::KeycloakToken, 500, 0));
        assert!(book.take(Route::KeycloakToken).is_none());
        let statuses: Vec<_> = std::iter::from_fn(|| book.take(Route::LagoGetCustomer))
            .map(|f| f.status)
            .collect();
        assert_eq!(statuses, [503, 503, 429]);
    }

    #[test]
    fn stalls_fire_count_times_in_order_and_only_on_their_route() {
        let mut book = FaultBook::default();
        let stall = |route, count, delay_ms| Stall {
            route,
            count,
            delay_ms,
        };
        book.push_stall(stall(Route::LagoGetCustomer, 2, 300));
        book.push_stall(stall(Route::LagoGetCustomer, 1, 50));
        book.push_stall(stall(Route::KeycloakToken, 0, 10));
        assert!(book.take_stall(Route::KeycloakToken).is_none());
        let delays: Vec<_> = std::iter::from_fn(|| book.take_stall(Route::LagoGetCustomer))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays, [300, 300, 50]);
        book.push_stall(stall(Route::KeycloakGetUser, 1, 10));
        book.clear();
        assert!(book.take_stall(Route::KeycloakGetUser).is_none());
    }

    #[test]
    fn route_latency_overrides_global() {
        let mut book = FaultBook::default();
        book.set_latency(None, Duration::from_millis(5));
        book.set_latency(Some(Route::LagoGetCustomer), Duration::from_millis(50));
        assert_eq!(book.latency(Route::LagoGetCustomer), Duration::from_millis(50));
        assert_eq!(book.latency(Route::KeycloakToken), Duration::from_millis(5));
        book.clear();
        assert_eq!(book.latency(Route::LagoGetCustomer), Duration::ZERO);
    }

    #[test]
    fn default_bodies_follow_each_api() {
        let lago = default_body(Route::LagoCreateSubscription, StatusCode::NOT_FOUND);
        assert_eq!(
            lago,
            json!({"status": 404, "error": "Not Found", "code": "plan_not_found"})
        );
        let kc = default_body(Route::KeycloakPutUser, StatusCode::CONFLICT);
        assert_eq!(kc["errorMessage"], "User exists with same username or email");
        let token = default_body(Route::KeycloakToken, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(token, json!({"error": "unknown_error"}));
        let stripe = default_body(Route::StripeEvents, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(stripe["error"]["code"], "rate_limit");
        assert_eq!(stripe["error"]["type"], "invalid_request_error");
        let stripe = default_body(Route::StripeCustomers, StatusCode::BAD_GATEWAY);
        assert_eq!(stripe["error"]["type"], "api_error");
    }

    #[test]
    fn route_names_match_serde() {
        for route in Route::ALL {
            assert_eq!(serde_json::to_value(route).unwrap(), route.as_str());
        }
    }
}
