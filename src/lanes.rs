//! The hits on their way to Matomo, held by the one VM that sends for its Envoy (see
//! `leader.rs`), in lanes. Pure: the root context passes the time in and makes the calls
//! [`Lanes::poll`] returns.
//!
//! A hit's lane comes from its visitor key, so one person's hits always travel in the same
//! lane. A lane has at most one bulk call in flight, and a failed batch is retried (with
//! backoff, within `retry_window`) before the lane sends anything later. So a person's hits
//! reach Matomo in order and never in two concurrent calls: Matomo, which has no lock on visit
//! creation, then makes one visit of them. Other lanes go on meanwhile, so several calls are in
//! flight when Matomo can take them.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{BatchSettings, Secret};
use crate::matomo::{body_overhead, body_tail, bulk_body, hit_cost, Answer};
use crate::metrics::Dropped;

/// Delay before the first retry; it doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Lanes {
    settings: BatchSettings,
    /// The end of every bulk body (with the token).
    tail: String,
    lanes: Vec<Lane>,
    /// Hits and bytes in the lanes' queues (not yet in a batch): what the caps bound.
    queued: usize,
    queued_bytes: usize,
    /// The plugin is going away: send everything now, retry nothing.
    draining: bool,
    /// Where the next poll starts looking, so every lane gets its turn.
    next_lane: usize,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<String>,
    /// Bytes of `queue`, as the hits will cost in a body.
    queue_cost: usize,
    /// Batches taken from the queue, oldest first; the front one is the next to go or in flight.
    batches: VecDeque<Batch>,
    in_flight: bool,
    last_take: Duration,
}

struct Batch {
    hits: Vec<String>,
    failures: u32,
    first_failure: Option<Duration>,
    next_attempt: Duration,
    /// An attempt ran into the timeout: Matomo may have recorded it, so a resend may double it.
    timed_out: bool,
}

impl Batch {
    fn new(hits: Vec<String>, now: Duration) -> Self {
        Batch {
            hits,
            failures: 0,
            first_failure: None,
            next_attempt: now,
            timed_out: false,
        }
    }
}

/// A bulk call to make now.
#[derive(Debug, PartialEq, Eq)]
pub struct Send {
    pub lane: usize,
    pub body: String,
    pub hits: usize,
    /// This batch failed before.
    pub retry: bool,
    /// An earlier attempt timed out: Matomo may already have recorded these hits.
    pub after_timeout: bool,
}

/// What became of the batch an answer was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        hits: usize,
        invalid: u64,
    },
    WillRetry {
        hits: usize,
        after: Duration,
        reason: String,
    },
    /// Sent again as two halves.
    Split {
        hits: usize,
        reason: String,
    },
    Dropped {
        hits: usize,
        why: Dropped,
        reason: String,
    },
}

impl Lanes {
    /// `now`: the flush interval of the first partial batches runs from here.
    pub fn new(settings: BatchSettings, token: Option<&Secret>, now: Duration) -> Self {
        let lanes = (0..settings.lanes.max(1))
            .map(|_| Lane {
                last_take: now,
                ..Lane::default()
            })
            .collect();
        Lanes {
            settings,
            tail: body_tail(token),
            lanes,
            queued: 0,
            queued_bytes: 0,
            draining: false,
            next_lane: 0,
        }
    }

    /// Queues one hit in the lane of its visitor key; false (and the hit dropped) when the
    /// queue is full, in hits or in bytes.
    pub fn push(&mut self, key: u32, hit: String) -> bool {
        if self.queued >= self.settings.queue_size
            || self.queued_bytes + hit.len() > self.settings.queue_bytes
        {
            return false;
        }
        let n = self.lanes.len();
        let Some(lane) = self.lanes.get_mut(key as usize % n) else {
            return false;
        };
        self.queued += 1;
        self.queued_bytes += hit.len();
        lane.queue_cost += hit_cost(&hit);
        lane.queue.push_back(hit);
        true
    }

    /// Hits queued, in batches waiting, or in flight.
    pub fn pending(&self) -> usize {
        self.queued
            + self
                .lanes
                .iter()
                .flat_map(|l| &l.batches)
                .map(|b| b.hits.len())
                .sum::<usize>()
    }

