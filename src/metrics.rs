//! The filter's counters, named in one place. Per-request code only bumps a local array; the
//! root context hands the sums to Envoy on each tick, so tracking a request costs no host call
//! for statistics. Envoy shows them as `wasmcustom.matomo.<name>` in `/stats`.

/// One counter per thing an operator asks about: what was seen, tracked, ignored and why,
/// sent, retried, dropped, and refused by Matomo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RequestsSeen,
    RequestsTracked,
    IgnoredRoute,
    IgnoredPattern,
    IgnoredUserAgent,
    IgnoredMethod,
    IgnoredApp,
    IgnoredLocalReply,
    IgnoredNoUrl,
    AppParamsRefused,
    HitsSent,
    HitsRetried,
    HitsDropped,
    HitsInvalid,
    HitsTruncated,
    BatchesSent,
    BatchesFailed,
}

impl Counter {
    pub const ALL: [Counter; 17] = [
        Counter::RequestsSeen,
        Counter::RequestsTracked,
        Counter::IgnoredRoute,
        Counter::IgnoredPattern,
        Counter::IgnoredUserAgent,
        Counter::IgnoredMethod,
        Counter::IgnoredApp,
        Counter::IgnoredLocalReply,
        Counter::IgnoredNoUrl,
        Counter::AppParamsRefused,
        Counter::HitsSent,
        Counter::HitsRetried,
        Counter::HitsDropped,
        Counter::HitsInvalid,
        Counter::HitsTruncated,
        Counter::BatchesSent,
        Counter::BatchesFailed,
    ];

    /// The stat name Envoy is given (it prefixes `wasmcustom.`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::RequestsSeen => "matomo.requests_seen",
            Counter::RequestsTracked => "matomo.requests_tracked",
            Counter::IgnoredRoute => "matomo.requests_ignored.route",
            Counter::IgnoredPattern => "matomo.requests_ignored.pattern",
            Counter::IgnoredUserAgent => "matomo.requests_ignored.user_agent",
            Counter::IgnoredMethod => "matomo.requests_ignored.method",
            Counter::IgnoredApp => "matomo.requests_ignored.app",
            Counter::IgnoredLocalReply => "matomo.requests_ignored.local_reply",
            Counter::IgnoredNoUrl => "matomo.requests_ignored.no_url",
            Counter::AppParamsRefused => "matomo.app_params_refused",
            Counter::HitsSent => "matomo.hits_sent",
            Counter::HitsRetried => "matomo.hits_retried",
            Counter::HitsDropped => "matomo.hits_dropped",
            Counter::HitsInvalid => "matomo.hits_invalid",
            Counter::HitsTruncated => "matomo.hits_truncated",
            Counter::BatchesSent => "matomo.batches_sent",
            Counter::BatchesFailed => "matomo.batches_failed",
        }
    }
}

/// Counts not yet handed to Envoy.
#[derive(Debug, Default)]
pub struct Counters {
    pending: [u64; Counter::ALL.len()],
}

impl Counters {
    pub fn add(&mut self, counter: Counter, n: u64) {
        if let Some(slot) = self.pending.get_mut(counter as usize) {
            *slot = slot.saturating_add(n);
        }
    }

    /// The non-zero counts since the last call, which start again from zero.
    pub fn drain(&mut self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL
            .into_iter()
            .zip(self.pending.iter_mut())
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (c, std::mem::take(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("matomo.")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn drain_returns_sums_once() {
        let mut c = Counters::default();
        c.add(Counter::HitsSent, 3);
        c.add(Counter::HitsSent, 2);
        c.add(Counter::BatchesSent, 1);
        let got: Vec<_> = c.drain().collect();
        assert_eq!(got, [(Counter::HitsSent, 5), (Counter::BatchesSent, 1)]);
        assert_eq!(c.drain().count(), 0);
    }
}
