//! Config regexes, compiled once with limits, matched like Python's `re.match` (anchored at the
//! start only): the semantics flask-matomo2 and asgi-matomo users wrote their patterns for.
//!
//! They run on client-sized input, so each is bounded twice. At load, a pattern whose compiled
//! program exceeds [`SIZE_LIMIT`] (counted repetitions such as `{0,300}` inflate it) is refused.
//! Per request, the caller hands in capped text. regex-lite's engine costs about 0.1 µs per
//! input byte for each `.*` in a pattern, so the plain literals people mostly write (`.*bot.*`,
//! `/static/`, `.*\.js`) skip it: they are a `starts_with` or a substring search.

use regex_lite::{Regex, RegexBuilder};

use crate::error::ConfigError;

/// Largest compiled program a pattern may have. Typical patterns take under 1 KiB
/// (`/users/(\d+)/orders`: 752 bytes); `(?:[a-z/]{0,300}){0,20}zz` takes 530 KiB.
pub const SIZE_LIMIT: usize = 8 * 1024;
/// How much of a pattern an error message quotes.
const QUOTED: usize = 100;

/// One ignore pattern: a literal test where the pattern is a plain literal, else the regex.
#[derive(Debug)]
pub enum Pattern {
    /// `literal` or `literal.*`: the text starts with it.
    Prefix(String),
    /// `.*literal` or `.*literal.*`: the text contains it.
    Contains(String),
    Regex(Regex),
}

impl Pattern {
    /// `key` names the pattern in errors (`ignored_patterns[1]`).
    pub fn new(key: &str, pattern: &str) -> Result<Pattern, ConfigError> {
        let regex = compile(key, pattern)?;
        let (contains, rest) = match pattern.strip_prefix(".*") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let rest = rest.strip_suffix(".*").unwrap_or(rest);
        Ok(match literal(rest) {
            Some(text) if contains => Pattern::Contains(text),
            Some(text) => Pattern::Prefix(text),
            None => Pattern::Regex(regex),
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Pattern::Prefix(p) => text.starts_with(p.as_str()),
            Pattern::Contains(p) => text.contains(p.as_str()),
            Pattern::Regex(r) => r.is_match(text),
        }
    }
}

/// The text a regex fragment matches when it is a plain literal: no metacharacters but
/// punctuation escaped with a backslash.
fn literal(fragment: &str) -> Option<String> {
    let mut out = String::with_capacity(fragment.len());
    let mut chars = fragment.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => out.push(e),
                _ => return None,
            },
            '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => {
                return None
            }
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Compiles `pattern` anchored at the start, within [`SIZE_LIMIT`]; errors name the key and
/// quote at most the first 100 characters of the pattern.
pub fn compile(key: &str, pattern: &str) -> Result<Regex, ConfigError> {
    RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| {
            let (quoted, cut) = crate::text::cut(pattern, QUOTED);
            let ellipsis = if cut { "…" } else { "" };
            let reason = if e.to_string().contains("size limit") {
                format!(
                    "compiles to more than {} KiB (the limit, so that matching stays fast on \
                     client-sized input); use fewer or smaller counted repetitions such as {{0,300}}",
                    SIZE_LIMIT / 1024
                )
            } else {
                e.to_string()
            };
            ConfigError::new(key, format!("invalid regex {quoted:?}{ellipsis}: {reason}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Pattern {
        Pattern::new("k", p).unwrap()
    }

    #[test]
    fn plain_literals_skip_the_regex_engine() {
        assert!(matches!(pattern(".*bot.*"), Pattern::Contains(t) if t == "bot"));
        assert!(matches!(pattern(".*bot"), Pattern::Contains(t) if t == "bot"));
        assert!(matches!(pattern("/static/"), Pattern::Prefix(t) if t == "/static/"));
        assert!(matches!(pattern("/static/.*"), Pattern::Prefix(t) if t == "/static/"));
        assert!(matches!(pattern(r".*\.js"), Pattern::Contains(t) if t == ".js"));
        assert!(matches!(pattern("curl"), Pattern::Prefix(_)));
        for p in [
            ".*",
            "/a|/b",
            r"/u/\d+",
            ".*bot$",
            "(?i)bot",
            "a.c",
            r".*\.(js|css)",
        ] {
            assert!(matches!(pattern(p), Pattern::Regex(_)), "{p}");
        }
    }

    #[test]
    fn literals_and_regexes_match_alike() {
        let texts = [
            "",
            "/static/app.js",
            "/x/static/",
            "Googlebot/2.1",
            "curl/8",
            "my curl",
        ];
        for p in [".*bot.*", "/static/", r".*\.js", "curl", ".*static/.*"] {
            let fast = pattern(p);
            let slow = compile("k", p).unwrap();
            for t in texts {
                assert_eq!(fast.is_match(t), slow.is_match(t), "{p} on {t}");
            }
        }
    }

    #[test]
    fn patterns_are_anchored_at_the_start_only() {
        assert!(pattern("/fo").is_match("/foo/bar"));
        assert!(!pattern("/fo").is_match("/bar/foo"));
        assert!(pattern("/a|/b").is_match("/b/1"));
        assert!(!pattern("/a|/b").is_match("/x/b"));
    }

    #[test]
    fn oversized_patterns_are_refused_saying_the_limit() {
        let e = compile("ignored_patterns[0]", "(?:[a-z/]{0,300}){0,20}zz").unwrap_err();
        assert_eq!(e.key, "ignored_patterns[0]");
        assert!(e.message.contains("8 KiB"), "{e}");
        assert!(compile("k", r"/api/v[0-9]+/(users|orders|products)/[^/]+").is_ok());
    }

    #[test]
    fn errors_quote_at_most_100_characters_of_the_pattern() {
        let long = format!("({}", "a".repeat(5000));
        let e = compile("k", &long).unwrap_err();
        assert!(e.message.len() < 400, "{}", e.message.len());
        assert!(e.message.contains('…'));
    }
}
