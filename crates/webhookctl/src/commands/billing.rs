//! `billing show SUB` and `billing rebind SUB --email E`: the billing state of a subscription
//! (docs/architecture.md, "Billing state").

use anyhow::Context;
use serde_json::{Value, json};
use webhook_core::Settings;
use webhook_store::Store;
use webhook_store::billing::{self, Rebound, SubscriptionRecord};

fn view(r: &SubscriptionRecord) -> Value {
    let mark = |w: &Option<billing::Watermark>| {
        w.as_ref()
            .map(|w| json!({"event_id": w.event_id, "created": w.created, "rank": w.rank}))
    };
    json!({
        "subscription_id": r.subscription_id,
        "customer_id": r.customer_id,
        "account": {"keycloak_user_id": r.account_id, "email": r.account_email, "bound_by": r.bound_by},
        "status": r.status,
        "tier": r.tier,
        "cycle": r.cycle,
        "plan": r.plan_code,
        "watermark": mark(&r.watermark),
        "last_event_type": r.last_event_type,
        "invoice_status": r.invoice_status,
        "invoice_watermark": mark(&r.invoice_watermark),
        "deleted_by": r.deleted_by,
        "lago": {"plan": r.lago_plan_code, "customer": r.lago_customer, "terminated": r.lago_terminated},
    })
}

async fn store(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect_lazy(&settings.database)
}

fn unknown(subscription_id: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no billing state for subscription {subscription_id}: no event of it was processed yet (check the id, \
         e.g. in `webhookctl events list`)"
    )
}

pub async fn show(settings: &Settings, subscription_id: &str, json: bool) -> anyhow::Result<()> {
    let store = store(settings).await?;
    let record = billing::subscription(&store.pool, subscription_id)
        .await
        .context("cannot read the billing state (check DATABASE_URL; run `webhookctl migrate`)")?
        .ok_or_else(|| unknown(subscription_id))?;
    let v = view(&record);
    if json {
        println!("{v}");
        return Ok(());
    }
    let s = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    println!("subscription {}", record.subscription_id);
    println!("customer     {}", s(&v["customer_id"]));
    println!(
        "account      {} ({}, bound by {})",
        s(&v["account"]["email"]),
        s(&v["account"]["keycloak_user_id"]),
        s(&v["account"]["bound_by"])
    );
    println!(
        "status       {}  tier {}  cycle {}  plan {}",
        s(&v["status"]),
        s(&v["tier"]),
        s(&v["cycle"]),
        s(&v["plan"])
    );
    println!("watermark    {}", v["watermark"]);
    println!(
        "invoice      {}  {}",
        s(&v["invoice_status"]),
        v["invoice_watermark"]
    );
    if let Some(by) = &record.deleted_by {
        println!("deleted by   {by} (tombstone: nothing brings it back)");
    }
    println!("lago         {}", v["lago"]);
    Ok(())
}

pub async fn rebind(
    settings: &Settings,
    subscription_id: &str,
    email: &str,
    replay: bool,
) -> anyhow::Result<()> {
    let email = email.trim().to_lowercase();
    if !email
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        || email.contains(char::is_whitespace)
    {
        anyhow::bail!("--email {email:?} is not an email address: give the email of the Keycloak account");
    }
    let store = store(settings).await?;
    let rebound = billing::rebind(&store.pool, subscription_id, &email)
        .await
        .context("cannot write the billing state (check DATABASE_URL; run `webhookctl migrate`)")?;
    let before = match rebound {
        Rebound::Done(before) => before,
        Rebound::Unknown => return Err(unknown(subscription_id)),
        Rebound::InFlight => anyhow::bail!(
            "an event of {subscription_id} is being processed right now (it holds the subscription's lease): nothing \
             changed; run the command again in a few seconds"
        ),
    };
    println!(
        "rebound {subscription_id}: {} → {email}",
        before.account_email.as_deref().unwrap_or("(no account)")
    );
    let newest = [&before.watermark, &before.invoice_watermark]
        .into_iter()
        .flatten()
        .max_by_key(|w| w.created)
        .map(|w| w.event_id.clone());
    match (replay, newest) {
        (true, Some(event_id)) => super::replay::run(settings, &event_id).await,
        (true, None) => {
            println!("no event of {subscription_id} was applied yet: the next one applies the binding");
            Ok(())
        }
        (false, _) => {
            println!(
                "not replayed: the next event of {subscription_id} (or `webhookctl replay`) applies the binding"
            );
            Ok(())
        }
    }
}
