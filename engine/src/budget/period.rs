//! Budget periods: a day, an ISO week or a month of the budget's own time zone, as the UTC
//! instants `[start, end)` that spend is summed over.
//!
//! ```text
//! Period { month, Europe/Berlin } + instant --local date--> first day of its month
//!     --local midnight (first valid instant)--> start (UTC)
//!     --same for the next month's first day--> end (UTC)
//! ```
//!
//! Boundaries are computed from local dates, never by adding a fixed length to an instant, so a
//! DST change inside a period leaves both of its boundaries at local midnight (the period is an
//! hour shorter or longer instead). A local midnight that does not exist (a zone that springs
//! forward at 00:00) becomes the first instant after the gap; an ambiguous one (falling back
//! over midnight) the earlier one, so that the whole local day is inside.

use std::fmt;

use chrono::{
    DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};
use serde::{Deserialize, Deserializer, Serialize};

/// How long a period is: a local calendar day, ISO week (from Monday) or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Day,
    Week,
    #[default]
    Month,
}

/// A budget's period: its length and the IANA zone whose local midnight starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Period {
    pub kind: PeriodKind,
    #[serde(deserialize_with = "tz_by_name")]
    pub tz: Tz,
}

/// One period: `[start, end)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PeriodWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Default for Period {
    /// A calendar month of UTC.
    fn default() -> Self {
        Self {
            kind: PeriodKind::Month,
            tz: Tz::UTC,
        }
    }
}

impl Period {
    pub fn new(kind: PeriodKind, tz: Tz) -> Self {
        Self { kind, tz }
    }

    /// The period that holds `at`.
    pub fn window(&self, at: DateTime<Utc>) -> PeriodWindow {
        let local_day = at.with_timezone(&self.tz).date_naive();
        let first = self.first_day(local_day);
        let next = self.next_first_day(first);
        PeriodWindow {
            start: local_midnight(self.tz, first),
            end: local_midnight(self.tz, next),
        }
    }

    /// The period after the one that holds `at` (what a reset starts).
    pub fn next_window(&self, at: DateTime<Utc>) -> PeriodWindow {
        self.window(self.window(at).end)
    }

    /// The local date that starts the period holding local date `day`.
    fn first_day(&self, day: NaiveDate) -> NaiveDate {
        match self.kind {
            PeriodKind::Day => day,
            PeriodKind::Week => day - Days::new(u64::from(day.weekday().num_days_from_monday())),
            // Day 1 exists in every month.
            PeriodKind::Month => day.with_day(1).unwrap_or(day),
        }
    }

    /// The local date that starts the next period, given the first day of this one.
    fn next_first_day(&self, first: NaiveDate) -> NaiveDate {
        let next = match self.kind {
            PeriodKind::Day => first.checked_add_days(Days::new(1)),
            PeriodKind::Week => first.checked_add_days(Days::new(7)),
            PeriodKind::Month => first.checked_add_months(Months::new(1)),
        };
        // Only at chrono's last representable date (year 262143): stay there.
        next.unwrap_or(NaiveDate::MAX)
    }
}

impl PeriodWindow {
    pub fn length(&self) -> TimeDelta {
        self.end - self.start
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

impl fmt::Display for PeriodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        })
    }
}

/// Parses an IANA zone name (`Europe/Berlin`, `UTC`), with a message that says what is
/// expected; names are case-sensitive, as in the tz database.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone `{name}`: use an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`")
    })
}

fn tz_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let name = String::deserialize(d)?;
    parse_tz(&name).map_err(serde::de::Error::custom)
}

/// The first instant of local date `day` in `tz`, in UTC.
fn local_midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    first_valid_at_or_after(tz, midnight)
}

