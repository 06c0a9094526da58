//! One request becomes one Matomo tracking query string (`?idsite=…&rec=1&…`), the form Matomo's
//! bulk API takes in `requests`. Everything constant is built at configure time.
//!
//! Parameters come from four sources, later ones overriding earlier ones: the filter's own
//! (url, action_name, ua, …), identity (uid, _id, cid, dimensions from request headers), the
//! exact `routes_details` entry or else the first matching action rule, and last the app's own
//! response headers. Each parameter is sent once.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::actions::ActionRules;
use crate::caps;
use crate::error::ConfigError;
use crate::privacy::QueryFilter;
use crate::request::RequestFacts;
use crate::text::{
    cut, is_plain_param_name, percent_decode_lossy, push_encoded, push_number, truncate_cow,
};

/// Parameters the filter sets itself; config may not override them.
pub const RESERVED: [&str; 6] = ["idsite", "rec", "apiv", "rand", "token_auth", "cip"];

/// Extra parameters for the requests of one route or action rule, pre-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDetails {
    /// (name, percent-encoded value)
    params: Vec<(String, String)>,
    /// `cvar` entries (name, value) appended after the filter's own.
    cvar: Vec<(String, String)>,
}

impl RouteDetails {
    /// `at` is where these params sit in the config, for errors (`routes_details./users`).
    pub fn new(at: &str, params: serde_json::Map<String, Value>) -> Result<Self, ConfigError> {
        let mut details = RouteDetails::default();
        for (key, value) in params {
            let at = format!("{at}.{key}");
            if !is_plain_param_name(&key) {
                return Err(ConfigError::new(
                    at,
                    "a Matomo parameter name has only letters, digits and _ (PHP would read \
                     another name: spaces, dots and brackets change it)",
                ));
            }
            if RESERVED.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    at,
                    "is set by the filter and cannot be overridden",
                ));
            }
            if key == "cvar" {
                let Value::Object(entries) = value else {
                    return Err(ConfigError::new(at, "must be an object of name to value"));
                };
                for (name, v) in entries {
                    let v = scalar(&format!("{at}.{name}"), v)?;
                    details.cvar.push((name, v));
                }
                continue;
            }
            let mut encoded = Vec::new();
            push_encoded(&mut encoded, scalar(&at, value)?.as_bytes());
            details
                .params
                .push((key, String::from_utf8_lossy(&encoded).into_owned()));
        }
        Ok(details)
    }

    /// The encoded value of a parameter, if these details set it.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn scalar(key: &str, value: Value) -> Result<String, ConfigError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if b { "1" } else { "0" }.to_owned()),
        _ => Err(ConfigError::new(key, "must be a string, number or boolean")),
    }
}

/// Per-site options of the hit, compiled from the config.
#[derive(Default)]
pub struct HitOptions {
    pub base_url: Option<String>,
    pub assume_https: bool,
    pub with_client_ip: bool,
    pub routes: HashMap<String, RouteDetails>,
    pub action_rules: ActionRules,
    pub query_filter: QueryFilter,
    /// A fixed visitor id (`cid`), 16 hex characters.
    pub cid: Option<String>,
    pub bots: bool,
}

/// The constant part of every hit and the per-site options.
pub struct HitTemplate {
    id_site: u64,
    /// `?idsite=N&rec=1&apiv=1`
    prefix: String,
    /// `_pk_id.N.`: the start of Matomo's visitor cookie name for this site.
    cookie_prefix: String,
    options: HitOptions,
}

/// A parameter value, written straight into the hit.
enum Val<'a> {
    /// Text, percent-encoded when written.
    Raw(Cow<'a, str>),
    /// Bytes, percent-encoded when written (the `cvar` JSON).
    Bytes(Vec<u8>),
    /// Already encoded at configure time.
    Encoded(&'a str),
    Number(u64),
    /// Pieces of text written one after the other, as one encoded value (the `url`).
    Joined([&'a str; 3], Cow<'a, str>),
}

impl Val<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::Raw(v) => push_encoded(out, v.as_bytes()),
            Val::Bytes(v) => push_encoded(out, v),
            Val::Encoded(v) => out.extend_from_slice(v.as_bytes()),
            Val::Number(n) => push_number(out, *n),
            Val::Joined(head, tail) => {
                for piece in head {
                    push_encoded(out, piece.as_bytes());
                }
                push_encoded(out, tail.as_bytes());
            }
        }
    }
}

