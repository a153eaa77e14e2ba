//! Stripe does not deliver in order. Each event updates its subscription's record only if it is
//! newer than what the record has (its watermark); a deletion leaves a tombstone that nothing
//! undoes. Pure: the record and the event in, the record out (or why the event is stale).
//!
//! **Watermark.** Two tracks per subscription: checkout and `customer.subscription.*` events
//! move the lifecycle watermark (status, tier, cycle, plan); invoice events move their own
//! (the payment status), so that a payment does not hide a plan change of the same second, nor
//! the other way round. An event's place is `(created, rank, event id)`:
//! - `created` is Stripe's event time, in seconds;
//! - `rank` orders events of the same second: a checkout (0) before a subscription update
//!   (10 + its status's place on `incomplete → trialing → active → past_due → unpaid → paused →
//!   incomplete_expired → canceled`, the way a subscription moves) before a deletion (100);
//!   `invoice.payment_failed` (0) before `invoice.paid` (1);
//! - the event id breaks what is left (deterministic, if arbitrary).
//!
//! An event at the record's watermark is the event applied last (a redelivery): it is applied
//! again, which changes nothing. Applying events in any order therefore gives the record that
//! applying them in watermark order gives.
//!
//! **Binding.** A subscription belongs to the Keycloak account its checkout found (by user id).
//! Before its checkout is processed, an event may bind it to its Stripe customer's account (the
//! account of the customer's latest paid checkout): the checkout then replaces that binding. A
//! checkout binding is never replaced by an event; only an operator rebinds
//! (`webhookctl billing rebind`).
//!
//! **Turns.** [`lease`]: the jobs of one subscription take turns across all workers (a lease
//! per subscription, fenced per delivery attempt).

pub mod lease;

use webhook_billing::entitlement::lago_carries_plan;
use webhook_store::billing::{SubscriptionRecord, Watermark};

use crate::plans::{Cycle, PlanCode, Tier};
use crate::stripe::SubscriptionStatus;

/// What an event says about its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A paid checkout: the subscription is active on this plan.
    Checkout(Plan),
    /// `customer.subscription.updated`: Stripe's status and the price's plan (`None`: a price
    /// the plan map cannot tell; the record keeps its plan).
    Updated {
        status: SubscriptionStatus,
        plan: Option<Plan>,
    },
    /// `customer.subscription.deleted`, with the plan of its price when it can be told.
    Deleted { plan: Option<Plan> },
    /// `invoice.paid` (`true`) or `invoice.payment_failed`.
    Invoice { paid: bool },
}

/// A tier, a billing cycle and the Lago plan code they map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub tier: Tier,
    pub cycle: Cycle,
    pub code: PlanCode,
}

/// Where the binding of a subscription comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundBy {
    Checkout,
    /// The subscription's own `metadata.user_email` (as strong as its checkout).
    Subscription,
    /// The Stripe customer's account (fallback: the account of its latest paid checkout).
    Customer,
}

impl BoundBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checkout => "checkout",
            Self::Subscription => "subscription",
            Self::Customer => "customer",
        }
    }
}

/// Whether the record's binding is only the customer's fallback (or none): events may still
/// bind it.
pub fn weakly_bound(record: &SubscriptionRecord) -> bool {
    matches!(record.bound_by.as_deref(), None | Some("customer"))
}

/// Where a status stands on the way a subscription moves (for same-second updates).
fn status_place(status: &SubscriptionStatus) -> i32 {
    use SubscriptionStatus::*;
    match status {
        Incomplete => 0,
        Trialing => 1,
        Active => 2,
        PastDue => 3,
        Unpaid => 4,
        Paused => 5,
        IncompleteExpired => 6,
        Canceled => 7,
        Other(_) => 8,
    }
}

impl Change {
    /// The tie-break of events of the same second (see the module docs).
    pub fn rank(&self) -> i32 {
        match self {
            Self::Checkout(_) => 0,
            Self::Updated { status, .. } => 10 + status_place(status),
            Self::Deleted { .. } => 100,
            Self::Invoice { paid } => i32::from(*paid),
        }
    }

