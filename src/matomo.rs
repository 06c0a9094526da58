//! Matomo's side of the wire: the bulk tracking body, what its answers mean, and the one API
//! call that checks at start that the site exists and the token may track it. Pure.

use crate::config::Secret;

/// `,"token_auth":"…"}` or `}`: the end of every bulk body.
pub fn body_tail(token: Option<&Secret>) -> String {
    match token {
        Some(t) => format!(
            ",\"token_auth\":{}}}",
            serde_json::Value::String(t.expose().to_owned())
        ),
        None => "}".to_owned(),
    }
}

/// Bytes a bulk body adds around its hits: `{"requests":[` and `]`, plus the tail.
pub fn body_overhead(tail: &str) -> usize {
    14 + tail.len()
}

/// Bytes a hit adds to a bulk body: its quotes and a comma.
pub fn hit_cost(hit: &str) -> usize {
    hit.len() + 3
}

/// `{"requests":["?…","?…"],"token_auth":"…"}`. Hits hold only URL-safe characters, so they
/// go into the JSON strings as they are.
pub fn bulk_body<'a>(hits: impl Iterator<Item = &'a str>, tail: &str, size: usize) -> String {
    let mut body = String::with_capacity(size);
    body.push_str("{\"requests\":[");
    for (i, hit) in hits.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(hit);
        body.push('"');
    }
    body.push(']');
    body.push_str(tail);
    body
}

/// How Matomo answered a bulk call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted; `invalid` hits were refused by Matomo one by one (unknown site, `cip` without
    /// a valid token, …). A Matomo queueing its requests (QueuedTracking) answers a GIF or 204
    /// and counts nothing: then `invalid` is 0.
    Accepted { invalid: u64 },
    /// Worth trying again: no answer, a timeout, 5xx, 429. `timed_out`: the call may have been
    /// recorded before the answer was lost, so sending it again may record it twice.
    Failed { reason: String, timed_out: bool },
    /// The body as a whole was refused, and a smaller one may pass: 413 (too large for the web
    /// server), 400 (QueuedTracking refuses a whole bulk call when one hit is invalid). The
    /// batch is split in halves, down to single hits.
    Split(String),
    /// Will fail the same way again (bulk tracking off, 401/403, 404): the batch is dropped.
    Refused(String),
    /// Refused as a whole where the site check already found a site or the token wrong: the
    /// batch is dropped as invalid, not halved into hundreds of calls that all fail alike.
    Invalid(String),
}

/// Reads Matomo's answer: the `:status` (absent when the call failed or timed out), the body
/// (`{"status":"success","tracked":N,"invalid":M}`), and whether the call ran into its timeout.
pub fn read_answer(status: Option<u32>, body: &[u8], timed_out: bool) -> Answer {
    match status {
        None if timed_out => Answer::Failed {
            reason: "no answer within http_timeout".into(),
            timed_out: true,
        },
        None => Answer::Failed {
            reason: "no response (connection refused, reset or closed)".into(),
            timed_out: false,
        },
        Some(s @ 200..=299) => {
            let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if json.get("status").and_then(|v| v.as_str()) == Some("error") {
                let message = json.get("message").and_then(|v| v.as_str()).unwrap_or("");
                return Answer::Refused(format!("Matomo answered {s} with an error: {message}"));
            }
            let invalid = json.get("invalid").and_then(|v| v.as_u64()).unwrap_or(0);
            Answer::Accepted { invalid }
        }
        Some(s @ (408 | 429 | 500..=599)) => {
            let (reason, timed_out) = failure(s, body);
            Answer::Failed { reason, timed_out }
        }
        Some(413) => Answer::Split("Matomo's web server answered 413 (body too large)".into()),
        Some(400) => Answer::Split(
            "Matomo answered 400 (an invalid hit in a queued bulk call, or bulk tracking off)"
                .into(),
        ),
        Some(s @ (401 | 403)) => Answer::Refused(format!(
            "Matomo answered {s}: the token is not accepted (wrong, revoked, or without write \
             access to the site)"
        )),
        Some(s) => Answer::Refused(format!("Matomo answered {s}")),
    }
}

/// Why a call failed with `status`, and whether it ran into `http_timeout`. Envoy answers a
/// call that ran out of its timeout itself (504, "upstream request timeout"), and one it could
/// not deliver with a 503 of its own: neither is Matomo's answer.
fn failure(status: u32, body: &[u8]) -> (String, bool) {
    if status == 504 && body.starts_with(b"upstream request timeout") {
        return ("no answer within http_timeout".into(), true);
    }
    let reason = match envoy_reply(body) {
        Some(why) => format!("Matomo unreachable (Envoy answered {status}: {why})"),
        None => format!("Matomo answered {status}"),
    };
    (reason, false)
}