/// The hit's parameters in order; setting a name again replaces its value in place.
struct Params<'a>(Vec<(Cow<'a, str>, Val<'a>)>);

impl<'a> Params<'a> {
    /// Adds a parameter that is known not to be set yet (the filter's own).
    fn push(&mut self, key: &'a str, value: Val<'a>) {
        self.0.push((key.into(), value));
    }

    fn set(&mut self, key: impl Into<Cow<'a, str>>, value: Val<'a>) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn raw(&mut self, key: &'a str, value: impl Into<Cow<'a, str>>) {
        self.set(key, Val::Raw(value.into()));
    }

    fn details(&mut self, details: &'a RouteDetails) {
        for (k, v) in &details.params {
            self.set(k.as_str(), Val::Encoded(v));
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for (key, value) in &self.0 {
            out.push(b'&');
            push_encoded(out, key.as_bytes());
            out.push(b'=');
            value.write(out);
        }
    }
}

impl HitTemplate {
    pub fn new(id_site: u64, mut options: HitOptions) -> Self {
        if options.assume_https {
            options.base_url = options.base_url.map(|b| match b.get(..7) {
                Some(s) if s.eq_ignore_ascii_case("http://") => {
                    format!("https://{}", b.get(7..).unwrap_or(""))
                }
                _ => b,
            });
        }
        HitTemplate {
            id_site,
            prefix: format!("?idsite={id_site}&rec=1&apiv=1"),
            cookie_prefix: format!("_pk_id.{id_site}."),
            options,
        }
    }

    pub fn id_site(&self) -> u64 {
        self.id_site
    }
    pub fn base_url(&self) -> Option<&str> {
        self.options.base_url.as_deref()
    }
    pub fn assume_https(&self) -> bool {
        self.options.assume_https
    }
    /// Hits carry `cip` only with a token: Matomo ignores it otherwise.
    pub fn with_client_ip(&self) -> bool {
        self.options.with_client_ip
    }
    pub fn route(&self, path: &str) -> Option<&RouteDetails> {
        self.options.routes.get(path)
    }

    /// The hit for one request: a query string with only URL-safe characters, ready to be put
    /// into a JSON string without escaping, stored at its own length; true when a value was
    /// cut to Matomo's limits (the request's own caps are in `req.truncated`).
    pub fn encode(&self, req: &RequestFacts, rand: u32) -> (String, bool) {
        let o = &self.options;
        let path_only = req.path_only();
        let mut p = Params(Vec::with_capacity(24));
        let mut truncated = false;

        // The filter's own.
        p.push("rand", Val::Number(rand.into()));
        let (url, cut_url) = self.url(req);
        truncated |= cut_url;
        p.push("url", url);
        let (name, cut_name) =
            truncate_cow(percent_decode_lossy(path_only), caps::MATOMO_TEXT, false);
        truncated |= cut_name;
        p.push("action_name", Val::Raw(name));
        for (key, value) in [("ua", &req.user_agent), ("lang", &req.accept_language)] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                p.push(key, Val::Raw(v.into()));
            }
        }
        if let Some(referer) = req.referer.as_deref().filter(|v| !v.is_empty()) {
            let (referer, cut_off) =
                truncate_cow(o.query_filter.apply(referer), caps::MATOMO_TEXT, true);
            truncated |= cut_off;
            p.push("urlref", Val::Raw(referer));
        }
        if let Some(ms) = req.server_time_ms {
            p.push("pf_srv", Val::Number(ms));
        }
        p.push("cdt", Val::Number(req.time_secs));

        // Identity.
        if let Some(id) = req.cookie.as_deref().and_then(|c| self.visitor_id(c)) {
            p.push("_id", Val::Raw(id.into()));
        }
        if let Some(uid) = req.uid.as_deref().filter(|v| !v.is_empty()) {
            p.push("uid", Val::Raw(uid.into()));
        }
        if let Some(cid) = req
            .cid
            .as_deref()
            .filter(|c| is_visitor_id(c))
            .or(o.cid.as_deref())
        {
            p.push("cid", Val::Raw(cid.into()));
        }
        for (n, value) in &req.dimensions {
            p.set(format!("dimension{n}"), Val::Raw(value.as_str().into()));
        }
        if o.bots {
            p.push("bots", Val::Encoded("1"));
        }

