//! Property tests: config parsing and hit encoding never panic on any input, and an encoded hit
//! decodes back to exactly the request's facts.

// Test helpers outside #[test] fns: clippy.toml's in-tests allowances do not reach them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;

use matomo_proxy_wasm::classify::Kind;
use matomo_proxy_wasm::config::Settings;
use matomo_proxy_wasm::hit::HitTemplate;
use matomo_proxy_wasm::request::RequestFacts;
use proptest::prelude::*;

/// `%XX` decoding written for this test (independent of the crate's): malformed escapes stay.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (hi, lo) = (b[i + 1], b[i + 2]);
            if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() {
                let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(digit(hi) * 16 + digit(lo));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn decode_str(s: &str) -> String {
    String::from_utf8(percent_decode(s)).expect("the encoder only percent-encodes UTF-8 strings")
}

/// A hit `?k=v&…` as an ordered map; every key once.
fn parse_hit(hit: &str) -> HashMap<String, String> {
    let query = hit.strip_prefix('?').expect("a hit starts with ?");
    let mut out = HashMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').expect("every parameter has a value");
        let prev = out.insert(decode_str(k), decode_str(v));
        assert!(prev.is_none(), "repeated parameter {k} in {hit}");
    }
    out
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[ -~]{0,40}",
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        Just(String::new()),
        "[%0-9A-Fa-fzZ?&=#/]{0,30}",
    ]
}

prop_compose! {
    fn any_facts()(
        method in prop_oneof![Just("GET".to_owned()), "[A-Z]{1,10}", any_text()],
        scheme in prop_oneof![Just("http".to_owned()), Just("https".to_owned()), Just(String::new())],
        authority in any_text(),
        path in prop_oneof![any_text().prop_map(|p| format!("/{p}")), any_text()],
        user_agent in prop::option::of(any_text()),
        accept_language in prop::option::of(any_text()),
        referer in prop::option::of(any_text()),
        status in 0u32..1000,
        server_time_ms in prop::option::of(any::<u64>()),
        time_secs in any::<u64>(),
        client_ip in prop::option::of("[0-9a-f:.]{1,39}"),
    ) -> RequestFacts {
        RequestFacts { method, scheme, authority, path, user_agent, accept_language, referer, status,
                       server_time_ms, time_secs, client_ip, ..RequestFacts::default() }
    }
}