    pub fn watermark(&self, created: i64, event_id: &str) -> Watermark {
        Watermark {
            created,
            rank: self.rank(),
            event_id: event_id.to_owned(),
        }
    }
}

/// Applies `change` (of the event `event_id` of type `event_type`, created at `created`) to
/// `record`. `Err` says why the event is stale; the record is then unchanged.
pub fn apply(
    record: &mut SubscriptionRecord,
    event_id: &str,
    event_type: &str,
    created: i64,
    change: &Change,
) -> Result<(), Stale> {
    let mark = change.watermark(created, event_id);
    let sub = &record.subscription_id;
    if let Some(deleted_by) = &record.deleted_by {
        match change {
            // Every copy of a deletion finds the tombstone: nothing more to record.
            Change::Deleted { .. } => return Ok(()),
            // The payment track goes on (a last invoice after the cancellation): it grants
            // nothing once deleted, and recording it keeps the state independent of the order.
            Change::Invoice { .. } => {}
            _ => {
                return Err(Stale::Deleted {
                    subscription: sub.clone(),
                    deleted_by: deleted_by.clone(),
                });
            }
        }
    }
    let plan = |record: &mut SubscriptionRecord, plan: &Plan| {
        record.tier = Some(plan.tier.as_str().to_owned());
        record.cycle = Some(plan.cycle.as_str().to_owned());
        record.plan_code = Some(plan.code.as_str().to_owned());
    };
    match change {
        Change::Invoice { paid } => {
            if let Some(newer) = record.invoice_watermark.as_ref().filter(|w| **w > mark) {
                return Err(stale(sub, newer, &mark));
            }
            record.invoice_status = Some(if *paid { "active" } else { "past_due" }.to_owned());
            record.invoice_watermark = Some(mark);
        }
        Change::Deleted { plan: p } => {
            // A deletion is final whatever its place: the tombstone, and the plan it ended on.
            record.deleted_by = Some(event_id.to_owned());
            record.status = Some(SubscriptionStatus::Canceled.as_str().to_owned());
            if let Some(p) = p {
                plan(record, p);
            }
            if record.watermark.as_ref().is_none_or(|w| *w < mark) {
                record.watermark = Some(mark);
                record.last_event_type = Some(event_type.to_owned());
            }
        }
        Change::Checkout(_) | Change::Updated { .. } => {
            if let Some(newer) = record.watermark.as_ref().filter(|w| **w > mark) {
                return Err(stale(sub, newer, &mark));
            }
            let (status, p) = match change {
                Change::Updated { status, plan } => (status.as_str().to_owned(), plan.as_ref()),
                Change::Checkout(p) => (SubscriptionStatus::Active.as_str().to_owned(), Some(p)),
                _ => unreachable!("matched above"),
            };
            record.status = Some(status);
            if let Some(p) = p {
                plan(record, p);
            }
            record.watermark = Some(mark);
            record.last_event_type = Some(event_type.to_owned());
        }
    }
    Ok(())
}

/// Applies a state read from Stripe under the subscription's lease at `read_at` (refetch, or a
/// reconcile job reading again): the newest truth there is, applied whatever the watermark says
/// (a tombstone stays final). The watermark becomes the later of the record's and the read's,
/// stamped one second before the read, so that an event Stripe creates in the second of the
/// read or later stays newer than it.
pub fn apply_read(
    record: &mut SubscriptionRecord,
    event_id: &str,
    event_type: &str,
    read_at: i64,
    change: &Change,
) -> Result<(), Stale> {
    let stamp = read_at - 1;
    if record.deleted_by.is_some() {
        return apply(record, event_id, event_type, stamp, change);
    }
    let before = record.watermark.take();
    let result = apply(record, event_id, event_type, stamp, change);
    record.watermark = std::cmp::max(before, record.watermark.take());
    result
}

