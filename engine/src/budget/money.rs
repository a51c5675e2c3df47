//! US dollars as an exact decimal: whole nano-dollars in an `i128`, the scale of
//! `ai_usage.cost_usd` (`Decimal128(_, 9)`), so a sum read from a Delta table is a `Money`
//! without any conversion, and no float ever touches an amount.
//!
//! ```text
//! config "500.00" --parse--> Money(500_000_000_000) <--Decimal128(38, 9)-- spend SQL
//!                                  |  checked add/sub, exact shares, integer forecasts
//!                                  +--Display--> "500.00", "0.00012", "0.000000001"
//! ```

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places of an amount: nano-dollars, as `cost_usd` stores them.
pub const MONEY_SCALE: u32 = 9;
const NANOS_PER_DOLLAR: i128 = 1_000_000_000;
/// Decimals [`Money`]'s `Display` always shows (cents).
const MIN_SHOWN_DECIMALS: usize = 2;

/// An amount of US dollars, exact to the nano-dollar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money {
    nanos: i128,
}

/// Why a text is no amount of money; the message quotes the text and says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an amount in USD: {why}")]
pub struct MoneyError {
    text: String,
    why: &'static str,
}

impl Money {
    pub const ZERO: Money = Money { nanos: 0 };
    /// The largest amount: what saturating arithmetic ends at.
    pub const MAX: Money = Money { nanos: i128::MAX };

    pub const fn from_nanos(nanos: i128) -> Self {
        Self { nanos }
    }

    /// Whole dollars (defaults and tests); every `i64` fits.
    pub const fn from_dollars(dollars: i64) -> Self {
        Self {
            nanos: dollars as i128 * NANOS_PER_DOLLAR,
        }
    }

    pub const fn nanos(self) -> i128 {
        self.nanos
    }

    pub const fn is_positive(self) -> bool {
        self.nanos > 0
    }

    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// Parses a non-negative amount (`"12"`, `"12.5"`, `"0.000120000"`): what a budget's
    /// amount and a reservation's estimate are.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let m = Self::parse_signed(text)?;
        if m.is_negative() {
            return Err(MoneyError::new(text, "it must not be negative"));
        }
        Ok(m)
    }

    /// Parses an amount that may be negative (`"-0.25"`: a refund, a correction).
    pub fn parse_signed(text: &str) -> Result<Self, MoneyError> {
        let err = |why| MoneyError::new(text, why);
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || frac.is_some_and(|f| !all_digits(f)) {
            return Err(err(
                "write digits with an optional `.` and decimals, like `12.50`",
            ));
        }
        let frac = frac.unwrap_or("");
        if frac.len() > MONEY_SCALE as usize {
            return Err(err(
                "more than 9 decimals (the smallest unit is a nano-dollar)",
            ));
        }
        let too_large = || err("too large");
        let mut nanos: i128 = 0;
        for b in whole.bytes() {
            nanos = nanos
                .checked_mul(10)
                .and_then(|n| n.checked_add(i128::from(b - b'0')))
                .ok_or_else(too_large)?;
        }
        nanos = nanos.checked_mul(NANOS_PER_DOLLAR).ok_or_else(too_large)?;
        let mut frac_nanos: i128 = 0;
        for b in frac.bytes() {
            frac_nanos = frac_nanos * 10 + i128::from(b - b'0');
        }
        frac_nanos *= 10i128.pow(MONEY_SCALE - frac.len() as u32);
        nanos = nanos.checked_add(frac_nanos).ok_or_else(too_large)?;
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.nanos.checked_add(other.nanos).map(Money::from_nanos)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.nanos.checked_sub(other.nanos).map(Money::from_nanos)
    }

    /// `self * num / den`, rounded toward zero; None when `den` is zero or the product
    /// overflows. The one scaling primitive: burn rates and forecasts are integer ratios of
    /// seconds, so an amount is never multiplied by a fraction in floating point.
    pub fn checked_mul_div(self, num: i128, den: i128) -> Option<Money> {
        if den == 0 {
            return None;
        }
        self.nanos
            .checked_mul(num)
            .map(|p| Money::from_nanos(p / den))
    }

    /// `self * num / den`, [`Money::MAX`] (or its negative) on overflow, zero for `den == 0`.
    pub fn saturating_mul_div(self, num: i128, den: i128) -> Money {
        if den == 0 {
            return Money::ZERO;
        }
        self.checked_mul_div(num, den).unwrap_or_else(|| {
            if (self.nanos < 0) != (num < 0) {
                Money::from_nanos(-i128::MAX)
            } else {
                Money::MAX
            }
        })
    }

    /// The share of `whole` this amount is, in basis points (1/100 of a percent), rounded
    /// down: `12.34%` is `1234`. None when `whole` is not positive. Saturates at `u64::MAX`;
    /// a negative amount is a share of zero.
    pub fn basis_points_of(self, whole: Money) -> Option<u64> {
        if !whole.is_positive() {
            return None;
        }
        if self.nanos <= 0 {
            return Some(0);
        }
        let bp = match self.nanos.checked_mul(10_000) {
            Some(p) => p / whole.nanos,
            // Past ~1.7e25 dollars: beyond any budget; a coarser division is exact enough.
            None => self.nanos / (whole.nanos / 10_000).max(1),
        };
        Some(u64::try_from(bp).unwrap_or(u64::MAX))
    }

    /// Whether this amount is at least `percent` % of `whole`, compared exactly
    /// (`self * 100 >= whole * percent`), so that 75.000000000% crosses 75 and 74.999999999%
    /// does not, with no rounding in between.
    pub fn reaches_percent(self, whole: Money, percent: u32) -> bool {
        let left = self.nanos.checked_mul(100);
        let right = whole.nanos.checked_mul(i128::from(percent));
        match (left, right) {
            (Some(l), Some(r)) => l >= r,
            // Only amounts beyond ~1e36 nano-dollars overflow: compare in whole percents.
            _ if whole.nanos > 0 => self.nanos / (whole.nanos / 100).max(1) >= i128::from(percent),
            _ => self.nanos >= 0,
        }
    }
}

