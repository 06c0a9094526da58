//! The per-request context: notes two timestamps, takes the app's `x-matomo-*` response
//! headers (and removes them before the client sees them), and once the stream is done
//! (`on_log`) reads what the hit needs and hands it to the [`Tracker`]. It never pauses a request.
//! [`track_finished`] is shared with the root context, which Envoy calls instead when the
//! module runs as an access logger.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use crate::app::AppParams;
use crate::caps;
use crate::classify::is_later_part;
use crate::headers::capped_value;
use crate::request::{client_ip, RequestFacts};
use crate::rules::Ignored;
use crate::text::lossy;
use crate::tracker::Tracker;
use crate::wasm_host as host;

/// What the glue learnt about a request before `on_log`, besides its headers.
#[derive(Default)]
pub struct Seen {
    pub started: Option<Duration>,
    /// From the request to the response headers (a filter) or to the end (an access logger).
    pub server_time: Option<Duration>,
    /// The response status, read with the response headers.
    pub status: Option<u32>,
    /// The response's `content-type`, and whether it said `content-disposition: attachment`.
    pub content_type: Option<String>,
    pub attachment: bool,
    /// A 206 whose `content-range` does not start at byte 0.
    pub later_part: bool,
    pub app: AppParams,
}

impl Seen {
    /// Notes the status and what the app's tracking headers said. As a filter, the headers are
    /// also taken off the response; an access logger comes too late for that. One host call
    /// reads the whole map.
    pub fn read_response(&mut self, prefix: &str, remove: bool) {
        let headers = host::map(MapType::HttpResponseHeaders);
        let [status, content_type, disposition, range] = headers.first_of([
            ":status",
            "content-type",
            "content-disposition",
            "content-range",
        ]);
        // Only the content type is kept; the others are looked at in place.
        self.status = status.and_then(|s| token(s).parse().ok());
        self.content_type = content_type.map(|v| capped_value(v, caps::TOKEN * 4, false).0);
        self.attachment = disposition.is_some_and(|v| {
            token(v)
                .trim_start()
                .get(.."attachment".len())
                .is_some_and(|kind| kind.eq_ignore_ascii_case("attachment"))
        });
        self.later_part = range.is_some_and(|v| is_later_part(&token(v)));
        if prefix.is_empty() {
            return;
        }
        for (name, value) in headers.prefixed(prefix) {
            self.app
                .add(name.get(prefix.len()..).unwrap_or_default(), &value);
            if remove {
                host::remove_map_value(MapType::HttpResponseHeaders, &name);
            }
        }
    }
}

/// A short header value's first [`caps::TOKEN`] bytes, converted lossily: borrowed, not copied,
/// when they are UTF-8.
fn token(value: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(value.get(..caps::TOKEN).unwrap_or(value))
}

/// Takes every header with the prefix off a response trailer map (HTTP/2 and gRPC responses
/// can carry them there); their values are not used.
fn strip_trailers(prefix: &str) {
    if prefix.is_empty() {
        return;
    }
    let trailers = host::map(MapType::HttpResponseTrailers);
    for (name, _) in trailers.prefixed(prefix) {
        host::remove_map_value(MapType::HttpResponseTrailers, &name);
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
        self.seen.started = Some(host::now());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let responded = host::now();
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

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        if let Some(Ok(tracker)) = self.tracker.as_ref().map(|t| t.try_borrow()) {
            strip_trailers(&tracker.settings.headers.response_prefix);
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

/// Reads the finished request's headers and, unless a rule ignores it or the app did not
/// answer it, tracks it; `seen` is asked only then, so an ignored request costs no more host
/// calls. Every value is capped as it is read (see [`caps`]).
pub fn track_finished(tracker: &mut Tracker, seen: impl FnOnce(&Tracker) -> Seen) {
    // One host call for all request headers, one pass over them for the fixed ones.
    let request = host::map(MapType::HttpRequestHeaders);
    let fixed = request.first_of([
        ":path",
        ":method",
        ":authority",
        "user-agent",
        ":scheme",
        "accept-language",
        "referer",
        "sec-fetch-dest",
    ]);
    let [path, method, authority, user_agent, scheme, accept_language, referer, fetch_dest] = fixed;
    let mut truncated = false;
    let mut keep = |value: Option<&[u8]>, max: usize, escapes: bool| {
        let (value, cut_off) = capped_value(value?, max, escapes);
        truncated |= cut_off;
        Some(value)
    };
    // No path: nothing a visit could show (an access logger also sees what the codec refused).
    let Some(path) = keep(path, caps::PATH, true) else {
        return;
    };
    let method = keep(method, caps::TOKEN, false).unwrap_or_default();
    let authority = keep(authority, caps::AUTHORITY, false).unwrap_or_default();
    let user_agent = keep(user_agent, caps::USER_AGENT, false);
    if tracker
        .ignored(&method, &path, &authority, user_agent.as_deref())
        .is_some()
    {
        return;
    }
    // Envoy's details for a response the upstream sent; anything else is a local reply (of
    // Envoy or a filter in front) or no response at all. One property read.
    if !tracker.settings.track_local_replies
        && host::property(b"response\0code_details").as_deref() != Some(b"via_upstream")
    {
        tracker.count_ignored(Ignored::LocalReply);
        return;
    }
    let seen = seen(tracker);
    let started = seen.started.unwrap_or_else(host::now);
    // The client as Envoy computed it: `cip` with a token, and always the visitor's lane.
    let client_ip = host::property(b"source\0address")
        .map(lossy)
        .and_then(|a| client_ip(&a).map(str::to_owned));
    let sources = &tracker.settings.headers;
    let scheme = keep(scheme, caps::TOKEN, false).unwrap_or_default();
    let accept_language = keep(accept_language, caps::ACCEPT_LANGUAGE, false);
    let referer = keep(referer, caps::REFERER, true);
    let fetch_dest = keep(fetch_dest, caps::TOKEN, false);
    let mut header = |name: &str, max: usize| keep(request.first_of([name])[0], max, false);
    let uid = sources
        .uid
        .as_deref()
        .and_then(|name| header(name, caps::USER_ID));
    let cid = sources
        .cid
        .as_deref()
        .and_then(|name| header(name, caps::TOKEN));
    let dimensions = sources
        .dimensions
        .iter()
        .filter_map(|(name, n)| Some((*n, header(name, caps::DIMENSION)?)))
        .collect();
    let cookie = sources
        .cookie
        .then(|| request.get_all_capped("cookie", "; ", caps::COOKIE))
        .flatten()
        .map(|(cookies, _)| cookies);
    let facts = RequestFacts {
        method,
        scheme,
        authority,
        path,
        user_agent,
        accept_language,
        referer,
        status: seen.status.unwrap_or(0),
        content_type: seen.content_type,
        attachment: seen.attachment,
        later_part: seen.later_part,
        fetch_dest,
        server_time_ms: seen
            .server_time
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        time_secs: started.as_secs(),
        client_ip,
        cookie,
        uid,
        cid,
        dimensions,
        app: seen.app,
        truncated,
    };
    tracker.track(&facts, started);
}
