//! Step 2 of the job path: a delivery's body decoded into a typed [`Job`], and what a finished
//! job returns ([`Done`]). The body is untrusted: anything malformed is a permanent failure
//! (dead letter), never a panic.

use bytes::Bytes;
use serde_json::Value;
use webhook_core::message::RECONCILE_KEY;
use webhook_core::{Envelope, EventType};

use crate::failure::{Failure, JobError};
use crate::plans::{PlanCode, Tier};
use crate::step::Step;

/// One message, decoded: a Stripe event of a type the worker handles.
#[derive(Debug)]
pub struct Job {
    pub event: Envelope,
    pub event_type: EventType,
    /// The business action it works on ([`action_key`]); `None` when the event has no
    /// `data.object.id` (its handler then fails it as malformed, after its attempt is recorded).
    pub action_key: Option<String>,
    /// A reconcile job of `webhookctl reconcile --fix` (the body's [`RECONCILE_KEY`]): Stripe's
    /// subscription as it is now; Lago and Keycloak are brought to it whatever the record says
    /// was done, and the audit row is `subscription.reconciled`.
    pub reconcile: bool,
}

/// A message that is not a job.
#[derive(Debug)]
pub struct Rejected {
    /// `None` when the body is not a Stripe event at all.
    pub event: Option<Envelope>,
    pub failure: Failure,
}

impl Job {
    pub fn decode(body: Bytes) -> Result<Job, Box<Rejected>> {
        let event = Envelope::parse(body).map_err(|e| {
            Box::new(Rejected {
                event: None,
                failure: Failure::permanent(Step::Parse, format!("malformed message: {e}")),
            })
        })?;
        let Some(event_type) = event.handled_type() else {
            let failure = Failure::permanent(
                Step::Dispatch,
                format!(
                    "no handler for event type {:?}: remove its binding from the work queue",
                    event.event_type
                ),
            );
            return Err(Box::new(Rejected {
                event: Some(event),
                failure,
            }));
        };
        let reconcile = is_reconcile(&event.body);
        let action_key = if reconcile {
            // Its own action: the ledger must not find it done by the events it repairs.
            event
                .object_id
                .as_ref()
                .map(|_| format!("reconcile:{}", event.id))
        } else {
            action_key(&event, event_type)
        };
        Ok(Job {
            action_key,
            event,
            event_type,
            reconcile,
        })
    }

    /// The event's `data.object` (the session, subscription or invoice); `Null` when the body
    /// has none (the handler's parser then says what is missing).
    pub fn object(&self) -> Result<Value, Failure> {
        let body: Value = serde_json::from_slice(&self.event.body)
            .map_err(|e| Failure::permanent(Step::Parse, format!("malformed message: {e}")))?;
        Ok(body
            .get("data")
            .and_then(|d| d.get("object"))
            .cloned()
            .unwrap_or(Value::Null))
    }
}

/// Whether the body is a reconcile job: its top-level object has [`RECONCILE_KEY`] (parsed only
/// when the key's text is in the body at all).
fn is_reconcile(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Marker {
        #[serde(rename = "webhook_reconcile")]
        marker: Option<serde::de::IgnoredAny>,
    }
    let key = RECONCILE_KEY.as_bytes();
    body.windows(key.len()).any(|w| w == key)
        && serde_json::from_slice::<Marker>(body).is_ok_and(|m| m.marker.is_some())
}

/// A finished job.
#[derive(Debug)]
pub enum Done {
    /// Every step is done; what the subscription became.
    Succeeded(Summary),
    /// Nothing to do (e.g. an unpaid session); the reason.
    Skipped(String),
}

/// What a succeeded job left its subscription with (for the log line; the audit row has the
/// rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub tier: Option<Tier>,
    pub plan: Option<PlanCode>,
}

/// The result of processing one message.
pub struct Processed {
    /// `None` when the body is not a Stripe event at all.
    pub event: Option<Envelope>,
    /// The attempt number recorded for the event (0 when none could be recorded).
    pub attempt: i32,
    pub result: Result<Done, JobError>,
}

