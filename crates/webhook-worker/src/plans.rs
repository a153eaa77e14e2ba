//! The plan map (`[plans]`): tier × cycle → Lago plan code, and Stripe price → tier × cycle.

use std::collections::HashMap;

use serde_json::Value;
use webhook_core::settings::PlanSettings;

/// Tier × cycle → Lago plan code, and Stripe price → tier × cycle.
#[derive(Debug, Clone)]
pub struct PlanMap {
    rule: String,
    map: HashMap<String, String>,
    pub default_cycle: String,
    pub free_tier: String,
    /// Stripe price id or lookup_key → (tier, cycle).
    prices: HashMap<String, (String, String)>,
}

impl PlanMap {
    /// Fails (naming the setting) when a price entry is not `tier:cycle`.
    pub fn new(settings: &PlanSettings) -> Result<Self, String> {
        let mut prices = HashMap::new();
        for (price, value) in &settings.prices {
            let parsed = value
                .split_once(':')
                .map(|(t, c)| (t.trim().to_lowercase(), c.trim().to_lowercase()))
                .filter(|(t, c)| valid_token(t) && valid_token(c))
                .ok_or_else(|| {
                    format!("plans.prices[{price:?}] = {value:?} must be \"tier:cycle\", e.g. \"professional:monthly\"")
                })?;
            prices.insert(price.clone(), parsed);
        }
        Ok(Self {
            rule: settings.default_rule.clone(),
            map: settings.map.clone(),
            default_cycle: settings.default_cycle.clone(),
            free_tier: settings.free_tier.clone(),
            prices,
        })
    }

    pub fn plan_code(&self, tier: &str, cycle: &str) -> String {
        self.map
            .get(&format!("{tier}_{cycle}"))
            .cloned()
            .unwrap_or_else(|| self.rule.replace("{tier}", tier).replace("{cycle}", cycle))
    }

    /// The tier and cycle of a Stripe price object: the configured map (by id, then
    /// lookup_key), else the price's `metadata.tier_id` and recurring interval.
    pub fn tier_of_price(&self, price: &Value) -> Option<(String, String)> {
        for key in ["id", "lookup_key"] {
            if let Some(hit) = price[key].as_str().and_then(|k| self.prices.get(k)) {
                return Some(hit.clone());
            }
        }
        let tier = price["metadata"]["tier_id"]
            .as_str()
            .map(|t| t.trim().to_lowercase())
            .filter(|t| valid_token(t))?;
        let cycle = match price["recurring"]["interval"].as_str() {
            Some("month") => "monthly".to_owned(),
            Some("year") => "yearly".to_owned(),
            Some(other) if valid_token(other) => other.to_owned(),
            _ => self.default_cycle.clone(),
        };
        Some((tier, cycle))
    }
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

    #[test]
    fn a_price_tells_its_cycle_by_its_interval() {
        let plans = PlanMap::new(&PlanSettings {
            default_rule: "{tier}_{cycle}".into(),
            default_cycle: "monthly".into(),
            map: HashMap::new(),
            free_tier: "free".into(),
            prices: HashMap::new(),
            tier_order: vec![],
            access: HashMap::new(),
        })
        .unwrap();
        let price =
            |interval: Value| json!({"metadata": {"tier_id": " Pro "}, "recurring": {"interval": interval}});
        let cycle = |interval: Value| plans.tier_of_price(&price(interval)).map(|(_, c)| c);
        assert_eq!(
            plans.tier_of_price(&price(json!("month"))),
            Some(("pro".into(), "monthly".into()))
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
            default_rule: "{tier}_{cycle}".into(),
            default_cycle: "monthly".into(),
            map: HashMap::new(),
            free_tier: "free".into(),
            prices: [("price_1".to_string(), value.to_string())].into(),
            tier_order: vec![],
            access: HashMap::new(),
        };
        let plans = PlanMap::new(&settings(" Pro_1 : Semi-Annual ")).unwrap();
        assert_eq!(
            plans.tier_of_price(&json!({"id": "price_1"})),
            Some(("pro_1".into(), "semi-annual".into()))
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
    fn plan_codes() {
        let mut map = HashMap::new();
        map.insert("enterprise_yearly".to_string(), "ent-annual-2026".to_string());
        let plans = PlanMap::new(&PlanSettings {
            default_rule: "{tier}_{cycle}".into(),
            default_cycle: "monthly".into(),
            map,
            free_tier: "free".into(),
            prices: HashMap::new(),
            tier_order: vec![],
            access: HashMap::new(),
        })
        .unwrap();
        assert_eq!(plans.plan_code("professional", "monthly"), "professional_monthly");
        assert_eq!(plans.plan_code("enterprise", "yearly"), "ent-annual-2026");
    }
}