/// The text of a reply Envoy made itself because it could not reach Matomo (`upstream connect
/// error …`, `no healthy upstream`), which would otherwise read as Matomo's own 503.
fn envoy_reply(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body.get(..body.len().min(300))?).ok()?;
    (text.starts_with("upstream connect error") || text.starts_with("no healthy upstream"))
        .then(|| text.trim_end())
}

/// The API call the filter makes at start when it has a token: one `API.getBulkRequest` that
/// asks whether the token is a superuser's, which sites it may write to, and whether each
/// site exists. Form-encoded, for `POST <matomo>/index.php`.
pub fn site_check_body(token: &Secret, sites: &[u64]) -> String {
    let mut urls = vec![
        "method=UsersManager.hasSuperUserAccess".to_owned(),
        "method=SitesManager.getSitesIdWithAdminAccess".to_owned(),
        "method=SitesManager.getSitesIdWithWriteAccess".to_owned(),
    ];
    urls.extend(
        sites
            .iter()
            .map(|id| format!("method=SitesManager.getSiteFromId&idSite={id}")),
    );
    let mut body = String::from("module=API&method=API.getBulkRequest&format=json");
    for (i, url) in urls.iter().enumerate() {
        body.push_str(&format!("&urls%5B{i}%5D={}", crate::text::encoded(url)));
    }
    body.push_str("&token_auth=");
    body.push_str(&crate::text::encoded(token.expose()));
    body
}

/// What the site check found, as one log line's worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteCheck {
    Ok,
    /// Matomo refused the token itself. Matomo counts every call with it as a failed login from
    /// the proxy's address and blocks that address after 20 in an hour (its brute-force
    /// protection, which then also refuses calls with a good token), so the filter stops using
    /// it.
    TokenRefused(String),
    /// Something to fix; the text says what and how.
    Wrong(String),
    /// Matomo could not be asked (down, 5xx): try again later.
    Unreachable(String),
}

/// Reads the answer to [`site_check_body`].
pub fn read_site_check(status: Option<u32>, body: &[u8], sites: &[u64]) -> SiteCheck {
    let json: serde_json::Value = match status {
        None => return SiteCheck::Unreachable("no response".into()),
        Some(401) => {
            return SiteCheck::TokenRefused(
                "Matomo refused the token (invalid or expired): create a new one under \
                 Administration > Personal > Security and set token_auth"
                    .into(),
            )
        }
        Some(s @ (429 | 500..=599)) => return SiteCheck::Unreachable(failure(s, body).0),
        Some(200) => serde_json::from_slice(body).unwrap_or_default(),
        Some(s) => {
            return SiteCheck::Wrong(format!(
                "Matomo's API answered {s}: is matomo_url the Matomo base URL?"
            ))
        }
    };
    let Some(answers) = json.as_array() else {
        return SiteCheck::Wrong("Matomo's API gave an answer this filter does not know".into());
    };
    let ids = |v: Option<&serde_json::Value>| -> Vec<u64> {
        v.and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(as_id).collect())
            .unwrap_or_default()
    };
    let superuser = answers.first().and_then(|v| v.get("value")) == Some(&true.into());
    let writable: Vec<u64> = [ids(answers.get(1)), ids(answers.get(2))].concat();
    let mut problems = Vec::new();
    for (i, id) in sites.iter().enumerate() {
        let site = answers.get(3 + i);
        if site.and_then(|s| s.get("idsite")).is_none() {
            problems.push(format!(
                "site {id} does not exist in this Matomo, or the token cannot see it"
            ));
        } else if !superuser && !writable.contains(id) {
            problems.push(format!(
                "the token has no write access to site {id}, so Matomo refuses its hits \
                 (give the token's user write or admin access)"
            ));
        }
    }
    if problems.is_empty() {
        SiteCheck::Ok
    } else {
        SiteCheck::Wrong(problems.join("; "))
    }
}

