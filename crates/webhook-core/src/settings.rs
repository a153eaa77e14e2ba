//! The settings of every binary, loaded once at start: built-in defaults (`default.toml`), then
//! an optional TOML file, then the environment (the contract's flat names, then
//! `WEBHOOK__SECTION__KEY`).
//!
//! - [`Settings`]: the tree the file and the environment are read into, every key of
//!   `default.toml`. What every binary shares is checked as it loads: the URLs, and the values
//!   parsed into types ([`values`]: the retry schedule, the log format, the Stripe mode).
//! - [`views`]: each server's own view, [`Settings::for_ingest`] and [`Settings::for_worker`]:
//!   what that server requires, checked, with `Duration`s and `SocketAddr`s instead of numbers
//!   and strings.
//!
//! Secrets are `secrecy` types, so they never show in `Debug` output, logs or errors. A missing
//! or malformed setting is an error that names the variable to fix.

pub mod values;
pub mod views;

pub use values::{Livemode, LogFormat, RetrySchedule};
pub use views::{IngestConfig, StripeApiConfig, WorkerConfig};

use std::collections::HashMap;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("default.toml");

/// The contract's flat environment names and the key each one sets.
pub const FLAT_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("AMQP_URL", "amqp.url"),
    ("STRIPE_WEBHOOK_SECRET", "stripe.webhook_secret"),
    ("STRIPE_SIGNATURE_TOLERANCE_SECS", "stripe.tolerance_secs"),
    ("INGEST_BIND", "ingest.bind"),
    ("WORKER_BIND", "worker.bind"),
    ("WORKER_CONCURRENCY", "worker.concurrency"),
    ("WORKER_RETRY_SCHEDULE", "worker.retry_schedule"),
    ("KEYCLOAK_URL", "keycloak.url"),
    ("KEYCLOAK_REALM", "keycloak.realm"),
    ("KEYCLOAK_ADMIN_REALM", "keycloak.admin_realm"),
    ("KEYCLOAK_CLIENT_ID", "keycloak.client_id"),
    ("KEYCLOAK_ADMIN_USER", "keycloak.admin_user"),
    ("KEYCLOAK_ADMIN_PASSWORD", "keycloak.admin_password"),
    ("KEYCLOAK_CLIENT_SECRET", "keycloak.client_secret"),
    ("LAGO_API_URL", "lago.api_url"),
    ("LAGO_API_KEY", "lago.api_key"),
    ("STRIPE_API_KEY", "stripe.api_key"),
    ("STRIPE_API_URL", "stripe.api_url"),
    ("RUST_LOG", "log.level"),
    ("LOG_FORMAT", "log.format"),
];

/// A setting that is missing or malformed. The message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration could not be loaded: {0}")]
    Load(String),
    #[error("{variable} is required{why}")]
    Missing {
        variable: &'static str,
        why: &'static str,
    },
    #[error("{variable} is invalid: {reason}")]
    Invalid { variable: &'static str, reason: String },
    /// Neither of the ways to authenticate to a service is configured.
    #[error("{service} credentials are missing: set {set}")]
    MissingCredentials {
        service: &'static str,
        set: &'static str,
    },
}

/// Every setting, shaped as `default.toml` is (the loading format: an unknown key is an
/// error). A server reads what it needs through its view ([`Settings::for_ingest`],
/// [`Settings::for_worker`]); `webhookctl` and the libraries read the sections they take.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub stripe: StripeSettings,
    pub ingest: IngestSettings,
    pub worker: WorkerSettings,
    pub keycloak: KeycloakSettings,
    pub lago: LagoSettings,
    pub plans: PlanSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
    pub migrate_on_start: bool,
}

