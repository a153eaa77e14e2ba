//! `invoice.paid` and `invoice.payment_failed`: the payment status of the invoice's
//! subscription (`billing_status` `active` / `past_due` while it is the newest word). The
//! invoice's `customer_email` is the billing contact: kept for the audit, never used to find the
//! account.

use serde_json::{Value, json};
use webhook_core::Envelope;

use crate::apply::{self, BillingJob};
use crate::context::WorkerContext;
use crate::failure::JobError;
use crate::job::Done;
use crate::ordering::Change;
use crate::stripe::InvoiceChange;

pub async fn handle(
    ctx: &WorkerContext,
    event: &Envelope,
    action_key: String,
    object: &Value,
    paid: bool,
) -> Result<Done, JobError> {
    let inv = InvoiceChange::from_object(object)?;
    let Some(sub_id) = inv.subscription_id.as_deref() else {
        return Ok(Done::Skipped(format!(
            "invoice {} is not for a subscription: nothing to change",
            inv.invoice_id
        )));
    };
    let contact = inv.customer_email.as_ref().map(|e| e.as_str());
    apply::run(
        ctx,
        BillingJob {
            event,
            subscription_id: sub_id,
            customer: inv.customer.as_deref(),
            change: Change::Invoice { paid },
            action_key,
            checkout: None,
            owner: None,
            price_id: None,
            audit_type: if paid {
                "payment.succeeded"
            } else {
                "payment.failed"
            },
            details: json!({"stripe_invoice_id": inv.invoice_id, "billing_contact": contact}),
            contact,
            reconcile: false,
            read_at: None,
        },
    )
    .await
}
