//! One request becomes one Matomo tracking query string (`?idsite=…&rec=1&…`), the form Matomo's
//! bulk API takes in `requests`. Everything constant is built at configure time; per request the
//! encoder writes into one `String`, percent-encoding as it goes.

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::Value;

use crate::config::ConfigError;
use crate::request::RequestFacts;

/// Parameters the filter sets itself; `routes_details` may not override them.
const RESERVED: [&str; 6] = ["idsite", "rec", "apiv", "rand", "token_auth", "cip"];

/// Per-request parameters a `routes_details` entry may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Url,
    ActionName,
    Ua,
    Lang,
    Urlref,
    PfSrv,
    Cdt,
}

impl Field {
    fn from_key(key: &str) -> Option<Field> {
        Some(match key {
            "url" => Field::Url,
            "action_name" => Field::ActionName,
            "ua" => Field::Ua,
            "lang" => Field::Lang,
            "urlref" => Field::Urlref,
            "pf_srv" => Field::PfSrv,
            "cdt" => Field::Cdt,
            _ => return None,
        })
    }
}

/// What `routes_details` says about one exact path, pre-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDetails {
    /// Values that replace the filter's own, already percent-encoded.
    overrides: Vec<(Field, String)>,
    /// Further parameters, as `&key=value…`, already percent-encoded.
    extra: String,
    /// Further `cvar` entries as a JSON fragment (`,"3":["k","v"]…`), not yet percent-encoded.
    cvar: String,
}

impl RouteDetails {
    pub fn new(path: &str, params: serde_json::Map<String, Value>) -> Result<Self, ConfigError> {
        let mut details = RouteDetails::default();
        for (key, value) in params {
            let at = format!("routes_details.{path}.{key}");
            if RESERVED.contains(&key.as_str()) {
                return Err(ConfigError {
                    key: at,
                    message: "is set by the filter and cannot be overridden".into(),
                });
            }
            if key == "cvar" {
                details.cvar = cvar_fragment(&at, value)?;
                continue;
            }
            let value = scalar(&at, value)?;
            let mut encoded = String::new();
            push_encoded(&mut encoded, &value);
            match Field::from_key(&key) {
                Some(field) => details.overrides.push((field, encoded)),
                None => {
                    details.extra.push('&');
                    push_encoded(&mut details.extra, &key);
                    details.extra.push('=');
                    details.extra.push_str(&encoded);
                }
            }
        }
        Ok(details)
    }

    fn get(&self, field: Field) -> Option<&str> {
        self.overrides
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    }
}

fn scalar(key: &str, value: Value) -> Result<String, ConfigError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if b { "1" } else { "0" }.to_owned()),
        _ => Err(ConfigError {
            key: key.to_owned(),
            message: "must be a string, number or boolean".into(),
        }),
    }
}

/// `{"name": "value", …}` becomes Matomo's indexed entries, numbered after the filter's two.
fn cvar_fragment(key: &str, value: Value) -> Result<String, ConfigError> {
    let Value::Object(entries) = value else {
        return Err(ConfigError {
            key: key.to_owned(),
            message: "must be an object of name to value".into(),
        });
    };
    let mut out = String::new();
    for (i, (name, value)) in entries.into_iter().enumerate() {
        let value = scalar(&format!("{key}.{name}"), value)?;
        let pair = Value::Array(vec![Value::String(name), Value::String(value)]);
        let _ = write!(out, ",\"{}\":{}", i + 3, pair);
    }
    Ok(out)
}

/// The constant part of every hit and the per-site options, compiled from the config.
pub struct HitTemplate {
    id_site: u64,
    /// `?idsite=N&rec=1&apiv=1`
    prefix: String,
    base_url: Option<String>,
    assume_https: bool,
    with_client_ip: bool,
    routes: HashMap<String, RouteDetails>,
}

