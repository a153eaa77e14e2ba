//! The one reader (and writer) of AMQP message headers.
//!
//! Every header of ours is written as a long string or a 32-bit integer, but a header may come
//! back in another wire type (a shovel, an operator's tool, an older version of ours), so the
//! readers accept any string type for text and any integer type (or a decimal string) for
//! numbers. The header names are in `webhook_core::message`.

use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use webhook_core::message;

/// The headers of a message: a table of named values with their wire types.
///
/// Serialized as the AMQP client serializes its field tables (each value tagged with its wire
/// type), so an archive written by `dlq drain` restores the headers unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(FieldTable);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.inner().is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.inner().len()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.inner().contains_key(key)
    }

    /// The names of the headers, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.inner().keys().map(|k| k.as_str())
    }

    /// A text header (a long or short string; invalid UTF-8 replaced).
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }

    /// A number header: any integer type, or a decimal string (spaces around it allowed).
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
            AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
            AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
            AMQPValue::LongInt(n) => Some(i64::from(*n)),
            AMQPValue::LongUInt(n) => Some(i64::from(*n)),
            AMQPValue::LongLongInt(n) => Some(*n),
            _ => None,
        }
    }

    /// A number header that fits a `u32` (see [`Headers::get_i64`]); a negative or too large
    /// one is `None`.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        u32::try_from(self.get_i64(key)?).ok()
    }

    /// Our retry count ([`message::H_RETRY_ATTEMPT`]), 0 for a first delivery. What is not a
    /// count starts the schedule over rather than failing the message.
    pub fn retry_attempt(&self) -> u32 {
        self.get_u32(message::H_RETRY_ATTEMPT).unwrap_or(0)
    }

    /// How many times the broker dead-lettered the message from any queue: the sum of the
    /// `count`s of its `x-death` entries (0 without any).
    pub fn x_death_count(&self) -> u64 {
        let Some(AMQPValue::FieldArray(deaths)) = self.0.inner().get(message::H_DEATH) else {
            return 0;
        };
        deaths
            .as_slice()
            .iter()
            .filter_map(|d| match d {
                AMQPValue::FieldTable(t) => Headers(t.clone()).get_i64("count"),
                _ => None,
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .sum()
    }

    /// Sets a text header (as a long string, how we write all of ours).
    pub fn set_str(&mut self, key: &str, value: &str) {
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }

    /// Sets a number header (as a 32-bit signed integer, how we write all of ours).
    pub fn set_i32(&mut self, key: &str, value: i32) {
        self.0.insert(key.into(), AMQPValue::LongInt(value));
    }

    /// The headers without the ones whose name `drop` accepts.
    pub fn without(&self, drop: impl Fn(&str) -> bool) -> Self {
        let mut kept = FieldTable::default();
        for (k, v) in self.0.inner() {
            if !drop(k.as_str()) {
                kept.insert(k.clone(), v.clone());
            }
        }
        Self(kept)
    }

    /// The headers without the broker's dead-letter history (`x-death`, `x-first-death-*`,
    /// `x-last-death-*`): brokers ≥ 3.13 own those, and carrying them along could make the
    /// broker see a dead-letter cycle.
    pub fn without_death_history(&self) -> Self {
        self.without(message::is_death_history)
    }

    /// The headers without any the broker sets on delivery ([`message::is_broker_header`]):
    /// they describe a past queue or delivery, not the message.
    pub fn without_broker_headers(&self) -> Self {
        self.without(message::is_broker_header)
    }

    /// The headers without the broker's counts of this delivery (`x-delivery-count`,
    /// `x-acquired-count`), which it sets again itself on the next one.
    pub fn without_delivery_counts(&self) -> Self {
        self.without(message::is_delivery_count)
    }
}

impl From<FieldTable> for Headers {
    fn from(table: FieldTable) -> Self {
        Self(table)
    }
}

impl From<Headers> for FieldTable {
    fn from(headers: Headers) -> Self {
        headers.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, ShortString};

    fn with(key: &str, v: AMQPValue) -> Headers {
        let mut t = FieldTable::default();
        t.insert(key.into(), v);
        Headers(t)
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn the_retry_count_is_read_whatever_integer_or_string_type_carries_it() {
        let count = |v: AMQPValue| with(message::H_RETRY_ATTEMPT, v).retry_attempt();
        assert_eq!(Headers::new().retry_attempt(), 0, "a first delivery");
        assert_eq!(count(s(" 3 ")), 3);
        assert_eq!(count(AMQPValue::ShortString(ShortString::from(" 4"))), 4);
        assert_eq!(count(AMQPValue::ShortShortInt(5)), 5);
        assert_eq!(count(AMQPValue::ShortShortUInt(6)), 6);
        assert_eq!(count(AMQPValue::ShortInt(7)), 7);
        assert_eq!(count(AMQPValue::ShortUInt(8)), 8);
        assert_eq!(count(AMQPValue::LongInt(9)), 9);
        assert_eq!(count(AMQPValue::LongUInt(10)), 10);
        assert_eq!(count(AMQPValue::LongLongInt(11)), 11);
        // What is not a count starts the schedule over rather than failing the message.
        assert_eq!(count(AMQPValue::LongInt(-1)), 0);
        assert_eq!(count(AMQPValue::LongLongInt(i64::from(u32::MAX) + 1)), 0);
        assert_eq!(count(s("two")), 0);
        assert_eq!(count(AMQPValue::Boolean(true)), 0);
    }

    #[test]
    fn text_is_read_from_either_string_type_and_only_from_those() {
        assert_eq!(with("k", s("long")).get_str("k").as_deref(), Some("long"));
        let short = AMQPValue::ShortString(ShortString::from("short"));
        assert_eq!(with("k", short).get_str("k").as_deref(), Some("short"));
        assert_eq!(with("k", AMQPValue::LongInt(1)).get_str("k"), None);
        assert_eq!(Headers::new().get_str("k"), None);
    }

    #[test]
    fn ours_are_written_as_long_strings_and_32_bit_integers() {
        let mut h = Headers::new();
        h.set_str("a", "x");
        h.set_i32("b", 2);
        let t = FieldTable::from(h);
        assert_eq!(t.inner().get("a"), Some(&s("x")));
        assert_eq!(t.inner().get("b"), Some(&AMQPValue::LongInt(2)));
    }

    #[test]
    fn the_brokers_headers_are_dropped_by_family() {
        let mut h = Headers::new();
        for k in [
            "x-death",
            "x-first-death-queue",
            "x-last-death-reason",
            "x-delivery-count",
            "x-acquired-count",
            "x-custom",
        ] {
            h.set_str(k, "v");
        }
        let keys = |h: Headers| h.keys().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            keys(h.without_death_history()),
            ["x-acquired-count", "x-custom", "x-delivery-count"]
        );
        assert_eq!(
            keys(h.without_delivery_counts()),
            [
                "x-custom",
                "x-death",
                "x-first-death-queue",
                "x-last-death-reason"
            ]
        );
        assert_eq!(keys(h.without_broker_headers()), ["x-custom"]);
    }

    #[test]
    fn x_death_counts_add_up_over_the_queues() {
        let death = |n: i64| {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(n));
            AMQPValue::FieldTable(t)
        };
        let deaths = AMQPValue::FieldArray(FieldArray::from(vec![death(2), death(3)]));
        assert_eq!(with(message::H_DEATH, deaths).x_death_count(), 5);
        assert_eq!(Headers::new().x_death_count(), 0);
    }
}
