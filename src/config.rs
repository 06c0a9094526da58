//! The plugin JSON: parsed once per VM in `on_configure`, validated, and compiled into the
//! [`Settings`] the rest of the filter reads. Every error names the offending key, because the
//! one log line Envoy prints is all an operator gets when a config is refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::actions::{ActionRules, RawActionRule};
use crate::classify::{ApiAs, KindOptions};
use crate::details::RouteDetails;
use crate::error::ConfigError;
use crate::hit::{is_visitor_id, HitOptions, HitTemplate};
use crate::identity::VisitorKey;
use crate::privacy::{is_campaign_param, QueryFilter};
use crate::rules::Rules;
use crate::sites::{HostPattern, Scope, Sites};

/// Configuration as written by the user. Option names of flask-matomo2 are the keys,
/// asgi-matomo's are aliases, so either middleware's config moves to the proxy unchanged.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    matomo_url: String,
    /// The site of requests no `sites` entry takes; without it, those are not tracked.
    #[serde(default, alias = "idsite")]
    id_site: Option<SiteId>,
    /// One gateway, many sites (sites.rs): entries checked in `Settings::from_json`.
    #[serde(default)]
    sites: Vec<Value>,
    #[serde(default = "default_cluster")]
    matomo_cluster: String,
    #[serde(default, alias = "access_token")]
    token_auth: Option<String>,
    /// Name of a VM environment variable holding the token (Envoy
    /// `vm_config.environment_variables`, Istio `vmConfig.env`), so it can live in a Secret.
    #[serde(default)]
    token_auth_env: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    assume_https: bool,
    #[serde(default = "default_http_timeout")]
    http_timeout: Seconds,
    #[serde(default, alias = "route_details")]
    routes_details: BTreeMap<String, serde_json::Map<String, Value>>,
    #[serde(default, alias = "exclude_paths")]
    ignored_routes: Vec<String>,
    #[serde(default, alias = "exclude_patterns")]
    ignored_patterns: Vec<String>,
    #[serde(default)]
    ignored_ua_patterns: Vec<String>,
    #[serde(default)]
    allowed_methods: Vec<String>,
    #[serde(default)]
    ignored_methods: Vec<String>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_max_batch_bytes")]
    max_batch_bytes: usize,
    #[serde(default = "default_concurrent_calls")]
    concurrent_calls: usize,
    #[serde(default = "default_flush_interval")]
    flush_interval: Seconds,
    #[serde(default = "default_queue_size")]
    queue_size: usize,
    #[serde(default = "default_queue_bytes")]
    queue_bytes: usize,
    #[serde(default = "default_retry_window")]
    retry_window: Seconds,
    #[serde(default = "default_response_header_prefix")]
    response_header_prefix: String,
    /// What the filter's stats are named under (`wasmcustom.<prefix>.hits_sent`): two instances
    /// of the filter in one Envoy keep their counters apart with two prefixes.
    #[serde(default = "default_metrics_prefix")]
    metrics_prefix: String,
    #[serde(default)]
    uid_header: Option<String>,
    #[serde(default)]
    cid: Option<String>,
    #[serde(default)]
    cid_header: Option<String>,
    #[serde(default)]
    bots: bool,
    /// Every tracked request a pageview, as the seed middlewares did.
    #[serde(default)]
    every_request_a_pageview: bool,
    #[serde(default)]
    api_requests_as: ApiRequestsAs,
    #[serde(default)]
    track_api_reads: bool,
    /// Requests of known health checkers (kube-probe, GoogleHC, Envoy/HC, …) are not visits.
    #[serde(default = "yes")]
    ignore_health_checkers: bool,
    /// The site whose `_pk_id` cookie `read_visitor_cookie` reads: the JavaScript tracker's,
    /// when the proxy tracks into a site of its own.
    #[serde(default)]
    visitor_cookie_site: Option<SiteId>,
    #[serde(default = "default_api_event_category")]
    api_event_category: String,
    #[serde(default = "yes")]
    track_downloads: bool,
    #[serde(default)]
    assets_as_downloads: bool,
    #[serde(default = "yes")]
    error_page_titles: bool,
    #[serde(default)]
    status_dimension: Option<Dimension>,
    #[serde(default)]
    method_dimension: Option<Dimension>,
    #[serde(default)]
    status_and_method_custom_variables: bool,
    /// Without a token, hits carry a daily visitor id keyed with this secret.
    #[serde(default)]
    visitor_id_secret: Option<String>,
    #[serde(default)]
    visitor_id_secret_env: Option<String>,
    /// Take the visitor id of Matomo's JavaScript tracker from its `_pk_id` cookie.
    #[serde(default)]
    read_visitor_cookie: bool,
    /// Also track requests the app never answered: local replies of Envoy itself or of a
    /// filter in front (RBAC, rate limits, jwt_authn, ext_authz), and requests left unanswered.
    #[serde(default)]
    track_local_replies: bool,
    #[serde(default)]
    action_rules: Vec<RawActionRule>,
    #[serde(default)]
    strip_query_params: Vec<String>,
    #[serde(default)]
    keep_query_params: Option<Vec<String>>,
    #[serde(default)]
    dimension_headers: BTreeMap<String, Dimension>,
}

/// What an API or data response becomes (see classify.rs).
#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum ApiRequestsAs {
    #[default]
    Event,
    Pageview,
    Ignore,
}

fn yes() -> bool {
    true
}
fn default_api_event_category() -> String {
    "API".to_owned()
}
fn default_cluster() -> String {
    "matomo".to_owned()
}
/// 30 s: a bulk call of a few hundred hits takes a busy Matomo seconds, and a call that times
/// out is sent again, which Matomo may record twice. Nothing waits on it but its lane.
fn default_http_timeout() -> Seconds {
    Seconds(30.0)
}
/// 200 hits make about 5 calls per 1000 hits under load, bodies of 100–200 KB, and a call a
/// real Matomo finishes within seconds (make bench; README).
fn default_batch_size() -> usize {
    200
}
/// 512 KiB: half of nginx's default `client_max_body_size` (1 MiB), far below PHP's
/// `post_max_size` (8 MiB); about 2,000 typical hits, or 50 of the largest.
fn default_max_batch_bytes() -> usize {
    512 << 10
}
/// Bulk calls in flight at once, one per lane (see lanes.rs).
fn default_concurrent_calls() -> usize {
    4
}
fn default_flush_interval() -> Seconds {
    Seconds(1.0)
}
fn default_queue_size() -> usize {
    10_000
}
/// 4 MiB: about 8,000 typical hits, or 400 of the largest the caps allow.
fn default_queue_bytes() -> usize {
    4 << 20
}
fn default_retry_window() -> Seconds {
    Seconds(60.0)
}
fn default_metrics_prefix() -> String {
    "matomo".to_owned()
}
fn default_response_header_prefix() -> String {
    "x-matomo-".to_owned()
}