        // Config: the exact route, else the first action rule.
        let route = o.routes.get(path_only);
        let rule = match route {
            Some(_) => None,
            None => o.action_rules.find(cut(path_only, caps::RULES_PATH).0),
        };
        let details = route.or(rule.as_ref().map(|(_, d)| *d));
        if let Some((name, _)) = &rule {
            let (name, cut_off) = cut(name, caps::MATOMO_TEXT);
            truncated |= cut_off;
            p.raw("action_name", name);
        }
        if let Some(d) = details {
            p.details(d);
        }

        // The app's own, last.
        for (k, v) in &req.app.params {
            p.raw(k.as_str(), v.as_str());
        }

        p.set("cvar", Val::Bytes(self.cvar(req, details)));
        if o.with_client_ip {
            if let Some(ip) = &req.client_ip {
                p.raw("cip", ip.as_str());
            }
        }

        // Room for a typical hit: every byte of text escaped once in three. The text is
        // capped, and the hit is then given back what it did not use, so a queued hit holds
        // no spare capacity.
        let text = [&req.path, &req.authority]
            .into_iter()
            .chain(
                [&req.user_agent, &req.referer, &req.accept_language]
                    .into_iter()
                    .flatten(),
            )
            .map(String::len)
            .sum::<usize>();
        let mut out = Vec::with_capacity(192 + text.saturating_mul(2));
        out.extend_from_slice(self.prefix.as_bytes());
        p.write(&mut out);
        out.shrink_to_fit();
        // Only ASCII was written: this checks and keeps the buffer.
        let hit = String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (hit, truncated)
    }

    /// `scheme://authority/raw-path?query`, or `base_url` + raw path and query, cut to what
    /// Matomo keeps; true when cut.
    fn url<'a>(&'a self, req: &'a RequestFacts) -> (Val<'a>, bool) {
        let path = self.options.query_filter.apply(&req.path);
        let head: [&'a str; 3] = match &self.options.base_url {
            Some(base) => [base, "", ""],
            None => {
                let scheme = if self.options.assume_https {
                    "https"
                } else if req.scheme.is_empty() {
                    "http"
                } else {
                    &req.scheme
                };
                [scheme, "://", &req.authority]
            }
        };
        let room = caps::MATOMO_TEXT.saturating_sub(head.iter().map(|h| h.len()).sum());
        let (path, cut_off) = truncate_cow(path, room, true);
        (Val::Joined(head, path), cut_off)
    }

    /// Matomo's indexed custom variables: status and method first, then config's, then the app's.
    fn cvar(&self, req: &RequestFacts, details: Option<&RouteDetails>) -> Vec<u8> {
        let mut cvar = Vec::with_capacity(80);
        cvar.extend_from_slice(br#"{"1":["http_status_code",""#);
        push_number(&mut cvar, req.status.into());
        cvar.extend_from_slice(br#""],"2":["http_method","#);
        push_json(&mut cvar, &req.method);
        cvar.push(b']');
        let extra = details
            .map_or(&[][..], |d| &d.cvar[..])
            .iter()
            .chain(&req.app.cvar);
        for (i, (name, value)) in (3u64..).zip(extra) {
            cvar.extend_from_slice(b",\"");
            push_number(&mut cvar, i);
            cvar.extend_from_slice(b"\":[");
            push_json(&mut cvar, name);
            cvar.push(b',');
            push_json(&mut cvar, value);
            cvar.push(b']');
        }
        cvar.push(b'}');
        cvar
    }

    /// The visitor id of Matomo's JavaScript tracker cookie (`_pk_id.<idsite>.<hash>=<id>.<ts>.`).
    fn visitor_id<'c>(&self, cookie: &'c str) -> Option<&'c str> {
        cookie.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            if !name.starts_with(&self.cookie_prefix) {
                return None;
            }
            value.get(..16).filter(|id| is_visitor_id(id))
        })
    }
}

