//! The per-request context: notes two timestamps, takes the app's `x-matomo-*` response
//! headers (and removes them before the client sees them), and once the stream is done
//! (`on_log`) reads what the hit needs and hands it to the [`Tracker`]. It never pauses a request.
//! [`track_finished`] is shared with the root context, which Envoy calls instead when the
//! module runs as an access logger.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use crate::app::AppParams;
use crate::host;
use crate::request::{client_ip, lossy, RequestFacts};
use crate::root::now;
use crate::tracker::Tracker;

/// What the glue learnt about a request before `on_log`, besides its headers.
#[derive(Default)]
pub struct Seen {
    pub started: Option<Duration>,
    /// From the request to the response headers (a filter) or to the end (an access logger).
    pub server_time: Option<Duration>,
    /// The response status, read with the response headers.
    pub status: Option<u32>,
    pub app: AppParams,
}

impl Seen {
    /// Notes the status and what the app's tracking headers said. As a filter, the headers are
    /// also taken off the response; an access logger comes too late for that. One host call
    /// reads the whole map.
    pub fn read_response(&mut self, prefix: &str, remove: bool) {
        let headers = host::map(MapType::HttpResponseHeaders);
        self.status = headers.get(":status").and_then(|s| s.parse().ok());
        if prefix.is_empty() {
            return;
        }
        for (name, value) in headers.prefixed(prefix) {
            self.app
                .add(name.get(prefix.len()..).unwrap_or_default(), &value);
            if remove {
                let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, &name);
            }
        }
    }
}

pub struct Filter {
    tracker: Option<Rc<RefCell<Tracker>>>,
    seen: Seen,
}

impl Filter {
    pub fn new(tracker: Option<Rc<RefCell<Tracker>>>) -> Self {
        Filter {
            tracker,
            seen: Seen::default(),
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.seen.started = Some(now());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let responded = now();
        self.seen.server_time = self.seen.started.map(|s| responded.saturating_sub(s));
        let Some(tracker) = self.tracker.clone() else {
            return Action::Continue;
        };
        if let Ok(tracker) = tracker.try_borrow() {
            self.seen
                .read_response(&tracker.settings.headers.response_prefix, true);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(tracker) = &self.tracker else {
            return;
        };
        if let Ok(mut tracker) = tracker.try_borrow_mut() {
            let mut seen = std::mem::take(&mut self.seen);
            track_finished(&mut tracker, |_| {
                // The response headers never passed this filter (a local reply after it, say):
                // read the status now.
                if seen.status.is_none() {
                    seen.status = host::map_value(MapType::HttpResponseHeaders, ":status")
                        .and_then(|s| lossy(s).parse().ok());
                }
                seen
            });
        }
    }
}

/// Reads the finished request's headers and, unless a rule ignores it, tracks it; `seen` is
/// asked only then, so an ignored request costs no more host calls.
pub fn track_finished(tracker: &mut Tracker, seen: impl FnOnce(&Tracker) -> Seen) {
    // One host call for all request headers; lookups then happen in the module.
    let request = host::map(MapType::HttpRequestHeaders);
    let request_header = |name: &str| request.get(name);
    let method = request_header(":method").unwrap_or_default();
    // No path: nothing a visit could show (an access logger also sees what the codec refused).
    let Some(path) = request_header(":path") else {
        return;
    };
    let user_agent = request_header("user-agent");
    if tracker
        .ignored(&method, &path, user_agent.as_deref())
        .is_some()
    {
        return;
    }
    let seen = seen(tracker);
    let started = seen.started.unwrap_or_else(now);
    let client_ip = if tracker.settings.hits.with_client_ip() {
        host::property(b"source\0address")
            .map(lossy)
            .and_then(|a| client_ip(&a).map(str::to_owned))
    } else {
        None
    };
    let sources = &tracker.settings.headers;
    let facts = RequestFacts {
        method,
        scheme: request_header(":scheme").unwrap_or_default(),
        authority: request_header(":authority").unwrap_or_default(),
        path,
        user_agent,
        accept_language: request_header("accept-language"),
        referer: request_header("referer"),
        status: seen.status.unwrap_or(0),
        server_time_ms: seen
            .server_time
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        time_secs: started.as_secs(),
        client_ip,
        cookie: request_header("cookie"),
        uid: sources.uid.as_deref().and_then(request_header),
        cid: sources.cid.as_deref().and_then(request_header),
        dimensions: sources
            .dimensions
            .iter()
            .filter_map(|(name, n)| Some((*n, request_header(name)?)))
            .collect(),
        app: seen.app,
    };
    tracker.track(&facts, started);
}