/// Largest batch Matomo's bulk endpoint is asked to take in one call.
pub const MAX_BATCH_SIZE: usize = 1_000;

/// Everything the filter needs, validated and precompiled.
pub struct Settings {
    pub tracker: Tracker,
    pub matomo_cluster: String,
    pub http_timeout: Duration,
    pub batch: BatchSettings,
    /// The Matomo sites this config tracks, by host and path.
    pub sites: Sites<Site>,
    /// The sites' distinct tokens (`None`: no token). Hits of sites that share a token share
    /// bulk calls; each token has its own.
    pub tokens: Vec<Option<Secret>>,
    pub headers: HeaderSources,
    pub track_local_replies: bool,
    pub metrics_prefix: String,
    /// Accepted but doubtful choices, logged once at start.
    pub warnings: Vec<String>,
    /// A hash of the plugin JSON: the VMs of one Envoy that share it share one queue of hits.
    pub fingerprint: u64,
}

/// One Matomo site: how requests for it are judged and what their hits say.
pub struct Site {
    pub hits: HitTemplate,
    pub rules: Rules,
    /// Its token's index in [`Settings::tokens`].
    pub token: usize,
}

/// What one compiled JSON object gives: the settings every site shares, and the site of its
/// own `id_site` with its token.
struct Compiled {
    settings: Settings,
    site: Option<(HitTemplate, Rules, Option<Secret>)>,
}

/// Keys a `sites` entry takes: where it applies, its site and token, and what people
/// plausibly set per site. The rest of the config is shared.
const SITE_KEYS: [&str; 30] = [
    "hosts",
    "path_prefix",
    "id_site",
    "token_auth",
    "token_auth_env",
    "base_url",
    "assume_https",
    "routes_details",
    "ignored_routes",
    "ignored_patterns",
    "ignored_ua_patterns",
    "allowed_methods",
    "ignored_methods",
    "action_rules",
    "strip_query_params",
    "keep_query_params",
    "bots",
    "every_request_a_pageview",
    "api_requests_as",
    "track_api_reads",
    "ignore_health_checkers",
    "visitor_cookie_site",
    "read_visitor_cookie",
    "api_event_category",
    "track_downloads",
    "assets_as_downloads",
    "error_page_titles",
    "status_dimension",
    "method_dimension",
    "status_and_method_custom_variables",
];

/// asgi-matomo's names, read as flask-matomo2's, so a site entry overrides either.
const ALIASES: [(&str, &str); 5] = [
    ("idsite", "id_site"),
    ("access_token", "token_auth"),
    ("route_details", "routes_details"),
    ("exclude_paths", "ignored_routes"),
    ("exclude_patterns", "ignored_patterns"),
];

/// Which headers the host glue reads for a hit, besides the fixed ones. Names are lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSources {
    /// Response headers starting with this set the app's tracking params; none when empty.
    pub response_prefix: String,
    pub uid: Option<String>,
    pub cid: Option<String>,
    /// (request header, custom dimension N)
    pub dimensions: Vec<(String, u16)>,
    /// Some site reads the JavaScript tracker's cookie (`read_visitor_cookie`).
    pub cookie: bool,
}

/// Where hits go: the `:authority` and `:path` of bulk calls to Matomo, and the path of its
/// API beside the tracker (for the start-up check of site and token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub authority: String,
    pub path: String,
    pub api_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSettings {
    pub batch_size: usize,
    /// Largest bulk body, in bytes.
    pub max_batch_bytes: usize,
    /// Lanes, each with at most one bulk call in flight.
    pub lanes: usize,
    pub flush_interval: Duration,
    pub queue_size: usize,
    pub queue_bytes: usize,
    pub retry_window: Duration,
}

/// A `token_auth` value. Its `Debug` never shows the value, so no log line can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Settings {
    /// Parses and validates the plugin JSON, reading `token_auth_env` from the process
    /// environment (in Envoy, the VM's).
    pub fn from_json(bytes: &[u8]) -> Result<Settings, ConfigError> {
        Self::from_json_with_env(bytes, |name| std::env::var(name).ok())
    }

    /// As [`Settings::from_json`], with the environment passed in.
    pub fn from_json_with_env(
        bytes: &[u8],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "",
                "no configuration given; `matomo_url` and `id_site` are required",
            ));
        }
        // Through a Value, as the sites entries are: one copy of the large generated
        // deserializer in the module, not two (every function costs V8 memory to compile).
        let json: Value = serde_json::from_slice(bytes).map_err(|e| {
            ConfigError::new("", format!("not JSON: {}", strip_position(&e.to_string())))
        })?;
        let Value::Object(mut base) = json else {
            return Err(ConfigError::new(
                "",
                "the configuration must be a JSON object",
            ));
        };
        let sites_json = base.remove("sites");
        let mut whole = base.clone();
        if let Some(sites) = sites_json {
            whole.insert("sites".into(), sites);
        }
        let mut raw: RawConfig = serde_path_to_error::deserialize(Value::Object(whole))
            .map_err(|e| read_error(e, ""))?;
        let entries = std::mem::take(&mut raw.sites);
        if raw.id_site.is_none() && entries.is_empty() {
            return Err(ConfigError::new("id_site", "missing field `id_site`"));
        }
        let Compiled { mut settings, site } = raw.compile(&env, bytes)?;
        let mut tokens: Vec<Option<Secret>> = Vec::new();
        let mut token_of = |token: Option<Secret>| match tokens.iter().position(|t| *t == token) {
            Some(i) => i,
            None => {
                tokens.push(token);
                tokens.len() - 1
            }
        };
        let mut sites = Sites {
            entries: Vec::new(),
            fallback: None,
        };
        if !entries.is_empty() {
            let base = canonical(base);
            for (i, entry) in entries.iter().enumerate() {
                let at = format!("sites[{i}]");
                let (scope, merged) = site_entry(&at, entry, &base)?;
                if let Some(j) = sites.entries.iter().position(|(s, _)| s.hides(&scope)) {
                    return Err(ConfigError::new(
                        at,
                        format!("is never reached: sites[{j}] takes every request it would take"),
                    ));
                }
                let prefix = format!("{at}.");
                let raw: RawConfig =
                    serde_path_to_error::deserialize(merged).map_err(|e| read_error(e, &prefix))?;
                let compiled = raw.compile(&env, bytes).map_err(|e| ConfigError {
                    key: format!("{prefix}{}", e.key),
                    message: e.message,
                })?;
                settings.warnings.extend(compiled.settings.warnings);
                if let Some((hits, rules, token)) = compiled.site {
                    let token = token_of(token);
                    sites.entries.push((scope, Site { hits, rules, token }));
                }
            }
        }
        if let Some((hits, rules, token)) = site {
            let token = token_of(token);
            sites.fallback = Some(Site { hits, rules, token });
        }
        settings.warnings.sort();
        settings.warnings.dedup();
        settings.headers.cookie = sites.all().any(|s| s.hits.reads_cookie());
        settings.sites = sites;
        settings.tokens = tokens;
        settings.fingerprint = fnv64(bytes);
        Ok(settings)
    }

    /// The site of a request (by `:authority` and `:path`), `None` when no site takes it.
    pub fn site(&self, authority: &str, path: &str) -> Option<&Site> {
        self.sites.find(authority, path)
    }
}

