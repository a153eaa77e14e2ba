//! The billing state as a model (proptest): random histories of one Stripe customer (one or two
//! subscriptions, checkouts naming one of two Keycloak accounts, plan and status changes,
//! invoices, a cancellation), delivered through the real worker against the sandbox in a random
//! order with duplicate copies running concurrently, end in the same Keycloak attributes, Lago
//! subscriptions and billing state as the same history delivered in order, one event at a time.
//!
//! Both deliveries of a case run side by side on one worker, with their own ids (a suffix per
//! run), and are compared with the suffix taken out. `PROPTEST_CASES` sets the number of cases
//! (200 by default; `make model` runs more); a failure prints the shrunk history.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Value, json};
use sqlx::PgPool;
use webhook_amqp::Topology;
use webhook_sandbox::SeedUser;
use webhook_tests::stripe::{checkout, event_type, invoice, subscription};
use webhook_tests::worker::{TestSandbox, TestWorker, worker_settings};
use webhook_tests::{TestContext, event_status, rabbit};

const TIERS: [&str; 3] = ["starter", "professional", "enterprise"];
const STATUSES: [&str; 6] = ["active", "past_due", "unpaid", "incomplete", "trialing", "paused"];

/// One event of a history; subscriptions, accounts and tiers by index.
#[derive(Debug, Clone)]
enum Ev {
    Checkout { sub: usize, account: usize, tier: usize },
    Updated { sub: usize, status: usize, tier: usize },
    Deleted { sub: usize, tier: usize },
    Invoice { sub: usize, paid: bool },
}

/// A history: events with their `created` offsets, in the order Stripe created them.
#[derive(Debug, Clone)]
struct History {
    events: Vec<(i64, Ev)>,
    /// Delivery order of the shuffled run (a permutation of the events).
    shuffle: Vec<usize>,
    /// Events delivered twice more, at once (concurrent copies).
    copies: Vec<usize>,
}

/// One subscription's events: its checkout, some updates, maybe a deletion; invoices around.
fn subscription_history(sub: usize) -> impl Strategy<Value = Vec<(i64, Ev)>> {
    (
        0..8i64,
        if sub == 0 {
            Just(0usize).boxed()
        } else {
            (0..2usize).boxed()
        },
        0..3usize,
        prop::collection::vec((0..3i64, 0..STATUSES.len(), 0..3usize), 0..4),
        prop::option::weighted(0.4, 0..3i64),
        prop::collection::vec((-2..12i64, any::<bool>()), 0..3),
    )
        .prop_map(move |(start, account, tier, updates, deletion, invoices)| {
            let mut t = start;
            let mut last_tier = tier;
            let mut out = vec![(t, Ev::Checkout { sub, account, tier })];
            for (dt, status, tier) in updates {
                t += dt;
                last_tier = tier;
                out.push((t, Ev::Updated { sub, status, tier }));
            }
            if let Some(dt) = deletion {
                // The deletion carries the subscription's last price, as Stripe's does.
                out.push((t + dt, Ev::Deleted { sub, tier: last_tier }));
            }
            for (at, paid) in invoices {
                out.push((start + at, Ev::Invoice { sub, paid }));
            }
            out
        })
}

fn history() -> impl Strategy<Value = History> {
    (1..=2usize)
        .prop_flat_map(|n| prop::collection::vec(Just(()), n))
        .prop_flat_map(|subs| {
            let parts: Vec<_> = (0..subs.len()).map(subscription_history).collect();
            parts.prop_map(|parts| {
                let mut events: Vec<(i64, Ev)> = parts.into_iter().flatten().collect();
                events.sort_by_key(|(t, _)| *t);
                events
            })
        })
        .prop_flat_map(|events| {
            let n = events.len();
            (
                Just(events),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                prop::collection::vec(0..n, 0..3),
            )
        })
        .prop_map(|(events, shuffle, copies)| History {
            events,
            shuffle,
            copies,
        })
}

/// One run's names: every id and email carries its suffix.
struct Run<'a> {
    suffix: String,
    history: &'a History,
    t0: i64,
}

