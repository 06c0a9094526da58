//! The per-request context: notes two timestamps, takes the app's `x-matomo-*` response
//! headers (and removes them before the client sees them), and once the stream is done
//! (`on_log`) reads what the hit needs and hands it to the [`Tracker`]. It never pauses a request.

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

pub struct Filter {
    tracker: Option<Rc<RefCell<Tracker>>>,
    started: Option<Duration>,
    responded: Option<Duration>,
    /// The response status, read with the response headers.
    status: Option<u32>,
    app: AppParams,
}

impl Filter {
    pub fn new(tracker: Option<Rc<RefCell<Tracker>>>) -> Self {
        Filter {
            tracker,
            started: None,
            responded: None,
            status: None,
            app: AppParams::default(),
        }
    }

    /// Notes the status, and takes the app's tracking headers off the response, remembering
    /// what they said. One host call reads the whole map.
    fn read_response(&mut self, prefix: &str) {
        let headers = host::map(MapType::HttpResponseHeaders);
        self.status = headers.get(":status").and_then(|s| s.parse().ok());
        if prefix.is_empty() {
            return;
        }
        for (name, value) in headers.prefixed(prefix) {
            self.app
                .add(name.get(prefix.len()..).unwrap_or_default(), &value);
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, &name);
        }
    }
}

/// A header as bytes, converted lossily: header values may hold any byte.
fn header(map: MapType, name: &str) -> Option<String> {
    host::map_value(map, name).map(lossy)
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.started = Some(now());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.responded = Some(now());
        let Some(tracker) = self.tracker.clone() else {
            return Action::Continue;
        };
        if let Ok(tracker) = tracker.try_borrow() {
            self.read_response(&tracker.settings.headers.response_prefix);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(tracker) = &self.tracker else {
            return;
        };
        let Ok(mut tracker) = tracker.try_borrow_mut() else {
            return;
        };
        // One host call for all request headers; lookups then happen in the module.
        let request = host::map(MapType::HttpRequestHeaders);
        let request_header = |name: &str| request.get(name);
        let method = request_header(":method").unwrap_or_default();
        let path = request_header(":path").unwrap_or_default();
        let user_agent = request_header("user-agent");
        if tracker
            .ignored(&method, &path, user_agent.as_deref())
            .is_some()
        {
            return;
        }
        let started = self.started.unwrap_or_else(now);
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
            // Read here only when the response headers never passed this filter.
            status: self
                .status
                .or_else(|| {
                    header(MapType::HttpResponseHeaders, ":status")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0),
            server_time_ms: self
                .responded
                .map(|r| u64::try_from(r.saturating_sub(started).as_millis()).unwrap_or(u64::MAX)),
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
            app: std::mem::take(&mut self.app),
        };
        tracker.track(&facts, started);
    }
}