/// The earliest instant whose local time in `tz` is `local`, or the first instant after the
/// gap when `local` falls in one.
fn first_valid_at_or_after(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return t.with_timezone(&Utc);
    }
    if let Some(end) = GapInfo::new(&local, &tz).and_then(|g| g.end) {
        return end.with_timezone(&Utc);
    }
    // The tz data did not describe the gap: walk forward a minute at a time (no real gap is
    // longer than a day).
    let mut probe = local;
    for _ in 0..(48 * 60) {
        probe += TimeDelta::minutes(1);
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    // Unreachable with real tz data; reading the local time as UTC keeps the order of periods.
    local.and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn month(tz: &str) -> Period {
        Period::new(PeriodKind::Month, parse_tz(tz).unwrap())
    }

    #[test]
    fn the_last_evening_of_january_belongs_where_the_zone_says() {
        let at = utc("2026-01-31T23:30:00Z");
        // 18:30 on Jan 31 in New York: still January there.
        let ny = month("America/New_York").window(at);
        assert_eq!(ny.start, utc("2026-01-01T05:00:00Z"));
        assert_eq!(ny.end, utc("2026-02-01T05:00:00Z"));
        assert!(ny.contains(at));
        // 00:30 on Feb 1 in Berlin: February there.
        let berlin = month("Europe/Berlin").window(at);
        assert_eq!(berlin.start, utc("2026-01-31T23:00:00Z"));
        assert_eq!(berlin.end, utc("2026-02-28T23:00:00Z"));
        // And January in UTC.
        let plain = Period::default().window(at);
        assert_eq!(plain.start, utc("2026-01-01T00:00:00Z"));
        assert_eq!(plain.end, utc("2026-02-01T00:00:00Z"));
    }

    #[test]
    fn a_dst_change_inside_a_period_keeps_its_boundaries_at_local_midnight() {
        // March 2026 in New York: DST starts on Sunday 8 March; the month is an hour short.
        let w = month("America/New_York").window(utc("2026-03-15T12:00:00Z"));
        assert_eq!(w.start, utc("2026-03-01T05:00:00Z"));
        assert_eq!(w.end, utc("2026-04-01T04:00:00Z"));
        assert_eq!(w.length(), TimeDelta::days(31) - TimeDelta::hours(1));
        // Europe: DST starts on Sunday 29 March 2026.
        let w = month("Europe/Berlin").window(utc("2026-03-01T00:00:00Z"));
        assert_eq!(w.start, utc("2026-02-28T23:00:00Z"));
        assert_eq!(w.end, utc("2026-03-31T22:00:00Z"));
        assert_eq!(w.length(), TimeDelta::days(31) - TimeDelta::hours(1));
        // The day of the change is 23 hours, the week holding it 7 days less an hour.
        let day = Period::new(PeriodKind::Day, parse_tz("Europe/Berlin").unwrap());
        assert_eq!(
            day.window(utc("2026-03-29T12:00:00Z")).length(),
            TimeDelta::hours(23)
        );
        let week = Period::new(PeriodKind::Week, parse_tz("Europe/Berlin").unwrap());
        let w = week.window(utc("2026-03-29T12:00:00Z"));
        assert_eq!(
            w.start,
            utc("2026-03-22T23:00:00Z"),
            "Monday 23 March, local midnight"
        );
        assert_eq!(w.length(), TimeDelta::days(7) - TimeDelta::hours(1));
        // In autumn the month is an hour long.
        let w = month("Europe/Berlin").window(utc("2026-10-10T00:00:00Z"));
        assert_eq!(w.start, utc("2026-09-30T22:00:00Z"));
        assert_eq!(w.end, utc("2026-10-31T23:00:00Z"));
        assert_eq!(w.length(), TimeDelta::days(31) + TimeDelta::hours(1));
    }

    #[test]
    fn weeks_start_on_monday() {
        let week = Period::new(PeriodKind::Week, Tz::UTC);
        // Thursday 1 October 2026.
        let w = week.window(utc("2026-10-01T10:00:00Z"));
        assert_eq!(w.start, utc("2026-09-28T00:00:00Z"));
        assert_eq!(w.end, utc("2026-10-05T00:00:00Z"));
        let w = week.window(utc("2026-10-04T23:59:59Z"));
        assert_eq!(w.start, utc("2026-09-28T00:00:00Z"));
        let w = week.window(utc("2026-10-05T00:00:00Z"));
        assert_eq!(w.start, utc("2026-10-05T00:00:00Z"));
    }

    #[test]
    fn half_hour_zones() {
        // Lord Howe: +11 in (southern) summer, +10:30 in winter, a 30-minute DST shift on
        // Sunday 5 April 2026 at 02:00 local.
        let lord_howe = month("Australia/Lord_Howe");
        let w = lord_howe.window(utc("2026-04-15T00:00:00Z"));
        assert_eq!(w.start, utc("2026-03-31T13:00:00Z"), "1 April 00:00 at +11");
        assert_eq!(w.end, utc("2026-04-30T13:30:00Z"), "1 May 00:00 at +10:30");
        assert_eq!(w.length(), TimeDelta::days(30) + TimeDelta::minutes(30));
        // Kolkata: +5:30 all year.
        let kolkata = Period::new(PeriodKind::Day, parse_tz("Asia/Kolkata").unwrap());
        let w = kolkata.window(utc("2026-10-01T18:29:59Z"));
        assert_eq!(w.start, utc("2026-09-30T18:30:00Z"));
        assert_eq!(w.end, utc("2026-10-01T18:30:00Z"));
        assert_eq!(kolkata.window(utc("2026-10-01T18:30:00Z")).start, w.end);
    }

    #[test]
    fn a_missing_local_midnight_starts_the_period_at_the_first_instant_after_it() {
        // Santiago springs forward at 00:00 on Sunday 6 September 2026 (to 01:00, -03).
        let day = Period::new(PeriodKind::Day, parse_tz("America/Santiago").unwrap());
        let w = day.window(utc("2026-09-06T12:00:00Z"));
        assert_eq!(
            w.start,
            utc("2026-09-06T04:00:00Z"),
            "01:00 -03, the first valid instant"
        );
        assert_eq!(w.end, utc("2026-09-07T03:00:00Z"));
        assert_eq!(w.length(), TimeDelta::hours(23));
        // The day before ends where this one starts.
        assert_eq!(day.window(utc("2026-09-05T12:00:00Z")).end, w.start);
    }

    #[test]
    fn consecutive_periods_tile_time() {
        for tz in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ] {
            for kind in [PeriodKind::Day, PeriodKind::Week, PeriodKind::Month] {
                let p = Period::new(kind, parse_tz(tz).unwrap());
                let mut at = utc("2026-01-01T00:00:00Z");
                for _ in 0..30 {
                    let w = p.window(at);
                    assert!(w.contains(at), "{tz} {kind} {at}");
                    assert_eq!(p.next_window(at).start, w.end, "{tz} {kind}");
                    at = w.end + TimeDelta::hours(5);
                }
            }
        }
    }

    #[test]
    fn zones_are_iana_names() {
        assert!(parse_tz("Europe/Berln").unwrap_err().contains("IANA"));
        assert!(parse_tz("europe/berlin").is_err());
        let p: Period = serde_json::from_str(r#"{"kind": "week", "tz": "Asia/Kolkata"}"#).unwrap();
        assert_eq!(p, Period::new(PeriodKind::Week, Tz::Asia__Kolkata));
        let p: Period = serde_json::from_str("{}").unwrap();
        assert_eq!(p, Period::default());
        let e = serde_json::from_str::<Period>(r#"{"tz": "Mars/Olympus"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown time zone"), "{e}");
    }
}