fn stale(sub: &str, newer: &Watermark, this: &Watermark) -> Stale {
    Stale::Older {
        subscription: sub.to_owned(),
        newer: newer.event_id.clone(),
        newer_created: newer.created,
        created: this.created,
    }
}

/// Why an event is not applied to its subscription's record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error(
        "subscription {subscription} was deleted by {deleted_by}; a canceled subscription never comes back"
    )]
    Deleted {
        subscription: String,
        deleted_by: String,
    },
    #[error(
        "out of order: {newer} (created {newer_created}) was already applied to {subscription}, and this event is older (created {created})"
    )]
    Older {
        subscription: String,
        newer: String,
        newer_created: i64,
        created: i64,
    },
}

/// Binds the subscription to an account unless a binding that wins is there already: the
/// subscription's checkout or its own metadata replace the customer's fallback, and the
/// fallback follows the customer (it is resolved again by every event while it is all there
/// is); nothing replaces a checkout's, a metadata's or an operator's binding. Returns whether
/// the account changed.
pub fn bind(
    record: &mut SubscriptionRecord,
    account_id: Option<&str>,
    account_email: &str,
    by: BoundBy,
) -> bool {
    if !weakly_bound(record) {
        return false;
    }
    let changed = record.account_email.as_deref() != Some(account_email);
    if changed || by != BoundBy::Customer {
        record.bound_by = Some(by.as_str().to_owned());
    }
    if changed {
        record.account_id = account_id.map(str::to_owned);
        record.account_email = Some(account_email.to_owned());
    } else if record.account_id.is_none() {
        record.account_id = account_id.map(str::to_owned);
    }
    changed
}

/// For a reconcile job: assume nothing about what Lago was brought to, so that
/// [`lago_target`] asks for the state again. A plan the status carries is assigned again
/// (Lago's create is idempotent on `external_id`, and re-creates one terminated by hand); a
/// status without a plan ends Lago's subscription again, and a tombstone terminates it again
/// (Lago's 404 to a second termination counts as done). The Lago customer is kept: a
/// subscription under another customer is still moved.
pub fn forget_lago(record: &mut SubscriptionRecord) {
    record.lago_terminated = false;
    // Anything but the plan the state wants (Assign), and something to end (End) when it wants
    // none; a tombstone is terminated again whatever the plan, and remembers none.
    record.lago_plan_code = if record.deleted_by.is_some() {
        None
    } else {
        Some(UNKNOWN_LAGO_PLAN.to_owned())
    };
}

/// What [`forget_lago`] leaves as Lago's plan when the state wants none: anything but `None`.
const UNKNOWN_LAGO_PLAN: &str = "(unknown: reconcile)";

/// What Lago must be brought to for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LagoTarget {
    /// Lago is where the record says.
    InSync,
    /// Terminate the subscription (the tombstone is written).
    Terminate,
    /// End the live subscription: the status no longer carries a plan (Lago bills nothing for
    /// it, as if it had never been assigned).
    End,
    /// Assign the plan (create, upgrade, or schedule a downgrade) under the Lago customer
    /// `customer`; `move_from`: Lago has the subscription under another customer (the binding
    /// moved), terminate it there first.
    Assign {
        plan_code: String,
        customer: String,
        move_from: Option<String>,
    },
    /// The record wants a plan, but no account is bound yet: the checkout will assign it.
    WaitingForAccount,
}

