//! Profiling probe, not a tracker: burns a fixed number of microseconds of CPU in one callback,
//! so the benchmark can tell whether work done there adds to the client's latency.
//! Plugin config: `log:50` (in on_log) or `response:50` (in on_http_response_headers).

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

#[derive(Clone, Copy)]
struct Spin {
    in_log: bool,
    micros: u64,
}

struct Root(Spin);
struct Probe(Spin);

fn burn(micros: u64) {
    let start = hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH);
    let until = start + Duration::from_micros(micros);
    while hostcalls::get_current_time().unwrap_or(until) < until {}
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .and_then(|c| String::from_utf8(c).ok())
            .unwrap_or_default();
        let (place, micros) = config.trim().split_once(':').unwrap_or(("log", "50"));
        self.0 = Spin {
            in_log: place == "log",
            micros: micros.parse().unwrap_or(50),
        };
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe(self.0)))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Probe {}
impl HttpContext for Probe {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if !self.0.in_log {
            burn(self.0.micros);
        }
        Action::Continue
    }
    fn on_log(&mut self) {
        if self.0.in_log {
            burn(self.0.micros);
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root(Spin { in_log: true, micros: 50 })));
}}