/// The business action an event works on: its key in the step ledger. Events about one object
/// share an action where they must not act twice: both checkout events of a session, every copy
/// of a subscription's deletion. A plan change is an action per event, a payment one per invoice.
/// `None` when the event has no `data.object.id`.
pub fn action_key(event: &Envelope, event_type: EventType) -> Option<String> {
    let object = event
        .object_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    Some(match event_type {
        EventType::CheckoutSessionCompleted | EventType::CheckoutSessionAsyncPaymentSucceeded => {
            format!("checkout:{object}")
        }
        EventType::CustomerSubscriptionUpdated => format!("{event_type}:{}", event.id),
        EventType::CustomerSubscriptionDeleted | EventType::InvoicePaid | EventType::InvoicePaymentFailed => {
            format!("{event_type}:{object}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_shapes_decode_without_a_panic() {
        // `data` an array, or the whole body one: the envelope parser fills its defaults from
        // them; the object is then Null, and the handler's parser says what is missing.
        for body in [
            r#"{"id": "evt_1", "type": "invoice.paid", "data": []}"#,
            r#"{"id": "evt_1", "type": "invoice.paid", "data": {"object": null}}"#,
        ] {
            let job = Job::decode(Bytes::from(body)).unwrap();
            assert_eq!(job.action_key, None, "{body}");
            let object = job.object().unwrap();
            assert!(object.get("id").is_none(), "{body}");
        }
        match Job::decode(Bytes::from(r#"["evt_1", "invoice.paid"]"#)) {
            Ok(job) => assert!(job.object().unwrap().is_null()),
            Err(rejected) => assert_eq!(rejected.failure.step, Step::Parse),
        }
        let rejected = Job::decode(Bytes::from("not json")).unwrap_err();
        assert!(rejected.event.is_none());
        assert_eq!(rejected.failure.step, Step::Parse);
        let rejected =
            Job::decode(Bytes::from(r#"{"id": "evt_1", "type": "customer.created"}"#)).unwrap_err();
        assert_eq!(rejected.failure.step, Step::Dispatch);
        assert!(rejected.event.is_some());
    }

    fn event(event_type: &str, object_id: Option<&str>) -> Envelope {
        let mut body = serde_json::json!({"id": "evt_9", "type": event_type, "data": {"object": {}}});
        if let Some(id) = object_id {
            body["data"]["object"]["id"] = id.into();
        }
        Envelope::parse(Bytes::from(body.to_string())).unwrap()
    }

    #[test]
    fn a_reconcile_job_is_its_own_action() {
        let body = r#"{"id": "evt_reconcile_1", "type": "customer.subscription.deleted",
            "data": {"object": {"id": "sub_1"}}, "webhook_reconcile": {"drifts": []}}"#;
        let job = Job::decode(Bytes::from(body)).unwrap();
        assert!(job.reconcile);
        assert_eq!(job.action_key.as_deref(), Some("reconcile:evt_reconcile_1"));
        // The key's text inside the object is not the marker.
        let body = r#"{"id": "evt_2", "type": "customer.subscription.deleted",
            "data": {"object": {"id": "sub_1", "metadata": {"webhook_reconcile": "x"}}}}"#;
        let job = Job::decode(Bytes::from(body)).unwrap();
        assert!(!job.reconcile);
        assert_eq!(
            job.action_key.as_deref(),
            Some("customer.subscription.deleted:sub_1")
        );
    }

    #[test]
    fn events_that_must_not_act_twice_share_an_action() {
        let key = |t: &str, id: Option<&str>| action_key(&event(t, id), EventType::parse(t).unwrap());
        // Both checkout events of a session: one provisioning.
        assert_eq!(
            key("checkout.session.completed", Some("cs_1")).as_deref(),
            Some("checkout:cs_1")
        );
        assert_eq!(
            key("checkout.session.async_payment_succeeded", Some(" cs_1 ")).as_deref(),
            Some("checkout:cs_1")
        );
        // Every copy of a deletion: one cancellation.
        assert_eq!(
            key("customer.subscription.deleted", Some("sub_1")).as_deref(),
            Some("customer.subscription.deleted:sub_1")
        );
        // A payment: one per invoice.
        assert_eq!(
            key("invoice.paid", Some("in_1")).as_deref(),
            Some("invoice.paid:in_1")
        );
        // A plan change: one per event, so that a later change of the same subscription runs.
        assert_eq!(
            key("customer.subscription.updated", Some("sub_1")).as_deref(),
            Some("customer.subscription.updated:evt_9")
        );
        // No object id: no action (the handler fails the event as malformed).
        assert_eq!(key("invoice.paid", None), None);
        assert_eq!(key("invoice.paid", Some("  ")), None);
    }

    #[test]
    fn the_object_is_the_events_data_object() {
        let body =
            r#"{"id": "evt_1", "type": "invoice.paid", "data": {"object": {"id": "in_1", "paid": true}}}"#;
        let job = Job::decode(Bytes::from(body)).unwrap();
        assert_eq!(
            job.object().unwrap(),
            serde_json::json!({"id": "in_1", "paid": true})
        );
        assert_eq!(job.action_key.as_deref(), Some("invoice.paid:in_1"));
        assert!(!job.reconcile);
    }
}
