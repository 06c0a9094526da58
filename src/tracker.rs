//! The state one worker VM shares between its root context and its request contexts: settings,
//! the outbox of hits encoded since the last tick, and the counters. Pure, so the whole
//! per-request decision is tested natively.

use std::time::Duration;

use crate::caps;
use crate::classify::{classify, Kind, Request, Response, Skip};
use crate::config::Settings;
use crate::hit::Rand;
use crate::log_limit::{held_drops, DropLog};
use crate::metrics::{Counter, Counters, Dropped};
use crate::outbox::{visitor_key, Outbox};
use crate::request::RequestFacts;
use crate::rules::Ignored;
use crate::text::cut;

/// At most one line about dropped hits per this period.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Tracker {
    pub settings: Settings,
    pub outbox: Outbox,
    pub counters: Counters,
    rand: Rand,
    /// Lines about dropped hits, from this VM's outbox or (on the sender) its lanes.
    pub drop_log: DropLog,
}

/// What became of one finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    Queued(Kind),
    Ignored(Ignored),
    /// What the response was made it nothing to track (classify.rs).
    Skipped(Skip),
    /// The outbox was full: the hit is dropped and counted.
    QueueFull,
}

impl Tracker {
    pub fn new(settings: Settings, seed: u64) -> Self {
        let outbox = Outbox::new(settings.batch.queue_size, settings.batch.queue_bytes);
        Tracker {
            settings,
            outbox,
            counters: Counters::default(),
            rand: Rand::new(seed),
            drop_log: DropLog::new(DROP_LOG_EVERY),
        }
    }

    /// Applies the ignore rules to a request's (capped) method, path, host and User-Agent;
    /// `None` means the request is to be tracked.
    pub fn ignored(
        &mut self,
        method: &str,
        path: &str,
        authority: &str,
        user_agent: Option<&str>,
    ) -> Option<Ignored> {
        self.counters.add(Counter::RequestsSeen, 1);
        let site = self.settings.site(authority, path);
        let reason = match site {
            _ if !path.starts_with('/') => Some(Ignored::NoUrl),
            None => Some(Ignored::NoSite),
            Some(site) if authority.is_empty() && site.hits.base_url().is_none() => {
                Some(Ignored::NoUrl)
            }
            Some(site) => {
                let path = cut(crate::request::path_only(path), caps::RULES_PATH).0;
                site.rules.check(method, path, user_agent)
            }
        }?;
        self.count_ignored(reason);
        Some(reason)
    }

    /// Counts a request not tracked, under its reason.
    pub fn count_ignored(&mut self, reason: Ignored) {
        self.counters.add(
            match reason {
                Ignored::Method => Counter::IgnoredMethod,
                Ignored::Route => Counter::IgnoredRoute,
                Ignored::Pattern => Counter::IgnoredPattern,
                Ignored::UserAgent => Counter::IgnoredUserAgent,
                Ignored::App => Counter::IgnoredApp,
                Ignored::LocalReply => Counter::IgnoredLocalReply,
                Ignored::NoUrl => Counter::IgnoredNoUrl,
                Ignored::NoSite => Counter::IgnoredNoSite,
            },
            1,
        );
    }

    /// Encodes the hit of a request that passed [`Tracker::ignored`] and keeps it for the next
    /// tick, unless the app's response asked not to track it. A full outbox drops the hit,
    /// counted and logged (at most one line per 10 s).
    pub fn track(&mut self, facts: &RequestFacts, now: Duration) -> Tracked {
        self.counters
            .add(Counter::AppParamsRefused, facts.app.refused);
        if facts.app.ignore {
            self.count_ignored(Ignored::App);
            return Tracked::Ignored(Ignored::App);
        }
        let Some(site) = self.settings.site(&facts.authority, &facts.path) else {
            self.count_ignored(Ignored::NoSite);
            return Tracked::Ignored(Ignored::NoSite);
        };
        let hits = &site.hits;
        let naming = hits.naming(facts.path_only());
        let forced = facts
            .app
            .wants()
            .or(naming.details.and_then(|d| d.track_as));
        let request = Request {
            method: &facts.method,
            path: facts.path_only(),
            fetch_dest: facts.fetch_dest.as_deref(),
        };
        let response = Response {
            status: facts.status,
            content_type: facts.content_type.as_deref(),
            attachment: facts.attachment,
            later_part: facts.later_part,
        };
        let kind = classify(request, response, forced, hits.kinds());
        let tracked = match kind {
            Kind::Ignore(skip) => {
                self.counters.add(
                    match skip {
                        Skip::Asset => Counter::IgnoredAsset,
                        Skip::NoContent => Counter::IgnoredNoContent,
                        Skip::Api => Counter::IgnoredApi,
                        Skip::Download => Counter::IgnoredDownload,
                        Skip::Asked => Counter::IgnoredAsked,
                    },
                    1,
                );
                return Tracked::Skipped(skip);
            }
            Kind::Pageview => Counter::TrackedPageview,
            Kind::ErrorPage => Counter::TrackedErrorPage,
            Kind::Download => Counter::TrackedDownload,
            Kind::Event => Counter::TrackedEvent,
        };
        let (hit, cut_off) = hits.encode(facts, kind, &naming, self.rand.next_u32());
        self.counters.add(tracked, 1);
        if cut_off || facts.truncated || facts.app.truncated {
            self.counters.add(Counter::HitsTruncated, 1);
        }
        // Every hit made counts; each is then sent, dropped (and counted so) or still queued.
        self.counters.add(Counter::RequestsTracked, 1);
        let at = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        if self.outbox.push(site.token, visitor_key(facts), at, hit) {
            Tracked::Queued(kind)
        } else {
            self.queue_full(now);
            Tracked::QueueFull
        }
    }

