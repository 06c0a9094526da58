//! Extra parameters the config sets for some requests: an exact `routes_details` entry or an
//! action rule's `params`, checked and percent-encoded once at configure time.

use serde_json::Value;

use crate::classify::TrackAs;
use crate::error::ConfigError;
use crate::text::{is_plain_param_name, percent_decode_lossy, push_encoded};

/// Parameters the filter sets itself; config may not override them.
pub const RESERVED: [&str; 6] = ["idsite", "rec", "apiv", "rand", "token_auth", "cip"];

/// Extra parameters for the requests of one route or action rule, pre-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDetails {
    /// (name, percent-encoded value)
    pub params: Vec<(String, String)>,
    /// `cvar` entries (name, value) appended after the filter's own.
    pub cvar: Vec<(String, String)>,
    /// `track_as`: what these requests become, whatever the response (not sent to Matomo).
    pub track_as: Option<TrackAs>,
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
            if key == "track_as" {
                let parsed = value.as_str().and_then(TrackAs::parse);
                details.track_as = Some(parsed.ok_or_else(|| {
                    ConfigError::new(
                        at,
                        "must be \"pageview\", \"event\", \"download\" or \"ignore\"",
                    )
                })?);
                continue;
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

    /// The action name these details set, decoded.
    pub fn name(&self) -> Option<String> {
        self.param("action_name")
            .map(|v| percent_decode_lossy(v).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> serde_json::Map<String, Value> {
        let Value::Object(m) = serde_json::from_str(json).unwrap() else {
            unreachable!()
        };
        m
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
}