impl HitTemplate {
    pub fn new(
        id_site: u64,
        base_url: Option<String>,
        assume_https: bool,
        with_client_ip: bool,
        routes: impl IntoIterator<Item = (String, RouteDetails)>,
    ) -> Self {
        let base_url = base_url.map(|b| match b.get(..7) {
            Some(s) if assume_https && s.eq_ignore_ascii_case("http://") => {
                format!("https://{}", b.get(7..).unwrap_or(""))
            }
            _ => b,
        });
        HitTemplate {
            id_site,
            prefix: format!("?idsite={id_site}&rec=1&apiv=1"),
            base_url,
            assume_https,
            with_client_ip,
            routes: routes.into_iter().collect(),
        }
    }

    pub fn id_site(&self) -> u64 {
        self.id_site
    }
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref()
    }
    pub fn assume_https(&self) -> bool {
        self.assume_https
    }
    /// Hits carry `cip` only with a token: Matomo ignores it otherwise.
    pub fn with_client_ip(&self) -> bool {
        self.with_client_ip
    }
    pub fn route(&self, path: &str) -> Option<&RouteDetails> {
        self.routes.get(path)
    }

    /// The hit for one request: a query string with only URL-safe characters, ready to be put
    /// into a JSON string without escaping.
    pub fn encode(&self, req: &RequestFacts, rand: u32) -> String {
        let mut out = String::with_capacity(256 + req.path.len() * 2);
        out.push_str(&self.prefix);
        let _ = write!(out, "&rand={rand}");
        let path_only = req.path_only();
        let route = self.routes.get(path_only);
        let given = |field| route.and_then(|r| r.get(field));

        out.push_str("&url=");
        match given(Field::Url) {
            Some(v) => out.push_str(v),
            None => self.push_url(&mut out, req),
        }
        out.push_str("&action_name=");
        match given(Field::ActionName) {
            Some(v) => out.push_str(v),
            None => push_encoded(&mut out, &percent_decode_lossy(path_only)),
        }
        push_param(&mut out, "ua", given(Field::Ua), req.user_agent.as_deref());
        push_param(
            &mut out,
            "lang",
            given(Field::Lang),
            req.accept_language.as_deref(),
        );
        push_param(
            &mut out,
            "urlref",
            given(Field::Urlref),
            req.referer.as_deref(),
        );
        match (given(Field::PfSrv), req.server_time_ms) {
            (Some(v), _) => {
                out.push_str("&pf_srv=");
                out.push_str(v);
            }
            (None, Some(ms)) => {
                let _ = write!(out, "&pf_srv={ms}");
            }
            (None, None) => {}
        }
        out.push_str("&cvar=");
        let mut cvar = String::with_capacity(64);
        let _ = write!(
            cvar,
            r#"{{"1":["http_status_code","{}"],"2":["http_method",{}]"#,
            req.status,
            Value::String(req.method.clone())
        );
        if let Some(r) = route {
            cvar.push_str(&r.cvar);
        }
        cvar.push('}');
        push_encoded(&mut out, &cvar);
        match given(Field::Cdt) {
            Some(v) => {
                out.push_str("&cdt=");
                out.push_str(v);
            }
            None => {
                let _ = write!(out, "&cdt={}", req.time_secs);
            }
        }
        if self.with_client_ip {
            if let Some(ip) = &req.client_ip {
                out.push_str("&cip=");
                push_encoded(&mut out, ip);
            }
        }
        if let Some(r) = route {
            out.push_str(&r.extra);
        }
        out
    }

    /// `scheme://authority/raw-path?query`, or `base_url` + raw path and query.
    fn push_url(&self, out: &mut String, req: &RequestFacts) {
        match &self.base_url {
            Some(base) => push_encoded(out, base),
            None => {
                let scheme = if self.assume_https {
                    "https"
                } else if req.scheme.is_empty() {
                    "http"
                } else {
                    &req.scheme
                };
                push_encoded(out, scheme);
                out.push_str("%3A%2F%2F");
                push_encoded(out, &req.authority);
            }
        }
        push_encoded(out, &req.path);
    }
}

/// `&key=value` when the route or the request has a non-empty value.
fn push_param(out: &mut String, key: &str, given: Option<&str>, value: Option<&str>) {
    if let Some(v) = given {
        let _ = write!(out, "&{key}={v}");
    } else if let Some(v) = value.filter(|v| !v.is_empty()) {
        let _ = write!(out, "&{key}=");
        push_encoded(out, v);
    }
}

