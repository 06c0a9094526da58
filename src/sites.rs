//! One gateway, many Matomo sites: which site a request belongs to, by its host (exact, or a
//! `*.example.com` suffix wildcard, port ignored) and an optional path prefix. The first entry
//! that matches wins; a request no entry matches goes to the top-level site, if one is given.

use crate::error::ConfigError;

/// A host as an entry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `shop.example.com`: that host only.
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (not `example.com` itself), as
    /// Envoy's virtual host domains read it.
    Suffix(String),
}

impl HostPattern {
    /// `key` names the pattern in errors (`sites[2].hosts[0]`).
    pub fn parse(key: &str, pattern: &str) -> Result<HostPattern, ConfigError> {
        let lower = pattern.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(ConfigError::new(
                key,
                format!(
                    "{pattern:?} is not a host name or a *.suffix wildcard (no port, no scheme, \
                     no other *)"
                ),
            ));
        }
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// `host` lower-cased, without port.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }

    /// Every host `other` matches, this matches too.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Suffix(a), HostPattern::Exact(b)) => {
                b.len() > a.len() && b.ends_with(a.as_str())
            }
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
        }
    }
}

/// What requests an entry takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub hosts: Vec<HostPattern>,
    pub path_prefix: Option<String>,
}

impl Scope {
    /// `host`: lower-cased, without port; `path`: the raw `:path`.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }

    /// Every request `later` takes, this takes first: `later` could never be reached.
    pub fn hides(&self, later: &Scope) -> bool {
        let prefix_covers = match (&self.path_prefix, &later.path_prefix) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.starts_with(mine.as_str()),
        };
        prefix_covers
            && later
                .hosts
                .iter()
                .all(|l| self.hosts.iter().any(|h| h.covers(l)))
    }
}

/// The host of an `:authority`, lower-cased and without port (`[::1]:80` → `[::1]`).
pub fn host_of(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The sites of a config in order, and the top-level one for requests none takes.
pub struct Sites<S> {
    pub entries: Vec<(Scope, S)>,
    pub fallback: Option<S>,
}

impl<S> Sites<S> {
    /// The site of a request: the first entry that takes it, else the fallback.
    pub fn find(&self, authority: &str, path: &str) -> Option<&S> {
        if self.entries.is_empty() {
            return self.fallback.as_ref();
        }
        let host = host_of(authority);
        self.entries
            .iter()
            .find(|(scope, _)| scope.matches(&host, path))
            .map(|(_, site)| site)
            .or(self.fallback.as_ref())
    }

    /// Every site, the fallback last.
    pub fn all(&self) -> impl Iterator<Item = &S> {
        self.entries.iter().map(|(_, s)| s).chain(&self.fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(p: &str) -> HostPattern {
        HostPattern::parse("k", p).unwrap()
    }

    fn scope(hosts: &[&str], prefix: Option<&str>) -> Scope {
        Scope {
            hosts: hosts.iter().map(|h| host(h)).collect(),
            path_prefix: prefix.map(str::to_owned),
        }
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_without_port_or_case() {
        assert!(host("Shop.Example.com").matches("shop.example.com"));
        assert!(!host("shop.example.com").matches("docs.example.com"));
        let any = host("*.example.com");
        assert!(any.matches("docs.example.com") && any.matches("a.b.example.com"));
        assert!(!any.matches("example.com") && !any.matches("badexample.com"));
        assert_eq!(host_of("Shop.Example.com:8443"), "shop.example.com");
        assert_eq!(host_of("shop.example.com."), "shop.example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
    }

    #[test]
    fn malformed_host_patterns_are_refused() {
        for bad in [
            "",
            "*",
            "shop.*.com",
            "shop.example.com:80",
            "http://shop",
            "a..b",
            "*.",
            "sh op",
        ] {
            let e = HostPattern::parse("sites[2].hosts[0]", bad).unwrap_err();
            assert_eq!(e.key, "sites[2].hosts[0]", "{bad}");
        }
    }

    #[test]
    fn the_first_entry_that_takes_a_request_wins_else_the_fallback() {
        let sites = Sites {
            entries: vec![
                (scope(&["shop.example.com"], Some("/api/")), "shop-api"),
                (scope(&["shop.example.com"], None), "shop"),
                (scope(&["*.example.com"], None), "others"),
            ],
            fallback: Some("default"),
        };
        assert_eq!(
            sites.find("shop.example.com", "/api/cart"),
            Some(&"shop-api")
        );
        assert_eq!(sites.find("SHOP.example.com:443", "/"), Some(&"shop"));
        assert_eq!(sites.find("docs.example.com", "/"), Some(&"others"));
        assert_eq!(sites.find("elsewhere.org", "/"), Some(&"default"));
        let strict = Sites {
            fallback: None,
            ..sites
        };
        assert_eq!(strict.find("elsewhere.org", "/"), None);
        assert_eq!(strict.all().count(), 3);
    }

    #[test]
    fn an_entry_an_earlier_one_hides_completely_is_found() {
        let wide = scope(&["*.example.com"], None);
        assert!(wide.hides(&scope(&["shop.example.com"], Some("/api"))));
        assert!(wide.hides(&scope(&["*.shop.example.com"], None)));
        assert!(!wide.hides(&scope(&["shop.example.com", "other.org"], None)));
        let api = scope(&["shop.example.com"], Some("/api"));
        assert!(api.hides(&scope(&["shop.example.com"], Some("/api/v2"))));
        assert!(!api.hides(&scope(&["shop.example.com"], None)));
        assert!(!scope(&["shop.example.com"], None).hides(&scope(&["*.example.com"], None)));
    }
}
