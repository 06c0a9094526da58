//! One request becomes one Matomo tracking query string (`?idsite=…&rec=1&…`), the form Matomo's
//! bulk API takes in `requests`. Everything constant is built at configure time.
//!
//! Parameters come from four sources, later ones overriding earlier ones: the filter's own
//! (url, action_name, ua, …), identity (uid, _id, cid, dimensions from request headers), the
//! exact `routes_details` entry or else the first matching action rule, and last the app's own
//! response headers. Each parameter is sent once.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::actions::ActionRules;
use crate::caps;
use crate::classify::{Kind, KindOptions};
use crate::details::RouteDetails;
use crate::identity::VisitorKey;
use crate::privacy::QueryFilter;
use crate::request::RequestFacts;
use crate::text::{
    cut, encode_uri_component, percent_decode_lossy, push_encoded, push_number, truncate_cow,
};

/// What the config says about a request's name and params (see [`HitTemplate::naming`]).
#[derive(Default)]
pub struct Naming<'a> {
    pub details: Option<&'a RouteDetails>,
    pub rule_name: Option<String>,
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
    /// What responses become (classify.rs).
    pub kinds: KindOptions,
    pub api_event_category: String,
    /// Action-scope custom dimensions that get the status and the method.
    pub status_dimension: Option<u16>,
    pub method_dimension: Option<u16>,
    /// Status and method as custom variables 1 and 2 (a plugin a default Matomo 4+ lacks).
    pub status_and_method_custom_variables: bool,
    /// Without a token: the key of the daily visitor id (identity.rs).
    pub visitor_key: Option<VisitorKey>,
    /// Take the JavaScript tracker's visitor id from its `_pk_id` cookie.
    pub read_visitor_cookie: bool,
    /// Whose cookie: the JavaScript tracker's site, when not this one.
    pub visitor_cookie_site: Option<u64>,
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
#[derive(Clone)]
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

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
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
            cookie_prefix: format!("_pk_id.{}.", options.visitor_cookie_site.unwrap_or(id_site)),
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
    /// Hits carry the JavaScript tracker's visitor id, from its cookie.
    pub fn reads_cookie(&self) -> bool {
        self.options.read_visitor_cookie
    }
    /// Hits carry `cip` only with a token: Matomo ignores it otherwise.
    pub fn with_client_ip(&self) -> bool {
        self.options.with_client_ip
    }
    pub fn route(&self, path: &str) -> Option<&RouteDetails> {
        self.options.routes.get(path)
    }

    /// The exact `routes_details` entry for a path (no query), else the first action rule
    /// matching it, with the rule's expanded action name. Found once per request: the tracker
    /// reads its `track_as`, the encoder its name and params.
    pub fn naming<'a>(&'a self, path_only: &str) -> Naming<'a> {
        match self.options.routes.get(path_only) {
            Some(route) => Naming {
                details: Some(route),
                rule_name: None,
            },
            None => match self
                .options
                .action_rules
                .find(cut(path_only, caps::RULES_PATH).0)
            {
                Some((name, details)) => Naming {
                    details: Some(details),
                    rule_name: Some(name),
                },
                None => Naming::default(),
            },
        }
    }

    pub fn kinds(&self) -> &KindOptions {
        &self.options.kinds
    }

    /// The hit for one request, as `kind`: a query string with only URL-safe characters, ready
    /// to be put into a JSON string without escaping, stored at its own length; true when a
    /// value was cut to Matomo's limits (the request's own caps are in `req.truncated`).
    pub fn encode(
        &self,
        req: &RequestFacts,
        kind: Kind,
        naming: &Naming,
        rand: u32,
    ) -> (String, bool) {
        let o = &self.options;
        let path_only = req.path_only();
        let mut p = Params(Vec::with_capacity(24));
        let mut truncated = false;
        let (details, rule_name) = (naming.details, &naming.rule_name);

        // The filter's own.
        p.push("rand", Val::Number(rand.into()));
        let (url, cut_url) = self.url(req);
        truncated |= cut_url;
        if kind == Kind::Download {
            p.push("download", url.clone());
        }
        p.push("url", url);
        // The action's name: the app's, else the config's, else the decoded path.
        let name = match (
            req.app.get("action_name"),
            details.and_then(|d| d.name()),
            &rule_name,
        ) {
            (Some(app), _, _) => Cow::Borrowed(app),
            (None, Some(configured), _) => Cow::Owned(configured),
            (None, None, Some(rule)) => Cow::Borrowed(rule.as_str()),
            (None, None, None) => percent_decode_lossy(path_only),
        };
        let (name, cut_name) = truncate_cow(name, caps::MATOMO_TEXT, false);
        truncated |= cut_name;
        match kind {
            Kind::Pageview => p.push("action_name", Val::Raw(name)),
            Kind::ErrorPage => {
                let (title, cut_title) = self.error_title(req);
                truncated |= cut_title;
                p.push("action_name", Val::Raw(title.into()));
            }
            Kind::Event => {
                p.push("e_c", Val::Raw(o.api_event_category.as_str().into()));
                let action = if req.status >= 400 {
                    format!("{} {}", req.method, req.status)
                } else {
                    req.method.clone()
                };
                p.push("e_a", Val::Raw(action.into()));
                p.push("e_n", Val::Raw(name));
            }
            Kind::Download | Kind::Ignore(_) => {}
        }
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
        let cookie_id = match (o.read_visitor_cookie, req.cookie.as_deref()) {
            (true, Some(cookie)) => self.visitor_id(cookie),
            _ => None,
        };
        if let Some(id) = cookie_id {
            p.push("_id", Val::Raw(id.into()));
        }
        if let Some(uid) = req.uid.as_deref().filter(|v| !v.is_empty()) {
            p.push("uid", Val::Raw(uid.into()));
        }
        let given_cid = req
            .cid
            .as_deref()
            .filter(|c| is_visitor_id(c))
            .or(o.cid.as_deref());
        match (given_cid, &o.visitor_key, &req.client_ip) {
            (Some(cid), _, _) => p.push("cid", Val::Raw(cid.into())),
            // The browser's own id, when read, joins the proxy's hits to its visits.
            (None, Some(key), Some(ip)) if cookie_id.is_none() => {
                let ua = req.user_agent.as_deref().unwrap_or_default();
                let lang = req.accept_language.as_deref().unwrap_or_default();
                let id = key.visitor_id(req.time_secs, ip, ua, lang, self.id_site);
                p.push("cid", Val::Raw(id.into()));
            }
            _ => {}
        }
        for (n, value) in &req.dimensions {
            p.set(format!("dimension{n}"), Val::Raw(value.as_str().into()));
        }
        if let Some(n) = o.status_dimension {
            p.set(format!("dimension{n}"), Val::Number(req.status.into()));
        }
        if let Some(n) = o.method_dimension {
            p.set(
                format!("dimension{n}"),
                Val::Raw(req.method.as_str().into()),
            );
        }
        if o.bots {
            p.push("bots", Val::Encoded("1"));
        }

        // Config: the exact route, else the first action rule; then the app's own, last.
        if let Some(d) = details {
            p.details(d);
        }
        for (k, v) in &req.app.params {
            p.raw(k.as_str(), v.as_str());
        }
        // A name set above belongs in e_n for an event, and nowhere for a download.
        if kind != Kind::Pageview {
            p.remove("action_name");
            if kind == Kind::ErrorPage {
                let (title, _) = self.error_title(req);
                p.push("action_name", Val::Raw(title.into()));
            }
        }

        let cvar = self.cvar(req, details);
        if !cvar.is_empty() {
            p.set("cvar", Val::Bytes(cvar));
        }
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

    /// Matomo's title for an error page, as its FAQ has the JavaScript tracker set it:
    /// `404/URL = <path and query>/From = <referrer>`, both `encodeURIComponent`-encoded, so
    /// the page titles group by status. Cut to what Matomo keeps; true when cut.
    fn error_title(&self, req: &RequestFacts) -> (String, bool) {
        let mut title = format!("{}/URL = ", req.status);
        title.push_str(&encode_uri_component(
            &self.options.query_filter.apply(&req.path),
        ));
        title.push_str("/From = ");
        let referer = req.referer.as_deref().unwrap_or_default();
        title.push_str(&encode_uri_component(
            &self.options.query_filter.apply(referer),
        ));
        let cut_off = crate::text::truncate(&mut title, caps::MATOMO_TEXT, true);
        (title, cut_off)
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

    /// Matomo's indexed custom variables (its CustomVariables plugin, which a default Matomo 4+
    /// lacks): status and method first when asked, then config's, then the app's. Empty when
    /// there are none.
    fn cvar(&self, req: &RequestFacts, details: Option<&RouteDetails>) -> Vec<u8> {
        let status = req.status.to_string();
        let own = [
            ("http_status_code", status.as_str()),
            ("http_method", &req.method),
        ];
        let own = own
            .iter()
            .take(if self.options.status_and_method_custom_variables {
                2
            } else {
                0
            });
        let extra = details
            .map_or(&[][..], |d| &d.cvar[..])
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(req.app.cvar.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let mut cvar = Vec::with_capacity(80);
        for (i, (name, value)) in (1u64..).zip(own.copied().chain(extra)) {
            cvar.push(if i == 1 { b'{' } else { b',' });
            cvar.push(b'"');
            push_number(&mut cvar, i);
            cvar.extend_from_slice(b"\":[");
            push_json(&mut cvar, name);
            cvar.push(b',');
            push_json(&mut cvar, value);
            cvar.push(b']');
        }
        if !cvar.is_empty() {
            cvar.push(b'}');
        }
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
    use serde_json::Value;
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

    impl HitTemplate {
        /// The hit as a pageview, named as the config says.
        fn page(&self, req: &RequestFacts, rand: u32) -> (String, bool) {
            self.encode(req, Kind::Pageview, &self.naming(req.path_only()), rand)
        }

        fn as_kind(&self, req: &RequestFacts, kind: Kind) -> BTreeMap<String, String> {
            decode(&self.encode(req, kind, &self.naming(req.path_only()), 1).0)
        }
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
        let hit = template(true).page(&req(), 77).0;
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
        assert!(
            !p.contains_key("cvar"),
            "a default Matomo 4+ has no custom variables"
        );
        assert_eq!(p["cdt"], "1700000000");
        assert_eq!(p["cip"], "203.0.113.9");
        assert!(!p.contains_key("token_auth"));
    }

    #[test]
    fn status_and_method_go_to_dimensions_or_custom_variables_when_asked() {
        let t = with(HitOptions {
            status_dimension: Some(4),
            method_dimension: Some(5),
            status_and_method_custom_variables: true,
            ..Default::default()
        });
        let mut r = req();
        r.status = 404;
        r.method = "POST".into();
        let p = decode(&t.page(&r, 1).0);
        assert_eq!(
            (p["dimension4"].as_str(), p["dimension5"].as_str()),
            ("404", "POST")
        );
        assert_eq!(
            p["cvar"],
            r#"{"1":["http_status_code","404"],"2":["http_method","POST"]}"#
        );
    }

    #[test]
    fn hits_use_only_url_and_json_safe_characters() {
        let mut r = req();
        r.user_agent = Some("\"quoted\" \\ <tag> \u{fffd} \n".into());
        r.method = "G\"ET".into();
        let t = with(HitOptions {
            status_and_method_custom_variables: true,
            ..Default::default()
        });
        let hit = t.page(&r, 1).0;
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
        let p = decode(&template(false).page(&req(), 1).0);
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
        let p = decode(&template(false).page(&r, 1).0);
        for key in ["ua", "lang", "urlref", "pf_srv", "cvar"] {
            assert!(!p.contains_key(key), "{key}");
        }
    }

    #[test]
    fn assume_https_forces_the_scheme() {
        let t = with(HitOptions {
            assume_https: true,
            ..Default::default()
        });
        let p = decode(&t.page(&req(), 1).0);
        assert!(p["url"].starts_with("https://shop.example:10000/"));
        let mut r = req();
        r.scheme = "https".into();
        let p = decode(&template(false).page(&r, 1).0);
        assert!(p["url"].starts_with("https://"));
    }

    #[test]
    fn base_url_replaces_scheme_and_authority() {
        let t = with(HitOptions {
            base_url: Some("http://www.example/app".into()),
            ..Default::default()
        });
        let p = decode(&t.page(&req(), 1).0);
        assert_eq!(p["url"], "http://www.example/app/users/a%20b?q=x%26y&z=1");
        let t = with(HitOptions {
            base_url: Some("http://www.example".into()),
            assume_https: true,
            ..Default::default()
        });
        let p = decode(&t.page(&req(), 1).0);
        assert_eq!(p["url"], "https://www.example/users/a%20b?q=x%26y&z=1");
    }

    #[test]
    fn routes_details_override_and_add_params() {
        let details = route(r#"{"action_name":"Users","e_a":"listing","e_v":3,"ua":"x"}"#);
        let t = with(HitOptions {
            routes: routes("/users/a%20b", details),
            ..Default::default()
        });
        let p = decode(&t.page(&req(), 1).0);
        assert_eq!(p["action_name"], "Users");
        assert_eq!(p["e_a"], "listing");
        assert_eq!(p["e_v"], "3");
        assert_eq!(p["ua"], "x");
        let mut other = req();
        other.path = "/other".into();
        let p = decode(&t.page(&other, 1).0);
        assert_eq!(p["action_name"], "/other");
        assert!(!p.contains_key("e_a"));
    }

    #[test]
    fn routes_details_cvar_is_indexed_after_status_and_method() {
        let details = route(r#"{"cvar":{"team":"web","tier":2}}"#);
        let t = with(HitOptions {
            routes: routes("/users/a%20b", details.clone()),
            status_and_method_custom_variables: true,
            ..Default::default()
        });
        let p = decode(&t.page(&req(), 1).0);
        let cvar: Value = serde_json::from_str(&p["cvar"]).unwrap();
        assert_eq!(
            cvar,
            serde_json::json!({"1":["http_status_code","200"],"2":["http_method","GET"],
                               "3":["team","web"],"4":["tier","2"]})
        );
        let t = with(HitOptions {
            routes: routes("/users/a%20b", details),
            ..Default::default()
        });
        let cvar: Value = serde_json::from_str(&decode(&t.page(&req(), 1).0)["cvar"]).unwrap();
        assert_eq!(
            cvar,
            serde_json::json!({"1":["team","web"],"2":["tier","2"]})
        );
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
            read_visitor_cookie: true,
            ..Default::default()
        });
        let p = decode(&t.page(&r, 1).0);
        assert_eq!(p["_id"], "0123456789abcdef", "the cookie of this site only");
        let not_asked = decode(&template(false).page(&r, 1).0);
        assert!(
            !not_asked.contains_key("_id"),
            "the cookie is read only when asked"
        );
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
        let p = decode(&t.page(&r, 1).0);
        assert_eq!(p["cid"], "0000000000000001");
        assert!(!p.contains_key("_id"));
        let p = decode(&template(false).page(&req(), 1).0);
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
        let hit = t.page(&r, 1).0;
        let p = decode(&hit);
        assert_eq!(p["e_a"], "app-action");
        assert_eq!(p["e_c"], "route-cat");
        assert_eq!(p["dimension1"], "from-app");
        assert_eq!(p["pf_srv"], "5");
        assert_eq!(hit.matches("&e_a=").count(), 1, "{hit}");
        let cvar: Value = serde_json::from_str(&p["cvar"]).unwrap();
        assert_eq!(cvar["1"], serde_json::json!(["route", "yes"]));
        assert_eq!(cvar["2"], serde_json::json!(["app", "yes"]));
    }

    #[test]
    fn events_downloads_and_error_pages_carry_matomo_s_own_fields() {
        let t = with(HitOptions {
            api_event_category: "API".into(),
            routes: routes("/api/cart", route(r#"{"action_name":"Cart"}"#)),
            ..Default::default()
        });
        let mut r = req();
        r.path = "/api/cart?id=7".into();
        r.method = "POST".into();
        r.status = 422;
        let p = t.as_kind(&r, Kind::Event);
        assert_eq!(
            (p["e_c"].as_str(), p["e_a"].as_str(), p["e_n"].as_str()),
            ("API", "POST 422", "Cart")
        );
        assert!(!p.contains_key("action_name"));
        r.status = 200;
        assert_eq!(t.as_kind(&r, Kind::Event)["e_a"], "POST");

        let mut r = req();
        r.path = "/files/a%20b.pdf".into();
        let p = t.as_kind(&r, Kind::Download);
        assert_eq!(p["download"], "http://shop.example:10000/files/a%20b.pdf");
        assert_eq!(p["url"], p["download"]);
        assert!(!p.contains_key("action_name") && !p.contains_key("e_c"));

        let mut r = req();
        r.path = "/gone/x?y=1".into();
        r.status = 404;
        r.referer = Some("https://shop.example/list".into());
        let p = t.as_kind(&r, Kind::ErrorPage);
        assert_eq!(
            p["action_name"],
            "404/URL = %2Fgone%2Fx%3Fy%3D1/From = https%3A%2F%2Fshop.example%2Flist"
        );
        r.referer = None;
        assert_eq!(
            t.as_kind(&r, Kind::ErrorPage)["action_name"],
            "404/URL = %2Fgone%2Fx%3Fy%3D1/From = "
        );
    }

    #[test]
    fn without_a_token_people_get_a_daily_visitor_id_of_their_own() {
        let t = with(HitOptions {
            visitor_key: Some(VisitorKey::derive(b"a secret of sixteen")),
            ..Default::default()
        });
        let alice = decode(&t.page(&req(), 1).0);
        let mut other = req();
        other.client_ip = Some("198.51.100.1".into());
        let bob = decode(&t.page(&other, 1).0);
        assert_eq!(alice["cid"].len(), 16);
        assert_ne!(alice["cid"], bob["cid"]);
        let mut again = req();
        again.path = "/elsewhere".into();
        assert_eq!(decode(&t.page(&again, 1).0)["cid"], alice["cid"]);
        // A browser id read from the cookie is the visitor, when asked for.
        let t = with(HitOptions {
            visitor_key: Some(VisitorKey::derive(b"a secret of sixteen")),
            read_visitor_cookie: true,
            ..Default::default()
        });
        let mut r = req();
        r.cookie = Some("_pk_id.3.1=0123456789abcdef.1".into());
        let p = decode(&t.page(&r, 1).0);
        assert_eq!(
            (p["_id"].as_str(), p.get("cid")),
            ("0123456789abcdef", None)
        );
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
        let p = decode(&t.page(&r, 1).0);
        assert_eq!(p["action_name"], "Users / orders");
        assert_eq!(p["e_c"], "orders");
        r.path = "/users/1/orders".into();
        let p = decode(&t.page(&r, 1).0);
        assert_eq!(p["action_name"], "Exact");
        assert!(!p.contains_key("e_c"));
        r.app.add("action-name", "From app");
        assert_eq!(decode(&t.page(&r, 1).0)["action_name"], "From app");
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
        let p = decode(&t.page(&r, 1).0);
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
