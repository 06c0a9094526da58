//! Per-request peer: what the usual tracking middlewares do, moved into the proxy. Each
//! request's response headers trigger one tracking call to Matomo (`dispatch_http_call` on the
//! `matomo` cluster), fired without pausing the request. Plugin config: the path of the
//! tracker (default `/matomo.php`).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

struct Root {
    path: String,
}
struct PerRequest {
    path: std::rc::Rc<String>,
    /// Request facts, read on the way in (request headers are not readable in the response path).
    url: String,
    action: String,
    ua: String,
    lang: String,
    method: String,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        if let Ok(Some(c)) = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            if let Ok(s) = String::from_utf8(c) {
                if !s.trim().is_empty() {
                    self.path = s.trim().to_owned();
                }
            }
        }
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PerRequest {
            path: std::rc::Rc::new(self.path.clone()),
            url: String::new(),
            action: String::new(),
            ua: String::new(),
            lang: String::new(),
            method: String::new(),
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header(map: MapType, name: &str) -> String {
    hostcalls::get_map_value(map, name)
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Context for PerRequest {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {}
}
impl HttpContext for PerRequest {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let rq = MapType::HttpRequestHeaders;
        let path = header(rq, ":path");
        self.url = enc(&format!("http://{}{}", header(rq, ":authority"), path));
        self.action = enc(&path);
        self.ua = enc(&header(rq, "user-agent"));
        self.lang = enc(&header(rq, "accept-language"));
        self.method = header(rq, ":method");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let query = format!(
            "{}?idsite=1&rec=1&apiv=1&url={}&action_name={}&ua={}&lang={}&cvar={}",
            self.path,
            self.url,
            self.action,
            self.ua,
            self.lang,
            enc(&format!(
                r#"{{"1":["http_status_code","{}"],"2":["http_method","{}"]}}"#,
                header(MapType::HttpResponseHeaders, ":status"),
                self.method
            )),
        );
        let _ = self.dispatch_http_call(
            "matomo",
            vec![
                (":method", "GET"),
                (":path", &query),
                (":authority", "matomo"),
            ],
            None,
            vec![],
            Duration::from_secs(5),
        );
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { path: "/matomo.php".into() }));
}}
