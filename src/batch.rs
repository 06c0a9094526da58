//! The per-worker queue of encoded hits and the one bulk call to Matomo that may be under way.
//! Pure: the root context passes the time in and sends what [`Batcher::poll`] returns.
//!
//! One batch is in flight at a time, so hits reach Matomo in the order they were queued, and a
//! failed batch is retried (with backoff, within `retry_window`) before any later one is sent.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{BatchSettings, Secret};

/// Delay before the first retry; it doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Batcher {
    settings: BatchSettings,
    /// `,"token_auth":"…"}` or `}`: the end of every bulk body.
    body_tail: String,
    queue: VecDeque<String>,
    /// Bytes of the hits in `queue`.
    queued_bytes: usize,
    current: Option<Batch>,
    last_take: Duration,
    /// The plugin is going away: send everything now, retry nothing.
    draining: bool,
}

/// A batch taken from the queue, sent or waiting to be sent again.
struct Batch {
    body: String,
    hits: usize,
    in_flight: bool,
    first_failure: Option<Duration>,
    failures: u32,
    next_attempt: Duration,
}

/// A bulk call to make now.
#[derive(Debug, PartialEq, Eq)]
pub struct Send<'a> {
    pub body: &'a str,
    pub hits: usize,
    /// True when this batch failed before.
    pub retry: bool,
}

/// How Matomo answered a bulk call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted; `invalid` hits were refused by Matomo one by one (bad site id, …).
    Accepted { invalid: u64 },
    /// Worth trying again: no answer, a timeout, 5xx, 429.
    Failed(String),
    /// Will fail the same way again (bulk tracking disabled, 4xx): the batch is dropped.
    Refused(String),
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
    Dropped {
        hits: usize,
        reason: String,
    },
}

impl Batcher {
    /// `now`: the flush interval of the first partial batch runs from here.
    pub fn new(settings: BatchSettings, token_auth: Option<&Secret>, now: Duration) -> Self {
        let body_tail = match token_auth {
            Some(t) => format!(
                ",\"token_auth\":{}}}",
                serde_json::Value::String(t.expose().to_owned())
            ),
            None => "}".to_owned(),
        };
        Batcher {
            settings,
            body_tail,
            queue: VecDeque::new(),
            queued_bytes: 0,
            current: None,
            last_take: now,
            draining: false,
        }
    }

    /// Queues one hit; false (and the hit dropped) when the queue is full, in hits or in bytes.
    pub fn push(&mut self, hit: String) -> bool {
        if self.queue.len() >= self.settings.queue_size
            || self.queued_bytes + hit.len() > self.settings.queue_bytes
        {
            return false;
        }
        self.queued_bytes += hit.len();
        self.queue.push_back(hit);
        true
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// From now on every queued hit is due and a failure drops its batch: the plugin is being
    /// torn down (listener update, shutdown) and what it holds must go out, or be counted.
    pub fn drain(&mut self) {
        self.draining = true;
        if let Some(batch) = self.current.as_mut() {
            batch.next_attempt = Duration::ZERO;
        }
    }

    /// Hits queued or in the batch being sent.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.current.as_ref().map_or(0, |b| b.hits)
    }

    /// A bulk call is under way.
    pub fn in_flight(&self) -> bool {
        self.current.as_ref().is_some_and(|b| b.in_flight)
    }

