//! Each server's view of the settings: what it requires, checked, with typed values. A server
//! takes its view first when it is built ([`Settings::for_ingest`], [`Settings::for_worker`]), so
//! a missing or malformed value stops it before it connects to anything, with a message that
//! names the variable; the rest of the server never reads a raw string or a `_secs` number.
//!
//! The settings every binary shares are checked when they are loaded (`Settings::load_from`);
//! a view adds what only its server needs (the ingest's webhook secrets, the worker's Keycloak
//! and Lago), so that `webhookctl` runs without them.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroUsize};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::values::{Livemode, RetrySchedule, resolve_bind};
use super::{Settings, SettingsError};
use crate::EventType;

/// What `webhook-ingest` runs with.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Where it listens (`INGEST_BIND`, resolved).
    pub bind: SocketAddr,
    /// The endpoint's signing secrets (`STRIPE_WEBHOOK_SECRET`): at least one; more during a
    /// rotation.
    pub secrets: Vec<SecretString>,
    /// How old a signed timestamp may be (`STRIPE_SIGNATURE_TOLERANCE_SECS`); never zero.
    pub tolerance: Duration,
    /// The event types queued for the worker; the others are stored and answered `ignored`.
    pub handled_event_types: Vec<EventType>,
    /// Which Stripe mode's events are queued.
    pub livemode: Livemode,
    /// Larger bodies are refused with 413.
    pub body_limit_bytes: usize,
    /// The time a client gets to send its request head (slow-loris).
    pub header_timeout: Duration,
    /// The time a client gets to send its body.
    pub body_timeout: Duration,
    /// The time in-flight requests get to finish on SIGTERM.
    pub shutdown_timeout: Duration,
    /// The `Retry-After` of 503 answers.
    pub retry_after: Duration,
    /// HTTP worker threads; `None`: one per core.
    pub workers: Option<NonZeroUsize>,
    /// Group-commit transactions in flight at once.
    pub commit_writers: usize,
}

/// What `webhook-worker` runs with. Its Keycloak and Lago clients still read their sections of
/// [`Settings`] (`keycloak`, `lago`), which this view has checked.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Where the health and metrics endpoints listen (`WORKER_BIND`, resolved).
    pub bind: SocketAddr,
    /// Jobs in flight per process (`WORKER_CONCURRENCY`, the prefetch).
    pub concurrency: NonZeroU16,
    /// The delay before each broker-level retry (`WORKER_RETRY_SCHEDULE`).
    pub retry_schedule: RetrySchedule,
    /// In-process retries of a transient downstream error before the broker tier takes over.
    pub inline_retries: usize,
    /// The bounds of the backoff between inline retries.
    pub inline_retry_min: Duration,
    pub inline_retry_max: Duration,
    /// The time in-flight jobs get to finish on SIGTERM.
    pub shutdown_timeout: Duration,
    /// How long a subscription's lease lasts without renewal.
    pub lease: Duration,
    /// The request timeouts of the Keycloak and Lago APIs.
    pub keycloak_timeout: Duration,
    pub lago_timeout: Duration,
    /// The Keycloak attribute that receives the tier.
    pub tier_attribute: String,
    /// The Keycloak attribute that receives the billing status; `None`: not written.
    pub status_attribute: Option<String>,
    /// Stripe's API when `STRIPE_API_KEY` is set: reconcile jobs read the subscription from it,
    /// and with [`WorkerConfig::refetch`] every subscription event does.
    pub stripe_api: Option<StripeApiConfig>,
    /// `stripe.refetch`: a subscription event's current subscription is read from Stripe before
    /// it is applied (requires `STRIPE_API_KEY`).
    pub refetch: bool,
}

impl StripeApiConfig {
    /// A key of the other Stripe mode than `stripe.livemode` (`sk_test_…` with `live`, say) would
    /// read subscriptions and events the ingest refuses: refused at start.
    pub fn check_mode(&self, livemode: super::Livemode) -> Result<(), SettingsError> {
        use super::Livemode;
        let key = self.key.expose_secret();
        let key_mode = if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
            Livemode::Live
        } else if key.starts_with("sk_test_") || key.starts_with("rk_test_") {
            Livemode::Test
        } else {
            return Ok(());
        };
        if livemode != Livemode::Any && key_mode != livemode {
            return Err(SettingsError::Invalid {
                variable: "STRIPE_API_KEY",
                reason: format!(
                    "it is a {}-mode key but stripe.livemode is {}: use the key of the account's {} mode",
                    key_mode.as_str(),
                    livemode.as_str(),
                    livemode.as_str()
                ),
            });
        }
        Ok(())
    }
}

