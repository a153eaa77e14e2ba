//! What an account is entitled to, from the state of its subscriptions: one table from Stripe's
//! subscription status to access (`[plans.access]`), an order of tiers (`[plans] tier_order`),
//! and the Keycloak attributes that follow. Pure: the whole record in, the attributes out.
//!
//! | Stripe status | access | `billing_status` |
//! |---|---|---|
//! | `active`, `trialing` | the price's tier | `active` |
//! | `past_due` | the price's tier (grace) | `past_due` |
//! | `incomplete` | nothing yet | `incomplete` |
//! | `incomplete_expired`, `unpaid`, `paused` | nothing | the status |
//! | deleted (`customer.subscription.deleted`) | nothing | `canceled` |
//!
//! An account takes the highest tier (by `tier_order`) that one of its subscriptions grants, or
//! `[plans] free_tier` when none grants anything. Its `billing_status` is that of the
//! subscription that gives the tier (the newest of them on a tie), else that of its newest
//! subscription. A subscription's billing status is its Stripe status, unless an invoice event
//! newer than its last subscription event says otherwise (`invoice.paid` → `active`,
//! `invoice.payment_failed` → `past_due`); on the same second the subscription event wins.

use std::collections::HashMap;

use webhook_core::settings::PlanSettings;
use webhook_store::billing::SubscriptionRecord;

/// What a subscription status grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The price's tier.
    Grant,
    /// Nothing from this subscription.
    None,
}

/// The entitlement rules of `[plans]`.
#[derive(Debug, Clone)]
pub struct Entitlements {
    access: HashMap<String, Access>,
    tier_order: Vec<String>,
    pub free_tier: String,
}

/// An entry of `[plans.access]` that is neither `grant` nor `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plans.access.{status} = {value:?} must be \"grant\" or \"none\"")]
pub struct AccessError {
    pub status: String,
    pub value: String,
}

/// The Keycloak attributes an account should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub tier: String,
    /// `None` when the account has no subscription with a status yet.
    pub status: Option<String>,
}

impl Entitlements {
    /// Fails (naming the setting) on an access value other than `grant` or `none`.
    pub fn new(settings: &PlanSettings) -> Result<Self, AccessError> {
        let mut access = HashMap::new();
        for (status, value) in &settings.access {
            let a = match value.trim().to_ascii_lowercase().as_str() {
                "grant" => Access::Grant,
                "none" => Access::None,
                _ => {
                    return Err(AccessError {
                        status: status.clone(),
                        value: value.clone(),
                    });
                }
            };
            access.insert(status.trim().to_ascii_lowercase(), a);
        }
        Ok(Self {
            access,
            tier_order: settings
                .tier_order
                .iter()
                .map(|t| t.trim().to_lowercase())
                .collect(),
            free_tier: settings.free_tier.clone(),
        })
    }

    /// What `status` grants; a status the table does not list grants nothing.
    pub fn access(&self, status: &str) -> Access {
        self.access.get(status).copied().unwrap_or(Access::None)
    }

    /// Where a tier stands: its place in `tier_order` (from 1), 0 for a tier not listed.
    fn rank(&self, tier: &str) -> usize {
        self.tier_order
            .iter()
            .position(|t| t == tier)
            .map_or(0, |p| p + 1)
    }

    /// The tier a subscription grants, if any.
    pub fn granted_tier<'a>(&self, sub: &'a SubscriptionRecord) -> Option<&'a str> {
        if sub.deleted_by.is_some() {
            return None;
        }
        let status = sub.status.as_deref()?;
        match self.access(status) {
            Access::Grant => sub.tier.as_deref(),
            Access::None => None,
        }
    }

    /// The attributes of an account with these subscriptions.
    pub fn account_view(&self, subs: &[SubscriptionRecord]) -> AccountView {
        let newest = |s: &&SubscriptionRecord| (s.watermark.clone(), s.subscription_id.clone());
        let best = subs
            .iter()
            .filter_map(|s| self.granted_tier(s).map(|t| (s, t)))
            .max_by(|(a, ta), (b, tb)| {
                (self.rank(ta), *ta)
                    .cmp(&(self.rank(tb), *tb))
                    .then_with(|| newest(a).cmp(&newest(b)))
            });
        match best {
            Some((sub, tier)) => AccountView {
                tier: tier.to_owned(),
                status: billing_status(sub),
            },
            None => AccountView {
                tier: self.free_tier.clone(),
                status: subs.iter().max_by_key(newest).and_then(billing_status),
            },
        }
    }
}

/// Whether Lago keeps a live subscription for a subscription in this status: every status but
/// the ones that never started (`incomplete`, `incomplete_expired`) and `canceled`. Level-
/// triggered: Lago carries a live subscription exactly while the status does.
pub fn lago_carries_plan(status: &str) -> bool {
    !matches!(status, "incomplete" | "incomplete_expired" | "canceled")
}

