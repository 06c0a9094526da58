//! What the delivery of hits needs from the host, as a trait: shared data, the shared queue,
//! calls to Matomo. `wasm_host.rs` implements it with Proxy-Wasm host calls; native tests with a
//! fake host (`delivery.rs`), so the exchange between VMs and with Matomo is tested without
//! Envoy. A leaf: it imports nothing of the crate.

use std::time::Duration;

/// A POST to Matomo.
pub struct Post<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub timeout: Duration,
}

pub trait Host {
    /// A shared-data value and its CAS; `None` when the key is not there.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Sets a shared-data value if its CAS is still `cas` (0: whatever it is); false when
    /// another VM changed it first, or on any other failure.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool;
    fn enqueue(&self, queue: u32, message: &[u8]) -> bool;
    /// The next message of a shared queue; `None` when it is empty (or gone).
    fn dequeue(&self, queue: u32) -> Option<Vec<u8>>;
    /// Starts a call; its token, or why it could not even start.
    fn post(&self, post: Post) -> Result<u32, String>;
    /// Tells the host a plugin that asked for time in `on_done` has finished.
    fn done(&self);
}