/// Stripe's API for the tools that read it (`webhookctl backfill`, `reconcile`, the worker's
/// `stripe.refetch`).
#[derive(Clone, Debug)]
pub struct StripeApiConfig {
    pub url: String,
    pub key: secrecy::SecretString,
    pub timeout: Duration,
    /// Requests per second at most, for this process.
    pub rate_per_sec: std::num::NonZeroU32,
}

impl Settings {
    /// The ingest's view: the webhook secrets are required, the bind address must resolve.
    pub fn for_ingest(&self) -> Result<IngestConfig, SettingsError> {
        let i = &self.ingest;
        let secrets = self.stripe.secrets()?;
        if self.stripe.tolerance_secs == 0 {
            return Err(SettingsError::Invalid {
                variable: "STRIPE_SIGNATURE_TOLERANCE_SECS",
                reason: "0 would accept replays of any age; Stripe's libraries use 300".into(),
            });
        }
        Ok(IngestConfig {
            bind: bind("INGEST_BIND", &i.bind)?,
            secrets,
            tolerance: Duration::from_secs(self.stripe.tolerance_secs),
            handled_event_types: self.stripe.handled_event_types.clone(),
            livemode: self.stripe.livemode,
            body_limit_bytes: i.body_limit_bytes,
            header_timeout: Duration::from_secs(i.header_timeout_secs),
            body_timeout: Duration::from_secs(i.body_timeout_secs),
            shutdown_timeout: Duration::from_secs(i.shutdown_timeout_secs),
            retry_after: Duration::from_secs(i.retry_after_secs),
            workers: NonZeroUsize::new(i.workers),
            commit_writers: i.commit_writers,
        })
    }

    /// The worker's view: Keycloak (URL, realm, credentials) and Lago (URL, API key) are
    /// required, the concurrency is at least 1, the bind address must resolve.
    pub fn for_worker(&self) -> Result<WorkerConfig, SettingsError> {
        let (k, l, w) = (&self.keycloak, &self.lago, &self.worker);
        // In the order an operator fills them in; URLs that are set were checked at load.
        required(
            &k.url,
            "KEYCLOAK_URL",
            " for the worker (e.g. http://keycloak:8080)",
        )?;
        required(
            &k.realm,
            "KEYCLOAK_REALM",
            " for the worker (the realm that holds the users)",
        )?;
        // The client secret wins (client_credentials grant); else the admin user's password grant.
        if k.client_secret.expose_secret().is_empty() && k.admin_user.is_empty() {
            return Err(SettingsError::MissingCredentials {
                service: "Keycloak",
                set: "KEYCLOAK_CLIENT_SECRET (client_credentials) or KEYCLOAK_ADMIN_USER and \
                      KEYCLOAK_ADMIN_PASSWORD (password grant)",
            });
        }
        required(
            &l.api_url,
            "LAGO_API_URL",
            " for the worker (e.g. http://lago-api:3000)",
        )?;
        if l.api_key.expose_secret().is_empty() {
            return Err(SettingsError::Missing {
                variable: "LAGO_API_KEY",
                why: " for the worker (Lago > Developers > API keys)",
            });
        }
        let concurrency = NonZeroU16::new(w.concurrency).ok_or(SettingsError::Invalid {
            variable: "WORKER_CONCURRENCY",
            reason: "0 jobs in flight would consume nothing; it must be at least 1".into(),
        })?;
        let status_attribute = Some(k.status_attribute.trim().to_owned()).filter(|a| !a.is_empty());
        let config = WorkerConfig {
            bind: bind("WORKER_BIND", &w.bind)?,
            concurrency,
            retry_schedule: w.retry_schedule.clone(),
            inline_retries: w.inline_retries,
            inline_retry_min: Duration::from_millis(w.inline_retry_min_ms),
            inline_retry_max: Duration::from_millis(w.inline_retry_max_ms),
            shutdown_timeout: Duration::from_secs(w.shutdown_timeout_secs),
            lease: Duration::from_secs(w.lease_secs),
            keycloak_timeout: Duration::from_millis(k.timeout_ms),
            lago_timeout: Duration::from_millis(l.timeout_ms),
            tier_attribute: k.tier_attribute.clone(),
            status_attribute,
            stripe_api: if self.stripe.refetch {
                Some(self.for_stripe_api(" for stripe.refetch (WEBHOOK__STRIPE__REFETCH=true): a restricted key that reads subscriptions; or turn refetch off")?)
            } else if self.stripe.api_key.expose_secret().trim().is_empty() {
                None
            } else {
                Some(self.for_stripe_api("")?)
            },
            refetch: self.stripe.refetch,
        };
        if let Some(api) = &config.stripe_api {
            api.check_mode(self.stripe.livemode)?;
        }
        Ok(config)
    }

