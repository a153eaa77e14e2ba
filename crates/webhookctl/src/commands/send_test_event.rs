//! `send-test-event`: a signed checkout event POSTed to the ingest, like `stripe trigger`.

use anyhow::Context;
use secrecy::ExposeSecret;
use webhook_core::Settings;
use webhook_core::signature::sign_header;

use crate::cli::SendTestEventArgs;
use crate::test_event::{CheckoutSpec, checkout_event, new_event_id};

pub async fn run(settings: &Settings, args: SendTestEventArgs) -> anyhow::Result<()> {
    let now = webhook_core::unix_now();
    let spec = CheckoutSpec {
        event_id: args.event_id.clone().unwrap_or_else(new_event_id),
        event_type: args.event_type.clone(),
        email: args.email.to_lowercase(),
        tier: args.tier.clone(),
        cycle: args.cycle.clone(),
        created: now,
    };
    let body = serde_json::to_vec(&checkout_event(&spec))?;
    if let Some(sandbox) = &args.stripe_sandbox {
        return missed(sandbox, &spec, body).await;
    }
    let secrets = settings.stripe.secrets()?;
    let signature = sign_header(secrets[0].expose_secret(), now, &body);
    let response = reqwest::Client::new()
        .post(&args.url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        // reqwest's message would quote the URL whole, password included: shown redacted.
        .map_err(reqwest::Error::without_url)
        .with_context(|| {
            format!(
                "could not reach the ingest at {} (is it running? make run)",
                webhook_core::redact::url(&args.url)
            )
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if args.json {
        println!("{text}");
    } else {
        println!(
            "{} {} -> {} {}",
            spec.event_type,
            spec.event_id,
            status.as_u16(),
            text
        );
    }
    if !status.is_success() {
        anyhow::bail!("the ingest answered {status}: {text}");
    }
    Ok(())
}

/// `--stripe-sandbox URL`: the event goes into the sandbox's Stripe API only (an event Stripe
/// has and never delivered), for `webhookctl backfill` to find.
async fn missed(sandbox: &str, spec: &CheckoutSpec, body: Vec<u8>) -> anyhow::Result<()> {
    let url = format!("{}/_sandbox/stripe/events", sandbox.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| {
            format!(
                "could not reach the sandbox at {} (is it running? make run)",
                webhook_core::redact::url(sandbox)
            )
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("the sandbox answered {status}: {text}");
    }
    println!(
        "{} {} -> in the sandbox's Stripe API only (not delivered)",
        spec.event_type, spec.event_id
    );
    Ok(())
}
