//! What the Stripe stand-in holds: the account's events (as `GET /v1/events` lists them) and the
//! current subscriptions and customers (as `GET /v1/subscriptions/{id}` and
//! `GET /v1/customers/{id}` return them).
//!
//! Events are only ever seeded, never made up: a test puts there what Stripe would have, events
//! that were also delivered by webhook or not. An event whose `data.object` is a subscription or
//! a customer also moves that object forward, unless a newer event (by `created`) already did,
//! so the current object is the latest one whatever order events are seeded in. A `put` sets the
//! current object directly, as if changed in the dashboard now.

use std::collections::HashSet;

use serde_json::Value;

use super::query::{At, EventQuery, Key, StripeError, SubscriptionQuery, paginate};
use crate::error::SandboxError;

/// The objects the stand-in keeps a current version of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Subscription,
    Customer,
}

impl Kind {
    /// The `object` field, also the word in "No such subscription".
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Subscription => "subscription",
            Self::Customer => "customer",
        }
    }

    /// Stripe's id prefix for this kind.
    fn prefix(self) -> &'static str {
        match self {
            Self::Subscription => "sub_",
            Self::Customer => "cus_",
        }
    }

    fn of(object: &Value) -> Option<Self> {
        match object.get("object")?.as_str()? {
            "subscription" => Some(Self::Subscription),
            "customer" => Some(Self::Customer),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Event {
    id: String,
    event_type: String,
    created: i64,
    /// Insertion number: orders events created in the same second.
    seq: u64,
    body: Value,
}

#[derive(Clone, Debug)]
struct Object {
    id: String,
    /// When it was first stored: orders objects created in the same second.
    seq: u64,
    /// `created` of the newest event applied to it (or the time of a put): older events no
    /// longer change it.
    applied: i64,
    body: Value,
}

impl Object {
    fn key(&self) -> Key {
        (self.body["created"].as_i64().unwrap_or(0), self.seq)
    }
}

/// Every event, subscription and customer of the stand-in's Stripe account.
#[derive(Clone, Debug, Default)]
pub(crate) struct StripeStore {
    /// In insertion order.
    events: Vec<Event>,
    subscriptions: Vec<Object>,
    customers: Vec<Object>,
    next_seq: u64,
}

impl StripeStore {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn objects(&self, kind: Kind) -> &Vec<Object> {
        match kind {
            Kind::Subscription => &self.subscriptions,
            Kind::Customer => &self.customers,
        }
    }

    fn objects_mut(&mut self, kind: Kind) -> &mut Vec<Object> {
        match kind {
            Kind::Subscription => &mut self.subscriptions,
            Kind::Customer => &mut self.customers,
        }
    }

    /// Adds events as Stripe would hold them; all or none. Each needs an `evt_` id not stored
    /// yet (else [`SandboxError::Conflict`]), a `type`, an integer `created` and a
    /// `data.object`. Returns how many were added.
    pub(crate) fn add_events(&mut self, events: Vec<Value>) -> Result<usize, SandboxError> {
        let mut checked = Vec::with_capacity(events.len());
        let mut ids: HashSet<&str> = self.events.iter().map(|e| e.id.as_str()).collect();
        for (index, event) in events.iter().enumerate() {
            let (id, event_type, created) = validate_event(event).map_err(|message| {
                SandboxError::Invalid(if events.len() > 1 {
                    format!("event {index}: {message}")
                } else {
                    message
                })
            })?;
            if !ids.insert(id) {
                return Err(SandboxError::Conflict(format!(
                    "event {id} already exists (events are immutable: use another id)"
                )));
            }
            checked.push((id.to_owned(), event_type, created));
        }
        let count = checked.len();
        for ((id, event_type, created), mut body) in checked.into_iter().zip(events) {
            if body.get("object").is_none() {
                body["object"] = Value::from("event");
            }
            let object = &body["data"]["object"];
            if let Some(kind) = Kind::of(object) {
                let object_id = object["id"].as_str().unwrap_or_default().to_owned();
                self.apply(kind, &object_id, created, object.clone(), false);
            }
            let seq = self.seq();
            self.events.push(Event {
                id,
                event_type,
                created,
                seq,
                body,
            });
        }
        Ok(count)
    }

    /// Sets the current subscription or customer (`body.id`, or `path_id` when the body has
    /// none; both must agree), as a change made now at `now` (unix seconds): an event created
    /// earlier no longer overrides it. Returns the stored object.
    pub(crate) fn put(
        &mut self,
        kind: Kind,
        path_id: Option<&str>,
        mut body: Value,
        now: i64,
    ) -> Result<Value, SandboxError> {
        let name = kind.name();
        let Value::Object(map) = &mut body else {
            return Err(SandboxError::Invalid(format!("a {name} must be a JSON object")));
        };
        let id = match (map.get("id"), path_id) {
            (Some(Value::String(id)), Some(path)) if id != path => {
                return Err(SandboxError::Invalid(format!(
                    "the {name}'s id {id} is not the {path} of the path"
                )));
            }
            (Some(Value::String(id)), _) => id.clone(),
            (None | Some(Value::Null), Some(path)) => path.to_owned(),
            (None | Some(Value::Null), None) => {
                return Err(SandboxError::Invalid(format!("the {name} has no id")));
            }
            (Some(_), _) => return Err(SandboxError::Invalid(format!("the {name}'s id must be a string"))),
        };
        if !id.starts_with(kind.prefix()) || id.len() == kind.prefix().len() {
            return Err(SandboxError::Invalid(format!(
                "a {name} id starts with {}: {id:?}",
                kind.prefix()
            )));
        }
        match map.get("object") {
            None | Some(Value::Null) => {
                map.insert("object".into(), Value::from(name));
            }
            Some(object) if object.as_str() == Some(name) => {}
            Some(other) => {
                return Err(SandboxError::Invalid(format!("this is a {name}, not a {other}")));
            }
        }
        map.insert("id".into(), Value::from(id.clone()));
        self.apply(kind, &id, now, body.clone(), true);
        Ok(body)
    }

    /// Makes `body` the current object unless something newer than `created` was applied;
    /// `force` (a put) applies it anyway and keeps the newest time seen.
    fn apply(&mut self, kind: Kind, id: &str, created: i64, body: Value, force: bool) {
        let seq = self.seq();
        let objects = self.objects_mut(kind);
        match objects.iter_mut().find(|o| o.id == id) {
            Some(existing) if force || created >= existing.applied => {
                existing.applied = existing.applied.max(created);
                existing.body = body;
            }
            Some(_) => {}
            None => objects.push(Object {
                id: id.to_owned(),
                seq,
                applied: created,
                body,
            }),
        }
    }

    pub(crate) fn event(&self, id: &str) -> Option<&Value> {
        self.events.iter().find(|e| e.id == id).map(|e| &e.body)
    }

    pub(crate) fn object(&self, kind: Kind, id: &str) -> Option<&Value> {
        self.objects(kind).iter().find(|o| o.id == id).map(|o| &o.body)
    }

    /// One page of `GET /v1/events` and whether there is more; an unknown cursor is Stripe's
    /// 400 `resource_missing`.
    pub(crate) fn list_events(&self, query: &EventQuery) -> Result<(Vec<Value>, bool), StripeError> {
        let at =
            match &query.page.cursor {
                None => At::First,
                Some(cursor) => {
                    let event = self.events.iter().find(|e| e.id == cursor.id()).ok_or_else(|| {
                        StripeError::Missing {
                            kind: "event",
                            id: cursor.id().to_owned(),
                            param: cursor.param(),
                        }
                    })?;
                    at(cursor.param(), (event.created, event.seq))
                }
            };
        let items = self
            .events
            .iter()
            .filter(|e| query.matches(&e.event_type, e.created))
            .map(|e| ((e.created, e.seq), e.body.clone()))
            .collect();
        Ok(paginate(items, at, query.page.limit))
    }

    /// One page of `GET /v1/subscriptions` and whether there is more.
    pub(crate) fn list_subscriptions(
        &self,
        query: &SubscriptionQuery,
    ) -> Result<(Vec<Value>, bool), StripeError> {
        let at = match &query.page.cursor {
            None => At::First,
            Some(cursor) => {
                let object = self
                    .subscriptions
                    .iter()
                    .find(|o| o.id == cursor.id())
                    .ok_or_else(|| StripeError::Missing {
                        kind: "subscription",
                        id: cursor.id().to_owned(),
                        param: cursor.param(),
                    })?;
                at(cursor.param(), object.key())
            }
        };
        let items = self
            .subscriptions
            .iter()
            .filter(|o| query.matches(&o.body))
            .map(|o| (o.key(), o.body.clone()))
            .collect();
        Ok(paginate(items, at, query.page.limit))
    }

    /// (events, subscriptions, customers) held.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (self.events.len(), self.subscriptions.len(), self.customers.len())
    }
}

fn at(param: &str, key: Key) -> At {
    if param == "ending_before" {
        At::Before(key)
    } else {
        At::After(key)
    }
}

/// (id, type, created) of a well-formed event, or what is wrong with it.
fn validate_event(event: &Value) -> Result<(&str, String, i64), String> {
    if !event.is_object() {
        return Err("an event must be a JSON object".into());
    }
    let id = match event.get("id") {
        Some(Value::String(id)) if id.starts_with("evt_") && id.len() > 4 => id.as_str(),
        Some(other) => return Err(format!("id must be a string starting with evt_, not {other}")),
        None => return Err("id is missing (a string starting with evt_)".into()),
    };
    let event_type = match event.get("type") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        _ => return Err(format!("{id}: type must be a non-empty string")),
    };
    let created = match event.get("created") {
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or_default(),
        _ => return Err(format!("{id}: created must be an integer (unix seconds)")),
    };
    if let Some(object) = event.get("object")
        && object.as_str() != Some("event")
    {
        return Err(format!("{id}: object must be \"event\", not {object}"));
    }
    let object = &event["data"]["object"];
    if !object.is_object() {
        return Err(format!("{id}: data.object must be a JSON object"));
    }
    if let Some(kind) = Kind::of(object) {
        let prefix = kind.prefix();
        if !object["id"].as_str().is_some_and(|o| o.starts_with(prefix)) {
            return Err(format!(
                "{id}: data.object is a {} and needs an id starting with {prefix}",
                kind.name()
            ));
        }
    }
    Ok((id, event_type, created))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
        json!({"id": id, "type": event_type, "created": created, "data": {"object": object}})
    }

    fn sub(status: &str, created: i64) -> Value {
        json!({"id": "sub_1", "object": "subscription", "status": status, "customer": "cus_1", "created": created})
    }

    fn query(pairs: &[(&str, &str)]) -> EventQuery {
        EventQuery::parse(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn ids(page: &[Value]) -> Vec<&str> {
        page.iter().map(|e| e["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn bad_events_store_nothing_and_duplicates_conflict() {
        let mut store = StripeStore::default();
        let good = event("evt_1", "invoice.paid", 10, json!({"id": "in_1"}));
        for bad in [
            json!("evt_x"),
            json!({"id": "ev_1", "type": "a", "created": 1, "data": {"object": {}}}),
            json!({"id": "evt_2", "created": 1, "data": {"object": {}}}),
            json!({"id": "evt_2", "type": "a", "created": 1.5, "data": {"object": {}}}),
            json!({"id": "evt_2", "type": "a", "created": "1", "data": {"object": {}}}),
            json!({"id": "evt_2", "type": "a", "created": 1, "data": {}}),
            json!({"id": "evt_2", "type": "a", "created": 1, "data": {"object": {"object": "subscription"}}}),
        ] {
            let err = store.add_events(vec![good.clone(), bad.clone()]).unwrap_err();
            assert!(
                matches!(&err, SandboxError::Invalid(m) if m.starts_with("event 1: ")),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(store.counts(), (0, 0, 0));
        assert_eq!(store.add_events(vec![good.clone()]), Ok(1));
        assert!(matches!(
            store.add_events(vec![good.clone()]),
            Err(SandboxError::Conflict(_))
        ));
        let twice = event("evt_3", "a.b", 1, json!({}));
        assert!(matches!(
            store.add_events(vec![twice.clone(), twice]),
            Err(SandboxError::Conflict(_))
        ));
        assert_eq!(store.counts(), (1, 0, 0));
        assert_eq!(store.event("evt_1").unwrap()["object"], "event");
    }

    #[test]
    fn the_newest_event_wins_whatever_the_seeding_order() {
        let mut store = StripeStore::default();
        let newer = event(
            "evt_new",
            "customer.subscription.updated",
            200,
            sub("past_due", 50),
        );
        let older = event("evt_old", "customer.subscription.created", 100, sub("active", 50));
        store.add_events(vec![newer, older]).unwrap();
        let current = store.object(Kind::Subscription, "sub_1").unwrap();
        assert_eq!(current["status"], "past_due");
        let same_second = event(
            "evt_same",
            "customer.subscription.updated",
            200,
            sub("canceled", 50),
        );
        store.add_events(vec![same_second]).unwrap();
        assert_eq!(
            store.object(Kind::Subscription, "sub_1").unwrap()["status"],
            "canceled"
        );
        let customer = event(
            "evt_c",
            "customer.updated",
            5,
            json!({"id": "cus_1", "object": "customer", "email": "a@b.c"}),
        );
        store.add_events(vec![customer]).unwrap();
        assert_eq!(store.object(Kind::Customer, "cus_1").unwrap()["email"], "a@b.c");
        assert_eq!(store.counts(), (4, 1, 1));
    }

    #[test]
    fn a_put_is_a_change_made_now() {
        let mut store = StripeStore::default();
        store
            .put(Kind::Subscription, None, sub("active", 50), 1000)
            .unwrap();
        let late = event(
            "evt_late",
            "customer.subscription.updated",
            900,
            sub("canceled", 50),
        );
        store.add_events(vec![late]).unwrap();
        assert_eq!(
            store.object(Kind::Subscription, "sub_1").unwrap()["status"],
            "active",
            "an event from before the put does not undo it"
        );
        let body = store
            .put(Kind::Customer, Some("cus_9"), json!({"email": "x@y.z"}), 1000)
            .unwrap();
        assert_eq!(
            body,
            json!({"id": "cus_9", "object": "customer", "email": "x@y.z"})
        );
        for (path, bad) in [
            (Some("sub_2"), sub("active", 1)),
            (None, json!({"object": "subscription"})),
            (None, json!({"id": "cus_1", "object": "subscription"})),
            (None, json!({"id": "sub_1", "object": "customer"})),
            (None, json!([])),
        ] {
            assert!(
                matches!(
                    store.put(Kind::Subscription, path, bad.clone(), 1),
                    Err(SandboxError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_list_newest_first_and_cursor_errors() {
        let mut store = StripeStore::default();
        let events: Vec<_> = (0..25)
            .map(|i| {
                event(
                    &format!("evt_{i:02}"),
                    "invoice.paid",
                    1000 + i / 2,
                    json!({"id": "in_1"}),
                )
            })
            .collect();
        store.add_events(events).unwrap();
        let (page, more) = store.list_events(&query(&[("limit", "10")])).unwrap();
        assert_eq!(ids(&page)[..3], ["evt_24", "evt_23", "evt_22"]);
        assert!(more);
        let (page, more) = store
            .list_events(&query(&[("limit", "10"), ("starting_after", "evt_05")]))
            .unwrap();
        assert_eq!(ids(&page), ["evt_04", "evt_03", "evt_02", "evt_01", "evt_00"]);
        assert!(!more);
        let (page, more) = store
            .list_events(&query(&[("limit", "2"), ("ending_before", "evt_05")]))
            .unwrap();
        assert_eq!(ids(&page), ["evt_07", "evt_06"]);
        assert!(more);
        let err = store
            .list_events(&query(&[("starting_after", "evt_nope")]))
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(err.body()["error"]["param"], "starting_after");
        let (page, _) = store
            .list_events(&query(&[("created[gte]", "1011"), ("limit", "100")]))
            .unwrap();
        assert_eq!(ids(&page), ["evt_24", "evt_23", "evt_22"]);
    }

    #[test]
    fn subscriptions_list_without_canceled_by_default() {
        let mut store = StripeStore::default();
        for (id, status, created) in [
            ("sub_a", "active", 3),
            ("sub_b", "canceled", 2),
            ("sub_c", "trialing", 1),
        ] {
            let body = json!({"id": id, "status": status, "customer": "cus_1", "created": created});
            store.put(Kind::Subscription, None, body, 10).unwrap();
        }
        let list = |pairs: &[(&str, &str)]| {
            let q = SubscriptionQuery::parse(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .unwrap();
            let (page, more) = store.list_subscriptions(&q).unwrap();
            (
                ids(&page).into_iter().map(str::to_owned).collect::<Vec<_>>(),
                more,
            )
        };
        assert_eq!(list(&[]), (vec!["sub_a".into(), "sub_c".into()], false));
        assert_eq!(
            list(&[("status", "all"), ("limit", "2")]),
            (vec!["sub_a".into(), "sub_b".into()], true)
        );
        assert_eq!(
            list(&[("status", "all"), ("starting_after", "sub_b")]),
            (vec!["sub_c".into()], false)
        );
        assert_eq!(list(&[("customer", "cus_2")]), (vec![], false));
    }
}
