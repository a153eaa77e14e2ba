//! Everything a job needs, passed explicitly (no global state).

use std::time::Duration;

use webhook_amqp::Broker;
use webhook_store::Store;

use crate::entitlement::Entitlements;
use crate::metrics::Metrics;
use crate::outcomes::OutcomeWriter;
use crate::plans::PlanMap;
use webhook_clients::{InlineRetry, KeycloakClient, LagoClient};

pub struct WorkerContext {
    /// Step writes: commits that do not wait for the disk ([`webhook_store::Commits::Deferred`]).
    pub store: Store,
    /// The outcome written before each ack: durable, and with it every step write before it
    /// (group commit: see [`crate::outcomes`]).
    pub outcomes: OutcomeWriter,
    pub broker: Broker,
    pub keycloak: KeycloakClient,
    pub lago: LagoClient,
    /// Stripe's API when `STRIPE_API_KEY` is set: a reconcile job reads its subscription from it
    /// under the lease, and so does every subscription event with [`Self::refetch`].
    pub stripe: Option<webhook_clients::StripeClient>,
    /// `stripe.refetch`.
    pub refetch: bool,
    pub plans: PlanMap,
    /// Which Stripe mode's events are provisioned (`stripe.livemode`).
    pub livemode: webhook_core::settings::Livemode,
    /// What a subscription status grants, and the order of tiers (`[plans]`).
    pub entitlements: Entitlements,
    /// Delay before each broker-level retry; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
    pub inline_retry: InlineRetry,
    /// The subscription lease's timing.
    pub lease: crate::ordering::lease::LeaseTiming,
    pub metrics: Metrics,
    /// Jobs held for Postgres, missing queues: for `/readyz`.
    pub health: std::sync::Arc<crate::health::Health>,
    /// The Keycloak attribute that receives the tier (`subscription_tier`).
    pub tier_attribute: String,
    /// The optional Keycloak attribute that receives the billing status (`billing_status`);
    /// `None` when `keycloak.status_attribute` is empty.
    pub status_attribute: Option<String>,
}