    /// Nothing queued, waiting or in flight.
    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    /// Calls under way.
    pub fn in_flight(&self) -> usize {
        self.lanes.iter().filter(|l| l.in_flight).count()
    }

    /// From now on every queued hit is due and a failure drops its batch: the plugin is being
    /// torn down and what it holds must go out, or be counted.
    pub fn drain(&mut self) {
        self.draining = true;
        for batch in self.lanes.iter_mut().flat_map(|l| &mut l.batches) {
            batch.next_attempt = Duration::ZERO;
        }
    }

    /// The next call to make now, if any: in some lane with nothing in flight, a batch due
    /// again, else a full batch, else whatever is queued once `flush_interval` has passed since
    /// that lane last took a batch. Call again until it returns `None`.
    pub fn poll(&mut self, now: Duration) -> Option<Send> {
        let n = self.lanes.len();
        for i in 0..n {
            let index = (self.next_lane + i) % n;
            if let Some(send) = self.poll_lane(index, now) {
                self.next_lane = (index + 1) % n;
                return Some(send);
            }
        }
        None
    }

    fn poll_lane(&mut self, index: usize, now: Duration) -> Option<Send> {
        let s = self.settings;
        let draining = self.draining;
        let lane = self.lanes.get_mut(index)?;
        if lane.in_flight {
            return None;
        }
        if lane.batches.is_empty() {
            let full = lane.queue.len() >= s.batch_size
                || body_overhead(&self.tail) + lane.queue_cost >= s.max_batch_bytes;
            let due = !lane.queue.is_empty()
                && (draining || now.saturating_sub(lane.last_take) >= s.flush_interval);
            if !(full || due) {
                return None;
            }
            let (hits, bytes) = take(lane, s.batch_size, s.max_batch_bytes, &self.tail);
            self.queued -= hits.len();
            self.queued_bytes -= bytes;
            lane.last_take = now;
            lane.batches.push_back(Batch::new(hits, now));
        }
        let batch = lane.batches.front()?;
        if now < batch.next_attempt {
            return None;
        }
        lane.in_flight = true;
        let size =
            body_overhead(&self.tail) + batch.hits.iter().map(|h| hit_cost(h)).sum::<usize>();
        Some(Send {
            lane: index,
            body: bulk_body(batch.hits.iter().map(String::as_str), &self.tail, size),
            hits: batch.hits.len(),
            retry: batch.failures > 0,
            after_timeout: batch.timed_out,
        })
    }

    /// Drops every hit not in flight (the token was refused: sending would only get the proxy
    /// blocked); returns how many.
    pub fn clear(&mut self) -> usize {
        let mut dropped = self.queued;
        for lane in &mut self.lanes {
            lane.queue.clear();
            lane.queue_cost = 0;
            let keep = usize::from(lane.in_flight);
            dropped += lane
                .batches
                .iter()
                .skip(keep)
                .map(|b| b.hits.len())
                .sum::<usize>();
            lane.batches.truncate(keep);
        }
        self.queued = 0;
        self.queued_bytes = 0;
        dropped
    }

    /// Records Matomo's answer to the call in flight in `lane`.
    pub fn answer(&mut self, lane: usize, answer: Answer, now: Duration) -> Option<Outcome> {
        let (draining, retry_window) = (self.draining, self.settings.retry_window);
        let lane = self.lanes.get_mut(lane).filter(|l| l.in_flight)?;
        lane.in_flight = false;
        let batch = lane.batches.front_mut()?;
        let hits = batch.hits.len();
        let dropped = |why, reason| Outcome::Dropped { hits, why, reason };
        let outcome = match answer {
            Answer::Accepted { invalid } if invalid >= hits as u64 && hits > 0 => dropped(
                Dropped::Invalid,
                format!(
                    "Matomo found all {hits} hits of a batch invalid: check that the site \
                     exists, that token_auth is valid and may write to it, and that no hit \
                     carries cip without a token"
                ),
            ),
            Answer::Accepted { invalid } => Outcome::Delivered { hits, invalid },
            Answer::Refused(reason) => dropped(Dropped::Refused, reason),
            Answer::Invalid(reason) => dropped(Dropped::Invalid, reason),
            Answer::Split(reason) if hits > 1 => {
                let second = batch.hits.split_off(hits / 2);
                let first = std::mem::take(&mut batch.hits);
                lane.batches.pop_front();
                lane.batches.push_front(Batch::new(second, now));
                lane.batches.push_front(Batch::new(first, now));
                return Some(Outcome::Split { hits, reason });
            }
            Answer::Split(reason) => dropped(
                Dropped::Refused,
                format!("{reason}; a single hit is still refused"),
            ),
            Answer::Failed { reason, timed_out } => {
                let since = *batch.first_failure.get_or_insert(now);
                batch.failures = batch.failures.saturating_add(1);
                batch.timed_out |= timed_out;
                if draining {
                    dropped(
                        Dropped::RetryWindow,
                        format!("{reason}; not retried: the plugin is going away"),
                    )
                } else if now.saturating_sub(since) >= retry_window {
                    let reason = format!(
                        "{reason}; still failing after {} attempts over {:?} (retry_window)",
                        batch.failures,
                        now.saturating_sub(since)
                    );
                    dropped(Dropped::RetryWindow, reason)
                } else {
                    let after = backoff(batch.failures);
                    batch.next_attempt = now + after;
                    return Some(Outcome::WillRetry {
                        hits,
                        after,
                        reason,
                    });
                }
            }
        };
        lane.batches.pop_front();
        Some(outcome)
    }
}