pub fn lago_target(record: &SubscriptionRecord) -> LagoTarget {
    if record.deleted_by.is_some() {
        return if record.lago_terminated {
            LagoTarget::InSync
        } else {
            LagoTarget::Terminate
        };
    }
    let plan = match (record.status.as_deref(), record.plan_code.as_deref()) {
        (Some(status), Some(plan)) if lago_carries_plan(status) => plan,
        // Level-triggered: Lago carries a live subscription exactly while the status does.
        _ if record.lago_plan_code.is_some() => return LagoTarget::End,
        _ => return LagoTarget::InSync,
    };
    let Some(customer) = &record.account_email else {
        return LagoTarget::WaitingForAccount;
    };
    let move_from = record.lago_customer.clone().filter(|c| c != customer);
    if record.lago_plan_code.as_deref() == Some(plan) && move_from.is_none() {
        return LagoTarget::InSync;
    }
    LagoTarget::Assign {
        plan_code: plan.to_owned(),
        customer: customer.clone(),
        move_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(tier: &str) -> Plan {
        Plan {
            tier: Tier::parse(tier).unwrap(),
            cycle: Cycle::parse("monthly").unwrap(),
            code: PlanCode::new(format!("{tier}_monthly")),
        }
    }

    fn updated(status: &str, tier: &str) -> Change {
        Change::Updated {
            status: SubscriptionStatus::parse(status),
            plan: Some(plan(tier)),
        }
    }

    fn rec() -> SubscriptionRecord {
        SubscriptionRecord {
            subscription_id: "sub_1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn newer_applies_older_is_stale_and_a_redelivery_applies_again() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_2",
            "customer.subscription.updated",
            20,
            &updated("active", "enterprise"),
        )
        .unwrap();
        let before = r.clone();
        let why = apply(
            &mut r,
            "evt_1",
            "checkout.session.completed",
            10,
            &Change::Checkout(plan("starter")),
        )
        .unwrap_err()
        .to_string();
        assert!(why.contains("out of order") && why.contains("evt_2"), "{why}");
        assert_eq!(r, before, "a stale event changes nothing");
        apply(
            &mut r,
            "evt_2",
            "customer.subscription.updated",
            20,
            &updated("active", "enterprise"),
        )
        .unwrap();
        assert_eq!(r, before);
        apply(
            &mut r,
            "evt_3",
            "customer.subscription.updated",
            30,
            &updated("past_due", "enterprise"),
        )
        .unwrap();
        assert_eq!(r.status.as_deref(), Some("past_due"));
        assert_eq!(r.watermark.as_ref().unwrap().event_id, "evt_3");
    }

    #[test]
    fn same_second_events_follow_the_documented_rank() {
        // Applied in either order, the same second ends on the later rank.
        let events = [
            (
                "evt_b",
                "checkout.session.completed",
                Change::Checkout(plan("starter")),
            ),
            (
                "evt_a",
                "customer.subscription.updated",
                updated("incomplete", "starter"),
            ),
            (
                "evt_c",
                "customer.subscription.updated",
                updated("active", "professional"),
            ),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let mut r = rec();
            for i in order {
                let (id, t, c) = &events[i];
                let _ = apply(&mut r, id, t, 5, c);
            }
            assert_eq!(r.status.as_deref(), Some("active"), "{order:?}");
            assert_eq!(r.tier.as_deref(), Some("professional"), "{order:?}");
        }
        assert!(Change::Checkout(plan("x")).rank() < updated("incomplete", "x").rank());
        assert!(updated("canceled", "x").rank() < Change::Deleted { plan: None }.rank());
        assert!(Change::Invoice { paid: false }.rank() < Change::Invoice { paid: true }.rank());
    }

    #[test]
    fn same_second_updates_follow_the_way_a_subscription_moves() {
        let order = [
            "incomplete",
            "trialing",
            "active",
            "past_due",
            "unpaid",
            "paused",
            "incomplete_expired",
            "canceled",
            "something_new",
        ];
        for pair in order.windows(2) {
            assert!(
                updated(pair[0], "x").rank() < updated(pair[1], "x").rank(),
                "{} before {}",
                pair[0],
                pair[1]
            );
        }
        assert!(Change::Checkout(plan("x")).rank() < updated("incomplete", "x").rank());
        assert!(updated("something_new", "x").rank() < Change::Deleted { plan: None }.rank());
    }

    #[test]
    fn a_newer_deletion_moves_the_watermark() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_1",
            "checkout.session.completed",
            10,
            &Change::Checkout(plan("starter")),
        )
        .unwrap();
        apply(
            &mut r,
            "evt_d",
            "customer.subscription.deleted",
            20,
            &Change::Deleted { plan: None },
        )
        .unwrap();
        assert_eq!(r.watermark.as_ref().unwrap().event_id, "evt_d");
        assert_eq!(
            r.last_event_type.as_deref(),
            Some("customer.subscription.deleted")
        );
        assert_eq!(
            r.tier.as_deref(),
            Some("starter"),
            "no plan told: the plan it ended on"
        );
        // A deletion on a record that has seen nothing else.
        let mut r = rec();
        apply(
            &mut r,
            "evt_d",
            "customer.subscription.deleted",
            20,
            &Change::Deleted { plan: None },
        )
        .unwrap();
        assert_eq!(r.watermark.as_ref().unwrap().event_id, "evt_d");
    }

    #[test]
    fn a_redelivered_invoice_applies_again() {
        let mut r = rec();
        let paid = Change::Invoice { paid: true };
        apply(&mut r, "evt_i", "invoice.paid", 10, &paid).unwrap();
        let before = r.clone();
        apply(&mut r, "evt_i", "invoice.paid", 10, &paid).unwrap();
        assert_eq!(r, before);
    }

    #[test]
    fn the_tombstone_is_final() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_1",
            "checkout.session.completed",
            10,
            &Change::Checkout(plan("starter")),
        )
        .unwrap();
        apply(
            &mut r,
            "evt_d",
            "customer.subscription.deleted",
            5,
            &Change::Deleted {
                plan: Some(plan("pro")),
            },
        )
        .unwrap();
        assert_eq!(r.deleted_by.as_deref(), Some("evt_d"));
        assert_eq!(r.status.as_deref(), Some("canceled"));
        assert_eq!(r.tier.as_deref(), Some("pro"));
        assert_eq!(
            r.watermark.as_ref().unwrap().event_id,
            "evt_1",
            "an older deletion keeps the newer mark"
        );
        for change in [updated("active", "enterprise"), Change::Checkout(plan("x"))] {
            let before = r.clone();
            let why = apply(&mut r, "evt_9", "t", 99, &change).unwrap_err().to_string();
            assert!(why.contains("deleted by evt_d"), "{why}");
            assert_eq!(r, before);
        }
        // The payment track goes on; the tombstone stays.
        apply(
            &mut r,
            "evt_i",
            "invoice.paid",
            99,
            &Change::Invoice { paid: true },
        )
        .unwrap();
        assert_eq!(r.invoice_status.as_deref(), Some("active"));
        assert_eq!(r.deleted_by.as_deref(), Some("evt_d"));
        // A second deletion finds the tombstone and keeps it.
        apply(
            &mut r,
            "evt_d2",
            "customer.subscription.deleted",
            50,
            &Change::Deleted { plan: None },
        )
        .unwrap();
        assert_eq!(r.deleted_by.as_deref(), Some("evt_d"));
    }

    #[test]
    fn an_update_whose_price_cannot_be_told_keeps_the_plan_and_applies_the_status() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_1",
            "checkout.session.completed",
            10,
            &Change::Checkout(plan("pro")),
        )
        .unwrap();
        let unknown = Change::Updated {
            status: SubscriptionStatus::Unpaid,
            plan: None,
        };
        apply(&mut r, "evt_2", "customer.subscription.updated", 20, &unknown).unwrap();
        assert_eq!(
            (r.status.as_deref(), r.tier.as_deref()),
            (Some("unpaid"), Some("pro"))
        );
    }

    #[test]
    fn invoices_have_their_own_watermark() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_u",
            "customer.subscription.updated",
            50,
            &updated("active", "pro"),
        )
        .unwrap();
        apply(
            &mut r,
            "evt_i1",
            "invoice.payment_failed",
            10,
            &Change::Invoice { paid: false },
        )
        .unwrap();
        assert_eq!(r.invoice_status.as_deref(), Some("past_due"));
        apply(
            &mut r,
            "evt_i2",
            "invoice.paid",
            20,
            &Change::Invoice { paid: true },
        )
        .unwrap();
        assert!(
            apply(
                &mut r,
                "evt_i0",
                "invoice.payment_failed",
                15,
                &Change::Invoice { paid: false }
            )
            .is_err()
        );
        assert_eq!(r.invoice_status.as_deref(), Some("active"));
        assert_eq!(r.status.as_deref(), Some("active"));
    }

    #[test]
    fn binding() {
        use BoundBy::{Checkout, Customer, Subscription};
        let mut r = rec();
        assert!(bind(&mut r, Some("u_fallback"), "payer@example.com", Customer));
        assert!(!bind(&mut r, Some("u_fallback"), "payer@example.com", Customer));
        // The fallback follows the customer's latest checkout.
        assert!(bind(&mut r, Some("u_other"), "other@example.com", Customer));
        assert_eq!(r.account_id.as_deref(), Some("u_other"));
        assert_eq!(r.bound_by.as_deref(), Some("customer"));
        // The subscription's own checkout replaces the fallback…
        assert!(bind(&mut r, Some("u_user"), "user@example.com", Checkout));
        assert_eq!(
            (r.account_id.as_deref(), r.bound_by.as_deref()),
            (Some("u_user"), Some("checkout"))
        );
        // …and nothing replaces a checkout's binding.
        assert!(!bind(&mut r, Some("u_late"), "late@example.com", Checkout));
        assert!(!bind(&mut r, Some("u_late"), "late@example.com", Subscription));
        assert!(!bind(&mut r, Some("u_late"), "late@example.com", Customer));
        assert_eq!(r.account_email.as_deref(), Some("user@example.com"));
        // The subscription's own metadata is as strong as its checkout.
        let mut r = rec();
        bind(&mut r, Some("u_fallback"), "payer@example.com", Customer);
        assert!(bind(&mut r, Some("u_seat"), "seat@example.com", Subscription));
        assert!(!bind(&mut r, Some("u_x"), "x@example.com", Customer));
        assert_eq!(r.account_email.as_deref(), Some("seat@example.com"));
        // The same account found both ways: the checkout's binding, no change.
        let mut r = rec();
        bind(&mut r, None, "user@example.com", Customer);
        assert!(!bind(&mut r, Some("u_user"), "user@example.com", Checkout));
        assert_eq!(
            (r.account_id.as_deref(), r.bound_by.as_deref()),
            (Some("u_user"), Some("checkout"))
        );
    }

    #[test]
    fn lago_targets() {
        let mut r = rec();
        assert_eq!(lago_target(&r), LagoTarget::InSync);
        apply(
            &mut r,
            "evt_u",
            "customer.subscription.updated",
            5,
            &updated("active", "pro"),
        )
        .unwrap();
        assert_eq!(lago_target(&r), LagoTarget::WaitingForAccount);
        bind(&mut r, Some("u"), "a@example.com", BoundBy::Checkout);
        assert_eq!(
            lago_target(&r),
            LagoTarget::Assign {
                plan_code: "pro_monthly".into(),
                customer: "a@example.com".into(),
                move_from: None,
            }
        );
        r.lago_plan_code = Some("pro_monthly".into());
        r.lago_customer = Some("a@example.com".into());
        assert_eq!(lago_target(&r), LagoTarget::InSync);
        // The binding moved (a checkout after the customer's fallback): Lago follows.
        r.lago_customer = Some("fallback@example.com".into());
        assert_eq!(
            lago_target(&r),
            LagoTarget::Assign {
                plan_code: "pro_monthly".into(),
                customer: "a@example.com".into(),
                move_from: Some("fallback@example.com".into()),
            }
        );
        r.lago_customer = Some("a@example.com".into());
        for status in ["incomplete", "incomplete_expired", "canceled"] {
            apply(
                &mut r,
                "evt_x",
                "customer.subscription.updated",
                6,
                &updated(status, "enterprise"),
            )
            .unwrap();
            assert_eq!(
                lago_target(&r),
                LagoTarget::End,
                "{status}: a live subscription ends"
            );
        }
        r.lago_plan_code = None;
        assert_eq!(lago_target(&r), LagoTarget::InSync, "nothing live: nothing to do");
        apply(
            &mut r,
            "evt_y",
            "customer.subscription.updated",
            7,
            &updated("unpaid", "enterprise"),
        )
        .unwrap();
        assert!(matches!(lago_target(&r), LagoTarget::Assign { .. }));
        apply(
            &mut r,
            "evt_d",
            "customer.subscription.deleted",
            8,
            &Change::Deleted { plan: None },
        )
        .unwrap();
        assert_eq!(lago_target(&r), LagoTarget::Terminate);
        r.lago_terminated = true;
        assert_eq!(lago_target(&r), LagoTarget::InSync);
    }

    #[test]
    fn a_reconcile_asks_lago_for_the_state_again() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_u",
            "customer.subscription.updated",
            5,
            &updated("active", "pro"),
        )
        .unwrap();
        bind(&mut r, Some("u"), "a@example.com", BoundBy::Checkout);
        r.lago_plan_code = Some("pro_monthly".into());
        r.lago_customer = Some("a@example.com".into());
        assert_eq!(lago_target(&r), LagoTarget::InSync);
        forget_lago(&mut r);
        assert_eq!(
            lago_target(&r),
            LagoTarget::Assign {
                plan_code: "pro_monthly".into(),
                customer: "a@example.com".into(),
                move_from: None,
            }
        );
        // A status without a plan: whatever Lago holds is ended.
        apply(
            &mut r,
            "evt_v",
            "customer.subscription.updated",
            6,
            &updated("incomplete_expired", "pro"),
        )
        .unwrap();
        r.lago_plan_code = None;
        assert_eq!(lago_target(&r), LagoTarget::InSync);
        forget_lago(&mut r);
        assert_eq!(lago_target(&r), LagoTarget::End);
        // A tombstone: terminated again.
        r.deleted_by = Some("evt_d".into());
        r.lago_terminated = true;
        assert_eq!(lago_target(&r), LagoTarget::InSync);
        forget_lago(&mut r);
        assert_eq!(lago_target(&r), LagoTarget::Terminate);
    }

    #[test]
    fn a_read_from_stripe_is_applied_whatever_the_watermark_but_not_over_a_tombstone() {
        let mut r = rec();
        apply(
            &mut r,
            "evt_new",
            "customer.subscription.updated",
            100,
            &updated("past_due", "pro"),
        )
        .unwrap();
        // Read at 90 (a clock behind, or a rank that would lose): applied, the watermark kept.
        apply_read(
            &mut r,
            "evt_old",
            "customer.subscription.updated",
            90,
            &updated("active", "ent"),
        )
        .unwrap();
        assert_eq!(
            (r.status.as_deref(), r.tier.as_deref()),
            (Some("active"), Some("ent"))
        );
        assert_eq!(r.watermark.as_ref().unwrap().event_id, "evt_new");
        // A read later than the watermark moves it, to a second before the read.
        apply_read(
            &mut r,
            "evt_x",
            "customer.subscription.updated",
            200,
            &updated("active", "pro"),
        )
        .unwrap();
        let w = r.watermark.clone().unwrap();
        assert_eq!((w.created, w.event_id.as_str()), (199, "evt_x"));
        // A real event of the read's second is newer than the read.
        apply(
            &mut r,
            "evt_y",
            "customer.subscription.updated",
            200,
            &updated("past_due", "pro"),
        )
        .unwrap();
        assert_eq!(r.status.as_deref(), Some("past_due"));
        // The tombstone stays final.
        apply(
            &mut r,
            "evt_d",
            "customer.subscription.deleted",
            300,
            &Change::Deleted { plan: None },
        )
        .unwrap();
        assert!(
            apply_read(
                &mut r,
                "evt_z",
                "customer.subscription.updated",
                400,
                &updated("active", "pro")
            )
            .is_err()
        );
        assert_eq!(r.status.as_deref(), Some("canceled"));
    }
}
