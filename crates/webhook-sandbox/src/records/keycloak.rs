//! Keycloak's user records and rules (contracts §2.2, §2.3): the stored user, the realm's user
//! profile (which attributes an admin may see and write), the user PUT and the user search. The
//! HTTP side (bodies, auth) is `crate::keycloak`.
//!
//! The update implements Keycloak ≥ 24.0.4: a PUT whose body has `attributes` is a full replace
//! (anything the admin may write and did not send is removed, email and names included), while a
//! PUT without `attributes` only changes the root fields it sends. That difference is the reason
//! this sandbox exists, so the rules live in one pure function, [`apply_put`], with unit tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Admin REST errors; their bodies are Keycloak's (`crate::keycloak`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeycloakError {
    #[error("missing, unknown or expired bearer token")]
    Unauthorized,
    #[error("realm not found")]
    RealmNotFound,
    #[error("user not found")]
    UserNotFound,
    #[error("email already used by another user")]
    Conflict,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A user-profile validation error (`{"field", "errorMessage", "params"}`).
    #[error("invalid {field}: {message}")]
    InvalidField {
        field: &'static str,
        message: &'static str,
        value: String,
    },
}

/// Keycloak's `unmanagedAttributePolicy` (KC ≥ 24): what admins may do with attributes that the
/// user profile does not declare. Accepts Keycloak's spelling (`ADMIN_EDIT`) and snake case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmanagedPolicy {
    /// Keycloak's own default: unmanaged attributes are invisible to admins, and writes of them
    /// are dropped while the PUT still answers 204.
    #[serde(alias = "disabled")]
    Disabled,
    /// What realms upgraded from before KC 24 get: everyone can see and write them.
    #[default]
    #[serde(alias = "enabled")]
    Enabled,
    /// Admins see them but cannot write (dropped like `Disabled`, never removed either).
    #[serde(alias = "admin_view")]
    AdminView,
    /// Admins see and write them.
    #[serde(alias = "admin_edit")]
    AdminEdit,
}

impl UnmanagedPolicy {
    pub(crate) fn admin_can_view(self) -> bool {
        self != Self::Disabled
    }

    pub(crate) fn admin_can_edit(self) -> bool {
        matches!(self, Self::Enabled | Self::AdminEdit)
    }
}

/// Root attributes: they have their own fields and never appear in `attributes`.
const ROOT_ATTRIBUTES: [&str; 4] = ["username", "email", "firstName", "lastName"];

