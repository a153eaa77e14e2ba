//! What a sandbox starts with: realm names, credentials, the user-profile policy and the seed
//! data. Every field has a default, so a JSON seed file only names what it changes
//! ([`SandboxConfig::merge_json`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use crate::records::keycloak::UnmanagedPolicy;
use crate::records::keycloak::{User, is_email};
use crate::records::lago::common::is_currency;
use crate::records::lago::plans::{Interval, Plan};

/// Everything a [`crate::Sandbox`] is built from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub bind: String,
    /// Keycloak realm that holds the users the worker provisions.
    pub realm: String,
    /// Realm the admin token is requested from; Keycloak admins usually live in `master`.
    pub admin_realm: String,
    /// The only OAuth client the token endpoint knows.
    pub client_id: String,
    /// Password-grant admin user of `admin_realm`.
    pub admin_user: String,
    /// Plain text on purpose: these are throwaway sandbox credentials, shown in `--help`.
    pub admin_password: String,
    /// When set, `client_id` is a confidential client and the client_credentials grant with this
    /// secret is accepted as well (a service account).
    pub client_secret: Option<String>,
    /// `expires_in` of issued tokens. Keycloak's default is one minute, short enough that a
    /// long-running worker must handle expiry.
    pub token_ttl_secs: u64,
    /// The one Lago API key accepted as `Authorization: Bearer …`.
    pub lago_api_key: String,
    /// The one key the Stripe API stand-in accepts, as `Authorization: Bearer …` or as the user
    /// name of HTTP Basic (what clients set as `STRIPE_API_KEY`).
    pub stripe_api_key: String,
    /// Attributes declared in the realm's user profile: always visible and writable by admins.
    pub managed_attributes: Vec<String>,
    /// What happens to every other attribute (Keycloak's `unmanagedAttributePolicy`).
    pub unmanaged_attribute_policy: UnmanagedPolicy,
    pub users: Vec<SeedUser>,
    pub plans: Vec<SeedPlan>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            realm: "uchub".into(),
            admin_realm: "master".into(),
            client_id: "admin-cli".into(),
            admin_user: "admin".into(),
            admin_password: "admin".into(),
            client_secret: None,
            token_ttl_secs: 60,
            lago_api_key: "lago-sandbox-key".into(),
            stripe_api_key: "sk_test_sandbox".into(),
            managed_attributes: vec!["subscription_tier".into(), "billing_status".into()],
            unmanaged_attribute_policy: UnmanagedPolicy::default(),
            users: vec![SeedUser {
                email: "example@example.com".into(),
                username: Some("example".into()),
                first_name: Some("Example".into()),
                last_name: Some("User".into()),
                attributes: BTreeMap::from([("locale".into(), vec!["en".into()])]),
            }],
            plans: default_plans(),
        }
    }
}

/// The catalogue the worker maps Stripe prices to: `{tier}_{cycle}` for three tiers, where a
/// yearly plan costs ten monthly ones (so upgrades and downgrades compare as in production).
fn default_plans() -> Vec<SeedPlan> {
    let tiers = [("starter", 1000), ("professional", 2000), ("enterprise", 5000)];
    tiers
        .into_iter()
        .flat_map(|(tier, monthly)| {
            [("monthly", monthly), ("yearly", monthly * 10)].map(|(cycle, amount_cents)| SeedPlan {
                code: format!("{tier}_{cycle}"),
                amount_cents,
                currency: "USD".into(),
                interval: cycle.into(),
            })
        })
        .collect()
}

impl SandboxConfig {
    /// Overlays the top-level keys of a JSON object on `self` (a key given replaces the whole
    /// field, so `"users": []` means no seeded users). Unknown keys are an error, to catch typos.
    pub fn merge_json(self, overlay: serde_json::Value) -> anyhow::Result<Self> {
        let serde_json::Value::Object(overlay) = overlay else {
            anyhow::bail!("the seed must be a JSON object");
        };
        let mut base = match serde_json::to_value(self)? {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a struct serializes to an object"),
        };
        base.extend(overlay);
        serde_json::from_value(serde_json::Value::Object(base)).context("invalid sandbox seed")
    }

    /// [`Self::merge_json`] with the contents of a JSON file.
    pub fn merge_seed_file(self, path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read seed {}", path.display()))?;
        let overlay =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        self.merge_json(overlay)
            .with_context(|| format!("in {}", path.display()))
    }