/// A site id as Matomo's API writes it: a number or a string of digits.
fn as_id(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_bodies_are_matomo_json_with_the_token_inside() {
        let token = Secret::new("to\"ken".to_owned());
        let tail = body_tail(Some(&token));
        let body = bulk_body(["?a=1", "?b=%22"].into_iter(), &tail, 64);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"requests":["?a=1","?b=%22"],"token_auth":"to\"ken"})
        );
        assert_eq!(
            body.len(),
            body_overhead(&tail) + hit_cost("?a=1") + hit_cost("?b=%22") - 1
        );
        let v: serde_json::Value =
            serde_json::from_str(&bulk_body(["?x"].into_iter(), &body_tail(None), 0)).unwrap();
        assert_eq!(v, serde_json::json!({"requests":["?x"]}));
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(
            read_answer(
                Some(200),
                br#"{"status":"success","tracked":3,"invalid":1}"#,
                false
            ),
            Answer::Accepted { invalid: 1 }
        );
        // QueuedTracking: a GIF, or 204 with send_image=0.
        assert_eq!(
            read_answer(Some(200), b"GIF89a\x01\x00", false),
            Answer::Accepted { invalid: 0 }
        );
        assert_eq!(
            read_answer(Some(204), b"", false),
            Answer::Accepted { invalid: 0 }
        );
        assert!(matches!(
            read_answer(Some(504), b"upstream request timeout", false),
            Answer::Failed {
                timed_out: true,
                ..
            }
        ));
        assert!(matches!(
            read_answer(None, b"", true),
            Answer::Failed {
                timed_out: true,
                ..
            }
        ));
        assert!(matches!(
            read_answer(None, b"", false),
            Answer::Failed {
                timed_out: false,
                ..
            }
        ));
        assert!(matches!(
            read_answer(Some(503), b"upstream connect error or disconnect/reset before headers. reset reason: connection failure", false),
            Answer::Failed { reason, .. } if reason.starts_with("Matomo unreachable (Envoy answered 503: upstream connect")
        ));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(read_answer(Some(s), b"", false), Answer::Failed { .. }),
                "{s}"
            );
        }
        for s in [400, 413] {
            assert!(
                matches!(read_answer(Some(s), b"", false), Answer::Split(_)),
                "{s}"
            );
        }
        for s in [401, 403, 404] {
            assert!(
                matches!(read_answer(Some(s), b"", false), Answer::Refused(_)),
                "{s}"
            );
        }
        assert!(matches!(
            read_answer(Some(200), br#"{"status":"error","message":"bad token"}"#, false),
            Answer::Refused(m) if m.contains("bad token")
        ));
    }

    fn decode_form(body: &str) -> Vec<(String, String)> {
        body.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (
                    crate::text::percent_decode_lossy(k).into_owned(),
                    crate::text::percent_decode_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_site_check_asks_for_access_and_each_site_in_one_call() {
        let body = site_check_body(&Secret::new("t&k".into()), &[3, 7]);
        let form = decode_form(&body);
        assert!(form.contains(&("method".into(), "API.getBulkRequest".into())));
        assert!(form.contains(&("token_auth".into(), "t&k".into())));
        assert!(form.contains(&(
            "urls[4]".into(),
            "method=SitesManager.getSiteFromId&idSite=7".into()
        )));
    }

    #[test]
    fn site_check_answers_say_what_is_wrong() {
        let site = r#"{"idsite":3,"name":"shop"}"#;
        let unknown = r#"{"result":"error","message":"An unexpected website was found"}"#;
        let check = |status, body: String| read_site_check(status, body.as_bytes(), &[3]);
        assert_eq!(
            check(Some(200), format!(r#"[{{"value":true}},[],[],{site}]"#)),
            SiteCheck::Ok
        );
        assert_eq!(
            check(Some(200), format!(r#"[{{"value":false}},[],["3"],{site}]"#)),
            SiteCheck::Ok
        );
        assert!(matches!(
            check(Some(200), format!(r#"[{{"value":false}},[1],[],{site}]"#)),
            SiteCheck::Wrong(m) if m.contains("no write access to site 3")
        ));
        assert!(matches!(
            check(Some(200), format!(r#"[{{"value":true}},[],[],{unknown}]"#)),
            SiteCheck::Wrong(m) if m.contains("site 3 does not exist")
        ));
        assert!(matches!(
            check(Some(401), "<html>".into()),
            SiteCheck::TokenRefused(m) if m.contains("refused the token")
        ));
        assert!(matches!(
            check(None, String::new()),
            SiteCheck::Unreachable(_)
        ));
        assert!(matches!(
            check(Some(503), String::new()),
            SiteCheck::Unreachable(m) if m == "Matomo answered 503"
        ));
        assert!(matches!(
            check(Some(503), "upstream connect error or disconnect/reset before headers".into()),
            SiteCheck::Unreachable(m) if m.starts_with("Matomo unreachable (Envoy answered 503")
        ));
        assert!(matches!(
            check(Some(504), "upstream request timeout".into()),
            SiteCheck::Unreachable(m) if m == "no answer within http_timeout"
        ));
        assert!(matches!(
            check(Some(404), String::new()),
            SiteCheck::Wrong(m) if m.contains("matomo_url")
        ));
    }
}
