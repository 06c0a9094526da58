//! matomo-proxy-wasm: server-side Matomo tracking for every request through Envoy or Istio.
//!
//! Pure modules (config, rules, actions, privacy, app, request, hit, batch, tracker, metrics,
//! log_limit) hold all the
//! logic and are tested natively; `root` and `http` are the thin proxy-wasm glue, built for wasm.

pub mod actions;
pub mod app;
pub mod caps;
pub mod classify;
pub mod config;
pub mod delivery;
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