impl Run<'_> {
    fn sub(&self, i: usize) -> String {
        format!("sub_{i}{}", self.suffix)
    }
    fn cus(&self) -> String {
        format!("cus{}", self.suffix)
    }
    fn email(&self, account: usize) -> String {
        format!("user{account}{}@example.com", self.suffix)
    }
    fn event_id(&self, i: usize) -> String {
        format!("evt_{i:02}{}", self.suffix)
    }
    fn body(&self, i: usize) -> Vec<u8> {
        let (dt, ev) = &self.history.events[i];
        let (id, t, cus) = (self.event_id(i), self.t0 + dt, self.cus());
        match ev {
            Ev::Checkout { sub, account, tier } => {
                checkout(&id, t, &self.sub(*sub), &cus, &self.email(*account), TIERS[*tier])
            }
            Ev::Updated { sub, status, tier } => subscription(
                &id,
                "customer.subscription.updated",
                t,
                &self.sub(*sub),
                &cus,
                STATUSES[*status],
                TIERS[*tier],
            ),
            Ev::Deleted { sub, tier } => subscription(
                &id,
                "customer.subscription.deleted",
                t,
                &self.sub(*sub),
                &cus,
                "canceled",
                TIERS[*tier],
            ),
            Ev::Invoice { sub, paid } => invoice(
                &id,
                if *paid {
                    "invoice.paid"
                } else {
                    "invoice.payment_failed"
                },
                t,
                &format!("in_{i}{}", self.suffix),
                &self.sub(*sub),
                &cus,
            ),
        }
    }
}

/// The order in which the worker orders events: created, the same-second rank, the event id.
fn in_order(run: &Run<'_>) -> Vec<usize> {
    let rank = |ev: &Ev| match ev {
        Ev::Checkout { .. } => 0,
        Ev::Updated { status, .. } => 10 + status_place(STATUSES[*status]),
        Ev::Deleted { .. } => 100,
        Ev::Invoice { paid, .. } => i32::from(*paid),
    };
    let mut order: Vec<usize> = (0..run.history.events.len()).collect();
    order.sort_by_key(|&i| {
        let (t, ev) = &run.history.events[i];
        (*t, rank(ev), run.event_id(i))
    });
    order
}

/// The documented same-second place of a status (docs/architecture.md, "Watermark").
fn status_place(status: &str) -> i32 {
    [
        "incomplete",
        "trialing",
        "active",
        "past_due",
        "unpaid",
        "paused",
        "incomplete_expired",
        "canceled",
    ]
    .iter()
    .position(|s| *s == status)
    .map_or(8, |p| p as i32)
}

struct Harness {
    ctx: TestContext,
    sandbox: TestSandbox,
    worker: TestWorker,
    pool: PgPool,
    topo: Topology,
}

impl Harness {
    async fn publish(&self, run: &Run<'_>, i: usize) {
        let body = run.body(i);
        rabbit::publish(&self.topo.exchange, &event_type(&body), &body, &run.event_id(i)).await;
    }

