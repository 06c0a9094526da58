//! Action naming rules: an ordered list of regexes over the path, each with an `action_name`
//! template that may use capture groups, so `/users/42/orders` is reported as `Users / orders`
//! and IDs never become page titles. First match wins; exact `routes_details` come first.

use regex_lite::Regex;
use serde::Deserialize;

use crate::details::RouteDetails;
use crate::error::ConfigError;
use crate::pattern;

/// One rule as written in the plugin JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActionRule {
    pub pattern: String,
    pub action_name: String,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

struct ActionRule {
    pattern: Regex,
    action_name: String,
    details: RouteDetails,
}

#[derive(Default)]
pub struct ActionRules(Vec<ActionRule>);

impl ActionRules {
    pub fn new(raw: Vec<RawActionRule>) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let at = format!("action_rules[{i}]");
            // Anchored at the start like every other pattern here (Python's re.match).
            let pattern = pattern::compile(&format!("{at}.pattern"), &r.pattern)?;
            if r.params.contains_key("action_name") {
                return Err(ConfigError::new(
                    format!("{at}.params.action_name"),
                    "set the rule's action_name instead",
                ));
            }
            rules.push(ActionRule {
                pattern,
                action_name: r.action_name,
                details: RouteDetails::new(&format!("{at}.params"), r.params)?,
            });
        }
        Ok(ActionRules(rules))
    }

    /// The first rule matching `path` (no query, capped): its expanded action name and its
    /// params.
    pub fn find(&self, path: &str) -> Option<(String, &RouteDetails)> {
        self.0.iter().find_map(|rule| {
            // A name without `$` needs no groups, and a plain match stops at the first match
            // where finding the groups reads on to the end of a greedy `\d+`.
            if !rule.action_name.contains('$') {
                return rule
                    .pattern
                    .is_match(path)
                    .then(|| (rule.action_name.clone(), &rule.details));
            }
            let caps = rule.pattern.captures(path)?;
            let mut name = String::new();
            caps.expand(&rule.action_name, &mut name);
            Some((name, &rule.details))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Result<ActionRules, ConfigError> {
        ActionRules::new(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn first_match_wins_and_templates_use_capture_groups() {
        let r = rules(
            r#"[{"pattern":"/users/(\\d+)/orders","action_name":"Users / orders"},
                {"pattern":"/users/(?P<id>\\d+)","action_name":"User ${id}"},
                {"pattern":"/(\\w+)/","action_name":"Section $1","params":{"e_c":"nav"}}]"#,
        )
        .unwrap();
        assert_eq!(r.find("/users/42/orders").unwrap().0, "Users / orders");
        assert_eq!(r.find("/users/42").unwrap().0, "User 42");
        let (name, details) = r.find("/docs/intro").unwrap();
        assert_eq!(name, "Section docs");
        assert_eq!(details.param("e_c"), Some("nav"));
        assert!(r.find("/").is_none());
        assert!(r.find("/x/users/1").is_none() || r.find("/x/users/1").unwrap().0 == "Section x");
    }

    #[test]
    fn rules_are_anchored_at_the_start() {
        let r = rules(r#"[{"pattern":"users","action_name":"U"}]"#).unwrap();
        assert!(r.find("/users").is_none());
    }

    #[test]
    fn errors_name_the_rule() {
        let e = rules(r#"[{"pattern":"ok","action_name":"a"},{"pattern":"(","action_name":"b"}]"#)
            .err()
            .unwrap();
        assert_eq!(e.key, "action_rules[1].pattern");
        let e = rules(r#"[{"pattern":"a","action_name":"a","params":{"cip":"1"}}]"#)
            .err()
            .unwrap();
        assert_eq!(e.key, "action_rules[0].params.cip");
    }
}