/// A serde error as a config error naming its key (prefixed for a `sites` entry).
fn read_error<E: fmt::Display>(e: serde_path_to_error::Error<E>, prefix: &str) -> ConfigError {
    let message = strip_position(&e.inner().to_string());
    let key = match e.path().to_string() {
        // "missing field `x`" and "duplicate field `x`" are reported at the root.
        root if root == "." => quoted_field(&message).unwrap_or_default().to_owned(),
        key => key,
    };
    // serde quotes the value it could not take, which may be a secret pasted there.
    if message.starts_with("invalid") && SECRET_PRONE.contains(&key.as_str()) {
        return ConfigError::new(
            format!("{prefix}{key}"),
            "has the wrong type (value not shown)",
        );
    }
    ConfigError::new(format!("{prefix}{key}"), message)
}

/// An object with asgi-matomo's names read as flask-matomo2's.
fn canonical(object: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    object
        .into_iter()
        .map(|(k, v)| {
            let name = ALIASES
                .iter()
                .find(|(alias, _)| *alias == k)
                .map_or(k, |(_, n)| (*n).to_owned());
            (name, v)
        })
        .collect()
}

/// Checks one `sites` entry and gives its scope and the config it stands for: the shared
/// config with the entry's keys over it (its token replacing the shared one).
fn site_entry(
    at: &str,
    entry: &Value,
    base: &serde_json::Map<String, Value>,
) -> Result<(Scope, Value), ConfigError> {
    let Value::Object(entry) = entry else {
        return Err(ConfigError::new(
            at,
            "must be an object with hosts and id_site",
        ));
    };
    let entry = canonical(entry.clone());
    if let Some(key) = entry.keys().find(|k| !SITE_KEYS.contains(&k.as_str())) {
        return Err(ConfigError::new(
            format!("{at}.{key}"),
            "unknown field: an entry takes hosts, path_prefix, id_site, a token and the options \
             people set per site (see the configuration reference)",
        ));
    }
    let hosts = match entry.get("hosts") {
        Some(Value::Array(hosts)) if !hosts.is_empty() => hosts
            .iter()
            .enumerate()
            .map(|(j, h)| {
                let key = format!("{at}.hosts[{j}]");
                let h = h
                    .as_str()
                    .ok_or_else(|| ConfigError::new(&key, "must be a host name"))?;
                HostPattern::parse(&key, h)
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(ConfigError::new(
                format!("{at}.hosts"),
                "must be a non-empty list of hosts (shop.example.com or *.example.com)",
            ))
        }
    };
    let path_prefix = match entry.get("path_prefix") {
        None => None,
        Some(Value::String(p)) if p.starts_with('/') => Some(p.clone()),
        Some(_) => {
            return Err(ConfigError::new(
                format!("{at}.path_prefix"),
                "must be a path starting with /",
            ))
        }
    };
    if !entry.contains_key("id_site") {
        return Err(ConfigError::new(
            format!("{at}.id_site"),
            "missing field `id_site`",
        ));
    }
    let mut merged = base.clone();
    if entry.contains_key("token_auth") || entry.contains_key("token_auth_env") {
        merged.remove("token_auth");
        merged.remove("token_auth_env");
    }
    for (k, v) in entry {
        if k != "hosts" && k != "path_prefix" {
            merged.insert(k, v);
        }
    }
    Ok((Scope { hosts, path_prefix }, Value::Object(merged)))
}

/// FNV-1a, 64 bits: a stable name for a config, not a secret.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Keys whose values errors never quote: the token, and where a token is pasted by mistake.
const SECRET_PRONE: [&str; 10] = [
    "token_auth",
    "access_token",
    "token_auth_env",
    "visitor_id_secret",
    "visitor_id_secret_env",
    "matomo_url",
    "base_url",
    "cid",
    "cid_header",
    "uid_header",
];

/// The field a serde message names between backticks, as in "missing field `id_site`".
fn quoted_field(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once(" field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// serde_json appends "at line L column C"; the key already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

impl RawConfig {
    /// `config_bytes`: the plugin JSON as given, from which a visitor id key is derived when no
    /// secret is.
    fn compile(
        self,
        env: &impl Fn(&str) -> Option<String>,
        config_bytes: &[u8],
    ) -> Result<Compiled, ConfigError> {
        let tracker = parse_matomo_url(&self.matomo_url)?;
        if self.id_site.as_ref().is_some_and(|id| id.0 == 0) {
            return Err(ConfigError::new("id_site", "must be a positive integer"));
        }
        if self.matomo_cluster.is_empty() {
            return Err(ConfigError::new("matomo_cluster", "must not be empty"));
        }
        let token_auth = secret("token_auth", self.token_auth, self.token_auth_env, env)?;
        let visitor_secret = secret(
            "visitor_id_secret",
            self.visitor_id_secret,
            self.visitor_id_secret_env,
            env,
        )?;
        let token_auth = match token_auth {
            Some(t) if t.is_empty() => {
                return Err(ConfigError::new(
                    "token_auth",
                    "must not be empty (leave it out to send hits without a token)",
                ))
            }
            Some(t) => Some(Secret::new(t)),
            None => None,
        };
        let base_url = match self.base_url {
            Some(b) => {
                check_http_url("base_url", &b)?;
                Some(b.trim_end_matches('/').to_owned())
            }
            None => None,
        };
        let http_timeout = self
            .http_timeout
            .to_duration("http_timeout", 0.001, 600.0)?;
        let batch = BatchSettings {
            batch_size: in_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)?,
            // The largest hit the caps allow (caps.rs) is about 15 KB.
            max_batch_bytes: in_range("max_batch_bytes", self.max_batch_bytes, 64 << 10, 64 << 20)?,
            lanes: in_range("concurrent_calls", self.concurrent_calls, 1, 64)?,
            flush_interval: self
                .flush_interval
                .to_duration("flush_interval", 0.01, 3600.0)?,
            queue_size: in_range("queue_size", self.queue_size, 1, 10_000_000)?,
            queue_bytes: in_range("queue_bytes", self.queue_bytes, 64 << 10, 1 << 30)?,
            retry_window: self
                .retry_window
                .to_duration("retry_window", 0.0, 86_400.0)?,
        };
        if batch.queue_size < batch.batch_size {
            return Err(ConfigError::new(
                "queue_size",
                format!(
                    "must be at least batch_size ({}), got {}",
                    batch.batch_size, batch.queue_size
                ),
            ));
        }
        let rules = Rules::new(
            self.ignored_routes,
            &self.ignored_patterns,
            &self.ignored_ua_patterns,
            &self.allowed_methods,
            &self.ignored_methods,
        )?
        .ignoring_health_checkers(self.ignore_health_checkers);
        let mut routes = HashMap::new();
        for (path, params) in self.routes_details {
            let details = RouteDetails::new(&format!("routes_details.{path}"), params)?;
            routes.insert(path, details);
        }
        for (i, name) in self.strip_query_params.iter().enumerate() {
            if is_campaign_param(name) {
                return Err(ConfigError::new(
                    format!("strip_query_params[{i}]"),
                    format!(
                        "{name:?} is one of Matomo's campaign parameters (mtm_*, pk_*, utm_*, \
                         matomo_*, piwik_*, _rcn, _rck): stripping it would make every campaign \
                         visit a direct one"
                    ),
                ));
            }
        }
        let query_filter = match (self.keep_query_params, self.strip_query_params.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "keep_query_params",
                    "give either keep_query_params or strip_query_params, not both",
                ))
            }
            (Some(keep), true) => QueryFilter::Keep(keep),
            (None, false) => QueryFilter::Strip(self.strip_query_params),
            (None, true) => QueryFilter::KeepAll,
        };
        if let Some(cid) = self.cid.as_deref().filter(|c| !is_visitor_id(c)) {
            return Err(ConfigError::new(
                "cid",
                format!(
                    "must be 16 hexadecimal characters, got {} characters (value not shown)",
                    cid.chars().count()
                ),
            ));
        }
        if let Some(s) = visitor_secret.as_deref().filter(|s| s.len() < 16) {
            return Err(ConfigError::new(
                "visitor_id_secret",
                format!(
                    "must be at least 16 characters of random text, got {} (value not shown)",
                    s.chars().count()
                ),
            ));
        }
        if self.metrics_prefix.is_empty()
            || !self
                .metrics_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ConfigError::new(
                "metrics_prefix",
                "must be letters, digits and _ (a segment of Envoy's stat names)",
            ));
        }
        if self.api_event_category.trim().is_empty() {
            return Err(ConfigError::new("api_event_category", "must not be empty"));
        }
        let mut warnings = Vec::new();
        let visitor_key = match (&token_auth, &visitor_secret) {
            // With a token Matomo recognises visitors by their address (`cip`) itself.
            (Some(_), _) => None,
            (None, Some(secret)) => Some(VisitorKey::derive(secret.as_bytes())),
            (None, None) => {
                warnings.push(
                    "no visitor_id_secret: visitor ids are keyed with the plugin configuration, \
                     which whoever knows it could use to match ids against guessed client \
                     addresses; set visitor_id_secret_env to a random secret shared by every proxy"
                        .to_owned(),
                );
                Some(VisitorKey::derive(config_bytes))
            }
        };
        if self.cid_header.is_some() && token_auth.is_some() {
            warnings.push(
                "cid_header is set with a token: Matomo takes the visitor id from that request \
                 header as is, so make sure Envoy sets or strips it before the filter (a client \
                 could otherwise choose whose visit its requests join)"
                    .to_owned(),
            );
        }
        let headers = HeaderSources {
            response_prefix: self.response_header_prefix.to_ascii_lowercase(),
            uid: header_name("uid_header", self.uid_header)?,
            cid: header_name("cid_header", self.cid_header)?,
            dimensions: self
                .dimension_headers
                .into_iter()
                .map(|(name, Dimension(n))| {
                    Ok((
                        header_name("dimension_headers", Some(name))?.unwrap_or_default(),
                        n,
                    ))
                })
                .collect::<Result<_, ConfigError>>()?,
            cookie: false,
        };
        let options = HitOptions {
            base_url,
            assume_https: self.assume_https,
            with_client_ip: token_auth.is_some(),
            routes,
            action_rules: ActionRules::new(self.action_rules)?,
            query_filter,
            cid: self.cid,
            bots: self.bots,
            kinds: KindOptions {
                every_request_a_pageview: self.every_request_a_pageview,
                api_requests_as: match self.api_requests_as {
                    ApiRequestsAs::Event => ApiAs::Event,
                    ApiRequestsAs::Pageview => ApiAs::Pageview,
                    ApiRequestsAs::Ignore => ApiAs::Ignore,
                },
                track_downloads: self.track_downloads,
                track_api_reads: self.track_api_reads,
                assets_as_downloads: self.assets_as_downloads,
                error_page_titles: self.error_page_titles,
            },
            api_event_category: self.api_event_category,
            status_dimension: self.status_dimension.map(|Dimension(n)| n),
            method_dimension: self.method_dimension.map(|Dimension(n)| n),
            status_and_method_custom_variables: self.status_and_method_custom_variables,
            visitor_key,
            read_visitor_cookie: self.read_visitor_cookie,
            visitor_cookie_site: self.visitor_cookie_site.map(|id| id.0),
        };
        let site = self
            .id_site
            .map(|id| (HitTemplate::new(id.0, options), rules, token_auth));
        Ok(Compiled {
            settings: Settings {
                tracker,
                matomo_cluster: self.matomo_cluster,
                http_timeout,
                batch,
                sites: Sites {
                    entries: Vec::new(),
                    fallback: None,
                },
                tokens: Vec::new(),
                headers,
                track_local_replies: self.track_local_replies,
                metrics_prefix: self.metrics_prefix,
                warnings,
                fingerprint: 0,
            },
            site,
        })
    }
}

