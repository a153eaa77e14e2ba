//! Command-line flags of the `webhook-sandbox` binary and how they combine with a seed file:
//! defaults, then the seed file, then the flags.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::{SandboxConfig, SeedPlan, SeedUser};

/// In-memory Keycloak Admin REST + Lago API + Stripe API stand-in for local runs and end-to-end
/// tests.
#[derive(Debug, Parser)]
#[command(name = "webhook-sandbox", version)]
pub struct Cli {
    /// Address to listen on [default: the seed's `bind`, else 127.0.0.1:8180].
    #[arg(long, env = "SANDBOX_BIND")]
    pub bind: Option<String>,
    /// JSON file with any SandboxConfig fields; each key given replaces that default.
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,
    /// Adds a Keycloak user with this email (repeatable).
    #[arg(long = "user", value_name = "EMAIL")]
    pub users: Vec<String>,
    /// Adds or replaces a Lago plan: CODE:AMOUNT_CENTS, optionally followed by :INTERVAL and
    /// :CURRENCY (repeatable). The interval defaults to yearly for codes ending in `_yearly`,
    /// else monthly; the currency to USD.
    #[arg(long = "plan", value_name = "CODE:AMOUNT_CENTS")]
    pub plans: Vec<String>,
    /// Keycloak realm holding the users [default: uchub].
    #[arg(long)]
    pub realm: Option<String>,
    /// Password-grant admin user of the admin realm [default: admin].
    #[arg(long)]
    pub admin_user: Option<String>,
    /// [default: admin]
    #[arg(long)]
    pub admin_password: Option<String>,
    /// The Lago API key clients must send as a bearer token [default: lago-sandbox-key].
    #[arg(long)]
    pub lago_api_key: Option<String>,
    /// The key the Stripe API stand-in accepts (Bearer, or the Basic user name)
    /// [default: sk_test_sandbox].
    #[arg(long)]
    pub stripe_api_key: Option<String>,
    /// `expires_in` of issued admin tokens [default: 60].
    #[arg(long)]
    pub token_ttl_secs: Option<u64>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SANDBOX_LOG", default_value = "info")]
    pub log_level: String,
    /// `text` or `json`.
    #[arg(long, env = "SANDBOX_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// The port the binary listens on unless told otherwise (Keycloak's usual 8080 + 100).
pub const DEFAULT_BIND: &str = "127.0.0.1:8180";

impl Cli {
    /// The configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<SandboxConfig> {
        let base = SandboxConfig {
            bind: DEFAULT_BIND.into(),
            ..SandboxConfig::default()
        };
        let mut config = match &self.seed {
            Some(path) => base.merge_seed_file(path)?,
            None => base,
        };
        let overrides = [
            (&self.bind, &mut config.bind),
            (&self.realm, &mut config.realm),
            (&self.admin_user, &mut config.admin_user),
            (&self.admin_password, &mut config.admin_password),
            (&self.lago_api_key, &mut config.lago_api_key),
            (&self.stripe_api_key, &mut config.stripe_api_key),
        ];
        for (flag, field) in overrides {
            if let Some(value) = flag {
                field.clone_from(value);
            }
        }
        if let Some(ttl) = self.token_ttl_secs {
            config.token_ttl_secs = ttl;
        }
        config.users.extend(self.users.iter().map(SeedUser::new));
        for spec in &self.plans {
            let plan = parse_plan(spec)?;
            config.plans.retain(|p| p.code != plan.code);
            config.plans.push(plan);
        }
        config.validate()?;
        Ok(config)
    }
}

fn parse_plan(spec: &str) -> anyhow::Result<SeedPlan> {
    let mut parts = spec.split(':');
    let code = parts.next().unwrap_or_default().to_owned();
    let amount = parts
        .next()
        .with_context(|| format!("--plan {spec}: expected CODE:AMOUNT_CENTS"))?;
    let amount_cents = amount
        .parse()
        .with_context(|| format!("--plan {spec}: {amount:?} is not a number of cents"))?;
    let interval = parts.next().map(str::to_owned).unwrap_or_else(|| {
        if code.ends_with("_yearly") {
            "yearly"
        } else {
            "monthly"
        }
        .to_owned()
    });
    let currency = parts.next().unwrap_or("USD").to_owned();
    if parts.next().is_some() {
        anyhow::bail!("--plan {spec}: too many fields");
    }
    Ok(SeedPlan {
        code,
        amount_cents,
        currency,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_seed_and_defaults() {
        let seed = std::env::temp_dir().join(format!("sandbox-seed-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(
            &seed,
            r#"{"bind": "127.0.0.1:9999", "realm": "seeded", "users": []}"#,
        )
        .unwrap();
        let cli = Cli::parse_from([
            "webhook-sandbox",
            "--seed",
            seed.to_str().unwrap(),
            "--realm",
            "flagged",
            "--user",
            "a@example.com",
            "--plan",
            "starter_monthly:1500",
            "--plan",
            "team_yearly:90000",
            "--stripe-api-key",
            "sk_test_flagged",
        ]);
        let config = cli.config().unwrap();
        std::fs::remove_file(&seed).unwrap();
        assert_eq!(config.bind, "127.0.0.1:9999");
        assert_eq!(config.realm, "flagged");
        assert_eq!(config.stripe_api_key, "sk_test_flagged");
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[0].email, "a@example.com");
        let starter = config.plans.iter().find(|p| p.code == "starter_monthly").unwrap();
        assert_eq!(starter.amount_cents, 1500);
        let team = config.plans.iter().find(|p| p.code == "team_yearly").unwrap();
        assert_eq!(
            (team.interval.as_str(), team.currency.as_str()),
            ("yearly", "USD")
        );
        assert_eq!(config.plans.len(), 7);
    }

    #[test]
    fn bad_plan_specs_are_rejected() {
        assert!(parse_plan("x").is_err());
        assert!(parse_plan("x:ten").is_err());
        assert!(parse_plan("x:1:monthly:USD:extra").is_err());
        assert_eq!(parse_plan("x:1:yearly:EUR").unwrap().currency, "EUR");
    }
}
