//! The filter's counters, named in one place. Per-request code only bumps a local array; the
//! root context hands the sums to Envoy on each tick, so tracking a request costs no host call
//! for statistics. Envoy shows them as `wasmcustom.<metrics_prefix>.<name>` in `/stats`
//! (`wasmcustom.matomo.hits_sent` by default).

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
    IgnoredNoSite,
    IgnoredAsset,
    IgnoredNoContent,
    IgnoredApi,
    IgnoredDownload,
    IgnoredAsked,
    TrackedPageview,
    TrackedErrorPage,
    TrackedDownload,
    TrackedEvent,
    AppParamsRefused,
    HitsSent,
    HitsRetried,
    HitsDropped,
    HitsDroppedQueueFull,
    HitsDroppedRetryWindow,
    HitsDroppedRefused,
    HitsDroppedInvalid,
    HitsInvalid,
    HitsTruncated,
    HitsResentAfterTimeout,
    BatchesSplit,
    BatchesSent,
    BatchesFailed,
}

impl Counter {
    pub const ALL: [Counter; 33] = [
        Counter::RequestsSeen,
        Counter::RequestsTracked,
        Counter::IgnoredRoute,
        Counter::IgnoredPattern,
        Counter::IgnoredUserAgent,
        Counter::IgnoredMethod,
        Counter::IgnoredApp,
        Counter::IgnoredLocalReply,
        Counter::IgnoredNoUrl,
        Counter::IgnoredNoSite,
        Counter::IgnoredAsset,
        Counter::IgnoredNoContent,
        Counter::IgnoredApi,
        Counter::IgnoredDownload,
        Counter::IgnoredAsked,
        Counter::TrackedPageview,
        Counter::TrackedErrorPage,
        Counter::TrackedDownload,
        Counter::TrackedEvent,
        Counter::AppParamsRefused,
        Counter::HitsSent,
        Counter::HitsRetried,
        Counter::HitsDropped,
        Counter::HitsDroppedQueueFull,
        Counter::HitsDroppedRetryWindow,
        Counter::HitsDroppedRefused,
        Counter::HitsDroppedInvalid,
        Counter::HitsInvalid,
        Counter::HitsTruncated,
        Counter::HitsResentAfterTimeout,
        Counter::BatchesSplit,
        Counter::BatchesSent,
        Counter::BatchesFailed,
    ];

    /// The stat name Envoy is given, after `metrics_prefix` and a dot (Envoy prefixes
    /// `wasmcustom.`): `wasmcustom.matomo.hits_sent`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RequestsSeen => "requests_seen",
            Counter::RequestsTracked => "requests_tracked",
            Counter::IgnoredRoute => "requests_ignored.route",
            Counter::IgnoredPattern => "requests_ignored.pattern",
            Counter::IgnoredUserAgent => "requests_ignored.user_agent",
            Counter::IgnoredMethod => "requests_ignored.method",
            Counter::IgnoredApp => "requests_ignored.app",
            Counter::IgnoredLocalReply => "requests_ignored.local_reply",
            Counter::IgnoredNoUrl => "requests_ignored.no_url",
            Counter::IgnoredNoSite => "requests_ignored.no_site",
            Counter::IgnoredAsset => "requests_ignored.asset",
            Counter::IgnoredNoContent => "requests_ignored.no_content",
            Counter::IgnoredApi => "requests_ignored.api",
            Counter::IgnoredDownload => "requests_ignored.download",
            Counter::IgnoredAsked => "requests_ignored.track_as",
            Counter::TrackedPageview => "requests_tracked.pageview",
            Counter::TrackedErrorPage => "requests_tracked.error_page",
            Counter::TrackedDownload => "requests_tracked.download",
            Counter::TrackedEvent => "requests_tracked.event",
            Counter::AppParamsRefused => "app_params_refused",
            Counter::HitsSent => "hits_sent",
            Counter::HitsRetried => "hits_retried",
            Counter::HitsDropped => "hits_dropped",
            Counter::HitsDroppedQueueFull => "hits_dropped.queue_full",
            Counter::HitsDroppedRetryWindow => "hits_dropped.retry_window",
            Counter::HitsDroppedRefused => "hits_dropped.refused",
            Counter::HitsDroppedInvalid => "hits_dropped.invalid",
            Counter::HitsInvalid => "hits_invalid",
            Counter::HitsTruncated => "hits_truncated",
            Counter::HitsResentAfterTimeout => "hits_resent_after_timeout",
            Counter::BatchesSplit => "batches_split",
            Counter::BatchesSent => "batches_sent",
            Counter::BatchesFailed => "batches_failed",
        }
    }
}

/// Why hits were dropped; `hits_dropped` counts them all, and each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The queue was full (Matomo slow or down for long).
    QueueFull,
    /// Still failing after `retry_window`, or failing while the plugin goes away.
    RetryWindow,
    /// Refused in a way that will not change (401/403/404, or a single hit still refused).
    Refused,
    /// Matomo accepted the call but found every hit in it invalid.
    Invalid,
}

/// The gauge of hits held for Matomo (queued, waiting or in flight) by the VM that sends.
pub const HITS_QUEUED: &str = "hits_queued";

/// Counts not yet handed to Envoy.
#[derive(Debug)]
pub struct Counters {
    pending: [u64; Counter::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            pending: [0; Counter::ALL.len()],
        }
    }
}

impl Counters {
    pub fn add(&mut self, counter: Counter, n: u64) {
        if let Some(slot) = self.pending.get_mut(counter as usize) {
            *slot = slot.saturating_add(n);
        }
    }

    /// Hits dropped, under the total and under their reason.
    pub fn dropped(&mut self, why: Dropped, n: u64) {
        self.add(Counter::HitsDropped, n);
        self.add(
            match why {
                Dropped::QueueFull => Counter::HitsDroppedQueueFull,
                Dropped::RetryWindow => Counter::HitsDroppedRetryWindow,
                Dropped::Refused => Counter::HitsDroppedRefused,
                Dropped::Invalid => Counter::HitsDroppedInvalid,
            },
            n,
        );
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
        assert!(names.iter().all(|n| n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')));
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
