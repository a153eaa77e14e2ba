//! `reconcile`: compare, per subscription, Stripe as it is now with the billing state, Lago and
//! Keycloak, and print every drift (exit 1 when there is any). With `--fix`, queue one reconcile
//! job per drifted subscription: the worker applies Stripe's current subscription through the
//! normal path (lease, ledger, retries), brings Lago and Keycloak to it whatever it remembers
//! having done, and writes an audit row `subscription.reconciled`.
//!
//! What is expected of each system follows the worker's own rules ([`webhook_billing`]): the
//! plan map tells the Lago plan of Stripe's price, [`lago_carries_plan`] whether Lago keeps a live
//! subscription in Stripe's status, and the entitlement table which tier the account's
//! subscriptions grant together.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use webhook_billing::entitlement::{Entitlements, lago_carries_plan};
use webhook_billing::plans::PlanMap;
use webhook_billing::stripe::SubscriptionChange;
use webhook_clients::stripe::StripeClient;
use webhook_clients::{DownstreamError, KeycloakClient, LagoClient};
use webhook_core::message::RECONCILE_KEY;
use webhook_core::{Settings, VerifiedEvent};
use webhook_intake::{Admission, Disposition, Route};
use webhook_store::billing::{self, SubscriptionRecord};
use webhook_store::{Store, events};

use crate::cli::ReconcileArgs;
use crate::commands::backfill::CLI_RETRY;

/// One difference between Stripe and a system that should follow it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Drift {
    pub subscription_id: String,
    /// `billing_state`, `lago`, `keycloak` or `stripe`.
    #[serde(rename = "where")]
    pub place: &'static str,
    pub field: &'static str,
    pub expected: Option<String>,
    pub actual: Option<String>,
    /// Whether a reconcile job can repair it (`--fix`).
    pub fixable: bool,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        write!(
            f,
            "{}: {} {}: {} (Stripe implies {})",
            self.subscription_id,
            self.place,
            self.field,
            show(&self.actual),
            show(&self.expected)
        )?;
        if !self.fixable {
            f.write_str(" [not fixable by a reconcile job]")?;
        }
        Ok(())
    }
}

struct Checker<'a> {
    store: &'a Store,
    stripe: &'a StripeClient,
    lago: &'a LagoClient,
    keycloak: &'a KeycloakClient,
    plans: &'a PlanMap,
    entitlements: &'a Entitlements,
    tier_attribute: &'a str,
}

