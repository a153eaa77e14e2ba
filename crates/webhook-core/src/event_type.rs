//! The Stripe event types this pipeline provisions: the one list the ingest's filter
//! (`stripe.handled_event_types`), the topology's bindings and the worker's dispatch share.
//!
//! Adding a type: a variant here (with its Stripe name in [`EventType::as_str`]), then its
//! handler in `webhook-worker/src/handlers/`: CONTRIBUTING.md lists every file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Stripe event type the worker has a handler for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    CheckoutSessionCompleted,
    CheckoutSessionAsyncPaymentSucceeded,
    CustomerSubscriptionUpdated,
    CustomerSubscriptionDeleted,
    InvoicePaid,
    InvoicePaymentFailed,
}

impl EventType {
    /// Every handled type, in the order of the docs.
    pub const ALL: [EventType; 6] = [
        Self::CheckoutSessionCompleted,
        Self::CheckoutSessionAsyncPaymentSucceeded,
        Self::CustomerSubscriptionUpdated,
        Self::CustomerSubscriptionDeleted,
        Self::InvoicePaid,
        Self::InvoicePaymentFailed,
    ];

    /// Stripe's name of the type (the event's `type`, and the routing key of its message).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CheckoutSessionCompleted => "checkout.session.completed",
            Self::CheckoutSessionAsyncPaymentSucceeded => "checkout.session.async_payment_succeeded",
            Self::CustomerSubscriptionUpdated => "customer.subscription.updated",
            Self::CustomerSubscriptionDeleted => "customer.subscription.deleted",
            Self::InvoicePaid => "invoice.paid",
            Self::InvoicePaymentFailed => "invoice.payment_failed",
        }
    }

    /// Its place in [`EventType::ALL`]: a new variant does not compile until it has one, nor
    /// does an `ALL` that disagrees (checked at compile time below).
    const fn index(self) -> usize {
        match self {
            Self::CheckoutSessionCompleted => 0,
            Self::CheckoutSessionAsyncPaymentSucceeded => 1,
            Self::CustomerSubscriptionUpdated => 2,
            Self::CustomerSubscriptionDeleted => 3,
            Self::InvoicePaid => 4,
            Self::InvoicePaymentFailed => 5,
        }
    }

    /// The handled type of this name; `None` for every other Stripe type (exact match: Stripe's
    /// names are lowercase and never padded).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

const _: () = {
    let mut i = 0;
    while i < EventType::ALL.len() {
        assert!(
            EventType::ALL[i].index() == i,
            "EventType::ALL must list every type once, in index order"
        );
        i += 1;
    }
};

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A type name that no handler takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an event type this pipeline handles; the handled types are: {list}",
    list = EventType::ALL.map(EventType::as_str).join(", ")
)]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_stripe_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string().parse::<EventType>(), Ok(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn other_names_are_refused_with_the_list() {
        assert_eq!(EventType::parse("customer.created"), None);
        assert_eq!(EventType::parse(" invoice.paid"), None, "exact names only");
        let err = "invoice.upcoming".parse::<EventType>().unwrap_err().to_string();
        assert!(
            err.starts_with("\"invoice.upcoming\" is not an event type"),
            "{err}"
        );
        assert!(err.contains("checkout.session.completed, "), "{err}");
        assert!(serde_json::from_str::<EventType>("\"charge.succeeded\"").is_err());
    }
}
