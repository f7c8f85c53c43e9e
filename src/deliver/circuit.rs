//! A route's circuit breaker (DESIGN §11), as plain state with the time passed in: what the
//! dispatcher may send now, and what an attempt's result does to the circuit.
//!
//! After `open_after` attempts in a row find the upstream down (no connection, no answer in
//! time, a 5xx), counting an event's own repeated failures once, the circuit opens: waiting events stay in the spool untouched, and one of them
//! (the oldest due) goes out as a probe per interval, the interval doubling from the route's
//! `backoff` up to its `max_backoff`. An attempt that fails with the circuit open (a probe, one
//! still in flight when it opened, or the one that opened it) counts nothing against its event. Any
//! answer below 500 (the upstream is up, even if it refuses this event) closes the circuit, and
//! the backlog is delivered at the route's `concurrency`, oldest first.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use hookgate::deliver::circuit::{Change, Circuit, Gate, Health};
//!
//! let mut c = Circuit::new(2, Duration::from_secs(1), Duration::from_secs(4));
//! let t = Instant::now();
//! assert_eq!(c.record(Health::Down, false, 1, t), Change::None);
//! // The same event failing again counts once: its own retries are not an outage.
//! assert_eq!(c.record(Health::Down, false, 1, t), Change::None);
//! assert_eq!(c.record(Health::Down, false, 2, t), Change::Opened);
//! assert_eq!(c.gate(t), Gate::Wait(Some(Duration::from_secs(1))));
//! let later = t + Duration::from_secs(1);
//! assert_eq!(c.gate(later), Gate::Probe);
//! c.probe_sent();
//! assert_eq!(c.record(Health::Up, true, 2, later), Change::Closed);
//! assert_eq!(c.gate(later), Gate::Closed);
//! ```

use std::time::{Duration, Instant};

use super::policy::AttemptResult;

/// What an attempt's result says about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered below 500: it is up (even if it refused the event).
    Up,
    /// No connection, no answer in time, a failure mid-answer, or a 5xx.
    Down,
}

impl Health {
    /// The health an attempt's result shows.
    pub fn of(result: &AttemptResult) -> Self {
        match result {
            AttemptResult::Status { code, .. } if *code < 500 => Self::Up,
            // An in-process handler ran and decided about this event; only its `Unavailable`
            // (like an upstream's 503) says it is down.
            AttemptResult::Processed | AttemptResult::Rejected(_) | AttemptResult::Retry { .. } => {
                Self::Up
            }
            _ => Self::Down,
        }
    }
}

/// What the dispatcher may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Deliver as usual.
    Closed,
    /// Send one event as the probe (then call [`Circuit::probe_sent`]).
    Probe,
    /// Send nothing; ask again after this long (or, with `None`, when the probe in flight ends).
    Wait(Option<Duration>),
}

/// A change of state, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// The circuit opened: the upstream is down.
    Opened,
    /// The circuit closed: the upstream is back.
    Closed,
}

/// One route's circuit.
#[derive(Debug, Clone)]
pub struct Circuit {
    open_after: u32,
    first_interval: Duration,
    max_interval: Duration,
    failures: u32,
    /// The event of the last failure: an event's own retries count once towards opening.
    last_failed: Option<u128>,
    open: Option<Open>,
}

#[derive(Debug, Clone)]
struct Open {
    interval: Duration,
    next_probe: Instant,
    probing: bool,
}

impl Circuit {
    /// A closed circuit that opens after `open_after` failures in a row (0: never), probing
    /// every `first_interval`, doubling up to `max_interval`.
    pub fn new(open_after: u32, first_interval: Duration, max_interval: Duration) -> Self {
        let first_interval = first_interval.max(Duration::from_millis(1));
        Self {
            open_after,
            first_interval,
            max_interval: max_interval.max(first_interval),
            failures: 0,
            last_failed: None,
            open: None,
        }
    }

    /// Whether the circuit is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The current probe interval, while open.
    pub fn interval(&self) -> Option<Duration> {
        self.open.as_ref().map(|o| o.interval)
    }

    /// What may be sent at `now`.
    pub fn gate(&self, now: Instant) -> Gate {
        match &self.open {
            None => Gate::Closed,
            Some(o) if o.probing => Gate::Wait(None),
            Some(o) if now >= o.next_probe => Gate::Probe,
            Some(o) => Gate::Wait(Some(o.next_probe - now)),
        }
    }

    /// The probe [`Gate::Probe`] allowed went out: no other until its result is recorded.
    pub fn probe_sent(&mut self) {
        if let Some(o) = &mut self.open {
            o.probing = true;
        }
    }

    /// The probe [`Gate::Probe`] allowed found nothing to send: the next due event may go.
    pub fn probe_unsent(&mut self) {
        if let Some(o) = &mut self.open {
            o.probing = false;
        }
    }

