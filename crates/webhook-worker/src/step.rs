//! The steps of a job: the names the step ledger, the `x-failed-step` header, the
//! `webhook_worker_step_duration_seconds` metric and the spans use.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reading the message and the Stripe object in it.
    Parse,
    /// Finding the handler of the event type.
    Dispatch,
    /// Reading the subscription's current state from Stripe (`stripe.refetch`).
    StripeRefetch,
    /// Waiting for the subscription's lease.
    SubscriptionLease,
    /// A statement of the job's own that Postgres refused.
    Postgres,
    /// The one Keycloak account with the buyer's email.
    KeycloakLookup,
    /// The Lago customer upserted.
    LagoCustomer,
    /// The Lago subscription brought to the billing state.
    LagoSubscription,
    /// The Lago subscription terminated (a deletion, or a move to another account).
    LagoTerminate,
    /// The account's Keycloak attributes brought to what its subscriptions grant.
    KeycloakAttributes,
    /// The audit row and the action's finish.
    Audit,
}

impl Step {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Dispatch => "dispatch",
            Self::StripeRefetch => "stripe_refetch",
            Self::SubscriptionLease => "subscription_lease",
            Self::Postgres => "postgres",
            Self::KeycloakLookup => "keycloak_lookup",
            Self::LagoCustomer => "lago_customer",
            Self::LagoSubscription => "lago_subscription",
            Self::LagoTerminate => "lago_terminate",
            Self::KeycloakAttributes => "keycloak_attributes",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_shows_as_its_ledger_name() {
        assert_eq!(Step::StripeRefetch.to_string(), "stripe_refetch");
        assert_eq!(
            Step::KeycloakAttributes.to_string(),
            Step::KeycloakAttributes.as_str()
        );
    }
}