/// `amqp.url` in default.toml (a unit test keeps them equal).
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl AmqpSettings {
    /// `amqp.urls` joined into `url`; refused next to a `url` of the user's own.
    fn merge_urls(&mut self) -> Result<(), SettingsError> {
        if self.urls.is_empty() {
            return Ok(());
        }
        if self.url.expose_secret() != DEFAULT_AMQP_URL {
            return Err(SettingsError::Invalid {
                variable: "AMQP_URL",
                reason:
                    "both amqp.url (or AMQP_URL) and amqp.urls are set: give the addresses in one of them"
                        .into(),
            });
        }
        let joined: Vec<&str> = self.urls.iter().map(|u| u.expose_secret().trim()).collect();
        if joined.iter().any(|u| u.is_empty()) {
            return Err(SettingsError::Invalid {
                variable: "AMQP_URL",
                reason: "amqp.urls holds an empty address: list each node's amqp:// URL".into(),
            });
        }
        self.url = SecretString::from(joined.join(","));
        self.urls.clear();
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Holds the broker password, hence secret. One address, or several comma-separated (the
    /// nodes of a cluster), as `AMQP_URL` gives them.
    pub url: SecretString,
    /// The nodes of a cluster as a TOML list, instead of `url` (one or the other): joined into
    /// `url` at load.
    #[serde(default)]
    pub urls: Vec<SecretString>,
    pub name_prefix: String,
    pub exchange: String,
    pub work_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub declare_on_start: bool,
    pub confirm_timeout_ms: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Replicas of each quorum queue declared (`x-quorum-initial-group-size`); 0 leaves it to
    /// the broker (every node of the cluster).
    pub quorum_group_size: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    /// Comma-separated `whsec_…` secrets; see [`StripeSettings::secrets`].
    pub webhook_secret: SecretString,
    pub tolerance_secs: u64,
    /// The event types queued for the worker (a subset of [`crate::EventType::ALL`]; another
    /// name is refused at start with the list).
    pub handled_event_types: Vec<crate::EventType>,
    /// Which mode's events are queued (`WEBHOOK__STRIPE__LIVEMODE`).
    pub livemode: Livemode,
    /// `STRIPE_API_KEY`: a restricted key that reads events, subscriptions and customers, for
    /// `webhookctl backfill` / `reconcile` and `stripe.refetch`. Empty: those are off.
    pub api_key: SecretString,
    /// `STRIPE_API_URL`: Stripe's API (tests and the sandbox point it elsewhere).
    pub api_url: String,
    /// Seconds a Stripe API call may take.
    pub api_timeout_ms: u64,
    /// Stripe API requests per second at most (Stripe allows 100/s in live mode, 25/s in test
    /// mode for the whole account; leave room for everything else that uses the key).
    pub api_rate_per_sec: u32,
    /// The worker fetches a subscription event's subscription from Stripe before applying it,
    /// so the order of delivery no longer matters for them (one API call per such event).
    pub refetch: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub bind: String,
    pub body_limit_bytes: usize,
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub retry_after_secs: u64,
    pub workers: usize,
    /// Group-commit writers: transactions in flight at once, each for a batch of requests.
    pub commit_writers: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub bind: String,
    pub concurrency: u16,
    /// Parsed at load (`WORKER_RETRY_SCHEDULE`).
    pub retry_schedule: RetrySchedule,
    pub inline_retries: usize,
    pub inline_retry_min_ms: u64,
    pub inline_retry_max_ms: u64,
    pub shutdown_timeout_secs: u64,
    /// Seconds a subscription's lease lasts without renewal (a running job renews it every
    /// third of this): how long a crashed worker blocks the events of its subscription.
    pub lease_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakSettings {
    pub url: String,
    pub realm: String,
    pub admin_realm: String,
    pub client_id: String,
    pub admin_user: String,
    pub admin_password: SecretString,
    pub client_secret: SecretString,
    pub tier_attribute: String,
    /// The optional attribute that receives the billing status; empty = not written.
    #[serde(alias = "billing_status_attribute")]
    pub status_attribute: String,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagoSettings {
    pub api_url: String,
    pub api_key: SecretString,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSettings {
    pub default_rule: String,
    pub default_cycle: String,
    pub map: HashMap<String, String>,
    pub free_tier: String,
    /// Stripe price id or lookup_key → `tier:cycle`.
    pub prices: HashMap<String, String>,
    /// Tiers from lowest to highest: an account with several subscriptions that grant access
    /// gets the highest.
    pub tier_order: Vec<String>,
    /// Stripe subscription status → `grant` (the price's tier) or `none` (no access from it).
    pub access: HashMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `RUST_LOG` filter.
    pub level: String,
    pub format: LogFormat,
}

impl Settings {
    /// Loads from the process environment; the file comes from `config_path` or `WEBHOOK_CONFIG`.
    pub fn load(config_path: Option<&Path>) -> Result<Self, SettingsError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(config_path, &env)
    }

    /// Loads with an explicit environment map (tests use this to stay independent of the machine).
    pub fn load_from(
        config_path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        let file = config_path.map(Path::to_path_buf).or_else(|| {
            env.get("WEBHOOK_CONFIG")
                .filter(|p| !p.is_empty())
                .map(Into::into)
        });
        if let Some(file) = file {
            if !file.is_file() {
                return Err(SettingsError::Load(format!(
                    "the config file {} does not exist (check --config or WEBHOOK_CONFIG)",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        for (var, key) in FLAT_ENV {
            if let Some(value) = env.get(*var) {
                builder = builder
                    .set_override(*key, value.as_str())
                    .map_err(|e| SettingsError::Load(e.to_string()))?;
            }
        }
        let nested: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("WEBHOOK__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("WEBHOOK")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(nested)),
        );
        let mut settings: Settings = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(load_error)?;
        settings.amqp.merge_urls()?;
        settings.validate_common()?;
        Ok(settings)
    }

    fn validate_common(&self) -> Result<(), SettingsError> {
        if self.database.url.expose_secret().is_empty() {
            return Err(SettingsError::Missing {
                variable: "DATABASE_URL",
                why: "",
            });
        }
        if self.amqp.url.expose_secret().is_empty() {
            return Err(SettingsError::Missing {
                variable: "AMQP_URL",
                why: "",
            });
        }
        // Each URL with a real parser; the reasons show them redacted, never a password.
        let invalid = |variable: &'static str| move |reason| SettingsError::Invalid { variable, reason };
        crate::urls::check_postgres(self.database.url.expose_secret()).map_err(invalid("DATABASE_URL"))?;
        crate::urls::check_amqp(self.amqp.url.expose_secret()).map_err(invalid("AMQP_URL"))?;
        // Only the worker needs Keycloak and Lago (its view requires them); anyone who sets
        // them gets them checked.
        if !self.keycloak.url.trim().is_empty() {
            crate::urls::check_http(
                &self.keycloak.url,
                "http://keycloak:8080",
                "KEYCLOAK_CLIENT_SECRET, or KEYCLOAK_ADMIN_USER and KEYCLOAK_ADMIN_PASSWORD,",
            )
            .map_err(invalid("KEYCLOAK_URL"))?;
        }
        if !self.lago.api_url.trim().is_empty() {
            crate::urls::check_http(&self.lago.api_url, "http://lago-api:3000", "LAGO_API_KEY")
                .map_err(invalid("LAGO_API_URL"))?;
        }
        crate::urls::check_http(&self.stripe.api_url, "https://api.stripe.com", "STRIPE_API_KEY")
            .map_err(invalid("STRIPE_API_URL"))?;
        Ok(())
    }
}

/// A value of the file or the environment that does not deserialize. One that has a flat name
/// and failed to parse into its type ([`values`]: `LOG_FORMAT`, `WORKER_RETRY_SCHEDULE`) is
/// reported like the checks after loading, `VARIABLE is invalid: reason`; the rest as `config`
/// words them (with the key).
fn load_error(e: config::ConfigError) -> SettingsError {
    if let config::ConfigError::At {
        error,
        key: Some(key),
        ..
    } = &e
        && let config::ConfigError::Message(reason) = error.as_ref()
        && let Some((variable, _)) = FLAT_ENV.iter().find(|(_, k)| k == key)
    {
        return SettingsError::Invalid {
            variable,
            reason: reason.clone(),
        };
    }
    SettingsError::Load(e.to_string())
}

impl StripeSettings {
    /// The configured endpoint secrets, at least one: the ingest's view requires them, and
    /// `webhookctl send-test-event` signs with the first.
    pub fn secrets(&self) -> Result<Vec<SecretString>, SettingsError> {
        let secrets: Vec<SecretString> = self
            .webhook_secret
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect();
        if secrets.is_empty() {
            return Err(SettingsError::Missing {
                variable: "STRIPE_WEBHOOK_SECRET",
                why: " (the endpoint's signing secret, whsec_…, from the Stripe dashboard or `stripe listen`)",
            });
        }
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/webhooks"
        );
        assert_eq!(s.amqp.url.expose_secret(), DEFAULT_AMQP_URL);
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(s.stripe.tolerance_secs, 300);
        assert_eq!(s.stripe.api_url, "https://api.stripe.com");
        assert!(!s.stripe.refetch);
        assert_eq!(s.ingest.bind, "0.0.0.0:8084");
        assert_eq!(s.worker.bind, "0.0.0.0:9091");
        assert_eq!(s.worker.concurrency, 16);
        let labels: Vec<_> = s
            .worker
            .retry_schedule
            .iter()
            .map(|&d| RetrySchedule::label(d))
            .collect();
        assert_eq!(labels, ["5s", "30s", "2m", "10m", "30m", "1h", "3h", "6h"]);
        assert_eq!(s.keycloak.admin_realm, "master");
        assert_eq!(s.keycloak.client_id, "admin-cli");
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn flat_env_and_nested_env_override() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("STRIPE_WEBHOOK_SECRET", "whsec_a, whsec_b"),
                ("WORKER_CONCURRENCY", "4"),
                ("WEBHOOK__AMQP__NAME_PREFIX", "t1."),
                ("WEBHOOK__INGEST__BODY_LIMIT_BYTES", "1024"),
            ]),
        )
        .unwrap();
        let secrets = s.stripe.secrets().unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[1].expose_secret(), "whsec_b");
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.amqp.name_prefix, "t1.");
        assert_eq!(s.ingest.body_limit_bytes, 1024);
    }

    #[test]
    fn errors_name_the_variable() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert!(
            s.stripe
                .secrets()
                .unwrap_err()
                .to_string()
                .contains("STRIPE_WEBHOOK_SECRET")
        );
        // Values parsed into a type at load are reported like the other checks.
        let err = Settings::load_from(None, &env(&[("WORKER_RETRY_SCHEDULE", "5s,soon")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("WORKER_RETRY_SCHEDULE is invalid: \"soon\" is not a duration like 5s"),
            "{err}"
        );
        let err = Settings::load_from(None, &env(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LOG_FORMAT is invalid: \"xml\" is neither \"text\" nor \"json\""
        );
        let s = Settings::load_from(None, &env(&[("LOG_FORMAT", "json")])).unwrap();
        assert_eq!(s.log.format, LogFormat::Json);
        // Whichever source the value comes from, the message names the contract's variable.
        let err = Settings::load_from(None, &env(&[("WEBHOOK__LOG__FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().starts_with("LOG_FORMAT is invalid: "), "{err}");
        let dir = std::env::temp_dir().join(format!("settings-typed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("typed.toml");
        std::fs::write(&file, "[worker]\nretry_schedule = \"1s,2x\"\n").unwrap();
        let err = Settings::load_from(Some(&file), &env(&[])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("WORKER_RETRY_SCHEDULE is invalid: \"2x\""),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
        let err = Settings::load_from(None, &env(&[("WORKER_CONCURRENCY", "many")])).unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
        let err = Settings::load_from(Some(Path::new("/nonexistent.toml")), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.toml"), "{err}");
    }

    #[test]
    fn a_misspelled_key_is_an_error_not_silently_ignored() {
        let dir = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[database]\nmax_conections = 5\n").unwrap();
        let err = Settings::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
        let err = Settings::load_from(None, &env(&[("WEBHOOK__WORKER__CONCURENCY", "3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("STRIPE_WEBHOOK_SECRET", "whsec_topsecret"),
                ("LAGO_API_KEY", "lago_key_xyz"),
            ]),
        )
        .unwrap();
        let dump = format!("{s:?}");
        assert!(
            !dump.contains("topsecret") && !dump.contains("lago_key_xyz") && !dump.contains("guest:guest")
        );
    }

    #[test]
    fn a_malformed_url_names_its_variable_and_hides_its_password() {
        let cases = [
            ("AMQP_URL", "amqp:guest:Hunter2xyz@rabbit:5672/%2f"),
            ("AMQP_URL", "amqp://guest:Hunter2xyz@rabbit:5672/%2f,rabbit2:5672"),
            ("DATABASE_URL", "postgres:webhooks:Hunter2xyz@db/webhooks"),
            ("DATABASE_URL", "postgres://webhooks:Hunter2/xyz@db/webhooks"),
            ("KEYCLOAK_URL", "keycloak:8080"),
            ("KEYCLOAK_URL", "http://admin:Hunter2xyz@keycloak:8080"),
            ("LAGO_API_URL", "lago-api:3000"),
        ];
        for (variable, value) in cases {
            let err = Settings::load_from(None, &env(&[(variable, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{variable} is invalid: ")),
                "{value}: {err}"
            );
            assert!(!err.contains("Hunter2") && !err.contains("xyz"), "{value}: {err}");
        }
        // Empty Keycloak and Lago URLs are fine (only the worker needs them, and says so).
        let s = Settings::load_from(None, &env(&[("KEYCLOAK_URL", ""), ("LAGO_API_URL", " ")])).unwrap();
        assert!(s.keycloak.url.is_empty());
        // Lists of nodes are checked node by node.
        Settings::load_from(
            None,
            &env(&[(
                "AMQP_URL",
                "amqp://u:p@rabbit-0:5672/%2f,amqp://u:p@rabbit-1:5672/%2f",
            )]),
        )
        .unwrap();
    }

    #[test]
    fn livemode() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(s.stripe.livemode, Livemode::Any, "default for local runs");
        let s = Settings::load_from(None, &env(&[("WEBHOOK__STRIPE__LIVEMODE", "live")])).unwrap();
        assert_eq!(s.stripe.livemode, Livemode::Live);
        let err = Settings::load_from(None, &env(&[("WEBHOOK__STRIPE__LIVEMODE", "prod")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WEBHOOK__STRIPE__LIVEMODE") && err.contains("\"live\""),
            "{err}"
        );
    }

    #[test]
    fn webhook_config_names_the_file_unless_it_is_empty() {
        let dir = std::env::temp_dir().join(format!("settings-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("webhook.toml");
        std::fs::write(&file, "[worker]\nconcurrency = 3\n").unwrap();
        let s = Settings::load_from(None, &env(&[("WEBHOOK_CONFIG", file.to_str().unwrap())])).unwrap();
        assert_eq!(s.worker.concurrency, 3);
        let s = Settings::load_from(None, &env(&[("WEBHOOK_CONFIG", "")])).unwrap();
        assert_eq!(s.worker.concurrency, 16, "an empty WEBHOOK_CONFIG: no file");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn amqp_urls_in_toml_are_the_cluster_nodes() {
        let dir = std::env::temp_dir().join(format!("settings-urls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.toml");
        std::fs::write(
            &file,
            "[amqp]\nurls = [\"amqp://u:p@n1:5672/%2f\", \"amqp://u:p@n2:5672/%2f\"]\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), &env(&[])).unwrap();
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqp://u:p@n1:5672/%2f,amqp://u:p@n2:5672/%2f"
        );
        let err =
            Settings::load_from(Some(&file), &env(&[("AMQP_URL", "amqp://u:p@n3:5672/%2f")])).unwrap_err();
        assert!(err.to_string().contains("amqp.urls"), "{err}");
        assert!(!err.to_string().contains(":p@"), "no password: {err}");
        std::fs::write(&file, "[amqp]\nurls = [\"amqp://u:p@n1:5672/%2f\", \"nope\"]\n").unwrap();
        let err = Settings::load_from(Some(&file), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("AMQP_URL"), "{err}");
        assert!(!err.to_string().contains(":p@"), "no password: {err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