    /// Stripe's API: `STRIPE_API_KEY` is required (`why` says for what); the URL was checked
    /// at load.
    pub fn for_stripe_api(&self, why: &'static str) -> Result<StripeApiConfig, SettingsError> {
        let s = &self.stripe;
        if s.api_key.expose_secret().trim().is_empty() {
            return Err(SettingsError::Missing {
                variable: "STRIPE_API_KEY",
                why,
            });
        }
        let rate_per_sec = std::num::NonZeroU32::new(s.api_rate_per_sec).ok_or(SettingsError::Invalid {
            variable: "WEBHOOK__STRIPE__API_RATE_PER_SEC",
            reason: "0 requests per second would never call Stripe; it must be at least 1".into(),
        })?;
        if s.api_timeout_ms == 0 {
            return Err(SettingsError::Invalid {
                variable: "WEBHOOK__STRIPE__API_TIMEOUT_MS",
                reason: "a timeout of 0 ms fails every call; give milliseconds, e.g. 10000".into(),
            });
        }
        Ok(StripeApiConfig {
            url: s.api_url.trim().trim_end_matches('/').to_owned(),
            key: secrecy::SecretString::from(s.api_key.expose_secret().trim().to_owned()),
            timeout: Duration::from_millis(s.api_timeout_ms),
            rate_per_sec,
        })
    }
}

/// `Missing` when `value` is blank.
fn required(value: &str, variable: &'static str, why: &'static str) -> Result<(), SettingsError> {
    if value.trim().is_empty() {
        return Err(SettingsError::Missing { variable, why });
    }
    Ok(())
}