    /// A new hit found the queue full: it is dropped, counted, and told (rate-limited).
    pub fn queue_full(&mut self, now: Duration) {
        self.counters.dropped(Dropped::QueueFull, 1);
        if let Some(held) = self.drop_log.allow(now, 1) {
            log::warn!(
                "queue full ({} hits or {} bytes): dropping new hits while Matomo is slow or \
                 down{}",
                self.settings.batch.queue_size,
                self.settings.batch.queue_bytes,
                held_drops(held)
            );
        }
    }

    /// Once a tick: the hits dropped under held-back lines, once the drops have stopped long
    /// enough, so the end of a burst is in the log and not only in `hits_dropped`.
    pub fn log_held_drops(&mut self, now: Duration) {
        if let Some(held) = self.drop_log.overdue(now) {
            log::warn!(
                "{held} more hits dropped since the last line about dropped hits; the \
                 hits_dropped counters say why"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(extra: &str) -> Tracker {
        let json = format!(r#"{{"matomo_url":"http://m","id_site":1{extra}}}"#);
        Tracker::new(Settings::from_json(json.as_bytes()).unwrap(), 1)
    }

    fn facts(path: &str) -> RequestFacts {
        RequestFacts {
            method: "GET".into(),
            authority: "shop.example".into(),
            path: path.into(),
            status: 200,
            content_type: Some("text/html".into()),
            ..Default::default()
        }
    }

    fn counts(t: &mut Tracker) -> Vec<(Counter, u64)> {
        t.counters.drain().collect()
    }

    #[test]
    fn a_tracked_request_is_counted_and_queued() {
        let mut t = tracker("");
        assert_eq!(t.ignored("GET", "/x?y=1", "h", None), None);
        assert_eq!(
            t.track(&facts("/x?y=1"), Duration::ZERO),
            Tracked::Queued(Kind::Pageview)
        );
        assert_eq!(crate::outbox::decode(&t.outbox.take_message()).count(), 1);
        assert_eq!(
            counts(&mut t),
            [
                (Counter::RequestsSeen, 1),
                (Counter::RequestsTracked, 1),
                (Counter::TrackedPageview, 1)
            ]
        );
    }

    #[test]
    fn an_api_read_the_app_gave_event_or_search_parameters_is_tracked_as_the_app_says() {
        let mut t = tracker("");
        let mut f = facts("/api/cart");
        f.content_type = Some("application/json".into());
        assert_eq!(t.track(&f, Duration::ZERO), Tracked::Skipped(Skip::Api));
        let mut event = f.clone();
        event.app.add("e-c", "cart");
        event.app.add("e-a", "add");
        assert_eq!(
            t.track(&event, Duration::ZERO),
            Tracked::Queued(Kind::Event)
        );
        let mut search = f.clone();
        search.app.add("search", "red shoes");
        assert_eq!(
            t.track(&search, Duration::ZERO),
            Tracked::Queued(Kind::Pageview)
        );
        search.app.add("track-as", "ignore");
        assert!(matches!(
            t.track(&search, Duration::ZERO),
            Tracked::Skipped(Skip::Asked)
        ));
    }

    #[test]
    fn ignore_reasons_are_counted_apart_and_match_the_path_without_query() {
        let mut t = tracker(
            r#","ignored_routes":["/health"],"ignored_patterns":["/static"],
               "ignored_ua_patterns":[".*bot"],"ignored_methods":["HEAD"]"#,
        );
        assert_eq!(
            t.ignored("GET", "/health?full=1", "h", None),
            Some(Ignored::Route)
        );
        assert_eq!(
            t.ignored("GET", "/static/app.js", "h", None),
            Some(Ignored::Pattern)
        );
        assert_eq!(
            t.ignored("GET", "/", "h", Some("Googlebot")),
            Some(Ignored::UserAgent)
        );
        assert_eq!(t.ignored("HEAD", "/", "h", None), Some(Ignored::Method));
        assert_eq!(
            counts(&mut t),
            [
                (Counter::RequestsSeen, 4),
                (Counter::IgnoredRoute, 1),
                (Counter::IgnoredPattern, 1),
                (Counter::IgnoredUserAgent, 1),
                (Counter::IgnoredMethod, 1),
            ]
        );
    }

    #[test]
    fn requests_without_a_url_are_not_tracked_unless_base_url_gives_one() {
        let mut t = tracker("");
        assert_eq!(t.ignored("OPTIONS", "*", "h", None), Some(Ignored::NoUrl));
        assert_eq!(
            t.ignored("CONNECT", "h:443", "h", None),
            Some(Ignored::NoUrl)
        );
        assert_eq!(t.ignored("GET", "/", "", None), Some(Ignored::NoUrl));
        assert_eq!(
            counts(&mut t),
            [(Counter::RequestsSeen, 3), (Counter::IgnoredNoUrl, 3)]
        );
        let mut t = tracker(r#","base_url":"https://shop.example""#);
        assert_eq!(t.ignored("GET", "/", "", None), None);
    }

    #[test]
    fn rules_see_at_most_the_capped_path() {
        let mut t = tracker(r#","ignored_patterns":[".*secret"]"#);
        let long = format!("/{}secret", "a".repeat(caps::RULES_PATH));
        assert_eq!(t.ignored("GET", &long, "h", None), None);
        let short = format!("/{}secret", "a".repeat(100));
        assert_eq!(t.ignored("GET", &short, "h", None), Some(Ignored::Pattern));
    }

    #[test]
    fn a_truncated_hit_is_counted() {
        let mut t = tracker("");
        let mut f = facts(&format!("/{}", "a".repeat(2000)));
        assert_eq!(t.track(&f, Duration::ZERO), Tracked::Queued(Kind::Pageview));
        f.path = "/short".into();
        f.truncated = true;
        t.track(&f, Duration::ZERO);
        f.truncated = false;
        t.track(&f, Duration::ZERO);
        assert_eq!(
            counts(&mut t),
            [
                (Counter::RequestsTracked, 3),
                (Counter::TrackedPageview, 3),
                (Counter::HitsTruncated, 2)
            ]
        );
    }

    #[test]
    fn a_request_becomes_what_its_response_is_counted_by_kind() {
        let mut t = tracker(
            r#","routes_details":{"/health":{"track_as":"ignore"},"/api/ping":{"track_as":"pageview"}}"#,
        );
        let mut with = |path: &str, status: u32, ct: &str| {
            let mut f = facts(path);
            f.status = status;
            f.content_type = Some(ct.into());
            t.track(&f, Duration::ZERO)
        };
        assert_eq!(with("/", 200, "text/html"), Tracked::Queued(Kind::Pageview));
        assert_eq!(
            with("/x", 404, "text/html"),
            Tracked::Queued(Kind::ErrorPage)
        );
        assert_eq!(
            with("/a.js", 200, "text/javascript"),
            Tracked::Skipped(Skip::Asset)
        );
        assert_eq!(
            with("/old", 301, "text/html"),
            Tracked::Skipped(Skip::NoContent)
        );
        assert_eq!(
            with("/api/cart", 200, "application/json"),
            Tracked::Skipped(Skip::Api),
            "a page's own read"
        );
        assert_eq!(
            with("/a.pdf", 200, "application/pdf"),
            Tracked::Queued(Kind::Download)
        );
        assert_eq!(
            with("/health", 200, "text/html"),
            Tracked::Skipped(Skip::Asked)
        );
        assert_eq!(
            with("/api/ping", 200, "application/json"),
            Tracked::Queued(Kind::Pageview)
        );
        let mut f = facts("/");
        f.app.add("track-as", "event");
        assert_eq!(t.track(&f, Duration::ZERO), Tracked::Queued(Kind::Event));
        let c: Vec<_> = counts(&mut t);
        for (counter, n) in [
            (Counter::RequestsTracked, 5),
            (Counter::TrackedPageview, 2),
            (Counter::TrackedErrorPage, 1),
            (Counter::TrackedEvent, 1),
            (Counter::TrackedDownload, 1),
            (Counter::IgnoredAsset, 1),
            (Counter::IgnoredNoContent, 1),
            (Counter::IgnoredAsked, 1),
            (Counter::IgnoredApi, 1),
        ] {
            assert!(c.contains(&(counter, n)), "{counter:?} {n}: {c:?}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut t = tracker(r#","queue_size":1,"batch_size":1"#);
        assert_eq!(
            t.track(&facts("/a"), Duration::ZERO),
            Tracked::Queued(Kind::Pageview)
        );
        assert_eq!(t.track(&facts("/b"), Duration::ZERO), Tracked::QueueFull);
        assert_eq!(
            counts(&mut t),
            [
                (Counter::RequestsTracked, 2),
                (Counter::TrackedPageview, 2),
                (Counter::HitsDropped, 1),
                (Counter::HitsDroppedQueueFull, 1)
            ]
        );
        let kept: Vec<_> = t.outbox.take();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].3.contains("%2Fa"));
    }
}
