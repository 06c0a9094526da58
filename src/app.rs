//! Tracking data an app sets on its own hit through response headers (`x-matomo-e-a: Play`), the
//! proxy's answer to asgi-matomo's `custom_tracking_data` and `PerfMsTracker`. Only Matomo
//! tracking parameters on an allow-list are taken; identity and secrets never are.

use serde_json::Value;

use crate::caps;
use crate::classify::TrackAs;
use crate::text::truncate;

/// The hit parameters an app may set, by their names in Matomo's Tracking API.
const ALLOWED: [&str; 15] = [
    "action_name",
    "e_c",
    "e_a",
    "e_n",
    "e_v",
    "uid",
    "pf_srv",
    "search",
    "search_cat",
    "search_count",
    "idgoal",
    "revenue",
    "c_n",
    "c_p",
    "c_t",
];

/// What the app's response headers said about its request's hit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppParams {
    /// Allowed parameters, by Matomo name, with their raw values.
    pub params: Vec<(String, String)>,
    /// `cvar` entries (name, value) to append after the filter's own.
    pub cvar: Vec<(String, String)>,
    /// The app asked not to track this request (`x-matomo-ignore: 1`).
    pub ignore: bool,
    /// What the app says this request is (`x-matomo-track-as: pageview|event|download|ignore`).
    pub track_as: Option<TrackAs>,
    /// Headers with the prefix that were refused (unknown, reserved or malformed, or past
    /// [`caps::APP_HEADERS`]).
    pub refused: u64,
    /// A value was cut to its cap.
    pub truncated: bool,
    /// Headers read so far.
    seen: usize,
}

impl AppParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// What the app asked its request to become: its `track_as`, else what its parameters
    /// imply. An event category makes an event; a page name, a site search or a goal makes a
    /// pageview (which Matomo records as the search or conversion). The app's word wins over
    /// what the response looks like: its JSON answer with `x-matomo-e-c` is no API read to skip.
    pub fn wants(&self) -> Option<TrackAs> {
        let has = |key: &str| self.get(key).is_some();
        self.track_as.or(if has("e_c") {
            Some(TrackAs::Event)
        } else if has("action_name") || has("search") || has("idgoal") {
            Some(TrackAs::Pageview)
        } else {
            None
        })
    }

    /// Reads one header whose name starts with the prefix; `suffix` is the rest of the name.
    pub fn add(&mut self, suffix: &str, value: &str) {
        self.seen += 1;
        if self.seen > caps::APP_HEADERS {
            self.refused += 1;
            return;
        }
        let key = suffix.to_ascii_lowercase().replace('-', "_");
        let ok = match key.as_str() {
            "ignore" => {
                self.ignore = matches!(value.trim(), "1" | "true" | "yes");
                true
            }
            "cvar" => self.add_cvar(value),
            "track_as" => {
                self.track_as = TrackAs::parse(value);
                self.track_as.is_some()
            }
            "pf_srv" | "e_v" | "revenue" | "search_count" | "idgoal" => {
                is_number(value) && self.set(key, value)
            }
            k if ALLOWED.contains(&k) || is_dimension(k) => self.set(key, value),
            _ => false,
        };
        if !ok {
            self.refused += 1;
        }
    }

    fn set(&mut self, key: String, value: &str) -> bool {
        let cap = if is_dimension(&key) {
            caps::DIMENSION
        } else {
            caps::APP_VALUE
        };
        let mut value = value.to_owned();
        self.truncated |= truncate(&mut value, cap, false);
        match self.params.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.params.push((key, value)),
        }
        true
    }

    /// A JSON object of name → scalar, as asgi-matomo apps write their `cvar`: taken whole or
    /// not at all, within Matomo's slots and lengths.
    fn add_cvar(&mut self, value: &str) -> bool {
        let Ok(Value::Object(entries)) = serde_json::from_str::<Value>(value) else {
            return false;
        };
        if self.cvar.len() + entries.len() > caps::CVAR_ENTRIES {
            return false;
        }
        let mut taken = Vec::with_capacity(entries.len());
        for (mut name, v) in entries {
            let mut v = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return false,
            };
            self.truncated |= truncate(&mut name, caps::CVAR_TEXT, false);
            self.truncated |= truncate(&mut v, caps::CVAR_TEXT, false);
            taken.push((name, v));
        }
        self.cvar.extend(taken);
        true
    }
}

fn is_number(v: &str) -> bool {
    !v.is_empty() && v.parse::<f64>().is_ok_and(f64::is_finite)
}