/// A user as Keycloak stores it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct User {
    pub(crate) id: String,
    /// Lowercased, like Keycloak; never changed by a PUT ("edit username" is off by default).
    pub(crate) username: String,
    /// Lowercased; `None` once cleared by a full-replace PUT without `email`.
    pub(crate) email: Option<String>,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) email_verified: bool,
    pub(crate) created_timestamp: i64,
    pub(crate) required_actions: Vec<String>,
    /// Non-root attributes, never with an empty value list.
    pub(crate) attributes: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user as an admin creates one: lowercased email, username defaulting to the email
    /// ("email as username"), enabled and verified, without empty or root attributes.
    pub(crate) fn new(
        email: &str,
        username: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        mut attributes: BTreeMap<String, Vec<String>>,
    ) -> Self {
        let email = email.trim().to_lowercase();
        let username = username
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| email.clone());
        attributes.retain(|name, values| {
            values.retain(|v| !v.is_empty());
            !values.is_empty() && !ROOT_ATTRIBUTES.contains(&name.as_str())
        });
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.trim().to_lowercase(),
            email: Some(email),
            first_name,
            last_name,
            enabled: true,
            email_verified: true,
            created_timestamp: chrono::Utc::now().timestamp_millis(),
            required_actions: Vec::new(),
            attributes,
        }
    }

    /// Sets one attribute in the database, whatever the user profile says (a change made by
    /// hand, not through the admin API): empty values are dropped, and no value left removes
    /// the attribute. Root attributes have fields of their own and are refused.
    pub(crate) fn set_attribute(&mut self, name: &str, values: &[impl AsRef<str>]) -> Result<(), String> {
        if name.trim().is_empty() || ROOT_ATTRIBUTES.contains(&name) {
            return Err(format!(
                "{name:?} is not an attribute name (username, email, firstName and lastName are fields)"
            ));
        }
        let values: Vec<String> = values
            .iter()
            .map(|v| v.as_ref().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            self.attributes.remove(name);
        } else {
            self.attributes.insert(name.to_owned(), values);
        }
        Ok(())
    }

    /// A UserRepresentation. Null fields are left out, as Keycloak's JSON mapper does.
    pub(crate) fn representation(&self, profile: &Profile, view: View) -> Value {
        let mut rep = Map::new();
        rep.insert("id".into(), json!(self.id));
        rep.insert("username".into(), json!(self.username));
        if let Some(first) = &self.first_name {
            rep.insert("firstName".into(), json!(first));
        }
        if let Some(last) = &self.last_name {
            rep.insert("lastName".into(), json!(last));
        }
        if let Some(email) = &self.email {
            rep.insert("email".into(), json!(email));
        }
        rep.insert("emailVerified".into(), json!(self.email_verified));
        rep.insert("createdTimestamp".into(), json!(self.created_timestamp));
        rep.insert("enabled".into(), json!(self.enabled));
        let brief = matches!(view, View::Admin { brief: true });
        if !brief {
            let visible: BTreeMap<_, _> = self
                .attributes
                .iter()
                .filter(|(name, _)| view == View::Stored || profile.admin_can_view(name))
                .collect();
            if !visible.is_empty() {
                rep.insert("attributes".into(), json!(visible));
            }
            rep.insert("totp".into(), json!(false));
            rep.insert("disableableCredentialTypes".into(), json!([]));
            rep.insert("requiredActions".into(), json!(self.required_actions));
            rep.insert("notBefore".into(), json!(0));
        }
        rep.insert(
            "access".into(),
            json!({
                "manageGroupMembership": true,
                "view": true,
                "mapRoles": true,
                "impersonate": true,
                "manage": true
            }),
        );
        Value::Object(rep)
    }
}

/// Who is looking at a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// Through the admin API: unmanaged attributes only if the policy lets admins see them;
    /// `brief` is `briefRepresentation=true` (no attributes).
    Admin { brief: bool },
    /// The sandbox's own inspection: everything stored.
    Stored,
}

/// The realm's user profile, reduced to what decides attribute visibility and writability.
#[derive(Clone, Debug)]
pub(crate) struct Profile {
    managed: BTreeSet<String>,
    policy: UnmanagedPolicy,
}

impl Profile {
    pub(crate) fn new(managed: &[String], policy: UnmanagedPolicy) -> Self {
        Self {
            managed: managed.iter().cloned().collect(),
            policy,
        }
    }

    fn admin_can_view(&self, name: &str) -> bool {
        self.managed.contains(name) || self.policy.admin_can_view()
    }

    /// An attribute the admin cannot write is read-only: a PUT neither sets nor removes it.
    fn admin_can_edit(&self, name: &str) -> bool {
        self.managed.contains(name) || self.policy.admin_can_edit()
    }
}