pub async fn run(settings: &Settings, args: ReconcileArgs) -> anyhow::Result<()> {
    let stripe_config = settings.for_stripe_api(
        " for reconcile: a restricted key with read access to subscriptions and customers (Stripe Dashboard > Developers > API keys)",
    )?;
    stripe_config.check_mode(settings.stripe.livemode)?;
    let stripe = StripeClient::new(&stripe_config, CLI_RETRY, None)?;
    let plans = PlanMap::new(&settings.plans).context("the plan map ([plans]) is invalid")?;
    let entitlements = Entitlements::new(&settings.plans).context("[plans.access] is invalid")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(
            settings.keycloak.timeout_ms.max(settings.lago.timeout_ms),
        ))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let keycloak =
        KeycloakClient::new(&settings.keycloak, http.clone(), None).context("reconcile reads Keycloak")?;
    let lago = LagoClient::new(&settings.lago, http, None).context("reconcile reads Lago")?;
    let store = Store::connect_lazy(&settings.database)?;
    let checker = Checker {
        store: &store,
        stripe: &stripe,
        lago: &lago,
        keycloak: &keycloak,
        plans: &plans,
        entitlements: &entitlements,
        tier_attribute: &settings.keycloak.tier_attribute,
    };

    let mut ids = billing::subscription_ids(&store.pool, args.customer.as_deref())
        .await
        .context("cannot read the billing state (check DATABASE_URL; run `webhookctl migrate`)")?;
    if args.from_stripe {
        let known: std::collections::HashSet<String> = ids.iter().cloned().collect();
        let mut cursor: Option<String> = None;
        loop {
            let page = stripe
                .list_subscriptions(args.customer.as_deref(), cursor.as_deref())
                .await
                .context("could not list Stripe's subscriptions")?;
            for sub in &page.data {
                let Some(id) = sub.get("id").and_then(Value::as_str) else {
                    continue;
                };
                // A canceled subscription the billing state never knew has nothing to follow.
                let canceled = sub.get("status").and_then(Value::as_str) == Some("canceled");
                if !canceled || known.contains(id) {
                    ids.push(id.to_owned());
                }
            }
            match (
                page.has_more,
                page.data.last().and_then(|s| s.get("id")).and_then(Value::as_str),
            ) {
                (true, Some(last)) => cursor = Some(last.to_owned()),
                (true, None) => anyhow::bail!(
                    "Stripe's subscription list said it has more but gave an empty page: check STRIPE_API_URL; nothing was changed"
                ),
                (false, _) => break,
            }
        }
        ids.sort();
        ids.dedup();
    }

    let bar = crate::progress::bar(ids.len() as u64, "reconciling");
    let mut drifts: Vec<Drift> = Vec::new();
    let mut to_fix: Vec<Fix> = Vec::new();
    let mut in_flight: Vec<&str> = Vec::new();
    // Events still being applied (within the retry schedule's length; older ones are stuck and
    // do not hold a subscription back): what Lago and Keycloak hold may be on its way.
    let within = settings.worker.retry_schedule.iter().sum::<Duration>() + Duration::from_secs(3600);
    let pending = events::in_flight(&store.pool, within)
        .await
        .context("cannot read the events table (check DATABASE_URL)")?;
    for id in &ids {
        bar.inc(1);
        let quoted = format!("\"{id}\"");
        if pending
            .iter()
            .any(|(object, payload)| object.as_deref() == Some(id.as_str()) || payload.contains(&quoted))
        {
            in_flight.push(id);
            continue;
        }
        // The time Stripe's state was read: a reconcile job is ordered by it, so that an event
        // Stripe sends after the read wins over the job.
        let read_at = webhook_core::unix_now();
        let (found, stripe_sub) = match checker.check(id).await {
            Ok(checked) => checked,
            // One subscription that cannot be checked does not stop the others.
            Err(e) => (
                vec![Drift {
                    subscription_id: id.clone(),
                    place: "unchecked",
                    field: "subscription",
                    expected: None,
                    actual: Some(format!("{e:#}")),
                    fixable: false,
                }],
                None,
            ),
        };
        if !args.json {
            for d in &found {
                bar.suspend(|| println!("{d}"));
            }
        }
        if let Some(subscription) = stripe_sub
            && found.iter().any(|d| d.fixable)
        {
            to_fix.push(Fix {
                subscription,
                drifts: found.clone(),
                read_at,
            });
        }
        drifts.extend(found);
    }
    bar.finish_and_clear();

    let mut queued = 0;
    if args.fix && !to_fix.is_empty() {
        queued = queue_fixes(settings, &store, &to_fix).await?;
    }
    let drifted: std::collections::BTreeSet<&str> =
        drifts.iter().map(|d| d.subscription_id.as_str()).collect();
    let mut summary = format!(
        "checked {} subscriptions: {} drifts in {} subscriptions",
        ids.len() - in_flight.len(),
        drifts.len(),
        drifted.len()
    );
    if !in_flight.is_empty() {
        summary.push_str(&format!(
            "; {} skipped while their events are in flight (run again later)",
            in_flight.len()
        ));
    }
    if args.fix {
        summary.push_str(&format!(
            "; queued {queued} reconcile jobs (run reconcile again once the workers have taken them)"
        ));
    } else if !to_fix.is_empty() {
        summary.push_str("; --fix queues the jobs that repair them");
    }
    crate::report(
        args.json,
        &summary,
        json!({
            "checked": ids.len() - in_flight.len(),
            "in_flight": in_flight,
            "drifts": drifts,
            "drifted_subscriptions": drifted.len(),
            "fix": args.fix,
            "queued": queued,
        }),
    );
    if drifts.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} drifts found{}",
            drifts.len(),
            if args.fix {
                format!(", {queued} reconcile jobs queued")
            } else {
                String::new()
            }
        )
    }
}

