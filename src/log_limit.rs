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

/// Lines about dropped hits: at most one per period, each saying how many hits were dropped
/// under the lines held back since the last one. When drops stop, `overdue` tells the rest, so
/// the tail of a burst is never left untold.
pub struct DropLog {
    limit: LogLimit,
    held_hits: u64,
}

impl DropLog {
    pub fn new(every: Duration) -> Self {
        DropLog {
            limit: LogLimit::new(every),
            held_hits: 0,
        }
    }

    /// `hits` were just dropped: `Some(held)` when a line may be logged now, `held` being the
    /// hits dropped under the lines held back since the last one.
    pub fn allow(&mut self, now: Duration, hits: u64) -> Option<u64> {
        let allowed = self
            .limit
            .allow(now)
            .map(|_| std::mem::take(&mut self.held_hits));
        if allowed.is_none() {
            self.held_hits = self.held_hits.saturating_add(hits);
        }
        allowed
    }

    /// Hits dropped under held-back lines once a period has passed since the last line (and
    /// `None` when there are none): called every tick, so a summary follows a burst.
    pub fn overdue(&mut self, now: Duration) -> Option<u64> {
        if self.held_hits == 0 {
            return None;
        }
        self.limit.allow(now)?;
        Some(std::mem::take(&mut self.held_hits))
    }
}

/// What a line about dropped hits adds about the held-back ones: nothing when there were none.
pub fn held_drops(held: u64) -> String {
    match held {
        0 => String::new(),
        n => format!(" ({n} more hits dropped since the last such line)"),
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

    #[test]
    fn dropped_hits_under_held_lines_are_told_on_the_next_line_or_when_overdue() {
        let s = Duration::from_secs;
        let mut d = DropLog::new(s(10));
        assert_eq!(d.overdue(s(100)), None);
        assert_eq!(d.allow(s(100), 5), Some(0));
        assert_eq!(d.allow(s(101), 3), None);
        assert_eq!(d.allow(s(102), 4), None);
        assert_eq!(d.overdue(s(105)), None, "not before the period is over");
        assert_eq!(d.overdue(s(110)), Some(7));
        assert_eq!(d.overdue(s(130)), None, "told once");
        assert_eq!(d.allow(s(131), 1), Some(0));
        assert_eq!(d.allow(s(132), 2), None);
        assert_eq!(d.allow(s(141), 1), Some(2));
    }
}