/// Loose check in the spirit of Keycloak's email validator: one `@`, something on each side,
/// no whitespace.
pub(crate) fn is_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// Applies a PUT body to `current` and returns the user as it would be stored. Email uniqueness
/// is checked by the caller, which sees the other users.
pub(crate) fn apply_put(
    current: &User,
    body: &Map<String, Value>,
    profile: &Profile,
) -> Result<User, KeycloakError> {
    let email = opt_string(body, "email")?;
    let first_name = opt_string(body, "firstName")?;
    let last_name = opt_string(body, "lastName")?;
    let mut next = current.clone();

    match body.get("attributes") {
        // No `attributes`: every existing attribute is merged back in, nothing is removed, and
        // only the root fields that are sent change (`PUT {"enabled": false}` is safe).
        None | Some(Value::Null) => {
            if let Some(email) = email {
                next.email = normalize_email(&email);
            }
            if let Some(first) = first_name {
                next.first_name = non_blank(first);
            }
            if let Some(last) = last_name {
                next.last_name = non_blank(last);
            }
        }
        // `attributes` present: full replace of everything the admin may write.
        Some(Value::Object(sent)) => {
            let mut sent = parse_attributes(sent)?;
            // Keycloak overlays the root fields on the attribute map, so a root attribute sent
            // only inside `attributes` still counts; a missing one is cleared.
            let mut root = |field: Option<String>, name: &str| {
                field.or_else(|| sent.remove(name).and_then(|v| v.into_iter().next()))
            };
            next.email = root(email, "email").as_deref().and_then(normalize_email);
            next.first_name = root(first_name, "firstName").and_then(non_blank);
            next.last_name = root(last_name, "lastName").and_then(non_blank);
            sent.remove("username");

            let mut attributes: BTreeMap<_, _> = current
                .attributes
                .iter()
                .filter(|(name, _)| !profile.admin_can_edit(name))
                .map(|(name, values)| (name.clone(), values.clone()))
                .collect();
            for (name, values) in sent {
                if profile.admin_can_edit(&name) && !values.is_empty() {
                    attributes.insert(name, values);
                }
            }
            next.attributes = attributes;
        }
        Some(_) => return Err(KeycloakError::BadRequest("attributes must be an object".into())),
    }

    if let Some(enabled) = opt_bool(body, "enabled")? {
        next.enabled = enabled;
    }
    if let Some(verified) = opt_bool(body, "emailVerified")? {
        next.email_verified = verified;
    }
    match body.get("requiredActions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(actions)) => {
            next.required_actions = actions
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
        }
        Some(_) => {
            return Err(KeycloakError::BadRequest(
                "requiredActions must be an array".into(),
            ));
        }
    }
    if let Some(email) = &next.email
        && next.email != current.email
        && !is_email(email)
    {
        return Err(KeycloakError::InvalidField {
            field: "email",
            message: "error-invalid-email",
            value: email.clone(),
        });
    }
    Ok(next)
}

fn opt_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, KeycloakError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(KeycloakError::BadRequest(format!("{key} must be a string"))),
    }
}

fn opt_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, KeycloakError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(KeycloakError::BadRequest(format!("{key} must be a boolean"))),
    }
}

/// `{name: [values]}`; a single string is accepted as a one-element list, nulls and empty
/// strings are dropped (an attribute left with no value is removed).
fn parse_attributes(sent: &Map<String, Value>) -> Result<BTreeMap<String, Vec<String>>, KeycloakError> {
    let mut out = BTreeMap::new();
    for (name, value) in sent {
        let values = match value {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| KeycloakError::BadRequest(format!("attribute {name} must hold strings")))?,
            _ => {
                return Err(KeycloakError::BadRequest(format!(
                    "attribute {name} must hold strings"
                )));
            }
        };
        out.insert(
            name.clone(),
            values.into_iter().filter(|v| !v.is_empty()).collect(),
        );
    }
    Ok(out)
}

fn normalize_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    (!email.is_empty()).then_some(email)
}

fn non_blank(value: String) -> Option<String> {
    (!value.trim().is_empty()).then_some(value)
}

/// The query parameters of `GET /users` the sandbox understands.
#[derive(Debug, Default)]
pub(crate) struct Search {
    email: Option<String>,
    username: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    /// `search`: a substring of username, email, first or last name.
    text: Option<String>,
    /// `q=key:value key2:value2`: exact attribute values.
    attributes: Vec<(String, String)>,
    enabled: Option<bool>,
    email_verified: Option<bool>,
    exact: bool,
    first: usize,
    max: usize,
    pub(crate) brief: bool,
}