/// Matomo visitor ids (`_id`, `cid`) are 16 hexadecimal characters.
pub fn is_visitor_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A JSON string literal (writing to a `Vec` cannot fail).
fn push_json(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(out, s);
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
            ..Default::default()
        }
    }

    fn with(options: HitOptions) -> HitTemplate {
        HitTemplate::new(3, options)
    }

    fn template(with_client_ip: bool) -> HitTemplate {
        with(HitOptions {
            with_client_ip,
            ..Default::default()
        })
    }

    fn object(json: &str) -> serde_json::Map<String, Value> {
        let Value::Object(m) = serde_json::from_str(json).unwrap() else {
            unreachable!()
        };
        m
    }

    fn route(json: &str) -> RouteDetails {
        RouteDetails::new("routes_details./r", object(json)).unwrap()
    }

    fn routes(path: &str, details: RouteDetails) -> HashMap<String, RouteDetails> {
        HashMap::from([(path.to_string(), details)])
    }

    #[test]
    fn a_hit_carries_every_field() {
        let hit = template(true).encode(&req(), 77).0;
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
        let hit = template(true).encode(&r, 1).0;
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
        let p = decode(&template(false).encode(&req(), 1).0);
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
        let p = decode(&template(false).encode(&r, 1).0);
        for key in ["ua", "lang", "urlref", "pf_srv"] {
            assert!(!p.contains_key(key), "{key}");
        }
        assert!(p["cvar"].contains(r#"["http_status_code","0"]"#));
    }

    #[test]
    fn assume_https_forces_the_scheme() {
        let t = with(HitOptions {
            assume_https: true,
            ..Default::default()
        });
        let p = decode(&t.encode(&req(), 1).0);
        assert!(p["url"].starts_with("https://shop.example:10000/"));
        let mut r = req();
        r.scheme = "https".into();
        let p = decode(&template(false).encode(&r, 1).0);
        assert!(p["url"].starts_with("https://"));
    }

    #[test]
    fn base_url_replaces_scheme_and_authority() {
        let t = with(HitOptions {
            base_url: Some("http://www.example/app".into()),
            ..Default::default()
        });
        let p = decode(&t.encode(&req(), 1).0);
        assert_eq!(p["url"], "http://www.example/app/users/a%20b?q=x%26y&z=1");
        let t = with(HitOptions {
            base_url: Some("http://www.example".into()),
            assume_https: true,
            ..Default::default()
        });
        let p = decode(&t.encode(&req(), 1).0);
        assert_eq!(p["url"], "https://www.example/users/a%20b?q=x%26y&z=1");
    }

    #[test]
    fn routes_details_override_and_add_params() {
        let details = route(r#"{"action_name":"Users","e_a":"listing","e_v":3,"ua":"x"}"#);
        let t = with(HitOptions {
            routes: routes("/users/a%20b", details),
            ..Default::default()
        });
        let p = decode(&t.encode(&req(), 1).0);
        assert_eq!(p["action_name"], "Users");
        assert_eq!(p["e_a"], "listing");
        assert_eq!(p["e_v"], "3");
        assert_eq!(p["ua"], "x");
        let mut other = req();
        other.path = "/other".into();
        let p = decode(&t.encode(&other, 1).0);
        assert_eq!(p["action_name"], "/other");
        assert!(!p.contains_key("e_a"));
    }

    #[test]
    fn routes_details_cvar_is_indexed_after_status_and_method() {
        let details = route(r#"{"cvar":{"team":"web","tier":2}}"#);
        let t = with(HitOptions {
            routes: routes("/users/a%20b", details),
            ..Default::default()
        });
        let p = decode(&t.encode(&req(), 1).0);
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
            let e = RouteDetails::new("routes_details./r", object(json)).unwrap_err();
            assert!(e.key.starts_with("routes_details./r."), "{json}: {e:?}");
        }
    }

    #[test]
    fn identity_comes_from_cookie_headers_and_config() {
        let mut r = req();
        r.cookie = Some(
            "a=1; _pk_id.3.1fff=0123456789abcdef.1700000000.; _pk_id.4.1=ffffffffffffffff.1".into(),
        );
        r.uid = Some("alice@example.com".into());
        r.cid = Some("fedcba9876543210".into());
        r.dimensions = vec![(2, "tenant-a".into()), (5, "v2".into())];
        let t = with(HitOptions {
            cid: Some("0000000000000001".into()),
            bots: true,
            ..Default::default()
        });
        let p = decode(&t.encode(&r, 1).0);
        assert_eq!(p["_id"], "0123456789abcdef", "the cookie of this site only");
        assert_eq!(p["uid"], "alice@example.com");
        assert_eq!(
            p["cid"], "fedcba9876543210",
            "the header wins over the fixed cid"
        );
        assert_eq!(p["dimension2"], "tenant-a");
        assert_eq!(p["dimension5"], "v2");
        assert_eq!(p["bots"], "1");

        r.cid = Some("not-a-visitor-id".into());
        r.cookie = Some("_pk_id.3.1fff=short.1".into());
        let p = decode(&t.encode(&r, 1).0);
        assert_eq!(p["cid"], "0000000000000001");
        assert!(!p.contains_key("_id"));
        let p = decode(&template(false).encode(&req(), 1).0);
        for key in ["_id", "uid", "cid", "bots"] {
            assert!(!p.contains_key(key), "{key}");
        }
    }

    #[test]
    fn the_app_overrides_config_which_overrides_the_filter() {
        let mut r = req();
        r.path = "/users/7?x=1".into();
        r.dimensions = vec![(1, "from-header".into())];
        r.app.add("e-a", "app-action");
        r.app.add("dimension1", "from-app");
        r.app.add("pf-srv", "5");
        r.app.add("cvar", r#"{"app":"yes"}"#);
        let details = route(r#"{"e_a":"route-action","e_c":"route-cat","cvar":{"route":"yes"}}"#);
        let t = with(HitOptions {
            routes: routes("/users/7", details),
            ..Default::default()
        });
        let hit = t.encode(&r, 1).0;
        let p = decode(&hit);
        assert_eq!(p["e_a"], "app-action");
        assert_eq!(p["e_c"], "route-cat");
        assert_eq!(p["dimension1"], "from-app");
        assert_eq!(p["pf_srv"], "5");
        assert_eq!(hit.matches("&e_a=").count(), 1, "{hit}");
        let cvar: Value = serde_json::from_str(&p["cvar"]).unwrap();
        assert_eq!(cvar["3"], serde_json::json!(["route", "yes"]));
        assert_eq!(cvar["4"], serde_json::json!(["app", "yes"]));
    }

    #[test]
    fn action_rules_name_paths_unless_an_exact_route_does() {
        let rules = ActionRules::new(
            serde_json::from_str(
                r#"[{"pattern":"/users/(\\d+)/orders","action_name":"Users / orders","params":{"e_c":"orders"}}]"#,
            )
            .unwrap(),
        )
        .unwrap();
        let t = with(HitOptions {
            action_rules: rules,
            routes: routes("/users/1/orders", route(r#"{"action_name":"Exact"}"#)),
            ..Default::default()
        });
        let mut r = req();
        r.path = "/users/42/orders?page=3".into();
        let p = decode(&t.encode(&r, 1).0);
        assert_eq!(p["action_name"], "Users / orders");
        assert_eq!(p["e_c"], "orders");
        r.path = "/users/1/orders".into();
        let p = decode(&t.encode(&r, 1).0);
        assert_eq!(p["action_name"], "Exact");
        assert!(!p.contains_key("e_c"));
        r.app.add("action-name", "From app");
        assert_eq!(decode(&t.encode(&r, 1).0)["action_name"], "From app");
    }

    #[test]
    fn query_privacy_applies_to_url_and_urlref() {
        let mut r = req();
        r.path = "/reset?token=abc&email=a%40b.c&step=2".into();
        r.referer = Some("https://mail.example/?email=a%40b.c&x=1".into());
        let t = with(HitOptions {
            query_filter: QueryFilter::Strip(vec!["token".into(), "email".into()]),
            ..Default::default()
        });
        let p = decode(&t.encode(&r, 1).0);
        assert_eq!(p["url"], "http://shop.example:10000/reset?step=2");
        assert_eq!(p["urlref"], "https://mail.example/?x=1");
        assert_eq!(p["action_name"], "/reset");
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