/// Takes the next batch off a lane's queue: at most `max_hits`, and at least one hit but no
/// more than fit in `max_bytes` of body. Returns the hits and their bytes.
fn take(lane: &mut Lane, max_hits: usize, max_bytes: usize, tail: &str) -> (Vec<String>, usize) {
    let mut size = body_overhead(tail);
    let mut hits = Vec::new();
    let mut bytes = 0;
    while hits.len() < max_hits {
        let Some(hit) = lane.queue.front() else {
            break;
        };
        if !hits.is_empty() && size + hit_cost(hit) > max_bytes {
            break;
        }
        size += hit_cost(hit);
        bytes += hit.len();
        lane.queue_cost -= hit_cost(hit);
        hits.extend(lane.queue.pop_front());
    }
    (hits, bytes)
}

fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(batch_size: usize, queue_size: usize) -> BatchSettings {
        BatchSettings {
            batch_size,
            max_batch_bytes: 1 << 20,
            flush_interval: Duration::from_secs(1),
            queue_size,
            queue_bytes: 1 << 20,
            retry_window: Duration::from_secs(60),
            lanes: 1,
        }
    }

    fn lanes(batch_size: usize, queue_size: usize) -> Lanes {
        Lanes::new(settings(batch_size, queue_size), None, Duration::ZERO)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn requests(body: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_owned())
            .collect()
    }

    fn sent(l: &mut Lanes, now: f64) -> Option<Vec<String>> {
        l.poll(secs(now)).map(|s| requests(&s.body))
    }

    fn push(l: &mut Lanes, hits: &[&str]) {
        for h in hits {
            assert!(l.push(0, (*h).to_owned()));
        }
    }

    fn accepted() -> Answer {
        Answer::Accepted { invalid: 0 }
    }

    fn failed() -> Answer {
        Answer::Failed {
            reason: "503".into(),
            timed_out: false,
        }
    }

    #[test]
    fn a_full_batch_goes_at_once_and_a_partial_one_after_the_interval() {
        let mut l = lanes(3, 100);
        push(&mut l, &["?a", "?b"]);
        assert_eq!(sent(&mut l, 0.5), None);
        push(&mut l, &["?c", "?d"]);
        assert_eq!(sent(&mut l, 0.6).unwrap(), ["?a", "?b", "?c"]);
        l.answer(0, accepted(), secs(0.7));
        assert_eq!(
            sent(&mut l, 1.5),
            None,
            "partial batch waits for the interval"
        );
        assert_eq!(sent(&mut l, 1.6).unwrap(), ["?d"]);
    }

    #[test]
    fn batches_are_capped_in_bytes_as_well_as_in_hits() {
        let mut l = Lanes::new(
            BatchSettings {
                max_batch_bytes: 40,
                ..settings(100, 100)
            },
            None,
            Duration::ZERO,
        );
        push(&mut l, &["?aaaaaaaaaa", "?bbbbbbbbbb", "?cccccccccc"]);
        // 15 bytes of envelope and 14 per hit: one fits in 40 (a second would make 43), and
        // the queue, over 40 bytes, makes a full batch at once.
        let first = sent(&mut l, 0.0).unwrap();
        assert_eq!(first, ["?aaaaaaaaaa"]);
        l.answer(0, accepted(), secs(0.0));
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?bbbbbbbbbb"]);
    }

    #[test]
    fn one_batch_per_lane_is_in_flight_and_lanes_go_on_side_by_side() {
        let mut l = Lanes::new(
            BatchSettings {
                lanes: 2,
                ..settings(1, 10)
            },
            None,
            Duration::ZERO,
        );
        for (key, hit) in [(0, "?a1"), (0, "?a2"), (1, "?b1")] {
            assert!(l.push(key, hit.into()));
        }
        let first = l.poll(secs(0.0)).unwrap();
        let second = l.poll(secs(0.0)).unwrap();
        assert_eq!((first.lane, second.lane), (0, 1));
        assert_eq!(requests(&first.body), ["?a1"]);
        assert_eq!(
            l.poll(secs(5.0)),
            None,
            "lane 0's second hit waits for the first"
        );
        assert_eq!(l.in_flight(), 2);
        assert_eq!(
            l.answer(0, Answer::Accepted { invalid: 0 }, secs(5.0)),
            Some(Outcome::Delivered {
                hits: 1,
                invalid: 0
            })
        );
        assert_eq!(sent(&mut l, 5.0).unwrap(), ["?a2"]);
    }

    #[test]
    fn the_queue_is_bounded_in_hits_and_in_bytes() {
        let mut l = Lanes::new(
            BatchSettings {
                queue_bytes: 10,
                ..settings(2, 3)
            },
            None,
            Duration::ZERO,
        );
        assert!(l.push(0, "?12345".into()));
        assert!(!l.push(0, "?12345".into()), "6 + 6 bytes > 10");
        assert!(l.push(0, "?1".into()));
        assert!(l.push(0, "?2".into()));
        assert!(!l.push(0, "?3".into()), "3 hits");
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?12345", "?1"]);
        assert!(l.push(0, "?12345".into()), "taking a batch frees its room");
    }

    #[test]
    fn failures_are_retried_with_backoff_in_order_then_delivered_once() {
        let mut l = lanes(2, 10);
        push(&mut l, &["?1", "?2", "?3"]);
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?1", "?2"]);
        let out = l.answer(0, failed(), secs(0.1));
        assert!(
            matches!(out, Some(Outcome::WillRetry { hits: 2, after, .. }) if after == secs(0.5))
        );
        assert_eq!(sent(&mut l, 0.5), None, "backoff not over");
        let s = l.poll(secs(0.6)).unwrap();
        assert!(s.retry && !s.after_timeout);
        assert_eq!(requests(&s.body), ["?1", "?2"]);
        let out = l.answer(0, failed(), secs(0.7));
        assert!(matches!(out, Some(Outcome::WillRetry { after, .. }) if after == secs(1.0)));
        assert_eq!(sent(&mut l, 1.6), None);
        assert_eq!(sent(&mut l, 1.7).unwrap(), ["?1", "?2"]);
        l.answer(0, accepted(), secs(1.8));
        assert_eq!(sent(&mut l, 2.0).unwrap(), ["?3"]);
    }

    #[test]
    fn a_resend_after_a_timeout_is_marked() {
        let mut l = lanes(1, 10);
        push(&mut l, &["?1"]);
        l.poll(secs(0.0)).unwrap();
        let timeout = Answer::Failed {
            reason: "timeout".into(),
            timed_out: true,
        };
        l.answer(0, timeout, secs(5.0));
        assert!(l.poll(secs(6.0)).unwrap().after_timeout);
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let got: Vec<_> = (1..=8).map(backoff).collect();
        assert_eq!(
            got,
            [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
                .map(secs)
                .to_vec()
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_batch_failing_past_the_retry_window_is_dropped() {
        let mut l = lanes(1, 10);
        push(&mut l, &["?a", "?b"]);
        let mut now = 0.0;
        loop {
            assert!(l.poll(secs(now)).is_some());
            match l.answer(0, failed(), secs(now)).unwrap() {
                Outcome::WillRetry { after, .. } => now += after.as_secs_f64(),
                Outcome::Dropped { hits, why, reason } => {
                    assert_eq!((hits, why), (1, Dropped::RetryWindow));
                    assert!(reason.contains("retry_window"), "{reason}");
                    break;
                }
                o => panic!("{o:?}"),
            }
        }
        assert!((60.0..71.0).contains(&now), "{now}");
        assert_eq!(sent(&mut l, now).unwrap(), ["?b"]);
    }

    #[test]
    fn a_refused_body_is_split_in_halves_down_to_single_hits_in_order() {
        let mut l = lanes(4, 10);
        push(&mut l, &["?1", "?2", "?big", "?4"]);
        let split = || Answer::Split("413".into());
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?1", "?2", "?big", "?4"]);
        assert!(matches!(
            l.answer(0, split(), secs(0.0)),
            Some(Outcome::Split { hits: 4, .. })
        ));
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?1", "?2"]);
        l.answer(0, accepted(), secs(0.0));
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?big", "?4"]);
        l.answer(0, split(), secs(0.0));
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?big"]);
        assert!(matches!(
            l.answer(0, split(), secs(0.0)),
            Some(Outcome::Dropped {
                hits: 1,
                why: Dropped::Refused,
                ..
            })
        ));
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?4"]);
        l.answer(0, accepted(), secs(0.0));
        assert!(l.is_idle());
    }

    #[test]
    fn a_batch_matomo_finds_wholly_invalid_is_dropped_as_invalid() {
        let mut l = lanes(2, 10);
        push(&mut l, &["?1", "?2", "?3", "?4"]);
        l.poll(secs(0.0)).unwrap();
        let out = l.answer(0, Answer::Accepted { invalid: 2 }, secs(0.0));
        assert!(matches!(
            out,
            Some(Outcome::Dropped { hits: 2, why: Dropped::Invalid, reason }) if reason.contains("token_auth")
        ));
        l.poll(secs(0.0)).unwrap();
        assert_eq!(
            l.answer(0, Answer::Accepted { invalid: 1 }, secs(0.0)),
            Some(Outcome::Delivered {
                hits: 2,
                invalid: 1
            })
        );
    }

    #[test]
    fn draining_sends_everything_now_and_retries_nothing() {
        let mut l = lanes(2, 10);
        push(&mut l, &["?1", "?2", "?3"]);
        assert_eq!(sent(&mut l, 0.0).unwrap(), ["?1", "?2"]);
        l.answer(0, failed(), secs(0.1));
        assert!(!l.is_idle());
        l.drain();
        assert_eq!(
            sent(&mut l, 0.1).unwrap(),
            ["?1", "?2"],
            "the retry is due at once"
        );
        let out = l.answer(0, failed(), secs(0.2));
        assert!(
            matches!(
                out,
                Some(Outcome::Dropped {
                    hits: 2,
                    why: Dropped::RetryWindow,
                    ..
                })
            ),
            "{out:?}"
        );
        assert_eq!(
            sent(&mut l, 0.2).unwrap(),
            ["?3"],
            "a partial batch is due at once"
        );
        assert_eq!(l.pending(), 1);
        l.answer(0, accepted(), secs(0.3));
        assert!(l.is_idle());
    }

    #[test]
    fn refused_batches_are_dropped_at_once() {
        let mut l = lanes(1, 10);
        push(&mut l, &["?a"]);
        l.poll(secs(0.0));
        let out = l.answer(0, Answer::Refused("401".into()), secs(0.0));
        assert_eq!(
            out,
            Some(Outcome::Dropped {
                hits: 1,
                why: Dropped::Refused,
                reason: "401".into()
            })
        );
    }

    #[test]
    fn clearing_drops_all_but_the_calls_in_flight() {
        let mut l = lanes(1, 10);
        push(&mut l, &["?a", "?b", "?c"]);
        l.poll(secs(0.0)).unwrap();
        assert_eq!(l.clear(), 2);
        assert_eq!(l.pending(), 1);
        l.answer(0, accepted(), secs(0.0));
        assert!(l.is_idle());
    }

    #[test]
    fn an_answer_without_a_call_in_flight_is_ignored() {
        let mut l = lanes(1, 10);
        assert_eq!(l.answer(0, accepted(), secs(0.0)), None);
        assert_eq!(l.answer(7, accepted(), secs(0.0)), None);
    }
}
