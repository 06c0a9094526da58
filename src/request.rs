//! The facts about one finished request, as plain owned data. The host glue fills this once in
//! `on_log`; everything after it (rules, hit encoding) is pure and tested natively.

use crate::app::AppParams;

/// What Matomo is told about one request. Host bytes arrive here converted lossily, so any
/// header value (non-UTF-8, empty, huge) is just a string from now on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub method: String,
    /// `http` or `https`, as Envoy saw the request.
    pub scheme: String,
    pub authority: String,
    /// The raw `:path`: path and query exactly as received.
    pub path: String,
    pub user_agent: Option<String>,
    pub accept_language: Option<String>,
    pub referer: Option<String>,
    /// Response status; 0 when no response was sent (the client went away first).
    pub status: u32,
    /// The response's `content-type`, as sent.
    pub content_type: Option<String>,
    /// The response said `content-disposition: attachment`.
    pub attachment: bool,
    /// A 206 answer that is not its file's first part.
    pub later_part: bool,
    /// The request's `Sec-Fetch-Dest`.
    pub fetch_dest: Option<String>,
    /// Milliseconds from the request to the response headers.
    pub server_time_ms: Option<u64>,
    /// When the request arrived, in Unix seconds (Matomo's `cdt`).
    pub time_secs: u64,
    /// The client address Envoy computed, without port; read only when a token lets us send it.
    pub client_ip: Option<String>,
    /// The `cookie` headers joined, where Matomo's JavaScript tracker keeps its visitor id.
    pub cookie: Option<String>,
    /// The user id, from the configured `uid_header` (e.g. set by `jwt_authn`).
    pub uid: Option<String>,
    /// A visitor id from the configured `cid_header`.
    pub cid: Option<String>,
    /// Custom dimensions from `dimension_headers`: (N, value).
    pub dimensions: Vec<(u16, String)>,
    /// What the app's `x-matomo-*` response headers said.
    pub app: AppParams,
    /// A value above was cut to its cap when it was read.
    pub truncated: bool,
}

impl RequestFacts {
    /// The path without its query string: what rules and `routes_details` match.
    pub fn path_only(&self) -> &str {
        path_only(&self.path)
    }
}

pub fn path_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// The IP of an Envoy `source.address` (`1.2.3.4:5678`, `[::1]:5678`, or a bare IP).
pub fn client_ip(address: &str) -> Option<&str> {
    let ip = if let Some(rest) = address.strip_prefix('[') {
        rest.split_once(']').map(|(ip, _)| ip)?
    } else if address.matches(':').count() == 1 {
        address.split_once(':').map(|(ip, _)| ip)?
    } else {
        address
    };
    let valid = !ip.is_empty()
        && ip
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':');
    valid.then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_only_drops_the_query() {
        assert_eq!(path_only("/a/b?x=1&y=2"), "/a/b");
        assert_eq!(path_only("/a?"), "/a");
        assert_eq!(path_only("/a"), "/a");
        assert_eq!(path_only(""), "");
    }

    #[test]
    fn client_ip_strips_the_port() {
        assert_eq!(client_ip("10.1.2.3:5678"), Some("10.1.2.3"));
        assert_eq!(client_ip("[2001:db8::1]:443"), Some("2001:db8::1"));
        assert_eq!(client_ip("2001:db8::1"), Some("2001:db8::1"));
        assert_eq!(client_ip("127.0.0.1"), Some("127.0.0.1"));
        assert_eq!(client_ip(""), None);
        assert_eq!(client_ip("[::1"), None);
        assert_eq!(client_ip("/var/run/sock"), None);
        assert_eq!(client_ip("envoy://internal"), None);
    }
}
