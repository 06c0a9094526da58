//! Profiling probe, not a tracker. It either burns a fixed number of microseconds of CPU in one
//! callback, so the benchmark can tell whether work done there adds to the client's latency, or
//! repeats one host call in `on_log`, so the benchmark can price a host call in Envoy's CPU.
//! Plugin config: `log:50` (burn in on_log), `response:50` (burn in on_http_response_headers),
//! `clock:20` (20 clock reads), `headers:20` (20 reads of the whole request header map),
//! `property:20` (20 reads of `source.address`), `header:20` (20 reads of one request header each,
//! through the names the filter looks up, in turn).

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: MapType, data: *mut *mut u8, size: *mut usize) -> Status;
    fn proxy_get_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> Status;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> Status;
}

/// One raw ABI read, as the filter makes it (src/wasm_host.rs's `read`; the SDK's wrappers also
/// decode what they read): the host copies its answer into a buffer it asks this module to
/// allocate, freed here. Returns the answer's size.
fn read(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> usize {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    if call(&mut data, &mut size) != Status::Ok || data.is_null() {
        return 0;
    }
    // The SDK's proxy_on_memory_allocate made this buffer as a Vec of `size` bytes.
    drop(unsafe { Vec::from_raw_parts(data, size, size) });
    size
}

fn property_bytes(path: &[u8]) -> usize {
    read(|data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
}

/// The whole request header map, serialised by the host.
fn header_map_bytes() -> usize {
    read(|data, size| unsafe {
        proxy_get_header_map_pairs(MapType::HttpRequestHeaders, data, size)
    })
}

/// The request headers the filter reads for every tracked request (src/http.rs, `track_finished`).
const NAMES: [&str; 8] = [
    ":path",
    ":method",
    ":authority",
    "user-agent",
    ":scheme",
    "accept-language",
    "referer",
    "sec-fetch-dest",
];

/// One request header's value, read as the filter would read it on its own.
fn header_value_bytes(name: &str) -> usize {
    read(|data, size| unsafe {
        proxy_get_header_map_value(
            MapType::HttpRequestHeaders,
            name.as_ptr(),
            name.len(),
            data,
            size,
        )
    })
}

#[derive(Clone, Copy)]
enum Probe {
    BurnInLog(u64),
    BurnInResponse(u64),
    Clock(u32),
    Headers(u32),
    Header(u32),
    Property(u32),
}

struct Root(Probe);
struct Request(Probe);

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
        let (what, n) = config.trim().split_once(':').unwrap_or(("log", "50"));
        let n: u32 = n.parse().unwrap_or(50);
        self.0 = match what {
            "response" => Probe::BurnInResponse(n.into()),
            "clock" => Probe::Clock(n),
            "headers" => Probe::Headers(n),
            "header" => Probe::Header(n),
            "property" => Probe::Property(n),
            _ => Probe::BurnInLog(n.into()),
        };
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request(self.0)))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Request {}
impl HttpContext for Request {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Probe::BurnInResponse(micros) = self.0 {
            burn(micros);
        }
        Action::Continue
    }
    fn on_log(&mut self) {
        match self.0 {
            Probe::BurnInLog(micros) => burn(micros),
            Probe::Clock(n) => {
                for _ in 0..n {
                    std::hint::black_box(hostcalls::get_current_time().ok());
                }
            }
            Probe::Headers(n) => {
                for _ in 0..n {
                    std::hint::black_box(header_map_bytes());
                }
            }
            Probe::Header(n) => {
                for name in NAMES.iter().cycle().take(n as usize) {
                    std::hint::black_box(header_value_bytes(name));
                }
            }
            Probe::Property(n) => {
                for _ in 0..n {
                    std::hint::black_box(property_bytes(b"source\0address"));
                }
            }
            Probe::BurnInResponse(_) => {}
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root(Probe::BurnInLog(50))));
}}
