//! Every host call the filter makes, and the only module that makes them. Through the raw ABI:
//! the SDK's wrappers `panic!` on any status they do not expect (asking for the `:status` of a
//! Matomo call that was reset returns one), and a panic kills the VM (Envoy then answers 503
//! until it is reloaded). These treat every status but Ok as "nothing there" or as a failure.
//!
//! The one SDK wrapper left is `dispatch_http_call`: the SDK must register the call to route
//! its answer back, and its panic covers only statuses Envoy's `httpCall` never returns (it
//! answers Ok, BadArgument or InternalFailure, which the wrapper passes on).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use crate::headers::HeaderMap;
use crate::host::{Host, Post};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_pairs(map: MapType, data: *mut *mut u8, size: *mut usize) -> Status;
    fn proxy_get_buffer_bytes(
        buffer: BufferType,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> Status;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> Status;
    fn proxy_done() -> Status;
    fn proxy_remove_header_map_value(map: MapType, key: *const u8, key_size: usize) -> Status;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
    fn proxy_define_metric(kind: MetricType, name: *const u8, size: usize, id: *mut u32) -> Status;
    fn proxy_increment_metric(id: u32, offset: i64) -> Status;
    fn proxy_record_metric(id: u32, value: u64) -> Status;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
    fn proxy_register_shared_queue(name: *const u8, size: usize, id: *mut u32) -> Status;
    fn proxy_resolve_shared_queue(
        vm_id: *const u8,
        vm_id_size: usize,
        name: *const u8,
        name_size: usize,
        id: *mut u32,
    ) -> Status;
    fn proxy_enqueue_shared_queue(id: u32, value: *const u8, size: usize) -> Status;
    fn proxy_dequeue_shared_queue(id: u32, data: *mut *mut u8, size: *mut usize) -> Status;
}

/// Runs one read; on Ok the host has handed us a buffer it allocated through this module's
/// allocator (`proxy_on_memory_allocate`), which we then own.
fn read(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        Status::Ok if data.is_null() => Some(Vec::new()),
        // SAFETY: see above; `size` bytes were allocated for us at `data`.
        Status::Ok => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}

/// One header's value as bytes.
pub fn map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    // SAFETY: pointers to live locals and to `name`, valid for the call.
    read(|d, s| unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), d, s) })
}

/// A whole header map in one host call, for lookups in `headers.rs` (the SDK's own decoder
/// unwraps UTF-8).
pub fn map(map: MapType) -> HeaderMap {
    HeaderMap::new(map_bytes(map).unwrap_or_default())
}

fn map_bytes(map: MapType) -> Option<Vec<u8>> {
    // SAFETY: pointers to live locals, valid for the call.
    read(|d, s| unsafe { proxy_get_header_map_pairs(map, d, s) })
}

pub fn buffer(buffer: BufferType, start: usize, max_size: usize) -> Option<Vec<u8>> {
    // SAFETY: pointers to live locals, valid for the call.
    read(|d, s| unsafe { proxy_get_buffer_bytes(buffer, start, max_size, d, s) })
}

/// A property by its serialised path (segments joined by NUL, e.g. `b"source\0address"`).
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: pointers to `path` and live locals, valid for the call.
    read(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
}

/// Removes a header; a failure (the map is no longer there) leaves nothing to do.
pub fn remove_map_value(map: MapType, name: &str) {
    // SAFETY: a pointer to `name`, valid for the call; the status is ignored on purpose.
    let _ = unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) };
}

/// Wall-clock time since the Unix epoch, as the host tells it (zero if it cannot).
pub fn now() -> Duration {
    let mut nanos: u64 = 0;
    // SAFETY: a pointer to a live local, valid for the call.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        Status::Ok => Duration::from_nanos(nanos),
        _ => Duration::ZERO,
    }
}

pub fn set_tick_period(period: Duration) -> bool {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    unsafe { proxy_set_tick_period_milliseconds(millis) == Status::Ok }
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: pointers to `name` and a live local, valid for the call.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == Status::Ok).then_some(id)
}

pub fn increment_metric(id: u32, by: u64) {
    // SAFETY: no pointers; a metric that is gone is nothing to do.
    let _ = unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers; a metric that is gone is nothing to do.
    let _ = unsafe { proxy_record_metric(id, value) };
}

/// This VM's shared queue called `name` (every VM with the same vm_id sees the same one),
/// registered by whichever VM gets there first.
pub fn shared_queue(name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: pointers to `name` and a live local, valid for the call; an empty vm_id is "mine".
    let resolved =
        unsafe { proxy_resolve_shared_queue(name.as_ptr(), 0, name.as_ptr(), name.len(), &mut id) };
    if resolved == Status::Ok && id != 0 {
        return Some(id);
    }
    // SAFETY: as above.
    let registered = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
    (registered == Status::Ok && id != 0).then_some(id)
}

/// The host Envoy is, for the delivery of hits (`delivery.rs`).
pub struct WasmHost;

impl Host for WasmHost {
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let mut cas: u32 = 0;
        // SAFETY: pointers to `key` and live locals, valid for the call.
        let value =
            read(|d, s| unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas) })?;
        Some((value, cas))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool {
        // SAFETY: pointers to `key` and `value`, valid for the call.
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        status == Status::Ok
    }

    fn enqueue(&self, queue: u32, message: &[u8]) -> bool {
        // SAFETY: a pointer to `message`, valid for the call.
        unsafe { proxy_enqueue_shared_queue(queue, message.as_ptr(), message.len()) == Status::Ok }
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        // SAFETY: pointers to live locals, valid for the call.
        read(|d, s| unsafe { proxy_dequeue_shared_queue(queue, d, s) })
    }

    fn post(&self, post: Post) -> Result<u32, String> {
        let headers = vec![
            (":method", "POST"),
            (":path", post.path),
            (":authority", post.authority),
            ("content-type", post.content_type),
        ];
        hostcalls::dispatch_http_call(post.cluster, headers, Some(post.body), vec![], post.timeout)
            .map_err(|status| match status {
                // Envoy's httpCall: no such cluster.
                Status::BadArgument => format!("Envoy has no cluster {:?}", post.cluster),
                // The call failed before it started: no host in the cluster (yet), or none healthy.
                _ => format!(
                    "Envoy could not start a call through cluster {:?} ({status:?}): \
                     no host in it yet, or none healthy?",
                    post.cluster
                ),
            })
    }

    fn done(&self) {
        // SAFETY: no arguments; the status is ignored on purpose.
        let _ = unsafe { proxy_done() };
    }
}
