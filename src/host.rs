//! The host reads the filter makes, through the raw ABI. The SDK's wrappers `panic!` on any
//! status they do not expect: asking for the `:status` of a Matomo call that was reset returns
//! one, and a panic kills the VM (Envoy then answers 503 until it is reloaded). These treat
//! every status but Ok as "nothing there".

use proxy_wasm::types::{BufferType, MapType, Status};

use crate::headers::HeaderMap;

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

/// Tells the host that a root context which answered `on_done` with false has finished.
pub fn done() {
    // SAFETY: no arguments; the status is ignored on purpose.
    let _ = unsafe { proxy_done() };
}
