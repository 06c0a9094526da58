//! The root context, one per VM (each worker's, and the main thread's): loads the config, owns
//! the [`Tracker`] its request contexts fill and the [`Delivery`] that gets the hits to Matomo,
//! and passes the host's events to them. Only a root context talks to Matomo, because request
//! contexts can be gone before a call answers.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, MetricType};

use crate::config::Settings;
use crate::delivery::{queue_name, Delivery};
use crate::http::{track_finished, Filter, Seen};
use crate::metrics::{Counter, HITS_QUEUED};
use crate::tracker::Tracker;
use crate::wasm_host::{self as host, WasmHost};

/// How often a VM hands its hits on and, leading, looks for a batch to send. Full batches
/// leave within one tick; partial ones once `flush_interval` has passed.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Largest Matomo answer read (its bulk answers are a few dozen bytes).
const MAX_ANSWER: usize = 64 * 1024;

pub struct Root {
    tracker: Option<Rc<RefCell<Tracker>>>,
    delivery: Option<Delivery>,
    metrics: Vec<(Counter, u32)>,
    queued_gauge: Option<u32>,
}

impl Root {
    pub fn new() -> Self {
        Root {
            tracker: None,
            delivery: None,
            metrics: Vec::new(),
            queued_gauge: None,
        }
    }

    /// Hands counts gathered since the last tick to Envoy's stats, and, leading, the hits held.
    fn flush_metrics(&self, tracker: &mut Tracker) {
        for (counter, n) in tracker.counters.drain() {
            if let Some((_, id)) = self.metrics.iter().find(|(c, _)| *c == counter) {
                host::increment_metric(*id, n);
            }
        }
        if let (Some(gauge), Some(d)) = (self.queued_gauge, &self.delivery) {
            if d.leading() {
                host::record_metric(gauge, d.pending() as u64);
            }
        }
    }
}

/// A timestamp property (`request.time`): Envoy writes it as 64-bit little-endian nanoseconds
/// since the Unix epoch.
fn nanos_property(path: &[u8]) -> Option<Duration> {
    let bytes: [u8; 8] = host::property(path)?.try_into().ok()?;
    u64::try_from(i64::from_le_bytes(bytes))
        .ok()
        .map(Duration::from_nanos)
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _: usize) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        let Ok(mut tracker) = tracker.try_borrow_mut() else {
            return;
        };
        // A call that failed (reset, refused, timed out) comes back without headers or body.
        let status = (headers > 0)
            .then(|| host::map_value(MapType::HttpCallResponseHeaders, ":status"))
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        let body = (body_size > 0)
            .then(|| {
                host::buffer(
                    BufferType::HttpCallResponseBody,
                    0,
                    body_size.min(MAX_ANSWER),
                )
            })
            .flatten()
            .unwrap_or_default();
        if let Some(d) = self.delivery.as_mut() {
            d.answer(&WasmHost, &mut tracker, token, status, &body, host::now());
        }
        self.flush_metrics(&mut tracker);
    }

    /// The plugin is going away: see [`Delivery::finish`].
    fn on_done(&mut self) -> bool {
        let Some(tracker) = self.tracker.clone() else {
            return true;
        };
        let Ok(mut tracker) = tracker.try_borrow_mut() else {
            return true;
        };
        let finished = match self.delivery.as_mut() {
            Some(d) => d.finish(&WasmHost, &mut tracker, host::now()),
            None => true,
        };
        self.flush_metrics(&mut tracker);
        finished
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log::info!(
            "matomo-proxy-wasm {} (source {}) starting",
            env!("CARGO_PKG_VERSION"),
            env!("MATOMO_PROXY_WASM_SOURCE")
        );
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let config = host::buffer(BufferType::PluginConfiguration, 0, size).unwrap_or_default();
        let settings = match Settings::from_json(&config) {
            Ok(s) => s,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let prefix = &settings.metrics_prefix;
        self.metrics = Counter::ALL
            .into_iter()
            .filter_map(|c| {
                let id =
                    host::define_metric(MetricType::Counter, &format!("{prefix}.{}", c.name()))?;
                Some((c, id))
            })
            .collect();
        self.queued_gauge =
            host::define_metric(MetricType::Gauge, &format!("{prefix}.{HITS_QUEUED}"));
        if !host::set_tick_period(settings.batch.flush_interval.min(MAX_TICK)) {
            log::error!("could not set the tick period");
            return false;
        }
        for warning in &settings.warnings {
            log::warn!("{warning}");
        }
        let mut ids: Vec<u64> = settings.sites.all().map(|s| s.hits.id_site()).collect();
        ids.sort_unstable();
        ids.dedup();
        let sites: Vec<String> = ids.iter().map(u64::to_string).collect();
        log::info!(
            "tracking site{} {} to {}{} through cluster {:?} (tokens: {}, batches of {}, {} calls \
             at once per token)",
            if sites.len() == 1 { "" } else { "s" },
            sites.join(", "),
            settings.tracker.authority,
            settings.tracker.path,
            settings.matomo_cluster,
            settings.tokens.iter().filter(|t| t.is_some()).count(),
            settings.batch.batch_size,
            settings.batch.lanes,
        );
        let now = host::now();
        let queue = host::shared_queue(&queue_name(&settings));
        if queue.is_none() {
            log::warn!(
                "no shared queue: this VM sends its own hits (one visitor's hits may then travel \
                 in several calls at once)"
            );
        }
        // Random per VM (the host's random_get), so no two VMs share a name.
        let id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        self.delivery = Some(Delivery::new(&settings, queue, id, now));
        let seed = u64::try_from(now.as_nanos()).unwrap_or(1) ^ id;
        self.tracker = Some(Rc::new(RefCell::new(Tracker::new(settings, seed))));
        true
    }

    fn on_tick(&mut self) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        let Ok(mut tracker) = tracker.try_borrow_mut() else {
            return;
        };
        if let Some(d) = self.delivery.as_mut() {
            d.tick(&WasmHost, &mut tracker, host::now());
        }
        self.flush_metrics(&mut tracker);
    }

    /// Envoy calls this only when the module runs as an access logger
    /// (`envoy.access_loggers.wasm`), once per finished request; as a filter, `on_log` goes to
    /// the request's own context. No per-request context then: the start is Envoy's
    /// `request.time`, the server time runs from there to now (the request just finished), and
    /// the app's headers can be read but no longer removed. A clock read instead of the
    /// `request.duration` property saves a read the host answers through this module's
    /// allocator: 234,440 → 221,871 Envoy instructions per request (`make bench-instructions`).
    fn on_log(&mut self) {
        let Some(tracker) = &self.tracker else {
            return;
        };
        let Ok(mut tracker) = tracker.try_borrow_mut() else {
            return;
        };
        track_finished(&mut tracker, |tracker| {
            let started = nanos_property(b"request\0time");
            let finished = host::now();
            let mut seen = Seen {
                started,
                server_time: started.map(|s| finished.saturating_sub(s)),
                ..Seen::default()
            };
            seen.read_response(&tracker.settings.headers.response_prefix, false);
            seen
        });
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter::new(self.tracker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