    /// Records the `health` an attempt at `event` showed; `probe` says whether it was the probe.
    /// Failures count towards opening once per event in a row: one event the upstream keeps
    /// refusing (a poison payload) is its own retries' business, not proof that the upstream is
    /// down for everyone.
    pub fn record(&mut self, health: Health, probe: bool, event: u128, now: Instant) -> Change {
        match health {
            Health::Up => {
                self.failures = 0;
                self.last_failed = None;
                match self.open.take() {
                    Some(_) => Change::Closed,
                    None => Change::None,
                }
            }
            Health::Down => {
                if self.last_failed != Some(event) {
                    self.failures = self.failures.saturating_add(1);
                }
                self.last_failed = Some(event);
                match &mut self.open {
                    Some(o) => {
                        if probe {
                            o.interval = (o.interval * 2).min(self.max_interval);
                            o.next_probe = now + o.interval;
                            o.probing = false;
                        }
                        Change::None
                    }
                    None if self.open_after > 0 && self.failures >= self.open_after => {
                        self.open = Some(Open {
                            interval: self.first_interval,
                            next_probe: now + self.first_interval,
                            probing: false,
                        });
                        Change::Opened
                    }
                    None => Change::None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::status;
    use super::*;

    #[test]
    fn one_event_failing_again_and_again_does_not_open_it() {
        let mut c = Circuit::new(3, Duration::from_secs(1), Duration::from_secs(8));
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(c.record(Health::Down, false, 7, t), Change::None);
        }
        assert!(!c.is_open());
        // Two others failing too: three events in a row, the upstream is down.
        assert_eq!(c.record(Health::Down, false, 8, t), Change::None);
        assert_eq!(c.record(Health::Down, false, 9, t), Change::Opened);
    }

    #[test]
    fn what_counts_as_down() {
        for (result, want) in [
            (status(200), Health::Up),
            (status(404), Health::Up),
            (status(429), Health::Up),
            (status(500), Health::Down),
            (status(503), Health::Down),
            (AttemptResult::Timeout, Health::Down),
            (AttemptResult::Connect("refused".into()), Health::Down),
            (AttemptResult::Failed("reset".into()), Health::Down),
            // An in-process handler: only its `Unavailable` (and a panic, a `Failed`) is down.
            (AttemptResult::Processed, Health::Up),
            (AttemptResult::Rejected("no".into()), Health::Up),
            (
                AttemptResult::Retry {
                    after: None,
                    reason: "later".into(),
                },
                Health::Up,
            ),
            (
                AttemptResult::Unavailable {
                    after: None,
                    reason: "db down".into(),
                },
                Health::Down,
            ),
        ] {
            assert_eq!(Health::of(&result), want, "{result}");
        }
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let mut c = Circuit::new(3, Duration::from_secs(1), Duration::from_secs(8));
        let t = Instant::now();
        let results = [
            Health::Down,
            Health::Down,
            Health::Up,
            Health::Down,
            Health::Down,
        ];
        for (event, h) in (0u128..).zip(results) {
            assert_eq!(c.record(h, false, event, t), Change::None);
        }
        assert_eq!(c.gate(t), Gate::Closed);
        assert_eq!(c.record(Health::Down, false, 9, t), Change::Opened);
    }

    #[test]
    fn probes_back_off_to_the_largest_interval_one_at_a_time() {
        let mut c = Circuit::new(1, Duration::from_secs(1), Duration::from_secs(5));
        let mut t = Instant::now();
        assert_eq!(c.record(Health::Down, false, 0, t), Change::Opened);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let Gate::Wait(Some(wait)) = c.gate(t) else {
                panic!("{:?}", c.gate(t))
            };
            seen.push(wait.as_secs());
            t += wait;
            assert_eq!(c.gate(t), Gate::Probe);
            c.probe_sent();
            // One probe at a time, however long it takes.
            assert_eq!(c.gate(t + Duration::from_secs(60)), Gate::Wait(None));
            assert_eq!(c.record(Health::Down, true, 1, t), Change::None);
        }
        assert_eq!(seen, [1, 2, 4, 5, 5]);
        // Attempts that were in flight when it opened change nothing.
        assert_eq!(c.record(Health::Down, false, 2, t), Change::None);
        assert!(matches!(c.gate(t), Gate::Wait(Some(_))));
    }

    #[test]
    fn zero_never_opens() {
        let mut c = Circuit::new(0, Duration::from_secs(1), Duration::from_secs(5));
        for event in 0..100 {
            assert_eq!(
                c.record(Health::Down, false, event, Instant::now()),
                Change::None
            );
        }
        assert!(!c.is_open());
    }
}
