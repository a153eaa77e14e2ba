//! The billing rules, pure (no I/O): what a Stripe object says ([`stripe`]), which Lago plan a
//! tier and cycle bill ([`plans`]), and what a subscription's status grants its account
//! ([`entitlement`]). The worker applies them to events; `webhookctl reconcile` uses them to tell
//! what Lago and Keycloak should hold for a subscription as Stripe has it now.

pub mod entitlement;
pub mod plans;
pub mod stripe;
