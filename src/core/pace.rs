//! A delivery rate (`rate = "100/s"` on a destination, `rate=` on a replay) and the pacer that
//! holds deliveries to it: one slot every `1/rate`, taken in turn, no burst. A plain decision
//! over the time now; whoever calls it does the waiting.
//!
//! ```
//! use hookgate::core::{DeliveryRate, Pacer};
//! use std::time::{Duration, Instant};
//!
//! let rate: DeliveryRate = "100/s".parse().unwrap();
//! assert_eq!(rate.interval(), Duration::from_millis(10));
//! let mut pacer = Pacer::new(&rate);
//! let now = Instant::now();
//! assert_eq!(pacer.take(now), Duration::ZERO);                   // the first goes at once
//! assert_eq!(pacer.take(now), Duration::from_millis(10));        // the next waits its slot
//! assert_eq!(pacer.take(now + Duration::from_secs(1)), Duration::ZERO); // idle: no debt
//! ```

use std::time::{Duration, Instant};

use super::ConfigError;

/// Deliveries per second: written `200/s`, `600/m`, `3600/h`, or a number per second. From one
/// an hour to 100,000 a second.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRate {
    per_second: f64,
    written: String,
}

impl DeliveryRate {
    /// Parses `text`, naming `key` in the error.
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        text.parse().map_err(|reason| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        })
    }

    /// Events per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// The time between two slots.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }
}

impl std::str::FromStr for DeliveryRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?}: write events per unit, such as 200/s, 600/m or 3600/h");
        let (n, per) = match text.trim().split_once('/') {
            Some((n, "s")) => (n, 1.0),
            Some((n, "m")) => (n, 60.0),
            Some((n, "h")) => (n, 3600.0),
            Some(_) => return Err(bad()),
            None => (text, 1.0),
        };
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let per_second = n / per;
        if !(per_second.is_finite() && (1.0 / 3600.0..=100_000.0).contains(&per_second)) {
            return Err(format!("{text:?}: between 1/h and 100000/s"));
        }
        Ok(Self {
            per_second,
            written: text.trim().to_owned(),
        })
    }
}

impl std::fmt::Display for DeliveryRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.written)
    }
}

/// Holds deliveries to a [`DeliveryRate`]: each [`take`](Self::take) reserves the next slot.
/// Time left unused is not saved up: after a pause the next goes at once, then one per slot.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer at `rate`.
    pub fn new(rate: &DeliveryRate) -> Self {
        Self {
            interval: rate.interval(),
            next: None,
        }
    }

    /// Reserves the next slot: how long after `now` it is (zero: go now).
    pub fn take(&mut self, now: Instant) -> Duration {
        let slot = self.next.map_or(now, |n| n.max(now));
        self.next = Some(slot + self.interval);
        slot - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_in_any_unit_and_bounded() {
        struct Case {
            text: &'static str,
            want: Result<f64, &'static str>,
        }
        let cases = [
            Case {
                text: "100/s",
                want: Ok(100.0),
            },
            Case {
                text: "600/m",
                want: Ok(10.0),
            },
            Case {
                text: "3600/h",
                want: Ok(1.0),
            },
            Case {
                text: "2.5",
                want: Ok(2.5),
            },
            Case {
                text: "1/h",
                want: Ok(1.0 / 3600.0),
            },
            Case {
                text: "0/s",
                want: Err("between"),
            },
            Case {
                text: "1000000/s",
                want: Err("between"),
            },
            Case {
                text: "5/d",
                want: Err("events per unit"),
            },
            Case {
                text: "fast",
                want: Err("events per unit"),
            },
        ];
        for c in cases {
            let got = c.text.parse::<DeliveryRate>();
            match (got, c.want) {
                (Ok(r), Ok(want)) => assert!((r.per_second() - want).abs() < 1e-9, "{}", c.text),
                (Err(e), Err(want)) => assert!(e.contains(want), "{}: {e}", c.text),
                (got, want) => panic!("{}: {got:?}, want {want:?}", c.text),
            }
        }
        let err = DeliveryRate::parse("route[0].destination[0].rate", "x").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("route[0].destination[0].rate: "));
    }

    #[test]
    fn a_pacer_spaces_slots_and_saves_nothing_up() {
        let mut p = Pacer::new(&"4/s".parse().unwrap());
        let t = Instant::now();
        let waits: Vec<Duration> = (0..4).map(|_| p.take(t)).collect();
        assert_eq!(
            waits,
            [0, 250, 500, 750].map(Duration::from_millis).to_vec()
        );
        // Later than every slot reserved: the next goes at once, the one after a slot later.
        let later = t + Duration::from_secs(10);
        assert_eq!(p.take(later), Duration::ZERO);
        assert_eq!(p.take(later), Duration::from_millis(250));
    }
}
