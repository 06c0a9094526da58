//! The shape's floor: a config parsed with serde_json into a derived struct, its patterns
//! compiled with regex-lite, each request's path matched against them, one log line. Nothing
//! else, so its memory over the empty filter is what the shape's crates cost by themselves.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use regex_lite::Regex;
use serde::Deserialize;
use std::rc::Rc;

#[derive(Deserialize)]
struct Config {
    matomo_url: String,
    #[serde(default)]
    ignored_patterns: Vec<String>,
}

#[derive(Default)]
struct Root {
    patterns: Rc<Vec<Regex>>,
}

struct Filter {
    patterns: Rc<Vec<Regex>>,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let Ok(config) = serde_json::from_slice::<Config>(&bytes) else {
            log::error!("bad config");
            return false;
        };
        let patterns: Result<Vec<Regex>, _> = config
            .ignored_patterns
            .iter()
            .map(|p| Regex::new(p))
            .collect();
        let Ok(patterns) = patterns else {
            log::error!("bad pattern");
            return false;
        };
        log::info!(
            "tracking into {} ({} patterns)",
            config.matomo_url,
            patterns.len()
        );
        self.patterns = Rc::new(patterns);
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            patterns: self.patterns.clone(),
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Filter {}
impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(path) = self.get_http_request_header_bytes(":path") {
            let path = String::from_utf8_lossy(&path);
            if self.patterns.iter().any(|p| p.is_match(&path)) {
                log::debug!("ignored");
            }
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}