/// The template of a minimal config; with a token, hits carry the client IP (`cip`).
fn template(id_site: u64, with_client_ip: bool) -> HitTemplate {
    let token = if with_client_ip {
        r#","token_auth":"t""#
    } else {
        ""
    };
    let json = format!(r#"{{"matomo_url":"http://matomo.example","id_site":{id_site}{token}}}"#);
    Settings::from_json(json.as_bytes())
        .expect("a minimal config")
        .sites
        .fallback
        .expect("a site")
        .hits
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Settings::from_json(&bytes);
    }

    #[test]
    fn config_parsing_never_panics_on_json(
        keys in prop::collection::vec(prop_oneof![
            Just("matomo_url"), Just("id_site"), Just("matomo_cluster"), Just("token_auth"),
            Just("token_auth_env"), Just("base_url"), Just("assume_https"), Just("http_timeout"),
            Just("routes_details"), Just("ignored_routes"), Just("ignored_patterns"),
            Just("ignored_ua_patterns"), Just("allowed_methods"), Just("ignored_methods"),
            Just("batch_size"), Just("flush_interval"), Just("queue_size"), Just("retry_window"),
            Just("idsite"), Just("bogus")], 0..8),
        values in prop::collection::vec(prop_oneof![
            Just(serde_json::json!(null)), Just(serde_json::json!(-1)), Just(serde_json::json!(0)),
            Just(serde_json::json!(1e300)), Just(serde_json::json!(-0.0)), Just(serde_json::json!(u64::MAX)),
            Just(serde_json::json!("http://m/")), Just(serde_json::json!("(")), Just(serde_json::json!("")),
            Just(serde_json::json!(["(", "[", "a{99999}"])), Just(serde_json::json!({"/x": {"cvar": {"a": 1}}})),
            Just(serde_json::json!({"/x": {"idsite": 2}})), Just(serde_json::json!({"/x": 3})),
            any_text().prop_map(serde_json::Value::String),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
        ], 8),
    ) {
        let mut obj = serde_json::Map::new();
        obj.insert("matomo_url".into(), serde_json::json!("http://matomo.example"));
        obj.insert("id_site".into(), serde_json::json!(1));
        for (k, v) in keys.iter().zip(values) {
            obj.insert((*k).to_owned(), v);
        }
        let _ = Settings::from_json(serde_json::Value::Object(obj).to_string().as_bytes());
    }

    #[test]
    fn hit_encoding_never_panics_and_round_trips(
        facts in any_facts(), rand in any::<u32>(), id_site in 1u64..u64::MAX, cip in any::<bool>(),
    ) {
        let t = template(id_site, cip);
        let (hit, _) = t.encode(&facts, Kind::Pageview, &t.naming(facts.path_only()), rand);
        // Safe inside a JSON string and a query string alike.
        prop_assert!(hit.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=?".contains(&b)), "{}", hit);
        let p = parse_hit(&hit);
        prop_assert_eq!(&p["idsite"], &id_site.to_string());
        prop_assert_eq!(&p["rec"], "1");
        prop_assert_eq!(&p["rand"], &rand.to_string());
        let scheme = if facts.scheme.is_empty() { "http" } else { facts.scheme.as_str() };
        prop_assert_eq!(&p["url"], &format!("{scheme}://{}{}", facts.authority, facts.path));
        let path_only = facts.path.split('?').next().unwrap_or_default();
        prop_assert_eq!(&p["action_name"], &String::from_utf8_lossy(&percent_decode(path_only)).into_owned());
        for (key, value) in [("ua", &facts.user_agent), ("lang", &facts.accept_language), ("urlref", &facts.referer)] {
            match value.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => prop_assert_eq!(p.get(key).map(String::as_str), Some(v)),
                None => prop_assert!(!p.contains_key(key)),
            }
        }
        prop_assert_eq!(p.get("pf_srv").cloned(), facts.server_time_ms.map(|ms| ms.to_string()));
        prop_assert_eq!(&p["cdt"], &facts.time_secs.to_string());
        // Status and method travel as custom variables only when asked (a plugin Matomo 4+ lacks).
        prop_assert!(!p.contains_key("cvar"));
        prop_assert_eq!(p.get("cip").cloned(), if cip { facts.client_ip.clone() } else { None });
    }
}

#[test]
fn a_refused_token_auth_is_not_echoed_in_the_error() {
    // YAML reads an unquoted all-digit token as a number; serde would quote it back.
    let err = Settings::from_json(
        br#"{"matomo_url":"http://m","id_site":1,"token_auth":123456789012345678}"#,
    )
    .err()
    .expect("a number is not a token");
    assert!(!err.to_string().contains("123456789012345678"), "{err}");
}

fn long_text() -> impl Strategy<Value = String> {
    (
        0usize..12_000,
        prop_oneof![Just("/"), Just("a"), Just("é"), Just("%2F"), Just("%")],
    )
        .prop_map(|(n, piece)| piece.repeat(n))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the sizes, the url, action name and referrer stay within what Matomo keeps
    /// (1024 bytes, as decoded), cut where a decoder sees whole characters, and the cut is
    /// reported.
    #[test]
    fn hits_stay_within_matomo_limits_whatever_the_sizes(
        path in long_text(), referer in long_text(), rand in any::<u32>(),
    ) {
        let facts = RequestFacts {
            method: "GET".into(), scheme: "https".into(), authority: "shop.example".into(),
            path: format!("/{path}"), referer: Some(referer.clone()), ..RequestFacts::default()
        };
        let t = template(1, false);
        let (hit, cut) = t.encode(&facts, Kind::Pageview, &t.naming(facts.path_only()), rand);
        let p = parse_hit(&hit);
        let full_url = format!("https://shop.example/{path}");
        prop_assert!(p["url"].len() <= 1024);
        prop_assert!(full_url.starts_with(&p["url"]));
        prop_assert!(p["action_name"].len() <= 1024);
        let long = full_url.len() > 1024 || referer.len() > 1024
            || String::from_utf8_lossy(&percent_decode(&format!("/{path}"))).len() > 1024;
        prop_assert_eq!(cut, long);
        if !referer.is_empty() {
            prop_assert!(p["urlref"].len() <= 1024);
            prop_assert!(referer.starts_with(&p["urlref"]));
        }
        prop_assert!(hit.len() <= 3 * 3 * 1024 + 600, "{}", hit.len());
    }
}