    async fn wait_done(&self, event_id: &str) -> Result<(), TestCaseError> {
        for _ in 0..6000 {
            if let Some(s) = event_status(&self.pool, event_id).await
                && matches!(s.as_str(), "succeeded" | "skipped" | "dead_lettered")
            {
                prop_assert_ne!(s, "dead_lettered", "{} was dead-lettered", event_id);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(TestCaseError::fail(format!(
            "{event_id} did not finish within 30 s"
        )))
    }

    /// Nothing ready in the work or retry queues and no job in flight, twice in a row.
    async fn wait_idle(&self) -> Result<(), TestCaseError> {
        let mut quiet = 0;
        for _ in 0..1200 {
            let mut busy = rabbit::depth(&self.topo.work_queue).await;
            for tier in &self.topo.retry_tiers {
                busy += rabbit::depth(&tier.queue).await;
            }
            let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.worker.port))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let in_flight = metrics
                .lines()
                .find_map(|l| l.strip_prefix("webhook_worker_jobs_in_flight "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            quiet = if busy == 0 && in_flight == 0.0 {
                quiet + 1
            } else {
                0
            };
            if quiet >= 3 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(TestCaseError::fail("the worker did not go idle within 30 s"))
    }

    /// What a run ended with, its suffix taken out: Keycloak attributes per account, Lago per
    /// subscription (the live subscription's customer and the plan it bills next: a scheduled
    /// downgrade's plan when there is one; or that nothing is billed), the billing state per
    /// subscription and the customer's binding.
    async fn outcome(&self, run: &Run<'_>, subs: usize) -> Value {
        let mut keycloak = BTreeMap::new();
        for account in 0..2 {
            let user = self.sandbox.state.user_by_email(&run.email(account));
            let attrs = user.map(|u| {
                json!({"tier": u["attributes"]["subscription_tier"], "status": u["attributes"]["billing_status"]})
            });
            keycloak.insert(account, attrs);
        }
        let mut lago = BTreeMap::new();
        let mut state = BTreeMap::new();
        for sub in 0..subs {
            let all = self.sandbox.subscriptions(&run.sub(sub));
            let live = all.iter().find(|s| s["status"] == "active");
            lago.insert(
                sub,
                match live {
                    Some(s) => json!({
                        "customer": s["external_customer_id"],
                        "plan": if s["next_plan_code"].is_null() { s["plan_code"].clone() } else { s["next_plan_code"].clone() },
                    }),
                    // Never created (canceled before it was assigned) or terminated: not billed.
                    None => json!("ended"),
                },
            );
            let row: Option<Value> = sqlx::query_scalar(
                "SELECT jsonb_build_object(
                     'status', status, 'tier', tier, 'cycle', cycle, 'plan', plan_code,
                     'mark', last_event_id, 'invoice_status', invoice_status, 'invoice_mark', last_invoice_event_id,
                     'deleted_by', deleted_by, 'account', account_email, 'bound_by', bound_by,
                     -- What Lago was brought to; once canceled, only that it was ended.
                     'lago_plan', CASE WHEN deleted_by IS NULL THEN lago_plan_code END,
                     'lago_customer', CASE WHEN deleted_by IS NULL THEN lago_customer END,
                     'lago_terminated', lago_terminated)
                 FROM stripe_subscriptions WHERE subscription_id = $1",
            )
            .bind(run.sub(sub))
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            state.insert(sub, row);
        }
        let customer: Option<Value> = sqlx::query_scalar(
            "SELECT jsonb_build_object('account', account_email, 'by', bound_event_id) FROM stripe_customers WHERE customer_id = $1",
        )
        .bind(run.cus())
        .fetch_optional(&self.pool)
        .await
        .unwrap();
        let text =
            json!({"keycloak": keycloak, "lago": lago, "state": state, "customer": customer}).to_string();
        serde_json::from_str(&text.replace(&run.suffix, "")).unwrap()
    }
}

async fn check(h: &Harness, case: u64, history: &History) -> Result<(), TestCaseError> {
    let t0 = webhook_core::unix_now() - 100_000;
    let shuffled = Run {
        suffix: format!("_c{case}s"),
        history,
        t0,
    };
    let ordered = Run {
        suffix: format!("_c{case}o"),
        history,
        t0,
    };
    for run in [&shuffled, &ordered] {
        for account in 0..2 {
            h.sandbox.state.add_user(SeedUser::new(run.email(account)));
        }
    }
    let subs = history
        .events
        .iter()
        .map(|(_, e)| match e {
            Ev::Checkout { sub, .. }
            | Ev::Updated { sub, .. }
            | Ev::Deleted { sub, .. }
            | Ev::Invoice { sub, .. } => *sub,
        })
        .max()
        .unwrap_or(0)
        + 1;
    // The shuffled run, all at once (with its copies), beside the in-order run.
    let all_at_once = async {
        for &i in &history.shuffle {
            h.publish(&shuffled, i).await;
            if history.copies.contains(&i) {
                h.publish(&shuffled, i).await;
                h.publish(&shuffled, i).await;
            }
        }
        for i in 0..history.events.len() {
            h.wait_done(&shuffled.event_id(i)).await?;
        }
        Ok::<(), TestCaseError>(())
    };
    let one_at_a_time = async {
        for i in in_order(&ordered) {
            h.publish(&ordered, i).await;
            h.wait_done(&ordered.event_id(i)).await?;
        }
        Ok::<(), TestCaseError>(())
    };
    let (a, b) = tokio::join!(all_at_once, one_at_a_time);
    a?;
    b?;
    h.wait_idle().await?;
    // Drained, so that a failing case does not fail the next ones (and shrinking finds it).
    let dead: Vec<String> = rabbit::drain(&h.topo.dead_letter_queue)
        .await
        .iter()
        .map(|m| {
            format!(
                "{:?}: {}",
                m.delivery.properties.message_id(),
                rabbit::header(m, "x-error").unwrap_or_default()
            )
        })
        .collect();
    prop_assert!(dead.is_empty(), "dead-lettered: {:?}", dead);
    let (got, want) = (h.outcome(&shuffled, subs).await, h.outcome(&ordered, subs).await);
    prop_assert_eq!(
        got,
        want,
        "shuffled delivery (left) differs from in-order delivery (right)"
    );
    Ok(())
}

#[test]
fn any_delivery_order_ends_in_the_state_of_in_order_delivery() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let harness = rt.block_on(async {
        let ctx = TestContext::new().await;
        let sandbox = TestSandbox::spawn().await;
        let settings = worker_settings(
            &ctx,
            &sandbox,
            &[("WORKER_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s")],
        );
        let topo = rabbit::topology(&settings);
        let worker = TestWorker::spawn(settings).await.ready().await;
        let pool = ctx.pool().await;
        Harness {
            ctx,
            sandbox,
            worker,
            pool,
            topo,
        }
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&history(), |history| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        rt.block_on(check(&harness, n, &history))
    });
    println!(
        "billing model: {} histories run (shrinking included)",
        case.load(std::sync::atomic::Ordering::Relaxed)
    );
    let Harness {
        ctx: _ctx,
        sandbox,
        worker,
        ..
    } = harness;
    rt.block_on(async {
        worker.stop().await;
        sandbox.stop().await;
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, history)) => {
            panic!(
                "{why}\nshrunk counterexample (events as (created offset, event), then delivery order):\n{history:#?}"
            )
        }
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}
