//! Lago plans and billing periods: what decides upgrade versus downgrade (the yearly price) and
//! the date a downgrade takes effect (the end of the current billing period).

use chrono::{Datelike, Days, Months, NaiveDate};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interval {
    Weekly,
    Monthly,
    Quarterly,
    Semiannual,
    Yearly,
}

impl Interval {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "weekly" => Self::Weekly,
            "monthly" => Self::Monthly,
            "quarterly" => Self::Quarterly,
            "semiannual" => Self::Semiannual,
            "yearly" => Self::Yearly,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Quarterly => "quarterly",
            Self::Semiannual => "semiannual",
            Self::Yearly => "yearly",
        }
    }

    /// Length in months; `None` for weekly.
    fn months(self) -> Option<u32> {
        match self {
            Self::Weekly => None,
            Self::Monthly => Some(1),
            Self::Quarterly => Some(3),
            Self::Semiannual => Some(6),
            Self::Yearly => Some(12),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) code: String,
    pub(crate) amount_cents: i64,
    pub(crate) currency: String,
    pub(crate) interval: Interval,
}

impl Plan {
    /// `Plan#yearly_amount_cents`: the price of one year, which Lago compares to tell an upgrade
    /// (`>=`, applied now) from a downgrade (`<`, applied at the end of the period).
    pub(crate) fn yearly_amount_cents(&self) -> i64 {
        let per_year = match self.interval {
            Interval::Weekly => 52,
            Interval::Monthly => 12,
            Interval::Quarterly => 4,
            Interval::Semiannual => 2,
            Interval::Yearly => 1,
        };
        self.amount_cents * per_year
    }

    pub(crate) fn render(&self) -> Value {
        json!({
            "code": self.code,
            "amount_cents": self.amount_cents,
            "amount_currency": self.currency,
            "interval": self.interval.as_str(),
            "yearly_amount_cents": self.yearly_amount_cents(),
        })
    }
}

/// `calendar` bills on the first day of each period, `anniversary` on the subscription date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BillingTime {
    Calendar,
    Anniversary,
}

impl BillingTime {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "calendar" => Some(Self::Calendar),
            "anniversary" => Some(Self::Anniversary),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Calendar => "calendar",
            Self::Anniversary => "anniversary",
        }
    }
}

/// The billing period that contains `today`, as `[start, next_start)`. `anchor` is the
/// subscription date, which anniversary billing counts from.
pub(crate) fn period(
    interval: Interval,
    billing_time: BillingTime,
    anchor: NaiveDate,
    today: NaiveDate,
) -> (NaiveDate, NaiveDate) {
    match (billing_time, interval.months()) {
        (BillingTime::Calendar, None) => {
            let start = today - Days::new(u64::from(today.weekday().num_days_from_monday()));
            (start, start + Days::new(7))
        }
        (BillingTime::Calendar, Some(months)) => {
            let first_month = (today.month0() / months) * months + 1;
            let start = NaiveDate::from_ymd_opt(today.year(), first_month, 1).expect("valid first of month");
            (start, start + Months::new(months))
        }
        (BillingTime::Anniversary, None) => {
            let weeks = if today > anchor {
                (today - anchor).num_days() / 7
            } else {
                0
            };
            let start = anchor + Days::new(weeks as u64 * 7);
            (start, start + Days::new(7))
        }
        (BillingTime::Anniversary, Some(months)) => {
            // Always add whole multiples to the anchor so that day 31 is clamped per month
            // (Jan 31 → Feb 28 → Mar 31) instead of drifting to the 28th.
            let nth = |k: u32| anchor + Months::new(k * months);
            let mut k = 0;
            while nth(k + 1) <= today {
                k += 1;
            }
            (nth(k), nth(k + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn calendar_periods() {
        let today = d(2026, 8, 21);
        assert_eq!(
            period(Interval::Monthly, BillingTime::Calendar, today, today),
            (d(2026, 8, 1), d(2026, 9, 1))
        );
        assert_eq!(
            period(Interval::Yearly, BillingTime::Calendar, today, today),
            (d(2026, 1, 1), d(2027, 1, 1))
        );
        assert_eq!(
            period(Interval::Quarterly, BillingTime::Calendar, today, today),
            (d(2026, 7, 1), d(2026, 10, 1))
        );
        // 2026-08-21 is a Friday.
        assert_eq!(
            period(Interval::Weekly, BillingTime::Calendar, today, today),
            (d(2026, 8, 17), d(2026, 8, 24))
        );
    }

    #[test]
    fn anniversary_periods_clamp_month_ends() {
        let anchor = d(2026, 1, 31);
        assert_eq!(
            period(Interval::Monthly, BillingTime::Anniversary, anchor, d(2026, 3, 5)),
            (d(2026, 2, 28), d(2026, 3, 31))
        );
        assert_eq!(
            period(Interval::Yearly, BillingTime::Anniversary, anchor, d(2028, 2, 1)),
            (d(2028, 1, 31), d(2029, 1, 31))
        );
        assert_eq!(
            period(Interval::Weekly, BillingTime::Anniversary, anchor, d(2026, 2, 9)),
            (d(2026, 2, 7), d(2026, 2, 14))
        );
    }

    #[test]
    fn yearly_amount_compares_intervals() {
        let plan = |amount_cents, interval| Plan {
            code: String::new(),
            amount_cents,
            currency: "USD".into(),
            interval,
        };
        assert_eq!(plan(1000, Interval::Monthly).yearly_amount_cents(), 12000);
        assert!(
            plan(10000, Interval::Yearly).yearly_amount_cents()
                < plan(1000, Interval::Monthly).yearly_amount_cents()
        );
    }
}
