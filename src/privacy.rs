//! Keeps tokens, emails and other secrets in query strings out of Matomo: the tracked `url` and
//! `urlref` lose the query parameters the config names (or keep only those it names). Names
//! are compared as PHP reads them (`token[]` is `token`) and regardless of case, so no spelling
//! of a stripped name slips through.

use std::borrow::Cow;

use crate::text::{percent_decode_lossy, php_param_name};

/// Matomo's campaign parameters: `keep_query_params` always keeps them and
/// `strip_query_params` may not name them, or campaign visits would turn into direct ones.
pub fn is_campaign_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["mtm_", "pk_", "utm_", "matomo_", "piwik_"]
        .iter()
        .any(|p| name.starts_with(p))
        || name == "_rcn"
        || name == "_rck"
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QueryFilter {
    #[default]
    KeepAll,
    /// Drop these parameter names.
    Strip(Vec<String>),
    /// Drop every parameter but these (and Matomo's campaign parameters).
    Keep(Vec<String>),
}

impl QueryFilter {
    /// The URL (or path) with its query filtered; the rest, and each kept parameter, stays
    /// byte for byte as it was.
    pub fn apply<'a>(&self, url: &'a str) -> Cow<'a, str> {
        if *self == QueryFilter::KeepAll {
            return url.into();
        }
        let Some((base, rest)) = url.split_once('?') else {
            return url.into();
        };
        let (query, fragment) = match rest.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (rest, None),
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty() && self.keeps(pair))
            .collect();
        let mut out = String::with_capacity(url.len());
        out.push_str(base);
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out.into()
    }

    fn keeps(&self, pair: &str) -> bool {
        let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let decoded = percent_decode_lossy(raw_name);
        let name = php_param_name(&decoded);
        let named = |names: &[String]| names.iter().any(|n| n.eq_ignore_ascii_case(&name));
        match self {
            QueryFilter::KeepAll => true,
            QueryFilter::Strip(names) => !named(names),
            QueryFilter::Keep(names) => named(names) || is_campaign_param(&name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(names: &[&str]) -> QueryFilter {
        QueryFilter::Strip(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn strip_drops_named_params_and_keeps_the_rest_verbatim() {
        let f = strip(&["token", "email"]);
        assert_eq!(
            f.apply("/a?x=1&token=abc&y=%2F&email=a%40b"),
            "/a?x=1&y=%2F"
        );
        assert_eq!(f.apply("/a?token=abc"), "/a");
        assert_eq!(
            f.apply("/a?%74oken=abc&z"),
            "/a?z",
            "names are compared decoded"
        );
        assert_eq!(f.apply("https://r/p?email=x#frag"), "https://r/p#frag");
        assert_eq!(f.apply("/a"), "/a");
        assert_eq!(f.apply("/a?tokens=1"), "/a?tokens=1");
    }

    #[test]
    fn names_match_as_php_reads_them_and_in_any_case() {
        let f = strip(&["token"]);
        for q in [
            "token[]=a",
            "token[x]=a",
            "Token=a",
            "TOKEN=a",
            "%20token=a",
            "tok%65n[]=a",
        ] {
            assert_eq!(f.apply(&format!("/a?{q}&k=1")), "/a?k=1", "{q}");
        }
        let f = QueryFilter::Keep(vec!["page".into()]);
        assert_eq!(f.apply("/a?Page=2&page[]=3&x=1"), "/a?Page=2&page[]=3");
    }

    #[test]
    fn keep_drops_all_but_named_params() {
        let f = QueryFilter::Keep(vec!["page".into()]);
        assert_eq!(f.apply("/a?page=2&session=s&q=x"), "/a?page=2");
        assert_eq!(f.apply("/a?q=x"), "/a");
    }

    #[test]
    fn keep_always_keeps_campaign_parameters() {
        let f = QueryFilter::Keep(vec!["page".into()]);
        assert_eq!(
            f.apply("/a?page=2&session=s&mtm_campaign=x&UTM_source=y&pk_kwd=z&_rcn=c&piwik_x=1"),
            "/a?page=2&mtm_campaign=x&UTM_source=y&pk_kwd=z&_rcn=c&piwik_x=1"
        );
        assert!(is_campaign_param("matomo_campaign"));
        assert!(!is_campaign_param("campaign"));
    }

    #[test]
    fn keep_all_borrows() {
        assert!(matches!(
            QueryFilter::KeepAll.apply("/a?x"),
            Cow::Borrowed(_)
        ));
    }
}