impl MoneyError {
    fn new(text: &str, why: &'static str) -> Self {
        Self {
            text: text.chars().take(64).collect(),
            why,
        }
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Signed: the sign rules are the caller's ([`Money::parse`] for non-negative amounts).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_signed(s)
    }
}

/// Dollars with 2 to 9 decimals, as many as the amount needs: `12.50`, `0.00012`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let per = NANOS_PER_DOLLAR.unsigned_abs();
        let frac = format!("{:09}", abs % per);
        let kept = frac.trim_end_matches('0').len().max(MIN_SHOWN_DECIMALS);
        write!(f, "{sign}{}.{}", abs / per, &frac[..kept])
    }
}

/// As its decimal text, so that a JSON reader never parses it as a float.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// From a decimal string (`"500.00"`) or an integer (`500`); never from a float, which could
/// not hold the amount exactly. Negative amounts are refused: every configured amount is a
/// limit or an estimate.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MoneyVisitor)
    }
}

struct MoneyVisitor;

impl Visitor<'_> for MoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an amount in USD as a string such as \"12.50\", or a whole number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
        Money::parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
        Ok(Money::from_nanos(i128::from(v) * NANOS_PER_DOLLAR))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
        if v < 0 {
            return Err(E::custom(format!(
                "`{v}` is not an amount in USD: it must not be negative"
            )));
        }
        Ok(Money::from_nanos(i128::from(v) * NANOS_PER_DOLLAR))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
        Err(E::custom(format!(
            "`{v}`: write amounts as strings (\"12.50\") so they stay exact; a float cannot hold every cent"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        Money::parse_signed(s).unwrap()
    }

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(m("12.50").nanos(), 12_500_000_000);
        assert_eq!(m("12").nanos(), 12_000_000_000);
        assert_eq!(m("0.000000001").nanos(), 1);
        assert_eq!(m("0.000120000").nanos(), 120_000);
        assert_eq!(m("-0.25").nanos(), -250_000_000);
        assert_eq!(m("007.1"), m("7.10"));
    }

    #[test]
    fn refuses_what_is_not_an_exact_amount() {
        for bad in [
            "",
            ".5",
            "5.",
            "1.2.3",
            "1e3",
            "+1",
            " 1",
            "1 ",
            "1_000",
            "0x10",
            "--1",
            "1,50",
            "0.0000000001",
            "NaN",
            "inf",
        ] {
            assert!(Money::parse_signed(bad).is_err(), "{bad:?}");
        }
        let e = Money::parse("-1.00").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        let e = Money::parse("0.0000000001").unwrap_err().to_string();
        assert!(e.contains("9 decimals"), "{e}");
        assert!(Money::parse(&"9".repeat(40)).is_err());
    }

    #[test]
    fn shows_two_to_nine_decimals() {
        for (text, shown) in [
            ("12.5", "12.50"),
            ("1", "1.00"),
            ("0", "0.00"),
            ("0.00012", "0.00012"),
            ("0.000120000", "0.00012"),
            ("0.000000001", "0.000000001"),
            ("-0.5", "-0.50"),
            ("123456789.123456789", "123456789.123456789"),
        ] {
            assert_eq!(m(text).to_string(), shown, "{text}");
            assert_eq!(m(shown), m(text), "round trip of {shown}");
        }
    }

    #[test]
    fn adds_without_drift() {
        // Ten times 0.1, the classic float drift, is exactly 1 here.
        let tenth = m("0.1");
        let sum = (0..10).fold(Money::ZERO, |acc, _| acc.checked_add(tenth).unwrap());
        assert_eq!(sum, m("1"));
        assert_eq!(
            m("1").checked_sub(m("0.000000001")).unwrap().to_string(),
            "0.999999999"
        );
        assert_eq!(Money::MAX.checked_add(m("0.000000001")), None);
    }

    #[test]
    fn shares_are_exact_at_the_threshold() {
        let budget = m("500");
        assert_eq!(m("375").basis_points_of(budget), Some(7_500));
        assert_eq!(m("374.999999999").basis_points_of(budget), Some(7_499));
        assert!(m("375").reaches_percent(budget, 75));
        assert!(!m("374.999999999").reaches_percent(budget, 75));
        assert!(m("1000").reaches_percent(budget, 200));
        assert_eq!(m("1").basis_points_of(Money::ZERO), None);
        assert_eq!(m("-1").basis_points_of(budget), Some(0));
        assert_eq!(Money::MAX.basis_points_of(m("1")), Some(u64::MAX));
        assert!(Money::MAX.reaches_percent(m("1"), 1000));
    }

    #[test]
    fn scales_by_integer_ratios() {
        // 10 dollars over 3 of 30 days: 100 dollars by the end, rounded toward zero.
        assert_eq!(m("10").checked_mul_div(30, 3), Some(m("100")));
        assert_eq!(
            m("1").checked_mul_div(1, 3).unwrap().to_string(),
            "0.333333333"
        );
        assert_eq!(m("1").checked_mul_div(1, 0), None);
        assert_eq!(Money::MAX.saturating_mul_div(2, 1), Money::MAX);
    }

    #[test]
    fn deserializes_from_strings_and_integers_never_floats() {
        let v: Money = serde_json::from_str("\"12.50\"").unwrap();
        assert_eq!(v, m("12.50"));
        let v: Money = serde_json::from_str("500").unwrap();
        assert_eq!(v, m("500"));
        let e = serde_json::from_str::<Money>("12.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("strings"), "{e}");
        assert!(serde_json::from_str::<Money>("-3").is_err());
        assert!(serde_json::from_str::<Money>("\"-3\"").is_err());
        assert_eq!(serde_json::to_string(&m("0.00012")).unwrap(), "\"0.00012\"");
    }
}