impl Checker<'_> {
    /// The drifts of one subscription, and Stripe's subscription (for a fix).
    async fn check(&self, id: &str) -> anyhow::Result<(Vec<Drift>, Option<Value>)> {
        let pool = &self.store.pool;
        let record = billing::subscription(pool, id).await?;
        let drift = |place, field, expected: Option<&str>, actual: Option<&str>, fixable| Drift {
            subscription_id: id.to_owned(),
            place,
            field,
            expected: expected.map(str::to_owned),
            actual: actual.map(str::to_owned),
            fixable,
        };
        let Some(stripe_sub) = self
            .stripe
            .retrieve_subscription(id)
            .await
            .map_err(stripe_error)?
        else {
            return Ok((
                vec![drift(
                    "stripe",
                    "subscription",
                    Some("known to Stripe"),
                    Some("no such subscription (another Stripe account or mode?)"),
                    false,
                )],
                None,
            ));
        };
        let change = match SubscriptionChange::from_object(&stripe_sub, self.plans) {
            Ok(c) => c,
            Err(e) => {
                let why = e.to_string();
                return Ok((
                    vec![drift(
                        "stripe",
                        "subscription",
                        Some("readable"),
                        Some(&why),
                        false,
                    )],
                    None,
                ));
            }
        };
        let status = change.status.as_str().to_owned();
        let canceled = status == "canceled";
        let plan = change
            .tier
            .as_ref()
            .map(|(t, c)| self.plans.plan_code(t, c).as_str().to_owned());
        let mut drifts = Vec::new();

        // The billing state.
        let known = record.clone().unwrap_or_else(|| SubscriptionRecord {
            subscription_id: id.to_owned(),
            customer_id: Some(change.customer.clone()),
            ..SubscriptionRecord::default()
        });
        match &record {
            None => drifts.push(drift(
                "billing_state",
                "status",
                Some(&status),
                Some("unknown (none of its events arrived: backfill them, or --fix)"),
                true,
            )),
            Some(r) => {
                let actual = if r.deleted_by.is_some() {
                    Some("canceled")
                } else {
                    r.status.as_deref()
                };
                if actual != Some(status.as_str()) {
                    drifts.push(drift(
                        "billing_state",
                        "status",
                        Some(&status),
                        actual,
                        r.deleted_by.is_none(),
                    ));
                }
                if !canceled && plan.is_some() && r.plan_code != plan {
                    drifts.push(drift(
                        "billing_state",
                        "plan",
                        plan.as_deref(),
                        r.plan_code.as_deref(),
                        true,
                    ));
                }
            }
        }
        // What the state should be: Stripe's now.
        let mut expected = known.clone();
        expected.status = Some(status.clone());
        if let Some((t, c)) = &change.tier {
            expected.tier = Some(t.as_str().to_owned());
            expected.cycle = Some(c.as_str().to_owned());
            expected.plan_code = plan.clone();
        }
        if canceled && expected.deleted_by.is_none() {
            expected.deleted_by = Some("reconcile".into());
        }

        // Lago: a live subscription on the plan exactly while the status carries one.
        let lago_should = if expected.deleted_by.is_some() || !lago_carries_plan(&status) {
            Some(None)
        } else if expected.account_email.is_some() {
            expected.plan_code.clone().map(Some)
        } else {
            // Not bound to an account: nothing can provision it until one is named.
            drifts.push(drift(
                "billing_state",
                "account",
                Some("a Keycloak account"),
                Some("none bound (neither its checkout nor metadata.user_email arrived): bind it with `webhookctl billing rebind SUB --email …`"),
                false,
            ));
            None
        };
        if let Some(should) = lago_should {
            let actual = self
                .lago
                .get_subscription(id)
                .await
                .map_err(downstream("Lago", "LAGO_API_URL"))?;
            let live = actual
                .as_ref()
                .filter(|s| matches!(s.status.as_deref(), Some("active" | "pending")));
            let on_plan = |p: &str| {
                live.is_some_and(|s| {
                    s.plan_code.as_deref() == Some(p) || s.next_plan_code.as_deref() == Some(p)
                })
            };
            // Billed to the bound account's customer (the Lago customer's external_id is the
            // account's email).
            if let (Some(s), Some(email)) = (live, expected.account_email.as_deref())
                && let Some(customer) = s.external_customer_id.as_deref()
                && customer != email
            {
                drifts.push(drift(
                    "lago",
                    "customer",
                    Some(email),
                    Some(&format!(
                        "{customer} (move it by hand in Lago, or rebind the subscription)"
                    )),
                    false,
                ));
            }
            match (&should, live) {
                (Some(p), _) if on_plan(p) => {}
                (Some(p), None) => drifts.push(drift(
                    "lago",
                    "subscription",
                    Some(&format!("live on {p}")),
                    Some(
                        &actual
                            .as_ref()
                            .and_then(|s| s.status.clone())
                            .unwrap_or_else(|| "none".into()),
                    ),
                    true,
                )),
                (Some(p), Some(s)) => {
                    drifts.push(drift("lago", "plan", Some(p), s.plan_code.as_deref(), true))
                }
                (None, Some(s)) => drifts.push(drift(
                    "lago",
                    "subscription",
                    Some("none live"),
                    Some(&format!("live on {}", s.plan_code.as_deref().unwrap_or("?"))),
                    true,
                )),
                (None, None) => {}
            }
        }

        // Keycloak: the tier the account's subscriptions grant together. An account bound by
        // email only is found by it.
        let account = match (&expected.account_id, &expected.account_email) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(email)) => {
                let found = self
                    .keycloak
                    .find_users_by_email(email)
                    .await
                    .map_err(downstream("Keycloak", "KEYCLOAK_URL"))?;
                match found.as_slice() {
                    [one] => Some(one.id.clone()),
                    _ => {
                        drifts.push(drift(
                            "keycloak",
                            "account",
                            Some(&format!("one user with the email {email}")),
                            Some(&format!("{} users", found.len())),
                            false,
                        ));
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(account) = account {
            let mut subs = billing::account_subscriptions(pool, &account).await?;
            subs.retain(|s| s.subscription_id != id);
            subs.push(expected.clone());
            let should = self.entitlements.account_view(&subs).tier;
            match self.keycloak.get_user(&account).await {
                Ok(user) => {
                    let actual = user
                        .get("attributes")
                        .and_then(|a| a.get(self.tier_attribute))
                        .and_then(|v| v.get(0))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    if actual.as_deref() != Some(should.as_str()) {
                        drifts.push(drift("keycloak", "tier", Some(&should), actual.as_deref(), true));
                    }
                }
                Err(e) if e.status == Some(404) => drifts.push(drift(
                    "keycloak",
                    "account",
                    Some(&format!("user {account} with tier {should}")),
                    Some("deleted (rebind the subscription: `webhookctl billing rebind`)"),
                    false,
                )),
                Err(e) => return Err(downstream("Keycloak", "KEYCLOAK_URL")(e)),
            }
        }
        Ok((drifts, Some(stripe_sub)))
    }
}

/// A drifted subscription to repair: Stripe's state, read at `read_at`.
struct Fix {
    subscription: Value,
    drifts: Vec<Drift>,
    read_at: i64,
}

/// Queues one reconcile job per subscription (recorded and confirmed, as the ingest queues an
/// event); returns how many were queued.
async fn queue_fixes(settings: &Settings, store: &Store, to_fix: &[Fix]) -> anyhow::Result<usize> {
    let broker = crate::publisher(settings, "webhookctl reconcile", "nothing was queued").await?;
    let mut events = Vec::new();
    for fix in to_fix {
        let body = reconcile_event(&fix.subscription, &fix.drifts, fix.read_at);
        let event = VerifiedEvent::fetched_from_stripe(serde_json::to_vec(&body)?.into())
            .map_err(|e| anyhow::anyhow!("cannot build the reconcile job: {e}"))?;
        let route = webhook_intake::route(&event, settings.stripe.livemode, |t| {
            settings.stripe.handled_event_types.contains(&t)
        });
        events.push((event, route));
    }
    events.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let span = tracing::info_span!("reconcile", otel.name = "webhookctl reconcile");
    let mut queued = 0;
    let mut failure = None;
    for chunk in events.chunks(100) {
        let admissions: Vec<Admission<'_>> = chunk
            .iter()
            .map(|(event, route)| Admission {
                event,
                route,
                parent: &span,
            })
            .collect();
        match webhook_intake::record_and_queue(store, &broker, &admissions, &|_, _| {}).await {
            Ok(answers) => {
                for ((event, route), answer) in chunk.iter().zip(answers) {
                    match answer {
                        Ok(Disposition::Accepted) => queued += 1,
                        Ok(_) if *route != Route::Queue => {
                            failure = Some(format!(
                                "{} was not queued: a subscription of the other Stripe mode, or its event type is not handled (stripe.handled_event_types)",
                                event.id
                            ))
                        }
                        Ok(_) => {}
                        Err(e) => failure = Some(format!("{} was not queued: {e}", event.id)),
                    }
                }
            }
            Err(e) => failure = Some(e.to_string()),
        }
    }
    broker.close().await;
    if let Some(f) = failure {
        anyhow::bail!(
            "{f}; {queued} reconcile jobs were queued. Fix the cause and run `webhookctl reconcile --fix` again"
        );
    }
    Ok(queued)
}

/// A reconcile job: Stripe's subscription as it was read at `read_at`, in the envelope of a
/// subscription event created then (newer than the events applied before the read, older than
/// any Stripe sends after it), marked as a reconcile.
pub fn reconcile_event(subscription: &Value, drifts: &[Drift], read_at: i64) -> Value {
    let canceled = subscription.get("status").and_then(Value::as_str) == Some("canceled");
    json!({
        "id": format!("evt_reconcile_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "type": if canceled { "customer.subscription.deleted" } else { "customer.subscription.updated" },
        // A second before the read: an event Stripe creates in the second of the read or later
        // is newer than the job, whatever its rank.
        "created": read_at - 1,
        "livemode": subscription.get("livemode").and_then(Value::as_bool).unwrap_or(false),
        "data": {"object": subscription},
        RECONCILE_KEY: {
            "requested_by": "webhookctl reconcile",
            "drifts": drifts,
        },
    })
}

fn stripe_error(e: DownstreamError) -> anyhow::Error {
    anyhow::Error::new(e).context("Stripe's API refused or failed (check STRIPE_API_KEY and STRIPE_API_URL)")
}

fn downstream(service: &'static str, variable: &'static str) -> impl Fn(DownstreamError) -> anyhow::Error {
    move |e| {
        anyhow::Error::new(e).context(format!(
            "{service} could not be read (check {variable} and its credentials)"
        ))
    }
}