/// A secret given inline (`key`) or by the name of a VM environment variable (`key_env`), so it
/// can live in a Kubernetes Secret (Envoy `vm_config.environment_variables`, Istio
/// `vmConfig.env`).
fn secret(
    key: &str,
    inline: Option<String>,
    env_name: Option<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let env_key = format!("{key}_env");
    match (inline, env_name) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            env_key,
            format!("give either {key} or {key}_env, not both"),
        )),
        (None, Some(name)) if !is_env_name(&name) => Err(ConfigError::new(
            env_key,
            "must name an environment variable (letters, digits and _, not starting with a \
             digit); put the secret itself in that variable (value not shown)",
        )),
        (None, Some(name)) => env(&name).map(Some).ok_or_else(|| {
            ConfigError::new(
                env_key,
                format!("the VM environment has no variable {name:?}"),
            )
        }),
        (inline, None) => Ok(inline),
    }
}

/// An environment variable name, as Envoy and Kubernetes take them.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn in_range(key: &str, value: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

/// Splits `http(s)://authority/rest`, refusing anything else.
fn split_http_url<'a>(key: &str, url: &'a str) -> Result<(&'a str, &'a str), ConfigError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        url.get(8..)
    } else if lower.starts_with("http://") {
        url.get(7..)
    } else {
        None
    };
    // The URL is never quoted: a token pasted here must not reach the log.
    let rest = rest.ok_or_else(|| {
        ConfigError::new(key, "must be an http:// or https:// URL (value not shown)")
    })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            key,
            "must name a host, without user info (value not shown)",
        ));
    }
    Ok((authority, path))
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    split_http_url(key, url).map(|_| ())
}

