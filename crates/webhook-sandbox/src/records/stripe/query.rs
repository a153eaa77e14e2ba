//! How Stripe's list endpoints read their query (contracts §5): the parameters of
//! `GET /v1/events` and `GET /v1/subscriptions`, `created` ranges, `type` wildcards, `types[]`,
//! `limit` and cursor pagination, with Stripe's errors for what it refuses (an unknown
//! parameter, an empty value, a `limit` out of range, both cursors at once).
//!
//! Lists are newest first: by `created` descending, then by insertion order descending, so a
//! cursor is a position in that order ([`Key`]) and pagination is a pure function ([`paginate`]).

use serde_json::{Value, json};

/// Stripe's most types in one `types[]` filter.
pub(crate) const MAX_TYPES: usize = 20;

/// An error of Stripe's API, as `{"error": {"type", "code", "message", "param"}}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StripeError {
    /// 400 `invalid_request_error`: a parameter Stripe refuses.
    #[error("{message}")]
    Invalid { message: String, param: Option<String> },
    /// `resource_missing`: 404 for the object a path names, 400 for a cursor.
    #[error("No such {kind}: '{id}'")]
    Missing {
        kind: &'static str,
        id: String,
        /// `id` for a path, else the parameter that named it.
        param: &'static str,
    },
    /// 401: no key, or not the account's key (the message shows it masked).
    #[error("{0}")]
    Unauthorized(String),
}

impl StripeError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::Invalid {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::Invalid { .. } => 400,
            Self::Missing { param: "id", .. } => 404,
            Self::Missing { .. } => 400,
            Self::Unauthorized(_) => 401,
        }
    }

    /// Stripe's error body.
    pub(crate) fn body(&self) -> Value {
        let mut error = json!({"type": "invalid_request_error", "message": self.to_string()});
        match self {
            Self::Invalid { param: Some(p), .. } => error["param"] = json!(p),
            Self::Missing { param, .. } => {
                error["code"] = json!("resource_missing");
                error["param"] = json!(param);
            }
            _ => {}
        }
        json!({"error": error})
    }
}

/// A `created` filter: `created=N` or any of `created[gt|gte|lt|lte]=N`, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Created {
    pub(crate) gt: Option<i64>,
    pub(crate) gte: Option<i64>,
    pub(crate) lt: Option<i64>,
    pub(crate) lte: Option<i64>,
}

impl Created {
    pub(crate) fn matches(&self, created: i64) -> bool {
        self.gt.is_none_or(|t| created > t)
            && self.gte.is_none_or(|t| created >= t)
            && self.lt.is_none_or(|t| created < t)
            && self.lte.is_none_or(|t| created <= t)
    }
}

/// Which side of an object a page starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// `starting_after`: the page of older objects that follows it.
    After(String),
    /// `ending_before`: the page of newer objects that precedes it.
    Before(String),
}

impl Cursor {
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::After(id) | Self::Before(id) => id,
        }
    }

    pub(crate) fn param(&self) -> &'static str {
        match self {
            Self::After(_) => "starting_after",
            Self::Before(_) => "ending_before",
        }
    }
}

/// `limit` and the cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) limit: usize,
    pub(crate) cursor: Option<Cursor>,
}

/// `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventQuery {
    pub(crate) created: Created,
    /// `type`: one type, or a group with `*` (`customer.subscription.*`).
    pub(crate) type_pattern: Option<String>,
    /// `types[]`: exact types; empty means every type.
    pub(crate) types: Vec<String>,
    pub(crate) page: Page,
}

impl EventQuery {
    pub(crate) fn parse(pairs: Vec<(String, String)>) -> Result<Self, StripeError> {
        let mut params = Params::new(pairs);
        let created = params.created()?;
        let type_pattern = params.scalar("type")?;
        let types = params.list("types")?;
        // Whether each event's delivery succeeded: every stored event counts as delivered or
        // not as the caller wants, so the filter is accepted and changes nothing.
        params.scalar("delivery_success")?;
        let page = params.page()?;
        params.finish()?;
        if type_pattern.is_some() && !types.is_empty() {
            return Err(StripeError::invalid(
                "You may only specify one of these parameters: type, types.",
                Some("type"),
            ));
        }
        if types.len() > MAX_TYPES {
            return Err(StripeError::invalid(
                format!(
                    "You may only specify up to {MAX_TYPES} types; you passed {}.",
                    types.len()
                ),
                Some("types"),
            ));
        }
        Ok(Self {
            created,
            type_pattern,
            types,
            page,
        })
    }