fn bind(variable: &'static str, raw: &str) -> Result<SocketAddr, SettingsError> {
    resolve_bind(raw).map_err(|reason| SettingsError::Invalid { variable, reason })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Settings loaded from exactly `pairs`, on top of a worker and an ingest that would start.
    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut env: HashMap<String, String> = [
            ("STRIPE_WEBHOOK_SECRET", "whsec_test"),
            ("KEYCLOAK_URL", "http://keycloak:8080"),
            ("KEYCLOAK_REALM", "uchub"),
            ("KEYCLOAK_CLIENT_SECRET", "kc-secret"),
            ("LAGO_API_URL", "http://lago-api:3000"),
            ("LAGO_API_KEY", "lago-key"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in pairs {
            env.insert(k.to_string(), v.to_string());
        }
        Settings::load_from(None, &env)
    }

    fn ingest_error(pairs: &[(&str, &str)]) -> String {
        settings(pairs).unwrap().for_ingest().unwrap_err().to_string()
    }

    fn worker_error(pairs: &[(&str, &str)]) -> String {
        settings(pairs).unwrap().for_worker().unwrap_err().to_string()
    }

    #[test]
    fn the_ingest_view_is_typed_from_the_defaults() {
        let c = settings(&[("STRIPE_WEBHOOK_SECRET", "whsec_a, whsec_b")])
            .unwrap()
            .for_ingest()
            .unwrap();
        assert_eq!(c.bind, "0.0.0.0:8084".parse::<SocketAddr>().unwrap());
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.secrets[1].expose_secret(), "whsec_b");
        assert_eq!(c.tolerance, Duration::from_secs(300));
        assert_eq!(c.body_limit_bytes, 1_048_576);
        assert_eq!(c.header_timeout, Duration::from_secs(5));
        assert_eq!(c.body_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.retry_after, Duration::from_secs(10));
        assert_eq!(c.workers, None, "0: one per core");
        assert_eq!(c.commit_writers, 4);
        assert_eq!(c.livemode, Livemode::Any);
        assert_eq!(c.handled_event_types.len(), 6);
        let c = settings(&[("WEBHOOK__INGEST__WORKERS", "3"), ("INGEST_BIND", "127.0.0.1:0")])
            .unwrap()
            .for_ingest()
            .unwrap();
        assert_eq!(c.workers, NonZeroUsize::new(3));
        assert_eq!(c.bind, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn the_ingest_view_names_what_is_missing_or_invalid() {
        for blank in ["", " , "] {
            let err = ingest_error(&[("STRIPE_WEBHOOK_SECRET", blank)]);
            assert!(
                err.starts_with("STRIPE_WEBHOOK_SECRET is required (the endpoint's signing secret"),
                "{err}"
            );
        }
        let err = ingest_error(&[("STRIPE_SIGNATURE_TOLERANCE_SECS", "0")]);
        assert!(
            err.starts_with("STRIPE_SIGNATURE_TOLERANCE_SECS is invalid: "),
            "{err}"
        );
        let err = ingest_error(&[("INGEST_BIND", "8084")]);
        assert!(err.starts_with("INGEST_BIND is invalid: \"8084\" "), "{err}");
        // The worker's requirements are not the ingest's.
        settings(&[("KEYCLOAK_URL", ""), ("LAGO_API_KEY", "")])
            .unwrap()
            .for_ingest()
            .unwrap();
    }

    #[test]
    fn the_worker_view_is_typed_from_the_defaults() {
        let c = settings(&[]).unwrap().for_worker().unwrap();
        assert_eq!(c.bind, "0.0.0.0:9091".parse::<SocketAddr>().unwrap());
        assert_eq!(c.concurrency.get(), 16);
        let labels: Vec<_> = c.retry_schedule.tiers().map(|(_, label)| label).collect();
        assert_eq!(labels, ["5s", "30s", "2m", "10m", "30m", "1h", "3h", "6h"]);
        assert_eq!(c.inline_retries, 3);
        assert_eq!(c.inline_retry_min, Duration::from_millis(200));
        assert_eq!(c.inline_retry_max, Duration::from_secs(5));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.lease, Duration::from_secs(15));
        assert_eq!(c.keycloak_timeout, Duration::from_secs(10));
        assert_eq!(c.lago_timeout, Duration::from_secs(10));
        assert_eq!(c.tier_attribute, "subscription_tier");
        assert_eq!(c.status_attribute.as_deref(), Some("billing_status"));
        let c = settings(&[("WEBHOOK__KEYCLOAK__STATUS_ATTRIBUTE", " ")])
            .unwrap()
            .for_worker()
            .unwrap();
        assert_eq!(c.status_attribute, None, "blank: not written");
        // The password grant is enough, and the webhook secret is the ingest's business.
        settings(&[
            ("KEYCLOAK_CLIENT_SECRET", ""),
            ("KEYCLOAK_ADMIN_USER", "admin"),
            ("STRIPE_WEBHOOK_SECRET", ""),
        ])
        .unwrap()
        .for_worker()
        .unwrap();
    }

    #[test]
    fn the_worker_view_names_what_is_missing_or_invalid() {
        let cases: [(&str, &str, &str); 7] = [
            (
                "KEYCLOAK_URL",
                "",
                "KEYCLOAK_URL is required for the worker (e.g. http://keycloak:8080)",
            ),
            (
                "KEYCLOAK_REALM",
                " ",
                "KEYCLOAK_REALM is required for the worker (the realm that holds the users)",
            ),
            (
                "KEYCLOAK_CLIENT_SECRET",
                "",
                "Keycloak credentials are missing: set KEYCLOAK_CLIENT_SECRET (client_credentials) or \
                 KEYCLOAK_ADMIN_USER and KEYCLOAK_ADMIN_PASSWORD (password grant)",
            ),
            (
                "LAGO_API_URL",
                "",
                "LAGO_API_URL is required for the worker (e.g. http://lago-api:3000)",
            ),
            (
                "LAGO_API_KEY",
                "",
                "LAGO_API_KEY is required for the worker (Lago > Developers > API keys)",
            ),
            ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY is invalid: "),
            (
                "WORKER_BIND",
                "0.0.0.0:port",
                "WORKER_BIND is invalid: \"0.0.0.0:port\" ",
            ),
        ];
        for (variable, value, message) in cases {
            let err = worker_error(&[(variable, value)]);
            assert!(err.starts_with(message), "{variable}={value:?}: {err}");
        }
    }

    #[test]
    fn a_bad_retry_schedule_stops_every_binary_at_load() {
        let err = settings(&[("WORKER_RETRY_SCHEDULE", "5s,soon")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("WORKER_RETRY_SCHEDULE is invalid: \"soon\" is not a duration"),
            "{err}"
        );
        let c = settings(&[("WORKER_RETRY_SCHEDULE", "")])
            .unwrap()
            .for_worker()
            .unwrap();
        assert!(c.retry_schedule.is_empty(), "no retries: dead-lettered at once");
    }

    #[test]
    fn stripes_api_needs_a_key_a_rate_and_a_timeout() {
        let view = |pairs: &[(&str, &str)]| settings(pairs).unwrap().for_stripe_api(" for this");
        let err = view(&[]).unwrap_err().to_string();
        assert_eq!(err, "STRIPE_API_KEY is required for this");
        let ok = view(&[
            ("STRIPE_API_KEY", " rk_test_1 "),
            ("STRIPE_API_URL", "http://stripe.test/"),
        ])
        .unwrap();
        assert_eq!(ok.key.expose_secret(), "rk_test_1");
        assert_eq!(ok.url, "http://stripe.test");
        assert_eq!(ok.rate_per_sec.get(), 20);
        assert_eq!(ok.timeout, Duration::from_secs(10));
        let err = view(&[
            ("STRIPE_API_KEY", "k"),
            ("WEBHOOK__STRIPE__API_RATE_PER_SEC", "0"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("WEBHOOK__STRIPE__API_RATE_PER_SEC"),
            "{err}"
        );
        let err = view(&[("STRIPE_API_KEY", "k"), ("WEBHOOK__STRIPE__API_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("WEBHOOK__STRIPE__API_TIMEOUT_MS"),
            "{err}"
        );
        // The worker: refetch needs the key; with a key and no refetch, reconcile jobs use it.
        let worker = |pairs: &[(&str, &str)]| settings(pairs).unwrap().for_worker();
        let err = worker(&[("WEBHOOK__STRIPE__REFETCH", "true")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("STRIPE_API_KEY is required for stripe.refetch"),
            "{err}"
        );
        let w = worker(&[("STRIPE_API_KEY", "k")]).unwrap();
        assert!(w.stripe_api.is_some() && !w.refetch);
        let w = worker(&[]).unwrap();
        assert!(w.stripe_api.is_none());
    }

    #[test]
    fn a_key_of_the_other_mode_is_refused() {
        let check = |key: &str, mode: &str| {
            settings(&[("STRIPE_API_KEY", key), ("WEBHOOK__STRIPE__LIVEMODE", mode)])
                .unwrap()
                .for_stripe_api("")
                .unwrap()
                .check_mode(
                    settings(&[("WEBHOOK__STRIPE__LIVEMODE", mode)])
                        .unwrap()
                        .stripe
                        .livemode,
                )
        };
        for (key, mode) in [
            ("sk_test_1", "test"),
            ("rk_test_1", "test"),
            ("sk_live_1", "live"),
            ("rk_live_1", "live"),
            ("sk_test_1", "any"),
            ("sk_live_1", "any"),
            ("a_key_of_another_form", "live"),
        ] {
            assert!(check(key, mode).is_ok(), "{key} {mode}");
        }
        for (key, mode) in [
            ("sk_test_1", "live"),
            ("rk_test_1", "live"),
            ("sk_live_1", "test"),
            ("rk_live_1", "test"),
        ] {
            let err = check(key, mode).unwrap_err().to_string();
            assert!(
                err.contains("STRIPE_API_KEY") && err.contains(mode),
                "{key} {mode}: {err}"
            );
        }
        // The worker checks it too.
        let err = settings(&[
            ("STRIPE_API_KEY", "sk_test_1"),
            ("WEBHOOK__STRIPE__LIVEMODE", "live"),
        ])
        .unwrap()
        .for_worker()
        .unwrap_err();
        assert!(err.to_string().contains("test-mode key"), "{err}");
    }
}