    /// Nothing queued and nothing in flight or waiting for a retry.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.current.is_none()
    }

    /// The call to make now, if any: a due retry, else a full batch, else whatever is queued
    /// once `flush_interval` has passed since the last batch was taken.
    pub fn poll(&mut self, now: Duration) -> Option<Send<'_>> {
        if self.current.is_none() {
            let full = self.queue.len() >= self.settings.batch_size;
            let due = !self.queue.is_empty()
                && (self.draining
                    || now.saturating_sub(self.last_take) >= self.settings.flush_interval);
            if !(full || due) {
                return None;
            }
            self.take(now);
        }
        let batch = self.current.as_mut()?;
        if batch.in_flight || now < batch.next_attempt {
            return None;
        }
        batch.in_flight = true;
        Some(Send {
            body: &batch.body,
            hits: batch.hits,
            retry: batch.failures > 0,
        })
    }

    fn take(&mut self, now: Duration) {
        let n = self.queue.len().min(self.settings.batch_size);
        let size: usize = self.queue.iter().take(n).map(|h| h.len() + 3).sum();
        let mut body = String::with_capacity(size + 16 + self.body_tail.len());
        body.push_str("{\"requests\":[");
        for (i, hit) in self.queue.drain(..n).enumerate() {
            self.queued_bytes -= hit.len();
            if i > 0 {
                body.push(',');
            }
            // Hits hold only URL-safe characters: no JSON escaping needed.
            body.push('"');
            body.push_str(&hit);
            body.push('"');
        }
        body.push(']');
        body.push_str(&self.body_tail);
        self.last_take = now;
        self.current = Some(Batch {
            body,
            hits: n,
            in_flight: false,
            first_failure: None,
            failures: 0,
            next_attempt: now,
        });
    }

    /// Records Matomo's answer to the batch in flight.
    pub fn answer(&mut self, answer: Answer, now: Duration) -> Option<Outcome> {
        let batch = self.current.as_mut().filter(|b| b.in_flight)?;
        batch.in_flight = false;
        let hits = batch.hits;
        let outcome = match answer {
            Answer::Accepted { invalid } => Outcome::Delivered { hits, invalid },
            Answer::Refused(reason) => Outcome::Dropped { hits, reason },
            Answer::Failed(reason) => {
                let since = *batch.first_failure.get_or_insert(now);
                batch.failures = batch.failures.saturating_add(1);
                if self.draining {
                    Outcome::Dropped {
                        hits,
                        reason: format!("{reason}; not retried: the plugin is shutting down"),
                    }
                } else if now.saturating_sub(since) >= self.settings.retry_window {
                    let reason = format!(
                        "{reason}; still failing after {} attempts over {:?} (retry_window)",
                        batch.failures,
                        now.saturating_sub(since)
                    );
                    Outcome::Dropped { hits, reason }
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
        self.current = None;
        Some(outcome)
    }
}

fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Reads Matomo's answer: the `:status` (absent when the call failed or timed out) and the body
/// (`{"status":"success","tracked":N,"invalid":M}` from the bulk endpoint).
pub fn read_answer(status: Option<u32>, body: &[u8]) -> Answer {
    match status {
        None => Answer::Failed("no response (connection failed, reset or timed out)".into()),
        Some(s @ 200..=299) => {
            let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if json.get("status").and_then(|v| v.as_str()) == Some("error") {
                let message = json.get("message").and_then(|v| v.as_str()).unwrap_or("");
                return Answer::Refused(format!("Matomo answered {s} with an error: {message}"));
            }
            let invalid = json.get("invalid").and_then(|v| v.as_u64()).unwrap_or(0);
            Answer::Accepted { invalid }
        }
        Some(s @ (408 | 429 | 500..=599)) => Answer::Failed(format!("Matomo answered {s}")),
        Some(400) => Answer::Refused(
            "Matomo answered 400: is bulk tracking enabled and the token valid?".into(),
        ),
        Some(413) => Answer::Refused("Matomo answered 413: lower batch_size".into()),
        Some(s) => Answer::Refused(format!("Matomo answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(batch_size: usize, queue_size: usize) -> BatchSettings {
        BatchSettings {
            batch_size,
            flush_interval: Duration::from_secs(1),
            queue_size,
            queue_bytes: 1 << 20,
            retry_window: Duration::from_secs(60),
        }
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

    fn sent(b: &mut Batcher, now: f64) -> Option<Vec<String>> {
        b.poll(secs(now)).map(|s| requests(s.body))
    }

    #[test]
    fn a_full_batch_goes_at_once_and_a_partial_one_after_the_interval() {
        let mut b = Batcher::new(settings(3, 100), None, Duration::ZERO);
        b.push("?a".into());
        b.push("?b".into());
        assert_eq!(sent(&mut b, 0.5), None);
        b.push("?c".into());
        b.push("?d".into());
        assert_eq!(sent(&mut b, 0.6).unwrap(), ["?a", "?b", "?c"]);
        b.answer(Answer::Accepted { invalid: 0 }, secs(0.7));
        assert_eq!(
            sent(&mut b, 1.5),
            None,
            "partial batch waits for the interval"
        );
        assert_eq!(sent(&mut b, 1.6).unwrap(), ["?d"]);
    }

    #[test]
    fn the_body_is_matomo_bulk_json_with_the_token_inside() {
        let token = Secret::new("to\"ken".to_owned());
        let mut b = Batcher::new(settings(2, 10), Some(&token), Duration::ZERO);
        b.push("?idsite=1&rec=1".into());
        b.push("?idsite=1&rec=1&x=%22".into());
        let body = b.poll(secs(0.0)).unwrap().body.to_owned();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"requests":["?idsite=1&rec=1","?idsite=1&rec=1&x=%22"],
                               "token_auth":"to\"ken"})
        );
        let mut b = Batcher::new(settings(1, 10), None, Duration::ZERO);
        b.push("?x".into());
        let v: serde_json::Value = serde_json::from_str(b.poll(secs(0.0)).unwrap().body).unwrap();
        assert_eq!(v, serde_json::json!({"requests":["?x"]}));
    }

    #[test]
    fn the_first_partial_batch_waits_for_the_interval_from_start() {
        let mut b = Batcher::new(settings(10, 100), None, secs(1000.0));
        b.push("?a".into());
        assert_eq!(sent(&mut b, 1000.5), None);
        assert_eq!(sent(&mut b, 1001.0).unwrap(), ["?a"]);
    }

    #[test]
    fn one_batch_is_in_flight_at_a_time() {
        let mut b = Batcher::new(settings(1, 10), None, Duration::ZERO);
        b.push("?a".into());
        b.push("?b".into());
        assert!(b.poll(secs(0.0)).is_some());
        assert!(b.poll(secs(5.0)).is_none());
        assert_eq!(
            b.answer(Answer::Accepted { invalid: 2 }, secs(5.0)),
            Some(Outcome::Delivered {
                hits: 1,
                invalid: 2
            })
        );
        assert_eq!(sent(&mut b, 5.0).unwrap(), ["?b"]);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut b = Batcher::new(settings(1, 2), None, Duration::ZERO);
        assert!(b.push("?a".into()));
        assert!(b.push("?b".into()));
        assert!(!b.push("?c".into()));
        assert_eq!(b.queued(), 2);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let mut b = Batcher::new(
            BatchSettings {
                queue_bytes: 10,
                ..settings(2, 100)
            },
            None,
            Duration::ZERO,
        );
        assert!(b.push("?12345".into()));
        assert!(!b.push("?12345".into()), "6 + 6 bytes > 10");
        assert!(b.push("?123".into()));
        assert_eq!(sent(&mut b, 0.0).unwrap(), ["?12345", "?123"]);
        assert!(b.push("?12345".into()), "taking a batch frees its bytes");
    }

    #[test]
    fn failures_are_retried_with_backoff_in_order_then_delivered_once() {
        let mut b = Batcher::new(settings(2, 10), None, Duration::ZERO);
        for h in ["?1", "?2", "?3"] {
            b.push(h.into());
        }
        assert_eq!(sent(&mut b, 0.0).unwrap(), ["?1", "?2"]);
        let out = b.answer(Answer::Failed("503".into()), secs(0.1));
        assert!(
            matches!(out, Some(Outcome::WillRetry { hits: 2, after, .. }) if after == secs(0.5))
        );
        assert_eq!(sent(&mut b, 0.5), None, "backoff not over");
        let s = b.poll(secs(0.6)).unwrap();
        assert!(s.retry);
        assert_eq!(requests(s.body), ["?1", "?2"]);
        let out = b.answer(Answer::Failed("503".into()), secs(0.7));
        assert!(matches!(out, Some(Outcome::WillRetry { after, .. }) if after == secs(1.0)));
        assert_eq!(sent(&mut b, 1.6), None);
        assert_eq!(sent(&mut b, 1.7).unwrap(), ["?1", "?2"]);
        b.answer(Answer::Accepted { invalid: 0 }, secs(1.8));
        assert_eq!(sent(&mut b, 2.0).unwrap(), ["?3"]);
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
        let mut b = Batcher::new(settings(1, 10), None, Duration::ZERO);
        b.push("?a".into());
        b.push("?b".into());
        let mut now = 0.0;
        loop {
            assert!(b.poll(secs(now)).is_some());
            match b.answer(Answer::Failed("down".into()), secs(now)).unwrap() {
                Outcome::WillRetry { after, .. } => now += after.as_secs_f64(),
                Outcome::Dropped { hits, reason } => {
                    assert_eq!(hits, 1);
                    assert!(reason.contains("retry_window"), "{reason}");
                    break;
                }
                o => panic!("{o:?}"),
            }
        }
        assert!((60.0..71.0).contains(&now), "{now}");
        assert_eq!(sent(&mut b, now).unwrap(), ["?b"]);
    }

    #[test]
    fn draining_sends_everything_now_and_retries_nothing() {
        let mut b = Batcher::new(settings(2, 10), None, Duration::ZERO);
        for h in ["?1", "?2", "?3"] {
            b.push(h.into());
        }
        assert_eq!(sent(&mut b, 0.0).unwrap(), ["?1", "?2"]);
        b.answer(Answer::Failed("503".into()), secs(0.1));
        assert!(!b.is_idle());
        b.drain();
        assert_eq!(
            sent(&mut b, 0.1).unwrap(),
            ["?1", "?2"],
            "the retry is due at once"
        );
        let out = b.answer(Answer::Failed("503".into()), secs(0.2));
        assert!(
            matches!(out, Some(Outcome::Dropped { hits: 2, .. })),
            "{out:?}"
        );
        assert_eq!(
            sent(&mut b, 0.2).unwrap(),
            ["?3"],
            "a partial batch is due at once"
        );
        assert_eq!(b.pending(), 1);
        b.answer(Answer::Accepted { invalid: 0 }, secs(0.3));
        assert!(b.is_idle());
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn refused_batches_are_dropped_at_once() {
        let mut b = Batcher::new(settings(1, 10), None, Duration::ZERO);
        b.push("?a".into());
        b.poll(secs(0.0));
        let out = b.answer(Answer::Refused("400".into()), secs(0.0));
        assert_eq!(
            out,
            Some(Outcome::Dropped {
                hits: 1,
                reason: "400".into()
            })
        );
    }

    #[test]
    fn an_answer_without_a_batch_in_flight_is_ignored() {
        let mut b = Batcher::new(settings(1, 10), None, Duration::ZERO);
        assert_eq!(b.answer(Answer::Accepted { invalid: 0 }, secs(0.0)), None);
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(
            read_answer(
                Some(200),
                br#"{"status":"success","tracked":3,"invalid":1}"#
            ),
            Answer::Accepted { invalid: 1 }
        );
        assert_eq!(read_answer(Some(204), b""), Answer::Accepted { invalid: 0 });
        assert!(matches!(read_answer(None, b""), Answer::Failed(_)));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(read_answer(Some(s), b""), Answer::Failed(_)),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413] {
            assert!(
                matches!(read_answer(Some(s), b""), Answer::Refused(_)),
                "{s}"
            );
        }
        assert!(matches!(
            read_answer(Some(200), br#"{"status":"error","message":"bad token"}"#),
            Answer::Refused(m) if m.contains("bad token")
        ));
    }
}