/// `matomo_url` is a Matomo base URL or its tracker endpoint; hits go to the tracker endpoint.
fn parse_matomo_url(url: &str) -> Result<Tracker, ConfigError> {
    let (authority, rest) = split_http_url("matomo_url", url)?;
    if rest.contains(['?', '#']) {
        return Err(ConfigError::new(
            "matomo_url",
            "must not carry a query or fragment; the token goes in token_auth or \
             token_auth_env (value not shown)",
        ));
    }
    let base = rest
        .strip_suffix("/matomo.php")
        .or_else(|| rest.strip_suffix("/piwik.php"));
    let path = match base {
        Some(_) => rest.to_owned(),
        None => format!("{}/matomo.php", rest.trim_end_matches('/')),
    };
    let api_path = format!("{}/index.php", base.unwrap_or(rest).trim_end_matches('/'));
    Ok(Tracker {
        authority: authority.to_owned(),
        path,
        api_path,
    })
}

/// A header name as Envoy stores it: lower-case, non-empty, no spaces.
fn header_name(key: &str, name: Option<String>) -> Result<Option<String>, ConfigError> {
    match name {
        Some(n) if !is_header_name(&n) => Err(ConfigError::new(
            key,
            "is not a header name: letters, digits, - and _ (value not shown)",
        )),
        n => Ok(n.map(|n| n.to_ascii_lowercase())),
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A custom dimension: `3` or `"dimension3"`.
struct Dimension(u16);

impl<'de> Deserialize<'de> for Dimension {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let n = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.strip_prefix("dimension").and_then(|n| n.parse().ok()),
            _ => None,
        };
        n.and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..=999).contains(n))
            .map(Dimension)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "must be 1 to 999 or \"dimension1\" to \"dimension999\", got {v}"
                ))
            })
    }
}

/// A Matomo site id: a positive integer, or a string of digits as some deployments template it.
struct SiteId(u64);

