//! The typed values of the settings: what a raw string of the file or the environment is parsed
//! into, once, when the settings are loaded ([`Livemode`], [`RetrySchedule`], [`LogFormat`]) or
//! when a binary takes its view of them ([`resolve_bind`]).
//!
//! A parse error is the reason only (`"soon" is not a duration …`); the loader puts the name of
//! the variable in front of it (`WORKER_RETRY_SCHEDULE is invalid: …`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Which Stripe mode's events the ingest queues (`stripe.livemode`): an event of the other
/// mode is verified, stored with the reason and answered `ignored`, never queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Livemode {
    /// Only events with `"livemode": true` (production).
    Live,
    /// Only events with `"livemode": false` (a staging endpoint on Stripe's test mode).
    Test,
    /// Both (local runs, where `webhookctl send-test-event` and `stripe listen` send test events).
    Any,
}

impl TryFrom<String> for Livemode {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "live" => Ok(Self::Live),
            "test" => Ok(Self::Test),
            "any" => Ok(Self::Any),
            _ => Err(format!(
                "WEBHOOK__STRIPE__LIVEMODE (stripe.livemode) is {raw:?}; set \"live\" (production), \"test\" or \"any\""
            )),
        }
    }
}

impl Livemode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
            Self::Any => "any",
        }
    }

    /// Why an event whose `livemode` is `event_livemode` is not for this endpoint (the reason
    /// stored with the ignored event), or `None` when it is.
    pub fn refuses(self, event_livemode: bool) -> Option<String> {
        let (event, wanted) = match (self, event_livemode) {
            (Self::Live, false) => ("a test-mode event (livemode: false)", "live"),
            (Self::Test, true) => ("a live-mode event (livemode: true)", "test"),
            _ => return None,
        };
        Some(format!(
            "ignored: {event}, and stripe.livemode is \"{wanted}\" (WEBHOOK__STRIPE__LIVEMODE); \
             not queued. If it should be processed, check which Stripe mode's endpoint secret is in \
             STRIPE_WEBHOOK_SECRET, or set stripe.livemode"
        ))
    }
}

/// The delay before each broker-level retry of a job (`WORKER_RETRY_SCHEDULE`, e.g.
/// `5s,30s,2m`): its length is the number of retries before a job is dead-lettered. Every delay
/// is a positive whole number of milliseconds, so that it is exactly a queue's TTL. Derefs to
/// the delays in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// Parses a comma-separated list of durations such as `5s,30s,2m,1h` (`1500ms` too); empty
    /// is no retries.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(Self::default());
        }
        raw.split(',')
            .map(|part| {
                let part = part.trim();
                let d = humantime::parse_duration(part)
                    .map_err(|e| format!("{part:?} is not a duration like 5s, 2m or 1h ({e})"))?;
                if d.is_zero() || d.subsec_nanos() % 1_000_000 != 0 {
                    return Err(format!(
                        "{part:?} must be a positive whole number of milliseconds"
                    ));
                }
                Ok(d)
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The distinct delays, in schedule order, each with its label: one retry queue each (a
    /// schedule may repeat a delay, `5s,5s,30s`, and the repeats share a queue).
    pub fn tiers(&self) -> impl Iterator<Item = (Duration, String)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|&(i, d)| !self.0[..i].contains(d))
            .map(|(_, &d)| (d, Self::label(d)))
    }

    /// A compact label for a delay, used in retry queue names: `5s`, `2m`, `1h`, `1500ms`.
    pub fn label(delay: Duration) -> String {
        let ms = delay.as_millis();
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }
}

impl TryFrom<String> for RetrySchedule {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw)
    }
}

impl Deref for RetrySchedule {
    type Target = [Duration];

    fn deref(&self) -> &[Duration] {
        &self.0
    }
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("{raw:?} is neither \"text\" nor \"json\"")),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse()
    }
}

/// Resolves a listen address (`host:port`, `0.0.0.0:8084`, `localhost:0`) to the first address
/// it names.
pub fn resolve_bind(raw: &str) -> Result<SocketAddr, String> {
    let mut addresses = raw
        .to_socket_addrs()
        .map_err(|e| format!("{raw:?} is not a host:port address like 0.0.0.0:8084 ({e})"))?;
    addresses
        .next()
        .ok_or_else(|| format!("{raw:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_takes_whole_milliseconds_only() {
        assert_eq!(
            *RetrySchedule::parse(" 1500ms, 2s ").unwrap(),
            [Duration::from_millis(1500), Duration::from_secs(2)]
        );
        let err = RetrySchedule::parse("500us").unwrap_err();
        assert!(err.contains("whole number of milliseconds"), "{err}");
        let err = RetrySchedule::parse("5s,soon").unwrap_err();
        assert!(err.starts_with("\"soon\" is not a duration"), "{err}");
        assert!(RetrySchedule::parse("0s").is_err());
        assert!(RetrySchedule::parse("").unwrap().is_empty());
        assert!(RetrySchedule::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn labels() {
        assert_eq!(RetrySchedule::label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(RetrySchedule::label(Duration::from_secs(90)), "90s");
        assert_eq!(RetrySchedule::label(Duration::from_secs(120)), "2m");
        assert_eq!(RetrySchedule::label(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn a_repeated_delay_is_one_tier() {
        let schedule = RetrySchedule::parse("5s,5s,30s,5s").unwrap();
        assert_eq!(schedule.len(), 4, "every entry is a retry");
        let tiers: Vec<_> = schedule.tiers().collect();
        assert_eq!(
            tiers,
            [
                (Duration::from_secs(5), "5s".to_owned()),
                (Duration::from_secs(30), "30s".to_owned())
            ]
        );
    }

    #[test]
    fn log_formats() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(
            "JSON".parse::<LogFormat>().unwrap_err(),
            "\"JSON\" is neither \"text\" nor \"json\""
        );
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(
            resolve_bind("0.0.0.0:8084").unwrap(),
            "0.0.0.0:8084".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(resolve_bind("[::1]:0").unwrap().port(), 0);
        assert_eq!(resolve_bind("localhost:9091").unwrap().port(), 9091);
        for bad in ["8084", "0.0.0.0", "0.0.0.0:port", ""] {
            let err = resolve_bind(bad).unwrap_err();
            assert!(err.starts_with(&format!("{bad:?} ")), "{bad}: {err}");
        }
    }

    #[test]
    fn livemode_values_read_and_show_as_written() {
        for (raw, mode) in [
            ("live", Livemode::Live),
            (" Test ", Livemode::Test),
            ("ANY", Livemode::Any),
        ] {
            let parsed = Livemode::try_from(raw.to_string()).unwrap();
            assert_eq!(parsed, mode);
            assert_eq!(parsed.as_str(), raw.trim().to_ascii_lowercase());
        }
    }

    #[test]
    fn livemode_refuses_the_other_mode() {
        assert!(Livemode::Live.refuses(true).is_none());
        assert!(Livemode::Live.refuses(false).unwrap().contains("test-mode event"));
        assert!(Livemode::Test.refuses(true).unwrap().contains("live-mode event"));
        assert!(Livemode::Test.refuses(false).is_none());
        assert!(Livemode::Any.refuses(true).is_none() && Livemode::Any.refuses(false).is_none());
    }
}
