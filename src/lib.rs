//! matomo-proxy-wasm: server-side Matomo tracking for every request through Envoy or Istio.
//!
//! The modules, along the data path; each imports only those above it (docs/development.md):
//! - leaves, importing nothing of the crate: `error`, `text` (percent-encoding, cutting, PHP's
//!   parameter names), `caps` (how much of each client value is kept), `metrics` (counter
//!   names), `log_limit`, `host` (what delivery needs of the host, as a trait);
//! - the config's parts, compiled once per VM: `pattern` (regexes with limits), `rules` (ignore),
//!   `classify` (what a request becomes), `details` (params for routes and rules), `actions`
//!   (naming rules), `privacy` (query filters), `identity` (the daily visitor id), `sites` (host
//!   and path to site);
//! - what a request is: `headers` (host header maps), `app` (the app's `x-matomo-*` headers),
//!   `request` (its facts);
//! - the hit and the whole config: `hit` (the hit's template, encoding a request's facts),
//!   `config` (the plugin JSON, compiled into all of the above);
//! - tracking: `outbox` (hits until the tick), `tracker` (one request to one hit);
//! - delivery: `leader` (which VM sends), `matomo` (its bulk API and answers), `lanes` (batches
//!   per visitor lane), `delivery` (the VMs' exchange and the calls);
//! - the host glue, built for wasm only and imported by nothing: `wasm_host` (every host call),
//!   `http` (the request context), `root` (the root context).

pub mod actions;
pub mod app;
pub mod caps;
pub mod classify;
pub mod config;
pub mod delivery;
pub mod details;
pub mod error;
pub mod headers;
pub mod hit;
pub mod host;
pub mod identity;
pub mod lanes;
pub mod leader;
pub mod log_limit;
pub mod matomo;
pub mod metrics;
pub mod outbox;
pub mod pattern;
pub mod privacy;
pub mod request;
pub mod rules;
pub mod sites;
pub mod text;
pub mod tracker;

#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod root;
#[cfg(target_arch = "wasm32")]
mod wasm_host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(root::Root::new()));
}}