impl<'de> Deserialize<'de> for SiteId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SiteId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SiteId, E> {
                Ok(SiteId(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SiteId, E> {
                u64::try_from(v)
                    .map(SiteId)
                    .map_err(|_| E::custom(format!("must be a positive integer, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SiteId, E> {
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    v.parse().map(SiteId).map_err(E::custom)
                } else {
                    Err(E::custom(format!("must be a positive integer, got {v:?}")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration in seconds, written as a JSON number (`5`, `0.5`).
#[derive(Deserialize)]
struct Seconds(f64);

impl Seconds {
    fn to_duration(&self, key: &str, min: f64, max: f64) -> Result<Duration, ConfigError> {
        if self.0.is_finite() && self.0 >= min && self.0 <= max {
            Ok(Duration::from_secs_f64(self.0))
        } else {
            Err(ConfigError::new(
                key,
                format!("must be between {min} and {max} seconds, got {}", self.0),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Settings {
        /// The site of a config without `sites`.
        fn one(&self) -> &Site {
            self.sites.fallback.as_ref().unwrap()
        }

        fn token(&self) -> Option<&Secret> {
            self.tokens[self.one().token].as_ref()
        }
    }

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        Settings::from_json(json.as_bytes())
    }

    fn err(json: &str) -> ConfigError {
        match parse(json) {
            Ok(_) => panic!("config should be refused: {json}"),
            Err(e) => e,
        }
    }

    const MIN: &str = r#""matomo_url":"https://m.example.com","id_site":3"#;

    fn with(extra: &str) -> String {
        if extra.is_empty() {
            format!("{{{MIN}}}")
        } else {
            format!("{{{MIN},{extra}}}")
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = parse(&with("")).unwrap();
        assert_eq!(s.tracker.authority, "m.example.com");
        assert_eq!(s.tracker.path, "/matomo.php");
        assert_eq!(s.matomo_cluster, "matomo");
        assert!(s.token().is_none());
        assert_eq!(s.http_timeout, Duration::from_secs(30));
        assert_eq!(
            s.batch,
            BatchSettings {
                batch_size: 200,
                max_batch_bytes: 512 << 10,
                lanes: 4,
                flush_interval: Duration::from_secs(1),
                queue_size: 10_000,
                queue_bytes: 4 << 20,
                retry_window: Duration::from_secs(60),
            }
        );
    }

    #[test]
    fn matomo_url_is_normalised_to_the_tracker_path() {
        for (url, authority, path) in [
            ("http://m/sub/", "m", "/sub/matomo.php"),
            ("http://m/sub//", "m", "/sub/matomo.php"),
            ("http://m", "m", "/matomo.php"),
            ("https://m:8443/", "m:8443", "/matomo.php"),
            ("https://m/x/matomo.php", "m", "/x/matomo.php"),
            ("https://m/piwik.php", "m", "/piwik.php"),
            ("HTTPS://M.example/a", "M.example", "/a/matomo.php"),
        ] {
            let s = parse(&format!(r#"{{"matomo_url":"{url}","id_site":1}}"#)).unwrap();
            assert_eq!(
                (s.tracker.authority.as_str(), s.tracker.path.as_str()),
                (authority, path),
                "{url}"
            );
            let api = path.rsplit_once('/').unwrap().0;
            assert_eq!(s.tracker.api_path, format!("{api}/index.php"), "{url}");
        }
    }

    #[test]
    fn bad_matomo_urls_are_refused_naming_the_key() {
        for url in [
            "ftp://m/",
            "m.example.com",
            "http://",
            "http:///x",
            "https://u:p@m/",
            "https://m/?a=1",
        ] {
            let e = err(&format!(r#"{{"matomo_url":"{url}","id_site":1}}"#));
            assert_eq!(e.key, "matomo_url", "{url}: {e}");
        }
        let e = err(r#"{"id_site":1}"#);
        assert_eq!(e.key, "matomo_url");
        assert!(e.to_string().contains("missing field `matomo_url`"), "{e}");
    }

    #[test]
    fn id_site_accepts_integers_and_digit_strings_under_both_names() {
        for json in [
            r#"{"matomo_url":"http://m","id_site":7}"#,
            r#"{"matomo_url":"http://m","id_site":"7"}"#,
            r#"{"matomo_url":"http://m","idsite":7}"#,
        ] {
            assert_eq!(parse(json).unwrap().one().hits.id_site(), 7, "{json}");
        }
    }

    #[test]
    fn bad_id_site_is_refused_naming_the_key() {
        for v in ["0", "-1", "\"abc\"", "\"\"", "1.5", "null", "true", "\"0\""] {
            let e = err(&format!(r#"{{"matomo_url":"http://m","id_site":{v}}}"#));
            assert_eq!(e.key, "id_site", "{v}: {e}");
        }
        let e = err(r#"{"matomo_url":"http://m"}"#);
        assert_eq!(e.key, "id_site");
        assert!(e.to_string().contains("missing field `id_site`"), "{e}");
    }

    #[test]
    fn every_key_and_alias_is_read() {
        let s = parse(
            r#"{"matomo_url":"http://m","idsite":2,"matomo_cluster":"outbound|443||m",
                "access_token":"t0k","base_url":"https://shop.example/","assume_https":true,
                "http_timeout":2.5,"route_details":{"/u":{"action_name":"U"}},
                "exclude_paths":["/health"],"exclude_patterns":[".*/old.*"],
                "ignored_ua_patterns":[".*bot.*"],"allowed_methods":["get"],
                "ignored_methods":["OPTIONS"],"batch_size":50,"flush_interval":0.25,
                "queue_size":500,"retry_window":30}"#,
        )
        .unwrap();
        assert_eq!(s.matomo_cluster, "outbound|443||m");
        assert_eq!(s.token().map(Secret::expose), Some("t0k"));
        assert_eq!(s.http_timeout, Duration::from_millis(2500));
        assert_eq!(s.batch.batch_size, 50);
        assert_eq!(s.batch.flush_interval, Duration::from_millis(250));
        assert_eq!(s.batch.queue_size, 500);
        assert_eq!(s.batch.retry_window, Duration::from_secs(30));
        assert!(s.one().hits.route("/u").is_some());
        assert!(s.one().hits.assume_https());
        assert_eq!(s.one().hits.base_url(), Some("https://shop.example"));
        assert!(s.one().rules.ignored_route("/health"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = err(&with(r#""id_sites":1"#));
        assert!(e.to_string().contains("unknown field `id_sites`"), "{e}");
    }

    #[test]
    fn name_and_alias_together_are_refused() {
        let e = err(r#"{"matomo_url":"http://m","id_site":1,"idsite":2}"#);
        assert_eq!(e.key, "id_site");
        assert!(e.to_string().contains("duplicate field `id_site`"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (extra, key) in [
            (r#""assume_https":"yes""#, "assume_https"),
            (r#""http_timeout":"5s""#, "http_timeout"),
            (r#""ignored_routes":"/admin""#, "ignored_routes"),
            (r#""ignored_methods":[1]"#, "ignored_methods[0]"),
            (r#""routes_details":{"/a":"x"}"#, "routes_details./a"),
            (r#""token_auth":5"#, "token_auth"),
            (r#""batch_size":-1"#, "batch_size"),
        ] {
            let e = err(&with(extra));
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(!e.message.contains("line"), "{e}");
        }
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (extra, key) in [
            (r#""http_timeout":0"#, "http_timeout"),
            (r#""batch_size":0"#, "batch_size"),
            (r#""batch_size":1001"#, "batch_size"),
            (r#""flush_interval":0"#, "flush_interval"),
            (r#""queue_size":10,"batch_size":20"#, "queue_size"),
            (r#""retry_window":-1"#, "retry_window"),
            (r#""matomo_cluster":"""#, "matomo_cluster"),
            (r#""token_auth":"""#, "token_auth"),
            (r#""base_url":"shop.example""#, "base_url"),
        ] {
            assert_eq!(err(&with(extra)).key, key, "{extra}");
        }
    }

    #[test]
    fn invalid_regexes_name_the_key_and_index() {
        assert_eq!(
            err(&with(r#""ignored_patterns":["/ok","(unclosed"]"#)).key,
            "ignored_patterns[1]"
        );
        assert_eq!(
            err(&with(r#""ignored_ua_patterns":["["]"#)).key,
            "ignored_ua_patterns[0]"
        );
    }

    #[test]
    fn empty_or_malformed_json_is_refused() {
        assert!(err("").to_string().contains("required"));
        assert!(err("  \n").to_string().contains("required"));
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
        assert!(parse("\u{0}\u{ff}").is_err());
    }

    #[test]
    fn app_identity_naming_and_privacy_keys_are_read() {
        let s = parse(&with(
            r#""token_auth":"t","response_header_prefix":"X-Track-","uid_header":"X-User",
               "cid_header":"x-visitor","cid":"0123456789ABCDEF","bots":true,
               "action_rules":[{"pattern":"/u/(\\d+)","action_name":"User"}],
               "strip_query_params":["token"],
               "dimension_headers":{"X-Tenant":1,"x-api-version":"dimension2"}"#,
        ))
        .unwrap();
        assert_eq!(
            s.headers,
            HeaderSources {
                response_prefix: "x-track-".into(),
                uid: Some("x-user".into()),
                cid: Some("x-visitor".into()),
                dimensions: vec![("x-tenant".into(), 1), ("x-api-version".into(), 2)],
                cookie: false,
            }
        );
        assert_eq!(
            parse(&with("")).unwrap().headers.response_prefix,
            "x-matomo-"
        );
        assert_eq!(
            parse(&with(r#""response_header_prefix":"""#))
                .unwrap()
                .headers
                .response_prefix,
            ""
        );
    }

    #[test]
    fn bad_app_identity_naming_and_privacy_values_name_the_key() {
        for (extra, key) in [
            (r#""token_auth":"t","cid":"xyz""#, "cid"),
            (r#""uid_header":"""#, "uid_header"),
            (r#""dimension_headers":{"x-t":0}"#, "dimension_headers.x-t"),
            (
                r#""dimension_headers":{"x-t":"dim1"}"#,
                "dimension_headers.x-t",
            ),
            (r#""dimension_headers":{"x t":1}"#, "dimension_headers"),
            (
                r#""strip_query_params":["a"],"keep_query_params":["b"]"#,
                "keep_query_params",
            ),
            (r#""action_rules":[{"pattern":"("}]"#, "action_rules[0]"),
            (
                r#""action_rules":[{"pattern":"(","action_name":"x"}]"#,
                "action_rules[0].pattern",
            ),
            (
                r#""action_rules":[{"pattern":"a","action_name":"x","extra":1}]"#,
                "action_rules[0].extra",
            ),
        ] {
            assert_eq!(err(&with(extra)).key, key, "{extra}");
        }
    }

    #[test]
    fn the_token_can_come_from_the_vm_environment() {
        let env = |name: &str| (name == "MATOMO_TOKEN").then(|| "from-env".to_owned());
        let json = with(r#""token_auth_env":"MATOMO_TOKEN""#);
        let s = Settings::from_json_with_env(json.as_bytes(), env).unwrap();
        assert_eq!(s.token().unwrap().expose(), "from-env");
        assert!(s.one().hits.with_client_ip());

        let json = with(r#""token_auth_env":"MISSING""#);
        let e = Settings::from_json_with_env(json.as_bytes(), env)
            .err()
            .unwrap();
        assert_eq!(e.key, "token_auth_env");
        assert!(e.message.contains("MISSING"), "{e}");

        let json = with(r#""token_auth_env":"MATOMO_TOKEN","token_auth":"x""#);
        let e = Settings::from_json_with_env(json.as_bytes(), env)
            .err()
            .unwrap();
        assert_eq!(e.key, "token_auth_env");
    }

    #[test]
    fn values_where_a_token_may_be_pasted_are_never_quoted() {
        let secret = "0123456789abcdef0123456789abcdef";
        for (extra, key) in [
            (format!(r#""token_auth_env":"{secret}""#), "token_auth_env"),
            (
                format!(r#""token_auth_env":"x-{secret}""#),
                "token_auth_env",
            ),
            (format!(r#""base_url":"{secret}""#), "base_url"),
            (format!(r#""token_auth":"t","cid":"{secret}""#), "cid"),
            (format!(r#""uid_header":"x {secret}""#), "uid_header"),
            (
                format!(r#""token_auth":"t","cid_header":"{secret}:""#),
                "cid_header",
            ),
            (format!(r#""cid":["{secret}"]"#), "cid"),
        ] {
            let e = err(&with(&extra));
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(!e.to_string().contains(secret), "{e}");
        }
        for url in [
            format!("https://m/matomo.php?token_auth={secret}"),
            secret.to_string(),
            format!("https://u:{secret}@m/"),
        ] {
            let e = err(&format!(r#"{{"matomo_url":"{url}","id_site":1}}"#));
            assert_eq!(e.key, "matomo_url");
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn a_token_under_both_names_says_so() {
        let e = err(&with(r#""token_auth":"a","access_token":"b""#));
        assert_eq!(e.key, "token_auth");
        assert!(e.message.contains("duplicate field"), "{e}");
        assert!(!e.message.contains("must be a string"), "{e}");
    }

    #[test]
    fn param_names_php_would_read_as_another_are_refused() {
        for (extra, key) in [
            (
                r#""routes_details":{"/a":{" idsite":1}}"#,
                "routes_details./a. idsite",
            ),
            (
                r#""routes_details":{"/a":{"idsite[]":1}}"#,
                "routes_details./a.idsite[]",
            ),
            (
                r#""routes_details":{"/a":{"e.c":1}}"#,
                "routes_details./a.e.c",
            ),
            (
                r#""action_rules":[{"pattern":"/","action_name":"x","params":{"cip ":"1"}}]"#,
                "action_rules[0].params.cip ",
            ),
        ] {
            assert_eq!(err(&with(extra)).key, key, "{extra}");
        }
    }

    #[test]
    fn batch_bytes_and_concurrent_calls_are_read_and_checked() {
        let s = parse(&with(r#""max_batch_bytes":100000,"concurrent_calls":1"#)).unwrap();
        assert_eq!((s.batch.max_batch_bytes, s.batch.lanes), (100_000, 1));
        assert_eq!(
            err(&with(r#""max_batch_bytes":1000"#)).key,
            "max_batch_bytes"
        );
        assert_eq!(
            err(&with(r#""concurrent_calls":0"#)).key,
            "concurrent_calls"
        );
        assert_eq!(
            err(&with(r#""concurrent_calls":65"#)).key,
            "concurrent_calls"
        );
    }

    #[test]
    fn equal_configs_have_equal_fingerprints() {
        assert_eq!(
            parse(&with("")).unwrap().fingerprint,
            parse(&with("")).unwrap().fingerprint
        );
        assert_ne!(
            parse(&with("")).unwrap().fingerprint,
            parse(&with(r#""batch_size":7"#)).unwrap().fingerprint
        );
    }

    #[test]
    fn metrics_prefix_names_the_stats() {
        assert_eq!(parse(&with("")).unwrap().metrics_prefix, "matomo");
        assert_eq!(
            parse(&with(r#""metrics_prefix":"shop_2""#))
                .unwrap()
                .metrics_prefix,
            "shop_2"
        );
        for bad in ["", "a.b", "a b", "x-y"] {
            assert_eq!(
                err(&with(&format!(r#""metrics_prefix":"{bad}""#))).key,
                "metrics_prefix"
            );
        }
    }

    #[test]
    fn queue_bytes_and_local_replies_are_read() {
        let s = parse(&with(r#""queue_bytes":1048576,"track_local_replies":true"#)).unwrap();
        assert_eq!(s.batch.queue_bytes, 1 << 20);
        assert!(s.track_local_replies);
        assert!(!parse(&with("")).unwrap().track_local_replies);
        assert_eq!(err(&with(r#""queue_bytes":1000"#)).key, "queue_bytes");
    }

    #[test]
    fn cid_header_with_a_token_warns_at_load() {
        let s = parse(&with(r#""token_auth":"t","cid_header":"x-visitor""#)).unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("cid_header"));
        assert!(parse(&with(r#""token_auth":"t""#))
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn without_a_token_visitor_ids_are_keyed_and_a_missing_secret_is_said() {
        let s = parse(&with("")).unwrap();
        assert!(
            s.warnings.iter().any(|w| w.contains("visitor_id_secret")),
            "{:?}",
            s.warnings
        );
        let s = parse(&with(r#""visitor_id_secret":"0123456789abcdef-long""#)).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(
            err(&with(r#""visitor_id_secret":"short""#)).key,
            "visitor_id_secret"
        );
        let env = |name: &str| (name == "VID").then(|| "from-the-env-0123456789".to_owned());
        let json = with(r#""visitor_id_secret_env":"VID""#);
        assert!(Settings::from_json_with_env(json.as_bytes(), env).is_ok());
        // cid and cid_header no longer need a token: Matomo 5 honours cid without one.
        assert!(parse(&with(r#""cid":"0123456789abcdef","cid_header":"x-v""#)).is_ok());
    }

    #[test]
    fn kind_options_are_read_and_campaign_parameters_are_never_stripped() {
        assert!(parse(&with(
            r#""every_request_a_pageview":true,"api_requests_as":"pageview","api_event_category":"Backend",
               "track_downloads":false,"assets_as_downloads":true,"error_page_titles":false,
               "status_dimension":4,"method_dimension":"dimension5","status_and_method_custom_variables":true,
               "read_visitor_cookie":true,"track_api_reads":true,"ignore_health_checkers":false,
               "visitor_cookie_site":7"#
        ))
        .is_ok());
        assert_eq!(
            err(&with(r#""api_requests_as":"pageviews""#)).key,
            "api_requests_as"
        );
        assert_eq!(
            err(&with(r#""api_event_category":" ""#)).key,
            "api_event_category"
        );
        let e = err(&with(r#""strip_query_params":["token","utm_source"]"#));
        assert_eq!(e.key, "strip_query_params[1]");
        assert!(e.message.contains("campaign"), "{e}");
        assert_eq!(
            err(&with(r#""routes_details":{"/a":{"track_as":"page"}}"#)).key,
            "routes_details./a.track_as"
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_or_errors() {
        let s = parse(&with(r#""token_auth":"s3cr3t-value""#)).unwrap();
        let shown = format!("{:?}", s.token());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let e = err(&with(r#""token_auth":"s3cr3t-value","bogus":1"#));
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        for key in ["token_auth", "access_token"] {
            let e = err(&with(&format!(r#""{key}":98765432"#)));
            assert_eq!(e.key, key);
            assert!(!e.to_string().contains("98765432"), "{e}");
        }
    }

    const GATEWAY: &str = r#""matomo_url":"https://m.example.com","token_auth":"shared",
        "ignored_routes":["/health"],
        "sites":[
          {"hosts":["shop.example.com"],"path_prefix":"/api/","id_site":5,"api_requests_as":"pageview"},
          {"hosts":["shop.example.com","www.shop.example.com"],"id_site":2,"ignored_routes":["/cart"]},
          {"hosts":["*.docs.example.com"],"id_site":3,"token_auth_env":"DOCS_TOKEN","base_url":"https://docs.example.com"}
        ]"#;

    fn gateway(extra: &str) -> Result<Settings, ConfigError> {
        let env = |name: &str| (name == "DOCS_TOKEN").then(|| "docs-token".to_owned());
        let json = format!("{{{GATEWAY}{extra}}}");
        Settings::from_json_with_env(json.as_bytes(), env)
    }

    #[test]
    fn one_gateway_many_sites_first_match_wins_with_per_site_options() {
        let s = gateway("").unwrap();
        let id =
            |authority: &str, path: &str| s.site(authority, path).map(|site| site.hits.id_site());
        assert_eq!(id("shop.example.com", "/api/cart"), Some(5));
        assert_eq!(id("SHOP.example.com:443", "/"), Some(2));
        assert_eq!(id("www.shop.example.com", "/x"), Some(2));
        assert_eq!(id("v2.docs.example.com", "/"), Some(3));
        assert_eq!(
            id("elsewhere.org", "/"),
            None,
            "no top-level id_site: not tracked"
        );
        let shop = s.site("shop.example.com", "/").unwrap();
        assert!(shop.rules.ignored_route("/cart") && !shop.rules.ignored_route("/health"));
        let api = s.site("shop.example.com", "/api/").unwrap();
        assert!(
            api.rules.ignored_route("/health"),
            "what a site does not set it shares"
        );
        assert_eq!(
            s.site("a.docs.example.com", "/").unwrap().hits.base_url(),
            Some("https://docs.example.com")
        );
        // Two tokens: shop and api share one (their hits share bulk calls), docs has its own.
        assert_eq!(s.tokens.len(), 2);
        assert_eq!(shop.token, api.token);
        let docs = s.site("a.docs.example.com", "/").unwrap();
        assert_ne!(docs.token, shop.token);
        assert_eq!(
            s.tokens[docs.token].as_ref().map(Secret::expose),
            Some("docs-token")
        );
        let fallback = gateway(r#","id_site":9"#).unwrap();
        assert_eq!(
            fallback.site("elsewhere.org", "/").unwrap().hits.id_site(),
            9
        );
    }

    #[test]
    fn bad_site_entries_are_refused_naming_the_entry() {
        for (sites, key) in [
            (
                r#"[{"hosts":["a.example"],"id_site":1,"matomo_url":"http://x"}]"#,
                "sites[0].matomo_url",
            ),
            (
                r#"[{"hosts":["a.example"],"id_site":1,"bogus":1}]"#,
                "sites[0].bogus",
            ),
            (
                r#"[{"hosts":["a.example"],"id_site":1},{"hosts":["b.example:80"],"id_site":2}]"#,
                "sites[1].hosts[0]",
            ),
            (r#"[{"hosts":[],"id_site":1}]"#, "sites[0].hosts"),
            (r#"[{"hosts":["a.example"]}]"#, "sites[0].id_site"),
            (
                r#"[{"hosts":["a.example"],"id_site":0}]"#,
                "sites[0].id_site",
            ),
            (
                r#"[{"hosts":["a.example"],"id_site":1,"path_prefix":"api"}]"#,
                "sites[0].path_prefix",
            ),
            (
                r#"[{"hosts":["a.example"],"id_site":1,"ignored_patterns":["("]}]"#,
                "sites[0].ignored_patterns[0]",
            ),
            (r#"["a.example"]"#, "sites[0]"),
            (
                r#"[{"hosts":["*.example.com"],"id_site":1},{"hosts":["shop.example.com"],"path_prefix":"/x","id_site":2}]"#,
                "sites[1]",
            ),
        ] {
            let e = err(&format!(r#"{{"matomo_url":"http://m","sites":{sites}}}"#));
            assert_eq!(e.key, key, "{sites}: {e}");
        }
        let e = err(
            r#"{"matomo_url":"http://m","sites":[{"hosts":["*.example.com"],"id_site":1},{"hosts":["a.example.com"],"id_site":2}]}"#,
        );
        assert!(e.message.contains("sites[0]"), "{e}");
        assert_eq!(err(r#"{"matomo_url":"http://m"}"#).key, "id_site");
    }

    #[test]
    fn aliases_work_in_sites_too() {
        let s = parse(r#"{"matomo_url":"http://m","idsite":1,"access_token":"t","exclude_paths":["/a"],
            "sites":[{"hosts":["s.example"],"idsite":2,"access_token":"u","exclude_paths":["/b"]}]}"#)
        .unwrap();
        let site = s.site("s.example", "/").unwrap();
        assert_eq!(
            (
                site.hits.id_site(),
                s.tokens[site.token].as_ref().map(Secret::expose)
            ),
            (2, Some("u"))
        );
        assert!(site.rules.ignored_route("/b") && !site.rules.ignored_route("/a"));
    }
}