impl Search {
    pub(crate) fn parse(query: &HashMap<String, String>) -> Self {
        let get = |key: &str| query.get(key).cloned();
        let flag = |key: &str| query.get(key).map(|v| v.eq_ignore_ascii_case("true"));
        Self {
            email: get("email"),
            username: get("username"),
            first_name: get("firstName"),
            last_name: get("lastName"),
            text: get("search").map(|s| s.trim_matches('*').to_owned()),
            attributes: get("q")
                .map(|q| {
                    q.split_whitespace()
                        .filter_map(|pair| pair.split_once(':'))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            enabled: flag("enabled"),
            email_verified: flag("emailVerified"),
            exact: flag("exact").unwrap_or(false),
            first: get("first").and_then(|v| v.parse().ok()).unwrap_or(0),
            // Keycloak's default page size.
            max: get("max").and_then(|v| v.parse().ok()).unwrap_or(100),
            brief: flag("briefRepresentation").unwrap_or(false),
        }
    }

    /// Case-insensitive like Keycloak's JPA queries (`lower(column)`): equality with
    /// `exact=true`, substring otherwise.
    fn field_matches(&self, value: Option<&str>, wanted: &Option<String>) -> bool {
        let Some(wanted) = wanted else { return true };
        let Some(value) = value else { return false };
        let (value, wanted) = (value.to_lowercase(), wanted.to_lowercase());
        if self.exact {
            value == wanted
        } else {
            value.contains(&wanted)
        }
    }

    pub(crate) fn matches(&self, user: &User) -> bool {
        if let Some(text) = &self.text {
            let text = text.to_lowercase();
            let fields = [
                Some(user.username.as_str()),
                user.email.as_deref(),
                user.first_name.as_deref(),
                user.last_name.as_deref(),
            ];
            if !fields.iter().flatten().any(|f| f.to_lowercase().contains(&text)) {
                return false;
            }
        }
        self.field_matches(user.email.as_deref(), &self.email)
            && self.field_matches(Some(&user.username), &self.username)
            && self.field_matches(user.first_name.as_deref(), &self.first_name)
            && self.field_matches(user.last_name.as_deref(), &self.last_name)
            && self.enabled.is_none_or(|e| e == user.enabled)
            && self.email_verified.is_none_or(|v| v == user.email_verified)
            && self
                .attributes
                .iter()
                .all(|(k, v)| user.attributes.get(k).is_some_and(|values| values.contains(v)))
    }

    pub(crate) fn page<'a>(&self, mut users: Vec<&'a User>) -> Vec<&'a User> {
        users.sort_by(|a, b| a.username.cmp(&b.username));
        users.into_iter().skip(self.first).take(self.max).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User::new(
            "Ann@Example.com",
            None,
            Some("Ann".into()),
            Some("Lee".into()),
            BTreeMap::from([
                ("subscription_tier".into(), vec!["starter".into()]),
                ("billing_status".into(), vec!["active".into()]),
                ("locale".into(), vec!["en".into()]),
            ]),
        )
    }