/// A subscription's billing status (see the module docs).
pub fn billing_status(sub: &SubscriptionRecord) -> Option<String> {
    if sub.deleted_by.is_some() {
        return Some("canceled".into());
    }
    let from_status = sub.status.as_deref().map(|s| match s {
        "active" | "trialing" => "active",
        other => other,
    });
    let invoice_newer = match (&sub.invoice_watermark, &sub.watermark) {
        (Some(_), None) => true,
        (Some(i), Some(l)) => i.created > l.created,
        _ => false,
    };
    match (invoice_newer, sub.invoice_status.as_deref()) {
        (true, Some(s)) => Some(s.to_owned()),
        _ => from_status.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhook_store::billing::Watermark;

    fn rules() -> Entitlements {
        let access = [
            ("active", "grant"),
            ("trialing", "grant"),
            ("past_due", "grant"),
            ("incomplete", "none"),
            ("unpaid", "none"),
            ("canceled", "none"),
        ];
        Entitlements::new(&PlanSettings {
            default_rule: "{tier}_{cycle}".into(),
            default_cycle: "monthly".into(),
            map: HashMap::new(),
            free_tier: "free".into(),
            prices: HashMap::new(),
            tier_order: ["free", "starter", "professional", "enterprise"]
                .map(String::from)
                .to_vec(),
            access: access
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .unwrap()
    }

    fn mark(created: i64) -> Option<Watermark> {
        Some(Watermark {
            created,
            rank: 0,
            event_id: format!("evt_{created}"),
        })
    }

    fn sub(id: &str, status: &str, tier: &str, created: i64) -> SubscriptionRecord {
        SubscriptionRecord {
            subscription_id: id.into(),
            status: Some(status.into()),
            tier: Some(tier.into()),
            watermark: mark(created),
            ..Default::default()
        }
    }

    #[test]
    fn the_table() {
        let r = rules();
        let view = |s: &str| r.account_view(&[sub("sub_1", s, "professional", 10)]);
        for (status, tier, billing) in [
            ("active", "professional", "active"),
            ("trialing", "professional", "active"),
            ("past_due", "professional", "past_due"),
            ("incomplete", "free", "incomplete"),
            ("unpaid", "free", "unpaid"),
            ("paused", "free", "paused"),
            ("something_new", "free", "something_new"),
        ] {
            assert_eq!(
                view(status),
                AccountView {
                    tier: tier.into(),
                    status: Some(billing.into())
                },
                "{status}"
            );
        }
        let mut deleted = sub("sub_1", "active", "professional", 10);
        deleted.deleted_by = Some("evt_d".into());
        assert_eq!(
            r.account_view(&[deleted]),
            AccountView {
                tier: "free".into(),
                status: Some("canceled".into())
            }
        );
        assert_eq!(
            r.account_view(&[]),
            AccountView {
                tier: "free".into(),
                status: None
            }
        );
    }

    #[test]
    fn several_subscriptions_take_the_highest_granted_tier() {
        let r = rules();
        let mut old = sub("sub_old", "active", "enterprise", 5);
        old.deleted_by = Some("evt_cancel".into());
        let new = sub("sub_new", "active", "starter", 20);
        assert_eq!(r.account_view(&[old.clone(), new.clone()]).tier, "starter");
        let pro = sub("sub_pro", "past_due", "professional", 1);
        let v = r.account_view(&[new.clone(), pro]);
        assert_eq!(
            v,
            AccountView {
                tier: "professional".into(),
                status: Some("past_due".into())
            }
        );
        // A tier not in tier_order ranks below the listed ones.
        let odd = sub("sub_odd", "active", "zzz", 30);
        assert_eq!(r.account_view(&[odd.clone(), new.clone()]).tier, "starter");
        assert_eq!(r.account_view(&[odd]).tier, "zzz");
        // Nothing granted: the newest subscription's status.
        let unpaid = sub("sub_u", "unpaid", "enterprise", 40);
        assert_eq!(
            r.account_view(&[old, unpaid]),
            AccountView {
                tier: "free".into(),
                status: Some("unpaid".into())
            }
        );
    }

    #[test]
    fn the_lowest_listed_tier_still_ranks_above_an_unlisted_one() {
        let r = rules();
        let free = sub("sub_free", "active", "free", 10);
        let odd = sub("sub_odd", "active", "zzz", 20);
        assert_eq!(r.account_view(&[free.clone(), odd.clone()]).tier, "free");
        assert_eq!(r.account_view(&[odd, free]).tier, "free");
    }

    #[test]
    fn a_newer_invoice_sets_the_billing_status_not_the_tier() {
        let r = rules();
        let mut s = sub("sub_1", "active", "professional", 10);
        s.invoice_status = Some("past_due".into());
        s.invoice_watermark = mark(11);
        assert_eq!(
            r.account_view(std::slice::from_ref(&s)),
            AccountView {
                tier: "professional".into(),
                status: Some("past_due".into())
            }
        );
        // On the same second the subscription event wins.
        s.invoice_watermark = mark(10);
        assert_eq!(billing_status(&s).as_deref(), Some("active"));
        s.invoice_watermark = mark(9);
        assert_eq!(billing_status(&s).as_deref(), Some("active"));
        // Only invoices known.
        let only = SubscriptionRecord {
            invoice_status: Some("active".into()),
            invoice_watermark: mark(3),
            ..Default::default()
        };
        assert_eq!(billing_status(&only).as_deref(), Some("active"));
        assert_eq!(r.account_view(&[only]).tier, "free");
    }

    #[test]
    fn bad_access_values_are_refused() {
        let mut s = crate::plans::test_settings();
        s.access.insert("active".into(), "yes".into());
        assert!(
            Entitlements::new(&s)
                .unwrap_err()
                .to_string()
                .contains("plans.access.active")
        );
        s.access.insert("active".into(), " Grant ".into());
        assert_eq!(Entitlements::new(&s).unwrap().access("active"), Access::Grant);
    }

    #[test]
    fn lago_carries_a_plan_unless_the_subscription_never_started_or_ended() {
        for status in [
            "active",
            "trialing",
            "past_due",
            "unpaid",
            "paused",
            "a_new_status",
        ] {
            assert!(lago_carries_plan(status), "{status}");
        }
        for status in ["incomplete", "incomplete_expired", "canceled"] {
            assert!(!lago_carries_plan(status), "{status}");
        }
    }
}
