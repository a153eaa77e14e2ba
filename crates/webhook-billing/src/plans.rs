//! The plan map (`[plans]`): tier × cycle → Lago plan code, and Stripe price → tier × cycle;
//! and the names it maps: [`Tier`], [`Cycle`], [`PlanCode`].

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;
use webhook_core::settings::PlanSettings;

/// A name the plan map reads from Stripe (metadata, a price, the map's keys): trimmed,
/// lowercased, 1-64 ASCII letters, digits, `_` or `-`. One definition for [`Tier`] and [`Cycle`].
macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// `None` unless `raw`, trimmed and lowercased, is a token (1-64 ASCII letters,
            /// digits, `_` or `-`).
            pub fn parse(raw: &str) -> Option<Self> {
                token(raw).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_type!(
    /// A tier (`professional`).
    Tier
);
token_type!(
    /// A billing cycle (`monthly`, `yearly`, …).
    Cycle
);

/// A Lago plan code: what the plan map gives a tier and a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanCode(String);

impl PlanCode {
    /// A code as configured (`[plans] map`, `default_rule`): Lago's, not checked here.
    pub fn new(code: impl Into<String>) -> Self {
        Self(code.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plan settings of the unit tests: the default rule and cycle, nothing mapped; each test
/// sets what it is about over them.
#[cfg(test)]
pub(crate) fn test_settings() -> PlanSettings {
    PlanSettings {
        default_rule: "{tier}_{cycle}".into(),
        default_cycle: "monthly".into(),
        map: HashMap::new(),
        free_tier: "free".into(),
        prices: HashMap::new(),
        tier_order: vec![],
        access: HashMap::new(),
    }
}

fn token(raw: &str) -> Option<String> {
    let v = raw.trim().to_lowercase();
    valid_token(&v).then_some(v)
}

/// Tier × cycle → Lago plan code, and Stripe price → tier × cycle.
#[derive(Debug, Clone)]
pub struct PlanMap {
    rule: String,
    map: HashMap<String, String>,
    /// The cycle of a checkout or subscription that names none (`plans.default_cycle`).
    pub default_cycle: Cycle,
    /// Stripe price id or lookup_key → (tier, cycle).
    prices: HashMap<String, (Tier, Cycle)>,
}

impl PlanMap {
    /// Fails (naming the setting) when a price entry is not `tier:cycle`, or the default
    /// cycle is not a cycle name.
    pub fn new(settings: &PlanSettings) -> Result<Self, PlanMapError> {
        let mut prices = HashMap::new();
        for (price, value) in &settings.prices {
            let parsed = value
                .split_once(':')
                .and_then(|(t, c)| Some((Tier::parse(t)?, Cycle::parse(c)?)))
                .ok_or_else(|| PlanMapError::Price {
                    price: price.clone(),
                    value: value.clone(),
                })?;
            prices.insert(price.clone(), parsed);
        }
        let default_cycle = Cycle::parse(&settings.default_cycle)
            .ok_or_else(|| PlanMapError::DefaultCycle(settings.default_cycle.clone()))?;
        Ok(Self {
            rule: settings.default_rule.clone(),
            map: settings.map.clone(),
            default_cycle,
            prices,
        })
    }

    pub fn plan_code(&self, tier: &Tier, cycle: &Cycle) -> PlanCode {
        let (tier, cycle) = (tier.as_str(), cycle.as_str());
        PlanCode::new(
            self.map
                .get(&format!("{tier}_{cycle}"))
                .cloned()
                .unwrap_or_else(|| self.rule.replace("{tier}", tier).replace("{cycle}", cycle)),
        )
    }

    /// The tier and cycle of a Stripe price object: the configured map (by id, then
    /// lookup_key), else the price's `metadata.tier_id` and recurring interval.
    pub fn tier_of_price(&self, price: &Value) -> Option<(Tier, Cycle)> {
        for key in ["id", "lookup_key"] {
            if let Some(hit) = price[key].as_str().and_then(|k| self.prices.get(k)) {
                return Some(hit.clone());
            }
        }
        let tier = price["metadata"]["tier_id"].as_str().and_then(Tier::parse)?;
        let cycle = match price["recurring"]["interval"].as_str() {
            Some("month") => Cycle("monthly".to_owned()),
            Some("year") => Cycle("yearly".to_owned()),
            Some(other) => Cycle::parse(other).unwrap_or_else(|| self.default_cycle.clone()),
            None => self.default_cycle.clone(),
        };
        Some((tier, cycle))
    }
}

/// A `[plans]` setting the map cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanMapError {
    #[error("plans.prices[{price:?}] = {value:?} must be \"tier:cycle\", e.g. \"professional:monthly\"")]
    Price { price: String, value: String },
    #[error("plans.default_cycle = {0:?} must be letters, digits, '_' or '-', e.g. \"monthly\"")]
    DefaultCycle(String),
}

/// A tier or cycle name: 1-64 ASCII letters, digits, `_` or `-`.
pub(crate) fn valid_token(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tc(tier: &str, cycle: &str) -> (Tier, Cycle) {
        (Tier::parse(tier).unwrap(), Cycle::parse(cycle).unwrap())
    }

    #[test]
    fn a_price_tells_its_cycle_by_its_interval() {
        let plans = PlanMap::new(&crate::plans::test_settings()).unwrap();
        let price =
            |interval: Value| json!({"metadata": {"tier_id": " Pro "}, "recurring": {"interval": interval}});
        let cycle = |interval: Value| {
            plans
                .tier_of_price(&price(interval))
                .map(|(_, c)| c.as_str().to_owned())
        };
        assert_eq!(
            plans.tier_of_price(&price(json!("month"))),
            Some(tc("pro", "monthly"))
        );
        assert_eq!(cycle(json!("year")).as_deref(), Some("yearly"));
        assert_eq!(cycle(json!("week")).as_deref(), Some("week"));
        assert_eq!(
            cycle(json!("two weeks")).as_deref(),
            Some("monthly"),
            "not a token: the default"
        );
        assert_eq!(cycle(Value::Null).as_deref(), Some("monthly"));
        let bad_tier = json!({"metadata": {"tier_id": "pro plus"}});
        assert_eq!(plans.tier_of_price(&bad_tier), None);
    }

    #[test]
    fn price_map_entries_must_be_tier_colon_cycle_tokens() {
        let settings = |value: &str| PlanSettings {
            prices: [("price_1".to_string(), value.to_string())].into(),
            ..crate::plans::test_settings()
        };
        let plans = PlanMap::new(&settings(" Pro_1 : Semi-Annual ")).unwrap();
        assert_eq!(
            plans.tier_of_price(&json!({"id": "price_1"})),
            Some(tc("pro_1", "semi-annual"))
        );
        let long = "t".repeat(65);
        for bad in [
            "pro:",
            ":monthly",
            "pro plus:monthly",
            "pro:month!",
            &format!("{long}:monthly"),
        ] {
            assert!(PlanMap::new(&settings(bad)).is_err(), "{bad:?}");
        }
        assert!(PlanMap::new(&settings(&format!("{}:monthly", "t".repeat(64)))).is_ok());
    }

    #[test]
    fn the_default_cycle_is_read_as_a_cycle_and_a_bad_one_is_refused() {
        let settings = |cycle: &str| PlanSettings {
            default_cycle: cycle.into(),
            ..crate::plans::test_settings()
        };
        assert_eq!(
            PlanMap::new(&settings(" Monthly "))
                .unwrap()
                .default_cycle
                .as_str(),
            "monthly"
        );
        let err = PlanMap::new(&settings("every month")).unwrap_err().to_string();
        assert!(err.starts_with("plans.default_cycle = \"every month\""), "{err}");
    }

    #[test]
    fn plan_codes() {
        let mut map = HashMap::new();
        map.insert("enterprise_yearly".to_string(), "ent-annual-2026".to_string());
        let plans = PlanMap::new(&PlanSettings {
            map,
            ..crate::plans::test_settings()
        })
        .unwrap();
        let code = |tier, cycle| {
            let (t, c) = tc(tier, cycle);
            plans.plan_code(&t, &c).as_str().to_owned()
        };
        assert_eq!(code("professional", "monthly"), "professional_monthly");
        assert_eq!(code("enterprise", "yearly"), "ent-annual-2026");
    }

    #[test]
    fn names_display_as_they_read() {
        assert_eq!(PlanCode::new("ent-2026").to_string(), "ent-2026");
        assert_eq!(Tier::parse(" Pro ").unwrap().to_string(), "pro");
        assert_eq!(Cycle::parse("YEARLY").unwrap().to_string(), "yearly");
    }
}