    fn profile(policy: UnmanagedPolicy) -> Profile {
        Profile::new(&["subscription_tier".into(), "billing_status".into()], policy)
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn set_attribute_by_hand() {
        let mut u = user();
        u.set_attribute("subscription_tier", &["free"]).unwrap();
        assert_eq!(u.attributes["subscription_tier"], ["free"]);
        u.set_attribute("locale", &[""]).unwrap();
        assert!(!u.attributes.contains_key("locale"));
        u.set_attribute("billing_status", &[] as &[&str]).unwrap();
        assert!(!u.attributes.contains_key("billing_status"));
        assert!(u.set_attribute("email", &["x@y.z"]).is_err());
        assert!(u.set_attribute(" ", &["x"]).is_err());
    }

    #[test]
    fn seed_lowercases_and_defaults_username_to_email() {
        let u = user();
        assert_eq!(u.email.as_deref(), Some("ann@example.com"));
        assert_eq!(u.username, "ann@example.com");
    }

    #[test]
    fn put_without_attributes_changes_only_sent_root_fields() {
        let before = user();
        let after = apply_put(
            &before,
            &body(json!({"enabled": false, "firstName": "Annie"})),
            &profile(UnmanagedPolicy::Enabled),
        )
        .unwrap();
        assert!(!after.enabled);
        assert_eq!(after.first_name.as_deref(), Some("Annie"));
        assert_eq!(after.email, before.email);
        assert_eq!(after.last_name, before.last_name);
        assert_eq!(after.attributes, before.attributes);
    }

    #[test]
    fn put_with_attributes_is_a_full_replace() {
        let before = user();
        let sent = json!({"attributes": {"subscription_tier": ["pro"]}, "username": "ignored"});
        let after = apply_put(&before, &body(sent), &profile(UnmanagedPolicy::Enabled)).unwrap();
        assert_eq!(
            after.attributes,
            BTreeMap::from([("subscription_tier".into(), vec!["pro".into()])])
        );
        assert_eq!(after.email, None);
        assert_eq!(after.first_name, None);
        assert_eq!(after.last_name, None);
        assert_eq!(after.username, before.username);
        assert!(after.enabled);
    }

    #[test]
    fn root_attributes_inside_the_map_count() {
        let sent = json!({"attributes": {"email": ["New@Example.com"], "firstName": "N"}});
        let after = apply_put(&user(), &body(sent), &profile(UnmanagedPolicy::Enabled)).unwrap();
        assert_eq!(after.email.as_deref(), Some("new@example.com"));
        assert_eq!(after.first_name.as_deref(), Some("N"));
        assert!(!after.attributes.contains_key("email"));
    }

    #[test]
    fn read_only_unmanaged_attributes_are_neither_written_nor_removed() {
        for policy in [UnmanagedPolicy::Disabled, UnmanagedPolicy::AdminView] {
            let sent = json!({"email": "ann@example.com", "attributes": {"stripe_customer_id": ["cus_1"]}});
            let after = apply_put(&user(), &body(sent), &profile(policy)).unwrap();
            assert_eq!(
                after.attributes.get("locale"),
                Some(&vec!["en".to_owned()]),
                "{policy:?}"
            );
            assert!(!after.attributes.contains_key("stripe_customer_id"), "{policy:?}");
            assert!(!after.attributes.contains_key("subscription_tier"), "{policy:?}");
        }
        for policy in [UnmanagedPolicy::Enabled, UnmanagedPolicy::AdminEdit] {
            let sent = json!({"attributes": {"stripe_customer_id": ["cus_1"]}});
            let after = apply_put(&user(), &body(sent), &profile(policy)).unwrap();
            assert!(!after.attributes.contains_key("locale"), "{policy:?}");
            assert_eq!(
                after.attributes.get("stripe_customer_id"),
                Some(&vec!["cus_1".to_owned()])
            );
        }
    }

    #[test]
    fn empty_values_remove_an_attribute_and_bad_types_are_rejected() {
        let sent = json!({"email": "ann@example.com", "attributes": {"subscription_tier": [], "billing_status": [""]}});
        let after = apply_put(&user(), &body(sent), &profile(UnmanagedPolicy::Disabled)).unwrap();
        assert_eq!(after.attributes.keys().collect::<Vec<_>>(), ["locale"]);
        let bad = apply_put(
            &user(),
            &body(json!({"attributes": {"a": [1]}})),
            &profile(UnmanagedPolicy::Enabled),
        );
        assert!(matches!(bad, Err(KeycloakError::BadRequest(_))));
        let bad = apply_put(
            &user(),
            &body(json!({"email": "no-at-sign"})),
            &profile(UnmanagedPolicy::Enabled),
        );
        assert!(matches!(
            bad,
            Err(KeycloakError::InvalidField { field: "email", .. })
        ));
    }

    #[test]
    fn admin_view_hides_unmanaged_attributes_when_disabled() {
        let u = user();
        let disabled = u.representation(&profile(UnmanagedPolicy::Disabled), View::Admin { brief: false });
        assert!(disabled["attributes"].get("locale").is_none());
        assert_eq!(disabled["attributes"]["subscription_tier"], json!(["starter"]));
        let stored = u.representation(&profile(UnmanagedPolicy::Disabled), View::Stored);
        assert_eq!(stored["attributes"]["locale"], json!(["en"]));
        let brief = u.representation(&profile(UnmanagedPolicy::Enabled), View::Admin { brief: true });
        assert!(brief.get("attributes").is_none());
    }

    #[test]
    fn search_exact_versus_substring() {
        let u = user();
        let q = |pairs: &[(&str, &str)]| {
            Search::parse(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert!(q(&[("email", "ANN@example.com"), ("exact", "true")]).matches(&u));
        assert!(!q(&[("email", "ann@example"), ("exact", "true")]).matches(&u));
        assert!(q(&[("email", "ann@example")]).matches(&u));
        assert!(q(&[("q", "subscription_tier:starter")]).matches(&u));
        assert!(!q(&[("q", "subscription_tier:pro")]).matches(&u));
        assert!(q(&[("search", "*lee*")]).matches(&u));
    }
}