    pub(crate) fn matches(&self, event_type: &str, created: i64) -> bool {
        self.created.matches(created)
            && self
                .type_pattern
                .as_deref()
                .is_none_or(|p| type_matches(p, event_type))
            && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
    }
}

/// The `status` filter of `GET /v1/subscriptions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StatusFilter {
    /// No `status`: every subscription that is not canceled.
    NotCanceled,
    All,
    /// `ended`: canceled or incomplete_expired.
    Ended,
    Is(String),
}

/// The subscription statuses Stripe knows.
const SUBSCRIPTION_STATUSES: [&str; 8] = [
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "trialing",
    "paused",
];

impl StatusFilter {
    pub(crate) fn matches(&self, status: &str) -> bool {
        match self {
            Self::NotCanceled => status != "canceled",
            Self::All => true,
            Self::Ended => matches!(status, "canceled" | "incomplete_expired"),
            Self::Is(wanted) => status == wanted,
        }
    }
}

/// `GET /v1/subscriptions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubscriptionQuery {
    pub(crate) status: StatusFilter,
    pub(crate) customer: Option<String>,
    /// Subscriptions with an item on this price.
    pub(crate) price: Option<String>,
    pub(crate) created: Created,
    pub(crate) page: Page,
}

impl SubscriptionQuery {
    pub(crate) fn parse(pairs: Vec<(String, String)>) -> Result<Self, StripeError> {
        let mut params = Params::new(pairs);
        let status = match params.scalar("status")?.as_deref() {
            None => StatusFilter::NotCanceled,
            Some("all") => StatusFilter::All,
            Some("ended") => StatusFilter::Ended,
            Some(s) if SUBSCRIPTION_STATUSES.contains(&s) => StatusFilter::Is(s.to_owned()),
            Some(s) => {
                return Err(StripeError::invalid(
                    format!(
                        "Invalid status: must be one of {}, ended or all (got {s:?})",
                        SUBSCRIPTION_STATUSES.join(", ")
                    ),
                    Some("status"),
                ));
            }
        };
        let customer = params.scalar("customer")?;
        let price = params.scalar("price")?;
        let created = params.created()?;
        let page = params.page()?;
        params.finish()?;
        Ok(Self {
            status,
            customer,
            price,
            created,
            page,
        })
    }

    /// Whether a subscription object passes the filters (the cursor aside).
    pub(crate) fn matches(&self, subscription: &Value) -> bool {
        let status = subscription["status"].as_str().unwrap_or_default();
        let customer = match &subscription["customer"] {
            Value::String(id) => Some(id.as_str()),
            // An expanded customer.
            other => other["id"].as_str(),
        };
        let prices = subscription["items"]["data"].as_array();
        self.status.matches(status)
            && self.customer.as_deref().is_none_or(|c| customer == Some(c))
            && self.price.as_deref().is_none_or(|p| {
                prices.is_some_and(|items| items.iter().any(|i| i["price"]["id"] == p || i["price"] == p))
            })
            && self
                .created
                .matches(subscription["created"].as_i64().unwrap_or(0))
    }
}

/// `type` with Stripe's wildcard: `*` stands for any run of characters
/// (`customer.subscription.*`, `*.created`).
pub(crate) fn type_matches(pattern: &str, event_type: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == event_type;
    };
    let Some(mut remaining) = event_type.strip_prefix(head) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or_default();
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// A list position: (`created`, insertion number). Lists are in descending order of it.
pub(crate) type Key = (i64, u64);

/// Where the page starts, the cursor resolved to its object's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum At {
    First,
    After(Key),
    Before(Key),
}

/// One page of `items` (each with its [`Key`], in any order) and whether there is more beyond
/// it in the direction of travel: older objects for `First`/`After`, newer for `Before`. The
/// page itself is always newest first.
pub(crate) fn paginate<T>(mut items: Vec<(Key, T)>, at: At, limit: usize) -> (Vec<T>, bool) {
    items.sort_by_key(|item| std::cmp::Reverse(item.0));
    let selected: Vec<(Key, T)> = match at {
        At::First => items,
        At::After(key) => items.into_iter().filter(|(k, _)| *k < key).collect(),
        At::Before(key) => items.into_iter().filter(|(k, _)| *k > key).collect(),
    };
    let has_more = selected.len() > limit;
    let page: Vec<T> = match at {
        // The `limit` objects just before the cursor: the end of the newer ones.
        At::Before(_) => {
            let skip = selected.len().saturating_sub(limit);
            selected.into_iter().skip(skip).map(|(_, t)| t).collect()
        }
        _ => selected.into_iter().take(limit).map(|(_, t)| t).collect(),
    };
    (page, has_more)
}

