//! Which requests are not tracked. Patterns match like Python's `re.match` (anchored at the
//! start only), the semantics flask-matomo2 and asgi-matomo users wrote their patterns for; the
//! caller hands in capped text (see [`crate::caps`]).

use std::collections::HashSet;

use crate::error::ConfigError;
use crate::pattern::Pattern;

/// Why a request was not tracked; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    Method,
    Route,
    Pattern,
    UserAgent,
    /// The app's response said `x-matomo-ignore: 1`.
    App,
    /// Answered by Envoy itself or a filter in front (RBAC, rate limit, jwt_authn, ext_authz,
    /// a direct response, no healthy upstream), or never answered: not a page the app served.
    LocalReply,
    /// No URL to track: `OPTIONS *`, a CONNECT, a request without a host.
    NoUrl,
    /// No `sites` entry takes its host and path, and there is no top-level `id_site`.
    NoSite,
}

pub struct Rules {
    routes: HashSet<String>,
    patterns: Vec<Pattern>,
    ua_patterns: Vec<Pattern>,
    /// Upper-cased; empty means every method.
    allowed_methods: Vec<String>,
    ignored_methods: Vec<String>,
    health_checkers: bool,
}

/// How known health checkers and uptime probes start their User-Agent: their requests are not
/// visits (Matomo's own bot detection misses these).
const HEALTH_CHECKERS: [&str; 9] = [
    "kube-probe/",
    "GoogleHC/",
    "Envoy/HC",
    "ELB-HealthChecker/",
    "Consul Health Check",
    "Blackbox Exporter/",
    "Prometheus/",
    "UptimeRobot/",
    "Pingdom.com_bot",
];

impl Rules {
    pub fn new(
        routes: Vec<String>,
        patterns: &[String],
        ua_patterns: &[String],
        allowed_methods: &[String],
        ignored_methods: &[String],
    ) -> Result<Rules, ConfigError> {
        let upper = |methods: &[String]| methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        Ok(Rules {
            routes: routes.into_iter().collect(),
            patterns: compile_all("ignored_patterns", patterns)?,
            ua_patterns: compile_all("ignored_ua_patterns", ua_patterns)?,
            allowed_methods: upper(allowed_methods),
            ignored_methods: upper(ignored_methods),
            health_checkers: false,
        })
    }

    /// Also ignores the requests of known health checkers, as User-Agent matches.
    pub fn ignoring_health_checkers(mut self, yes: bool) -> Self {
        self.health_checkers = yes;
        self
    }

    /// The first reason not to track a request, cheapest checks first. `path` has no query.
    pub fn check(&self, method: &str, path: &str, user_agent: Option<&str>) -> Option<Ignored> {
        if self.ignored_method(method) {
            return Some(Ignored::Method);
        }
        if self.ignored_route(path) {
            return Some(Ignored::Route);
        }
        if self.patterns.iter().any(|p| p.is_match(path)) {
            return Some(Ignored::Pattern);
        }
        let ua = user_agent.unwrap_or("");
        if self.health_checkers && HEALTH_CHECKERS.iter().any(|h| ua.starts_with(h)) {
            return Some(Ignored::UserAgent);
        }
        if self.ua_patterns.iter().any(|p| p.is_match(ua)) {
            return Some(Ignored::UserAgent);
        }
        None
    }

    pub fn ignored_route(&self, path: &str) -> bool {
        self.routes.contains(path)
    }

    fn ignored_method(&self, method: &str) -> bool {
        let is = |m: &String| m.eq_ignore_ascii_case(method);
        self.ignored_methods.iter().any(is)
            || (!self.allowed_methods.is_empty() && !self.allowed_methods.iter().any(is))
    }
}