/// `dimension1` … `dimension999`: Matomo custom dimensions.
pub fn is_dimension(key: &str) -> bool {
    key.strip_prefix("dimension").is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 3
            && n.bytes().all(|b| b.is_ascii_digit())
            && !n.starts_with('0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(headers: &[(&str, &str)]) -> AppParams {
        let mut app = AppParams::default();
        for (suffix, value) in headers {
            app.add(suffix, value);
        }
        app
    }

    #[test]
    fn allowed_params_are_taken_by_their_matomo_names() {
        let app = read(&[
            ("action-name", "Checkout"),
            ("e-c", "cart"),
            ("e-a", "add"),
            ("e-n", "sku-1"),
            ("e-v", "2.5"),
            ("dimension3", "gold"),
            ("uid", "user@example.com"),
            ("pf-srv", "17"),
            ("Search", "shoes"),
        ]);
        assert_eq!(app.get("action_name"), Some("Checkout"));
        assert_eq!(app.get("e_c"), Some("cart"));
        assert_eq!(app.get("e_v"), Some("2.5"));
        assert_eq!(app.get("dimension3"), Some("gold"));
        assert_eq!(app.get("uid"), Some("user@example.com"));
        assert_eq!(app.get("pf_srv"), Some("17"));
        assert_eq!(app.get("search"), Some("shoes"));
        assert_eq!(app.refused, 0);
        assert!(!app.ignore);
    }

    #[test]
    fn secrets_identity_and_unknown_names_are_refused_and_counted() {
        let app = read(&[
            ("token-auth", "x"),
            ("cip", "1.2.3.4"),
            ("idsite", "9"),
            ("rec", "0"),
            ("url", "http://evil"),
            ("debug", "1"),
            ("dimension0", "x"),
            ("dimension1000", "x"),
            ("pf-srv", "fast"),
            ("e-v", "NaN"),
            ("cvar", "[1]"),
            ("cvar", "{\"a\":{\"b\":1}}"),
        ]);
        assert!(app.params.is_empty(), "{:?}", app.params);
        assert_eq!(app.refused, 12);
    }

    #[test]
    fn cvar_json_objects_are_appended() {
        let app = read(&[
            ("cvar", r#"{"plan":"pro","seats":3}"#),
            ("cvar", r#"{"beta":true}"#),
        ]);
        assert_eq!(
            app.cvar,
            [
                ("plan".to_string(), "pro".to_string()),
                ("seats".into(), "3".into()),
                ("beta".into(), "true".into())
            ]
        );
    }

    #[test]
    fn a_refused_cvar_applies_nothing() {
        let app = read(&[("cvar", r#"{"a":"1","b":{"nested":1}}"#)]);
        assert!(app.cvar.is_empty());
        assert_eq!(app.refused, 1);
        let app = read(&[(
            "cvar",
            r#"{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6"}"#,
        )]);
        assert!(app.cvar.is_empty(), "more entries than Matomo's five slots");
    }

    #[test]
    fn values_are_capped_and_so_is_the_number_of_headers() {
        let long = "x".repeat(5000);
        let app = read(&[("e-c", long.as_str()), ("dimension2", long.as_str())]);
        assert_eq!(app.get("e_c").unwrap().len(), caps::APP_VALUE);
        assert_eq!(app.get("dimension2").unwrap().len(), caps::DIMENSION);
        assert!(app.truncated);
        let many: Vec<(&str, &str)> = (0..100).map(|_| ("e-a", "x")).collect();
        let app = read(&many);
        assert_eq!(app.refused, 100 - caps::APP_HEADERS as u64);
    }

    #[test]
    fn the_app_can_say_what_its_response_is() {
        assert_eq!(
            read(&[("track-as", "Event")]).track_as,
            Some(TrackAs::Event)
        );
        let app = read(&[("track-as", "page")]);
        assert_eq!((app.track_as, app.refused), (None, 1));
    }

    #[test]
    fn ignore_takes_one_or_true() {
        assert!(read(&[("ignore", "1")]).ignore);
        assert!(read(&[("ignore", " true ")]).ignore);
        assert!(!read(&[("ignore", "0")]).ignore);
    }

    #[test]
    fn a_repeated_header_keeps_the_last_value() {
        let app = read(&[("e-a", "one"), ("e-a", "two")]);
        assert_eq!(app.params, [("e_a".to_string(), "two".to_string())]);
    }

    #[test]
    fn dimensions_are_numbered_1_to_999() {
        assert!(is_dimension("dimension1"));
        assert!(is_dimension("dimension999"));
        for k in [
            "dimension",
            "dimension0",
            "dimension01",
            "dimension1000",
            "dimensionx",
        ] {
            assert!(!is_dimension(k), "{k}");
        }
    }
}
