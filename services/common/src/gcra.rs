//! Rate budgets shared by every process that charges them, kept in Redis
//! by one GCRA script (`gcra.lua`, the generic cell rate algorithm) on
//! Redis's clock: ingest's per-caller limits and deliver's per-host limits.
//!
//! A budget allows `rate` postbacks a second with a burst of `burst`. A
//! charge larger than the burst passes when the budget is whole, and the
//! following seconds pay for it, so nothing is refused for ever. The key
//! expires once the budget is whole again.

use std::time::Duration;

use fred::prelude::*;

use crate::script::Script;

/// A rate: postbacks per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    /// Parses a positive, finite number of postbacks per second.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e9 => Ok(Self(rate)),
            _ => Err(format!("{text:?} is not a rate: expected postbacks per second, a number above 0")),
        }
    }

    /// Postbacks per second.
    pub fn per_second(self) -> f64 {
        self.0
    }

    /// The time one postback takes of the budget.
    pub fn interval(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.0)
    }
}

/// What a budget said about one charge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    /// Whether it was allowed (and taken from the budget).
    pub allowed: bool,
    /// When it would be allowed, if it was not.
    pub wait: Duration,
    /// Postbacks left in the burst.
    pub remaining: u64,
    /// Until the burst is whole again.
    pub reset: Duration,
}

/// Runs the GCRA script.
#[derive(Debug, Clone)]
pub struct Gcra {
    script: Script,
}

impl Default for Gcra {
    fn default() -> Self {
        Self { script: Script::new(include_str!("gcra.lua")) }
    }
}

impl Gcra {
    /// Charges `cost` postbacks to the budget under `key`, which allows
    /// `rate` with a burst of `burst` postbacks.
    pub async fn charge<C: ClientLike>(
        &self,
        client: &C,
        key: &str,
        rate: Rate,
        burst: f64,
        cost: usize,
    ) -> Result<Charge, Error> {
        let interval = 1e6 / rate.per_second();
        let args = vec![Value::from(interval), Value::from(burst), Value::from(cost as i64)];
        let (allowed, wait_us, remaining, reset_us): (i64, i64, i64, i64) =
            self.script.call(client, &[key], args).await?;
        let micros = |n: i64| Duration::from_micros(n.max(0) as u64);
        Ok(Charge {
            allowed: allowed == 1,
            wait: micros(wait_us),
            remaining: remaining.max(0) as u64,
            reset: micros(reset_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_positive_numbers() {
        assert_eq!(Rate::parse("50").map(Rate::per_second), Ok(50.0));
        assert_eq!(Rate::parse("4").map(Rate::interval), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "fast", "", "inf", "NaN"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