/// Compiles each pattern; the error names the index.
fn compile_all(key: &str, patterns: &[String]) -> Result<Vec<Pattern>, ConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| Pattern::new(&format!("{key}[{i}]"), p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rules(
        routes: &[&str],
        patterns: &[&str],
        ua: &[&str],
        allow: &[&str],
        deny: &[&str],
    ) -> Rules {
        Rules::new(
            strings(routes),
            &strings(patterns),
            &strings(ua),
            &strings(allow),
            &strings(deny),
        )
        .unwrap()
    }

    fn check(r: &Rules, method: &str, path: &str, ua: Option<&str>) -> Option<Ignored> {
        r.check(method, path, ua)
    }

    #[test]
    fn no_rules_track_everything() {
        let r = rules(&[], &[], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/", None), None);
        assert_eq!(check(&r, "BREW", "/x", Some("bot")), None);
    }

    #[test]
    fn ignored_routes_match_the_exact_path_only() {
        let r = rules(&["/admin", "/health"], &[], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/admin", None), Some(Ignored::Route));
        assert_eq!(check(&r, "GET", "/health", None), Some(Ignored::Route));
        assert_eq!(check(&r, "GET", "/admin/", None), None);
        assert_eq!(check(&r, "GET", "/administrator", None), None);
        assert_eq!(check(&r, "GET", "/Admin", None), None);
    }

    #[test]
    fn patterns_are_anchored_at_the_start_only_like_re_match() {
        let r = rules(&[], &[".*/old.*"], &[], &[], &[]);
        assert_eq!(
            check(&r, "GET", "/some/old/path", None),
            Some(Ignored::Pattern)
        );
        assert_eq!(check(&r, "GET", "/new", None), None);

        let r = rules(&[], &["/fo"], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/foo/bar", None), Some(Ignored::Pattern));
        assert_eq!(check(&r, "GET", "/bar/foo", None), None);

        let r = rules(&[], &["fo"], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/foo", None), None);
        assert_eq!(check(&r, "GET", "fo", None), Some(Ignored::Pattern));

        let r = rules(&[], &["/.*admin.*"], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/x/admin/y", None), Some(Ignored::Pattern));
    }

    #[test]
    fn alternations_stay_anchored() {
        let r = rules(&[], &["/a|/b"], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/b/1", None), Some(Ignored::Pattern));
        assert_eq!(check(&r, "GET", "/x/b", None), None);
    }

    #[test]
    fn ua_patterns_match_the_user_agent_anchored() {
        let r = rules(&[], &[], &[".*bot.*"], &[], &[]);
        assert_eq!(
            check(&r, "GET", "/", Some("Googlebot/2.1")),
            Some(Ignored::UserAgent)
        );
        assert_eq!(check(&r, "GET", "/", Some("Mozilla/5.0")), None);
        assert_eq!(check(&r, "GET", "/", None), None);

        let r = rules(&[], &[], &["curl"], &[], &[]);
        assert_eq!(
            check(&r, "GET", "/", Some("curl/8.0")),
            Some(Ignored::UserAgent)
        );
        assert_eq!(check(&r, "GET", "/", Some("my curl")), None);
    }

    #[test]
    fn health_checkers_are_not_visits_unless_asked() {
        let r = rules(&[], &[], &[], &[], &[]).ignoring_health_checkers(true);
        for ua in [
            "kube-probe/1.29",
            "GoogleHC/1.0",
            "Envoy/HC",
            "ELB-HealthChecker/2.0",
        ] {
            assert_eq!(
                check(&r, "GET", "/healthz", Some(ua)),
                Some(Ignored::UserAgent),
                "{ua}"
            );
        }
        assert_eq!(check(&r, "GET", "/", Some("Mozilla/5.0 kube-probe")), None);
        let r = rules(&[], &[], &[], &[], &[]);
        assert_eq!(check(&r, "GET", "/", Some("kube-probe/1.29")), None);
    }

    #[test]
    fn allowed_methods_are_case_insensitive() {
        let r = rules(&[], &[], &[], &["get", "POST"], &[]);
        assert_eq!(check(&r, "GET", "/", None), None);
        assert_eq!(check(&r, "post", "/", None), None);
        assert_eq!(check(&r, "DELETE", "/", None), Some(Ignored::Method));
    }

    #[test]
    fn ignored_methods_win_over_allowed_methods() {
        let r = rules(&[], &[], &[], &["GET", "OPTIONS"], &["options"]);
        assert_eq!(check(&r, "OPTIONS", "/", None), Some(Ignored::Method));
        assert_eq!(check(&r, "GET", "/", None), None);
        let r = rules(&[], &[], &[], &[], &["OPTIONS"]);
        assert_eq!(check(&r, "options", "/", None), Some(Ignored::Method));
        assert_eq!(check(&r, "PATCH", "/", None), None);
    }

    #[test]
    fn invalid_patterns_name_key_and_index() {
        let e = Rules::new(vec![], &strings(&["ok", "(x"]), &[], &[], &[])
            .err()
            .unwrap();
        assert_eq!(e.key, "ignored_patterns[1]");
        assert!(e.message.contains("(x"));
    }
}
