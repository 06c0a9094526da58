//! Rate-limits log lines about Matomo failures: an outage must not turn into one log line per
//! request or per retry. Pure; the caller passes the time.

use std::time::Duration;

/// Lets one line through per `every`, and says how many were held back in between.
pub struct LogLimit {
    every: Duration,
    last: Option<Duration>,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; `None` when this one is to be held back.
    pub fn allow(&mut self, now: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_sub(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_a_count_of_the_rest() {
        let s = Duration::from_secs;
        let mut l = LogLimit::new(s(10));
        assert_eq!(l.allow(s(100)), Some(0));
        assert_eq!(l.allow(s(101)), None);
        assert_eq!(l.allow(s(109)), None);
        assert_eq!(l.allow(s(110)), Some(2));
        assert_eq!(l.allow(s(111)), None);
        assert_eq!(l.allow(s(200)), Some(1));
    }
}