/// Percent-encodes every byte but RFC 3986's unreserved characters, so the result is safe in a
/// query string and in a JSON string alike.
pub fn push_encoded(out: &mut String, s: &str) {
    let hex = |n: u8| char::from_digit(u32::from(n), 16).map_or('0', |c| c.to_ascii_uppercase());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 0xf));
        }
    }
}

/// Decodes `%XX` escapes for a readable action name; malformed escapes stay as they are.
pub fn percent_decode_lossy(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|&c| char::from(c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// A small xorshift generator for Matomo's cache-busting `rand`; no need for crypto here.
pub struct Rand(u64);

impl Rand {
    pub fn new(seed: u64) -> Self {
        Rand(seed | 1)
    }
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        u32::try_from(x >> 32).unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Splits a hit back into its decoded parameters, as Matomo's PHP does.
    pub fn decode(hit: &str) -> BTreeMap<String, String> {
        let q = hit.strip_prefix('?').expect("hits start with ?");
        q.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (
                    percent_decode_lossy(k).into_owned(),
                    percent_decode_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    fn req() -> RequestFacts {
        RequestFacts {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "shop.example:10000".into(),
            path: "/users/a%20b?q=x%26y&z=1".into(),
            user_agent: Some("Mozilla/5.0 (X11)".into()),
            accept_language: Some("fr-CH, fr;q=0.9, en;q=0.8".into()),
            referer: Some("https://ref.example/?a=1".into()),
            status: 200,
            server_time_ms: Some(42),
            time_secs: 1_700_000_000,
            client_ip: Some("203.0.113.9".into()),
        }
    }

    fn template(with_ip: bool) -> HitTemplate {
        HitTemplate::new(3, None, false, with_ip, [])
    }

    fn route(json: &str) -> RouteDetails {
        let Value::Object(m) = serde_json::from_str(json).unwrap() else {
            unreachable!()
        };
        RouteDetails::new("/r", m).unwrap()
    }

    #[test]
    fn a_hit_carries_every_field() {
        let hit = template(true).encode(&req(), 77);
        let p = decode(&hit);
        assert_eq!(p["idsite"], "3");
        assert_eq!(p["rec"], "1");
        assert_eq!(p["apiv"], "1");
        assert_eq!(p["rand"], "77");
        assert_eq!(
            p["url"],
            "http://shop.example:10000/users/a%20b?q=x%26y&z=1"
        );
        assert_eq!(p["action_name"], "/users/a b");
        assert_eq!(p["ua"], "Mozilla/5.0 (X11)");
        assert_eq!(p["lang"], "fr-CH, fr;q=0.9, en;q=0.8");
        assert_eq!(p["urlref"], "https://ref.example/?a=1");
        assert_eq!(p["pf_srv"], "42");
        assert_eq!(
            p["cvar"],
            r#"{"1":["http_status_code","200"],"2":["http_method","GET"]}"#
        );
        assert_eq!(p["cdt"], "1700000000");
        assert_eq!(p["cip"], "203.0.113.9");
        assert!(!p.contains_key("token_auth"));
    }

    #[test]
    fn hits_use_only_url_and_json_safe_characters() {
        let mut r = req();
        r.user_agent = Some("\"quoted\" \\ <tag> \u{fffd} \n".into());
        r.method = "G\"ET".into();
        let hit = template(true).encode(&r, 1);
        assert!(
            hit.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"?&=%-._~".contains(&b)),
            "{hit}"
        );
        let p = decode(&hit);
        assert_eq!(p["ua"], "\"quoted\" \\ <tag> \u{fffd} \n");
        let cvar: Value = serde_json::from_str(&p["cvar"]).unwrap();
        assert_eq!(cvar["2"][1], "G\"ET");
    }

    #[test]
    fn without_token_no_client_ip_is_sent() {
        let p = decode(&template(false).encode(&req(), 1));
        assert!(!p.contains_key("cip"));
    }

    #[test]
    fn missing_or_empty_headers_are_left_out() {
        let mut r = req();
        r.user_agent = None;
        r.accept_language = Some(String::new());
        r.referer = None;
        r.server_time_ms = None;
        r.status = 0;
        let p = decode(&template(false).encode(&r, 1));
        for key in ["ua", "lang", "urlref", "pf_srv"] {
            assert!(!p.contains_key(key), "{key}");
        }
        assert!(p["cvar"].contains(r#"["http_status_code","0"]"#));
    }

    #[test]
    fn assume_https_forces_the_scheme() {
        let t = HitTemplate::new(3, None, true, false, []);
        let p = decode(&t.encode(&req(), 1));
        assert!(p["url"].starts_with("https://shop.example:10000/"));
        let mut r = req();
        r.scheme = "https".into();
        let p = decode(&template(false).encode(&r, 1));
        assert!(p["url"].starts_with("https://"));
    }

    #[test]
    fn base_url_replaces_scheme_and_authority() {
        let t = HitTemplate::new(3, Some("http://www.example/app".into()), false, false, []);
        let p = decode(&t.encode(&req(), 1));
        assert_eq!(p["url"], "http://www.example/app/users/a%20b?q=x%26y&z=1");
        let t = HitTemplate::new(3, Some("http://www.example".into()), true, false, []);
        let p = decode(&t.encode(&req(), 1));
        assert_eq!(p["url"], "https://www.example/users/a%20b?q=x%26y&z=1");
    }

    #[test]
    fn routes_details_override_and_add_params() {
        let details = route(r#"{"action_name":"Users","e_a":"listing","e_v":3,"ua":"x"}"#);
        let t = HitTemplate::new(
            3,
            None,
            false,
            false,
            [("/users/a%20b".to_string(), details)],
        );
        let p = decode(&t.encode(&req(), 1));
        assert_eq!(p["action_name"], "Users");
        assert_eq!(p["e_a"], "listing");
        assert_eq!(p["e_v"], "3");
        assert_eq!(p["ua"], "x");
        let mut other = req();
        other.path = "/other".into();
        let p = decode(&t.encode(&other, 1));
        assert_eq!(p["action_name"], "/other");
        assert!(!p.contains_key("e_a"));
    }

    #[test]
    fn routes_details_cvar_is_indexed_after_status_and_method() {
        let details = route(r#"{"cvar":{"team":"web","tier":2}}"#);
        let t = HitTemplate::new(
            3,
            None,
            false,
            false,
            [("/users/a%20b".to_string(), details)],
        );
        let p = decode(&t.encode(&req(), 1));
        let cvar: Value = serde_json::from_str(&p["cvar"]).unwrap();
        assert_eq!(
            cvar,
            serde_json::json!({"1":["http_status_code","200"],"2":["http_method","GET"],
                               "3":["team","web"],"4":["tier","2"]})
        );
    }

    #[test]
    fn routes_details_refuse_reserved_and_nested_values() {
        for json in [
            r#"{"token_auth":"x"}"#,
            r#"{"cip":"1.1.1.1"}"#,
            r#"{"idsite":2}"#,
            r#"{"e_a":{"x":1}}"#,
            r#"{"e_a":null}"#,
            r#"{"cvar":"x"}"#,
            r#"{"cvar":{"k":[1]}}"#,
        ] {
            let Value::Object(m) = serde_json::from_str(json).unwrap() else {
                unreachable!()
            };
            let e = RouteDetails::new("/r", m).unwrap_err();
            assert!(e.key.starts_with("routes_details./r."), "{json}: {e:?}");
        }
    }

    #[test]
    fn percent_decoding_is_lossy_and_tolerant() {
        assert_eq!(percent_decode_lossy("/a%20b"), "/a b");
        assert_eq!(percent_decode_lossy("/100%"), "/100%");
        assert_eq!(percent_decode_lossy("/%zz%4"), "/%zz%4");
        assert_eq!(percent_decode_lossy("/%ff"), "/\u{fffd}");
        assert_eq!(percent_decode_lossy("/caf%C3%A9"), "/café");
    }

    #[test]
    fn rand_varies() {
        let mut r = Rand::new(12345);
        let a = r.next_u32();
        let b = r.next_u32();
        assert_ne!(a, b);
        let mut z = Rand::new(0);
        assert_ne!(z.next_u32(), z.next_u32());
    }
}