    /// Rejects what would make the sandbox misbehave later instead of at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut codes = std::collections::HashSet::new();
        for plan in &self.plans {
            if plan.code.trim().is_empty() {
                return Err(ConfigError::Plan(plan.code.clone(), "empty code"));
            }
            if !codes.insert(plan.code.as_str()) {
                return Err(ConfigError::Plan(plan.code.clone(), "duplicate code"));
            }
            if Interval::parse(&plan.interval).is_none() {
                return Err(ConfigError::Plan(
                    plan.code.clone(),
                    "interval is not weekly|monthly|quarterly|semiannual|yearly",
                ));
            }
            if !is_currency(&plan.currency) {
                return Err(ConfigError::Plan(
                    plan.code.clone(),
                    "currency is not an ISO 4217 code",
                ));
            }
            if plan.amount_cents < 0 {
                return Err(ConfigError::Plan(plan.code.clone(), "negative amount"));
            }
        }
        for user in &self.users {
            if !is_email(&user.email) {
                return Err(ConfigError::User(user.email.clone()));
            }
        }
        if self.stripe_api_key.trim().is_empty() || self.stripe_api_key.contains(char::is_whitespace) {
            return Err(ConfigError::StripeApiKey);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("plan {0:?}: {1}")]
    Plan(String, &'static str),
    #[error("user {0:?}: not an email address")]
    User(String),
    #[error("stripe_api_key: empty or with whitespace (Stripe keys are one word, such as sk_test_…)")]
    StripeApiKey,
}

/// A Keycloak user present from the start (or added through `POST /_sandbox/users`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUser {
    pub email: String,
    /// Defaults to the email, as with Keycloak's "email as username".
    pub username: Option<String>,
    #[serde(alias = "firstName")]
    pub first_name: Option<String>,
    #[serde(alias = "lastName")]
    pub last_name: Option<String>,
    /// Stored as is, whatever the unmanaged-attribute policy: this is the database's content.
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl SeedUser {
    /// A user with only an email (username = email, no names, no attributes).
    pub fn new(email: impl Into<String>) -> Self {
        Self {
            email: email.into(),
            ..Self::default()
        }
    }

    /// The stored user this seed describes.
    pub(crate) fn into_user(self) -> User {
        User::new(
            &self.email,
            self.username,
            self.first_name,
            self.last_name,
            self.attributes,
        )
    }
}

/// A Lago plan. Only the code, price and interval matter to the sandbox: the yearly price
/// decides between upgrade and downgrade, the interval the billing periods.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPlan {
    pub code: String,
    pub amount_cents: i64,
    #[serde(default = "usd")]
    pub currency: String,
    /// `monthly` or `yearly` (Lago's `weekly`, `quarterly` and `semiannual` work too).
    #[serde(default = "monthly")]
    pub interval: String,
}

impl SeedPlan {
    /// The plan this seed describes; `None` for an unknown interval ([`SandboxConfig::validate`]
    /// rejects those first).
    pub(crate) fn to_plan(&self) -> Option<Plan> {
        Some(Plan {
            code: self.code.clone(),
            amount_cents: self.amount_cents,
            currency: self.currency.clone(),
            interval: Interval::parse(&self.interval)?,
        })
    }
}

fn usd() -> String {
    "USD".into()
}

fn monthly() -> String {
    "monthly".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_seed_six_plans_and_one_user() {
        let config = SandboxConfig::default();
        config.validate().unwrap();
        let codes: Vec<_> = config
            .plans
            .iter()
            .map(|p| (p.code.as_str(), p.amount_cents))
            .collect();
        assert_eq!(
            codes,
            [
                ("starter_monthly", 1000),
                ("starter_yearly", 10000),
                ("professional_monthly", 2000),
                ("professional_yearly", 20000),
                ("enterprise_monthly", 5000),
                ("enterprise_yearly", 50000)
            ]
        );
        assert_eq!(config.users[0].email, "example@example.com");
        assert_eq!(config.unmanaged_attribute_policy, UnmanagedPolicy::Enabled);
        assert_eq!(config.stripe_api_key, "sk_test_sandbox");
    }

    #[test]
    fn merge_replaces_only_given_keys_and_rejects_typos() {
        let merged = SandboxConfig::default()
            .merge_json(serde_json::json!({
                "realm": "other",
                "unmanaged_attribute_policy": "ADMIN_VIEW",
                "users": [{"email": "a@b.c", "firstName": "A"}]
            }))
            .unwrap();
        assert_eq!(merged.realm, "other");
        assert_eq!(merged.admin_realm, "master");
        assert_eq!(merged.unmanaged_attribute_policy, UnmanagedPolicy::AdminView);
        assert_eq!(merged.users.len(), 1);
        assert_eq!(merged.users[0].first_name.as_deref(), Some("A"));
        assert_eq!(merged.plans.len(), 6);

        let typo = SandboxConfig::default().merge_json(serde_json::json!({"relm": "x"}));
        assert!(typo.is_err());

        let keyed = SandboxConfig::default()
            .merge_json(serde_json::json!({"stripe_api_key": "sk_test_seeded"}))
            .unwrap();
        assert_eq!(keyed.stripe_api_key, "sk_test_seeded");
        let blank = SandboxConfig {
            stripe_api_key: " ".into(),
            ..SandboxConfig::default()
        };
        assert!(matches!(blank.validate(), Err(ConfigError::StripeApiKey)));
    }

    #[test]
    fn validate_rejects_bad_plans() {
        let mut config = SandboxConfig::default();
        config.plans.push(SeedPlan {
            code: "starter_monthly".into(),
            amount_cents: 1,
            currency: "USD".into(),
            interval: "monthly".into(),
        });
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Plan(_, "duplicate code"))
        ));
        config.plans.pop();
        config.plans.push(SeedPlan {
            code: "daily".into(),
            amount_cents: 1,
            currency: "USD".into(),
            interval: "daily".into(),
        });
        assert!(config.validate().is_err());
    }
}