/// A list answer: `{"object": "list", "url", "has_more", "data"}`.
pub(crate) fn list_body(url: &str, data: Vec<Value>, has_more: bool) -> Value {
    json!({"object": "list", "url": url, "has_more": has_more, "data": data})
}

/// Refuses any parameter (a retrieve takes none the stand-in knows).
pub(crate) fn no_params(pairs: Vec<(String, String)>) -> Result<(), StripeError> {
    Params::new(pairs).finish()
}

/// The decoded query pairs, each used at most once; any left over is an unknown parameter.
struct Params {
    pairs: Vec<(String, String, bool)>,
}

impl Params {
    fn new(pairs: Vec<(String, String)>) -> Self {
        Self {
            pairs: pairs.into_iter().map(|(k, v)| (k, v, false)).collect(),
        }
    }

    /// The value of `key` (the last one when repeated); Stripe refuses an empty one.
    fn scalar(&mut self, key: &str) -> Result<Option<String>, StripeError> {
        let mut found = None;
        for (k, v, used) in &mut self.pairs {
            if k == key {
                *used = true;
                found = Some(v.clone());
            }
        }
        match found {
            Some(v) if v.is_empty() => Err(StripeError::invalid(
                format!(
                    "You passed an empty string for '{key}'. We assume empty values are an attempt to unset a parameter; however '{key}' cannot be unset. You should remove '{key}' from your request or supply a non-empty value."
                ),
                Some(key),
            )),
            other => Ok(other),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<i64>, StripeError> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| StripeError::invalid(format!("Invalid integer: {v}"), Some(key))),
        }
    }

    /// An array parameter, in either form: `name[]=a&name[]=b` or `name[0]=a&name[1]=b`.
    fn list(&mut self, name: &str) -> Result<Vec<String>, StripeError> {
        let mut indexed: Vec<(usize, usize, String)> = Vec::new();
        for (position, (k, v, used)) in self.pairs.iter_mut().enumerate() {
            let Some(inner) = k
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('['))
                .and_then(|r| r.strip_suffix(']'))
            else {
                continue;
            };
            let index = if inner.is_empty() {
                usize::MAX
            } else {
                match inner.parse::<usize>() {
                    Ok(i) => i,
                    // `types[x]`: not an array index; left for `finish` to refuse.
                    Err(_) => continue,
                }
            };
            *used = true;
            if !v.is_empty() {
                indexed.push((index, position, v.clone()));
            }
        }
        indexed.sort();
        Ok(indexed.into_iter().map(|(_, _, v)| v).collect())
    }

    fn created(&mut self) -> Result<Created, StripeError> {
        let exact = self.integer("created")?;
        let mut created = Created {
            gt: self.integer("created[gt]")?,
            gte: self.integer("created[gte]")?,
            lt: self.integer("created[lt]")?,
            lte: self.integer("created[lte]")?,
        };
        if let Some(t) = exact {
            created.gte = Some(created.gte.map_or(t, |g| g.max(t)));
            created.lte = Some(created.lte.map_or(t, |l| l.min(t)));
        }
        Ok(created)
    }

    fn page(&mut self) -> Result<Page, StripeError> {
        let limit = match self.integer("limit")? {
            None => 10,
            Some(n) if (1..=100).contains(&n) => n as usize,
            Some(_) => {
                return Err(StripeError::invalid(
                    "Invalid limit: must be between 1 and 100",
                    Some("limit"),
                ));
            }
        };
        let after = self.scalar("starting_after")?;
        let before = self.scalar("ending_before")?;
        let cursor = match (after, before) {
            (Some(_), Some(_)) => {
                return Err(StripeError::invalid(
                    "You may only specify one of these parameters: ending_before, starting_after.",
                    None,
                ));
            }
            (Some(id), None) => Some(Cursor::After(id)),
            (None, Some(id)) => Some(Cursor::Before(id)),
            (None, None) => None,
        };
        Ok(Page { limit, cursor })
    }

    fn finish(self) -> Result<(), StripeError> {
        match self.pairs.into_iter().find(|(_, _, used)| !used) {
            Some((key, _, _)) => Err(StripeError::invalid(
                format!("Received unknown parameter: {key}"),
                Some(&key),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn events(query: &[(&str, &str)]) -> Result<EventQuery, StripeError> {
        EventQuery::parse(pairs(query))
    }

    fn param_of(err: StripeError) -> Option<String> {
        match err {
            StripeError::Invalid { param, .. } => param,
            other => panic!("not an invalid-parameter error: {other:?}"),
        }
    }

    #[test]
    fn event_query_defaults() {
        let q = events(&[]).unwrap();
        assert_eq!(
            q.page,
            Page {
                limit: 10,
                cursor: None
            }
        );
        assert_eq!(q.created, Created::default());
        assert!(q.types.is_empty() && q.type_pattern.is_none());
        assert!(q.matches("anything.at_all", 0));
    }

    #[test]
    fn created_forms_combine() {
        let q = events(&[("created[gte]", "100"), ("created[lt]", "200")]).unwrap();
        assert!(q.matches("a", 100) && q.matches("a", 199));
        assert!(!q.matches("a", 99) && !q.matches("a", 200));
        let q = events(&[("created[gt]", "100"), ("created[lte]", "200")]).unwrap();
        assert!(!q.matches("a", 100) && q.matches("a", 200));
        let q = events(&[("created", "150")]).unwrap();
        assert!(q.matches("a", 150) && !q.matches("a", 151) && !q.matches("a", 149));
        assert_eq!(
            param_of(events(&[("created[gte]", "soon")]).unwrap_err()).as_deref(),
            Some("created[gte]")
        );
        assert_eq!(
            param_of(events(&[("created[after]", "1")]).unwrap_err()).as_deref(),
            Some("created[after]")
        );
    }

    #[test]
    fn types_in_both_array_forms_and_at_most_twenty() {
        let q = events(&[("types[]", "invoice.paid"), ("types[]", "charge.failed")]).unwrap();
        assert_eq!(q.types, ["invoice.paid", "charge.failed"]);
        assert!(q.matches("charge.failed", 0) && !q.matches("charge.succeeded", 0));
        let q = events(&[("types[1]", "b.b"), ("types[0]", "a.a")]).unwrap();
        assert_eq!(q.types, ["a.a", "b.b"]);
        let many: Vec<(String, String)> = (0..21)
            .map(|i| ("types[]".to_string(), format!("t.{i}")))
            .collect();
        assert!(EventQuery::parse(many.clone()[..20].to_vec()).is_ok());
        assert_eq!(
            param_of(EventQuery::parse(many).unwrap_err()).as_deref(),
            Some("types")
        );
        assert!(events(&[("type", "a.b"), ("types[]", "a.b")]).is_err());
        assert_eq!(
            param_of(events(&[("types[x]", "a.b")]).unwrap_err()).as_deref(),
            Some("types[x]")
        );
    }

    #[test]
    fn type_wildcards() {
        assert!(type_matches(
            "customer.subscription.*",
            "customer.subscription.updated"
        ));
        assert!(!type_matches("customer.subscription.*", "customer.updated"));
        assert!(!type_matches("customer.subscription.*", "customer.subscription"));
        assert!(type_matches("customer.*", "customer.subscription.deleted"));
        assert!(type_matches("*.created", "customer.created"));
        assert!(type_matches("*", "invoice.paid"));
        assert!(type_matches("invoice.paid", "invoice.paid"));
        assert!(!type_matches("invoice.paid", "invoice.paid2"));
        assert!(type_matches("a*b*c", "a-x-b-y-c"));
        assert!(!type_matches("a*bc*c", "abc"));
    }

    #[test]
    fn limit_cursors_and_unknown_parameters() {
        assert_eq!(events(&[("limit", "100")]).unwrap().page.limit, 100);
        assert_eq!(events(&[("limit", "1")]).unwrap().page.limit, 1);
        for bad in ["0", "101", "-1", "ten"] {
            let err = events(&[("limit", bad)]).unwrap_err();
            assert_eq!(param_of(err).as_deref(), Some("limit"), "{bad}");
        }
        assert_eq!(
            events(&[("starting_after", "evt_1")]).unwrap().page.cursor,
            Some(Cursor::After("evt_1".into()))
        );
        assert_eq!(
            events(&[("ending_before", "evt_1")]).unwrap().page.cursor,
            Some(Cursor::Before("evt_1".into()))
        );
        let both = events(&[("starting_after", "evt_1"), ("ending_before", "evt_2")]);
        assert!(both.unwrap_err().to_string().contains("only specify one"));
        let empty = events(&[("starting_after", "")]).unwrap_err();
        assert!(empty.to_string().contains("empty string"), "{empty}");
        let unknown = events(&[("expand[]", "data.customer")]).unwrap_err();
        assert_eq!(unknown.to_string(), "Received unknown parameter: expand[]");
        assert!(events(&[("delivery_success", "false")]).is_ok());
    }

    #[test]
    fn subscription_status_filter() {
        let parse = |query: &[(&str, &str)]| SubscriptionQuery::parse(pairs(query));
        let sub = |status: &str, customer: Value| {
            json!({"id": "sub_1", "status": status, "customer": customer, "created": 5,
                   "items": {"data": [{"price": {"id": "price_pro"}}]}})
        };
        let default = parse(&[]).unwrap();
        assert!(default.matches(&sub("active", json!("cus_1"))));
        assert!(default.matches(&sub("past_due", json!("cus_1"))));
        assert!(!default.matches(&sub("canceled", json!("cus_1"))));
        let all = parse(&[("status", "all")]).unwrap();
        assert!(all.matches(&sub("canceled", json!("cus_1"))));
        let ended = parse(&[("status", "ended")]).unwrap();
        assert!(ended.matches(&sub("incomplete_expired", json!("cus_1"))));
        assert!(!ended.matches(&sub("active", json!("cus_1"))));
        let canceled = parse(&[("status", "canceled")]).unwrap();
        assert!(canceled.matches(&sub("canceled", json!("cus_1"))));
        assert!(!canceled.matches(&sub("active", json!("cus_1"))));
        assert!(parse(&[("status", "gone")]).is_err());
        let of = parse(&[("customer", "cus_2"), ("status", "all")]).unwrap();
        assert!(of.matches(&sub("active", json!("cus_2"))));
        assert!(of.matches(&sub("active", json!({"id": "cus_2", "object": "customer"}))));
        assert!(!of.matches(&sub("active", json!("cus_1"))));
        let priced = parse(&[("price", "price_pro")]).unwrap();
        assert!(priced.matches(&sub("active", json!("cus_1"))));
        assert!(
            !parse(&[("price", "price_x")])
                .unwrap()
                .matches(&sub("active", json!("cus_1")))
        );
        assert!(parse(&[("type", "x")]).is_err());
    }

    /// 250 items, created in 50 distinct seconds (ties broken by insertion order).
    fn items() -> Vec<(Key, u64)> {
        (0..250u64).map(|i| (((i / 5) as i64, i), i)).collect()
    }

    #[test]
    fn pages_walk_newest_first_without_gaps_or_repeats() {
        let mut seen = Vec::new();
        let mut at = At::First;
        let mut pages = 0;
        loop {
            let (page, has_more) = paginate(items(), at, 100);
            pages += 1;
            let last = *page.last().unwrap();
            seen.extend(page);
            if !has_more {
                break;
            }
            at = At::After(((last / 5) as i64, last));
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, (0..250).rev().collect::<Vec<_>>());
    }

    #[test]
    fn ending_before_gives_the_newer_neighbours() {
        // Newest first: 249, 248, …; the ten just newer than 100 are 110..=101.
        let (page, has_more) = paginate(items(), At::Before((20, 100)), 10);
        assert_eq!(page, (101..=110).rev().collect::<Vec<_>>());
        assert!(has_more);
        let (page, has_more) = paginate(items(), At::Before((49, 245)), 10);
        assert_eq!(page, [249, 248, 247, 246]);
        assert!(!has_more);
        let (page, has_more) = paginate(items(), At::After((0, 0)), 10);
        assert!(page.is_empty() && !has_more);
    }

    #[test]
    fn errors_render_like_stripe() {
        let missing = StripeError::Missing {
            kind: "event",
            id: "evt_nope".into(),
            param: "id",
        };
        assert_eq!(missing.status(), 404);
        assert_eq!(
            missing.body(),
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                             "message": "No such event: 'evt_nope'", "param": "id"}})
        );
        let cursor = StripeError::Missing {
            kind: "event",
            id: "evt_nope".into(),
            param: "starting_after",
        };
        assert_eq!(cursor.status(), 400);
        let limit = events(&[("limit", "0")]).unwrap_err();
        assert_eq!(limit.body()["error"]["param"], "limit");
    }
}
