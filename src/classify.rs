//! What a request becomes in Matomo, decided once, from the response's content type,
//! disposition and status and the request's method, after the ignore rules. The goal: the
//! proxy's pageviews and downloads for a browsing session are the ones Matomo's JavaScript
//! tracker would record for it (documents and downloads; not the scripts, styles and images a
//! page loads, nor redirects), and API calls are events, not pageviews.

/// What a tracked request is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pageview,
    /// An HTML page answered 4xx/5xx: a pageview titled `404/URL = …/From = …`, Matomo's
    /// convention for error pages, so they group by status in the Page Titles report.
    ErrorPage,
    /// A Matomo download (`download=` the url).
    Download,
    /// A Matomo event: category `api_event_category`, action the method (and the status when
    /// it is an error), name the action name.
    Event,
    /// Not tracked, for this reason.
    Ignore(Skip),
}

/// Why a request became nothing; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A script, style, image, font, media file, wasm module or source map.
    Asset,
    /// No content to show: 1xx, 3xx (redirects), 204, 304, or a HEAD or OPTIONS request.
    NoContent,
    /// An API or data response while `api_requests_as` is `ignore`, or a read of one (GET)
    /// without `track_api_reads`.
    Api,
    /// A download while `track_downloads` is off.
    Download,
    /// `track_as: ignore` from the app or the config.
    Asked,
}

/// How to report each kind of response (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindOptions {
    /// Every tracked request a pageview, as flask-matomo2 and asgi-matomo do.
    pub every_request_a_pageview: bool,
    pub api_requests_as: ApiAs,
    /// API reads (GET) as events too. Off: a page's own data fetches are not something its
    /// visitor did, and as actions they would make every one-page visit a non-bounce.
    pub track_api_reads: bool,
    pub track_downloads: bool,
    pub assets_as_downloads: bool,
    pub error_page_titles: bool,
}

impl Default for KindOptions {
    fn default() -> Self {
        KindOptions {
            every_request_a_pageview: false,
            api_requests_as: ApiAs::Event,
            track_api_reads: false,
            track_downloads: true,
            assets_as_downloads: false,
            error_page_titles: true,
        }
    }
}

/// What an API or data response becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAs {
    Event,
    Pageview,
    Ignore,
}

/// A kind forced by the app (`x-matomo-track-as`) or the config (`track_as` in
/// `routes_details` and `action_rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackAs {
    Pageview,
    Event,
    Download,
    Ignore,
}

impl TrackAs {
    pub fn parse(value: &str) -> Option<TrackAs> {
        match value.trim().to_ascii_lowercase().as_str() {
            "pageview" => Some(TrackAs::Pageview),
            "event" => Some(TrackAs::Event),
            "download" => Some(TrackAs::Download),
            "ignore" => Some(TrackAs::Ignore),
            _ => None,
        }
    }
}

/// What the request said about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without query.
    pub path: &'a str,
    /// `Sec-Fetch-Dest`, which browsers send: what the page will do with the answer
    /// (`document`, `image`, `script`, `empty` for fetch/XHR, …).
    pub fetch_dest: Option<&'a str>,
}

/// What the response said about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Response<'a> {
    /// 0 when there was no response.
    pub status: u32,
    /// The `content-type` header as sent.
    pub content_type: Option<&'a str>,
    /// `content-disposition: attachment`.
    pub attachment: bool,
    /// A 206 that is not the first part of its file (`content-range` not from byte 0): one
    /// download is many range requests.
    pub later_part: bool,
}

/// Decides what a request becomes. `forced` is the app's or the config's `track_as`, the
/// app's winning.
pub fn classify(
    request: Request,
    response: Response,
    forced: Option<TrackAs>,
    o: &KindOptions,
) -> Kind {
    let Request {
        method,
        path,
        fetch_dest,
    } = request;
    if let Some(forced) = forced {
        return match forced {
            TrackAs::Pageview => Kind::Pageview,
            TrackAs::Event => Kind::Event,
            TrackAs::Download => Kind::Download,
            TrackAs::Ignore => Kind::Ignore(Skip::Asked),
        };
    }
    if o.every_request_a_pageview {
        return Kind::Pageview;
    }
    let status = response.status;
    let no_content = matches!(status, 0..=199 | 204 | 300..=399)
        || (status == 206 && response.later_part)
        || method.eq_ignore_ascii_case("HEAD")
        || method.eq_ignore_ascii_case("OPTIONS");
    if no_content {
        return Kind::Ignore(Skip::NoContent);
    }
    let success = (200..300).contains(&status);
    let by_type = match response.content_type.map(mime) {
        Some(m) if !m.is_empty() => of_type(&m),
        _ => of_extension(path),
    };
    let by_type = match (fetch_dest.map(str::to_ascii_lowercase).as_deref(), by_type) {
        // What the browser will do with it says more than the type: an image or a script that
        // failed is still not a page, and HTML fetched by a script is data.
        (Some(dest), _) if is_asset_dest(dest) => Content::Asset,
        (Some("empty"), Content::Html) => Content::Data,
        // A missing asset answered with the site's HTML error page is still an asset.
        (_, Content::Html) if !success && of_extension(path) == Content::Asset => Content::Asset,
        (_, content) => content,
    };
    let download = |o: &KindOptions| {
        if o.track_downloads {
            Kind::Download
        } else {
            Kind::Ignore(Skip::Download)
        }
    };
    if response.attachment && success {
        return download(o);
    }
    match by_type {
        Content::Html if success => Kind::Pageview,
        Content::Html if o.error_page_titles => Kind::ErrorPage,
        Content::Html => Kind::Pageview,
        Content::Asset if success && o.assets_as_downloads => download(o),
        Content::Asset => Kind::Ignore(Skip::Asset),
        Content::Document if success => download(o),
        Content::Document | Content::Data => match o.api_requests_as {
            ApiAs::Event if method.eq_ignore_ascii_case("GET") && !o.track_api_reads => {
                Kind::Ignore(Skip::Api)
            }
            ApiAs::Event => Kind::Event,
            ApiAs::Pageview => Kind::Pageview,
            ApiAs::Ignore => Kind::Ignore(Skip::Api),
        },
    }
}

/// `Sec-Fetch-Dest` values of what a page loads for itself.
fn is_asset_dest(dest: &str) -> bool {
    matches!(
        dest,
        "image"
            | "script"
            | "style"
            | "font"
            | "audio"
            | "video"
            | "track"
            | "manifest"
            | "worker"
            | "sharedworker"
            | "serviceworker"
            | "audioworklet"
            | "paintworklet"
            | "xslt"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Html,
    /// Loaded by a page: scripts, styles, images, fonts, media, wasm, source maps.
    Asset,
    /// A file people download: documents, archives, installers.
    Document,
    /// Anything else: JSON, XML, protobuf, plain text, no type at all.
    Data,
}

/// The media type without parameters, lower-cased: `Text/HTML; charset=utf-8` → `text/html`.
fn mime(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn of_type(mime: &str) -> Content {
    let (top, sub) = mime.split_once('/').unwrap_or((mime, ""));
    match (top, sub) {
        ("text", "html") | ("application", "xhtml+xml") => Content::Html,
        ("image" | "font" | "audio" | "video", _) => Content::Asset,
        ("text", "css" | "javascript" | "ecmascript")
        | (
            "application",
            "javascript" | "x-javascript" | "ecmascript" | "wasm" | "font-woff" | "font-woff2"
            | "x-font-ttf" | "x-font-otf" | "vnd.ms-fontobject",
        ) => Content::Asset,
        ("text", "csv" | "calendar") => Content::Document,
        ("application", sub) if is_document(sub) => Content::Document,
        _ => Content::Data,
    }
}

/// Application types of files people download: PDF, office documents, archives, installers,
/// e-books, and `octet-stream` (a file the server does not name).
fn is_document(sub: &str) -> bool {
    matches!(
        sub,
        "pdf"
            | "octet-stream"
            | "zip"
            | "gzip"
            | "x-gzip"
            | "x-tar"
            | "x-bzip2"
            | "x-xz"
            | "x-7z-compressed"
            | "vnd.rar"
            | "x-rar-compressed"
            | "java-archive"
            | "x-msdownload"
            | "x-msi"
            | "x-apple-diskimage"
            | "vnd.debian.binary-package"
            | "x-rpm"
            | "vnd.android.package-archive"
            | "epub+zip"
            | "msword"
            | "rtf"
            | "vnd.ms-excel"
            | "vnd.ms-powerpoint"
            | "x-bittorrent"
    ) || sub.starts_with("vnd.openxmlformats-officedocument.")
        || sub.starts_with("vnd.oasis.opendocument.")
}

/// When the response names no type: by the path's extension, as Matomo's JavaScript tracker
/// tells downloads (its `configDownloadExtensions`, less the images, scripts and media a page
/// loads, which are assets here).
fn of_extension(path: &str) -> Content {
    let name = path.rsplit('/').next().unwrap_or_default();
    let Some((_, ext)) = name.rsplit_once('.') else {
        return Content::Data;
    };
    const ASSETS: &[&str] = &[
        "js", "mjs", "css", "map", "wasm", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp",
        "avif", "bmp", "woff", "woff2", "ttf", "otf", "eot", "mp3", "mp4", "m4a", "ogg", "ogv",
        "oga", "webm", "wav", "flac", "aac", "mov", "avi",
    ];
    const DOCUMENTS: &[&str] = &[
        "7z", "apk", "arc", "arj", "asc", "azw3", "bin", "csv", "deb", "dmg", "doc", "docx",
        "epub", "exe", "gz", "gzip", "hqx", "ibooks", "jar", "md5", "mobi", "msi", "msp", "odb",
        "odf", "odg", "ods", "odt", "pdf", "ppt", "pptx", "rar", "rpm", "rtf", "sea", "sha",
        "sha256", "sha512", "sig", "sit", "tar", "tbz", "tbz2", "bz", "bz2", "tgz", "torrent",
        "wpd", "xls", "xlsx", "xz", "z", "zip",
    ];
    let is = |known: &&str| known.eq_ignore_ascii_case(ext);
    if ["html", "htm", "xhtml"].iter().any(is) {
        Content::Html
    } else if ASSETS.iter().any(is) {
        Content::Asset
    } else if DOCUMENTS.iter().any(is) {
        Content::Document
    } else {
        Content::Data
    }
}

/// Whether a 206's `content-range` (`bytes 500-999/5000`) starts after the file's first byte:
/// such a response is one more range request of a download already counted.
pub fn is_later_part(content_range: &str) -> bool {
    let range = content_range.trim_start();
    match (range.get(..5), range.get(5..)) {
        (Some(unit), Some(rest)) if unit.eq_ignore_ascii_case("bytes") => rest
            .trim_start()
            .split('-')
            .next()
            .and_then(|first| first.trim().parse::<u64>().ok())
            .is_some_and(|first| first > 0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, path: &str, status: u32, content_type: Option<&str>) -> Kind {
        kind_with(method, path, status, content_type, &KindOptions::default())
    }

    fn kind_with(
        method: &str,
        path: &str,
        status: u32,
        content_type: Option<&str>,
        o: &KindOptions,
    ) -> Kind {
        let response = Response {
            status,
            content_type,
            ..Response::default()
        };
        classify(request(method, path), response, None, o)
    }

    fn request<'a>(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            fetch_dest: None,
        }
    }

    const HTML: Option<&str> = Some("text/html; charset=utf-8");

    #[test]
    fn html_documents_are_pageviews_and_error_pages_have_their_own_title() {
        assert_eq!(kind("GET", "/", 200, HTML), Kind::Pageview);
        assert_eq!(
            kind("POST", "/form", 200, Some("Application/XHTML+XML")),
            Kind::Pageview
        );
        assert_eq!(kind("GET", "/x", 404, HTML), Kind::ErrorPage);
        assert_eq!(kind("GET", "/x", 500, HTML), Kind::ErrorPage);
        let plain = KindOptions {
            error_page_titles: false,
            ..KindOptions::default()
        };
        assert_eq!(kind_with("GET", "/x", 404, HTML, &plain), Kind::Pageview);
    }

    #[test]
    fn assets_are_not_tracked_unless_asked_as_downloads() {
        for (path, ct) in [
            ("/app.js", Some("application/javascript")),
            ("/s.css", Some("text/css")),
            ("/logo.png", Some("image/png")),
            ("/f.woff2", Some("font/woff2")),
            ("/v.mp4", Some("video/mp4")),
            ("/m.wasm", Some("application/wasm")),
            ("/app.js.map", None),
            ("/logo.svg", None),
            ("/missing.png", Some("image/png")),
        ] {
            assert_eq!(
                kind("GET", path, 200, ct),
                Kind::Ignore(Skip::Asset),
                "{path}"
            );
        }
        let o = KindOptions {
            assets_as_downloads: true,
            ..KindOptions::default()
        };
        assert_eq!(
            kind_with("GET", "/logo.png", 200, Some("image/png"), &o),
            Kind::Download
        );
        assert_eq!(
            kind_with("GET", "/logo.png", 404, Some("image/png"), &o),
            Kind::Ignore(Skip::Asset)
        );
    }

    #[test]
    fn files_people_download_are_downloads() {
        for (path, ct) in [
            ("/a.pdf", Some("application/pdf")),
            (
                "/a",
                Some("application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
            ),
            ("/a.zip", Some("application/zip")),
            ("/setup.exe", Some("application/octet-stream")),
            ("/report.csv", Some("text/csv")),
            ("/a.tar.gz", None),
            ("/a.PDF", None),
        ] {
            assert_eq!(kind("GET", path, 200, ct), Kind::Download, "{path}");
        }
        let attachment = Response {
            status: 200,
            content_type: Some("application/json"),
            attachment: true,
            ..Response::default()
        };
        let o = KindOptions::default();
        let export = request("GET", "/export");
        assert_eq!(classify(export, attachment, None, &o), Kind::Download);
        let off = KindOptions {
            track_downloads: false,
            ..o
        };
        assert_eq!(
            classify(export, attachment, None, &off),
            Kind::Ignore(Skip::Download)
        );
        assert!(is_later_part("bytes 500-999/5000"));
        assert!(is_later_part("Bytes  1-2/*"));
        for first in [
            "bytes 0-499/5000",
            "bytes */5000",
            "items 5-9/10",
            "bytes x-1/2",
            "",
        ] {
            assert!(!is_later_part(first), "{first:?}");
        }
        let part = |later_part| Response {
            status: 206,
            content_type: Some("application/pdf"),
            later_part,
            ..Response::default()
        };
        let pdf = request("GET", "/a.pdf");
        assert_eq!(
            classify(pdf, part(false), None, &o),
            Kind::Download,
            "the first part"
        );
        assert_eq!(
            classify(pdf, part(true), None, &o),
            Kind::Ignore(Skip::NoContent),
            "one download, however many ranges"
        );
        assert_eq!(
            kind("POST", "/gone.pdf", 404, Some("application/pdf")),
            Kind::Event,
            "an error is not a download"
        );
    }

    #[test]
    fn api_and_data_responses_are_events_or_as_configured() {
        for ct in [
            Some("application/json"),
            Some("application/xml"),
            Some("application/grpc"),
            Some("application/x-protobuf"),
            Some("text/plain"),
            None,
        ] {
            assert_eq!(kind("POST", "/api/cart", 200, ct), Kind::Event, "{ct:?}");
        }
        let json = Some("application/json");
        assert_eq!(kind("DELETE", "/api/cart", 422, json), Kind::Event);
        // A page's own reads are not what its visitor did.
        assert_eq!(kind("GET", "/api/cart", 200, json), Kind::Ignore(Skip::Api));
        let reads = KindOptions {
            track_api_reads: true,
            ..KindOptions::default()
        };
        assert_eq!(
            kind_with("GET", "/api/cart", 200, json, &reads),
            Kind::Event
        );
        for (api, want) in [
            (ApiAs::Pageview, Kind::Pageview),
            (ApiAs::Ignore, Kind::Ignore(Skip::Api)),
        ] {
            let o = KindOptions {
                api_requests_as: api,
                ..KindOptions::default()
            };
            assert_eq!(kind_with("POST", "/api", 200, json, &o), want);
            assert_eq!(kind_with("GET", "/api", 200, json, &o), want, "reads too");
        }
    }

    #[test]
    fn what_the_browser_will_do_with_a_response_wins_over_its_type() {
        let o = KindOptions::default();
        let fetched = |dest, status, ct| {
            let r = Request {
                method: "GET",
                path: "/x",
                fetch_dest: Some(dest),
            };
            let response = Response {
                status,
                content_type: Some(ct),
                ..Response::default()
            };
            classify(r, response, None, &o)
        };
        assert_eq!(
            fetched("image", 404, "text/html"),
            Kind::Ignore(Skip::Asset)
        );
        assert_eq!(
            fetched("script", 200, "text/plain"),
            Kind::Ignore(Skip::Asset)
        );
        assert_eq!(fetched("document", 200, "text/html"), Kind::Pageview);
        assert_eq!(
            fetched("empty", 200, "text/html"),
            Kind::Ignore(Skip::Api),
            "HTML a script reads"
        );
        assert_eq!(fetched("document", 200, "application/pdf"), Kind::Download);
        // Without the header, a missing asset's HTML error page is still an asset.
        assert_eq!(
            kind("GET", "/static/missing.png", 404, HTML),
            Kind::Ignore(Skip::Asset)
        );
        assert_eq!(kind("GET", "/missing", 404, HTML), Kind::ErrorPage);
    }

    #[test]
    fn redirects_no_content_and_head_or_options_are_not_tracked() {
        for status in [0, 101, 204, 301, 302, 304, 307, 308] {
            assert_eq!(
                kind("GET", "/old", status, HTML),
                Kind::Ignore(Skip::NoContent),
                "{status}"
            );
        }
        assert_eq!(kind("HEAD", "/", 200, HTML), Kind::Ignore(Skip::NoContent));
        assert_eq!(
            kind("options", "/", 200, HTML),
            Kind::Ignore(Skip::NoContent)
        );
    }

    #[test]
    fn the_app_or_the_config_can_force_the_kind_and_one_switch_brings_back_the_seeds() {
        let r = Response {
            status: 302,
            ..Response::default()
        };
        let o = KindOptions::default();
        let home = request("GET", "/");
        assert_eq!(
            classify(home, r, Some(TrackAs::Pageview), &o),
            Kind::Pageview
        );
        assert_eq!(
            classify(home, r, Some(TrackAs::Ignore), &o),
            Kind::Ignore(Skip::Asked)
        );
        assert_eq!(TrackAs::parse(" Download "), Some(TrackAs::Download));
        assert_eq!(TrackAs::parse("page"), None);
        let seeds = KindOptions {
            every_request_a_pageview: true,
            ..o
        };
        assert_eq!(
            kind_with("GET", "/app.js", 200, Some("text/javascript"), &seeds),
            Kind::Pageview
        );
        assert_eq!(kind_with("HEAD", "/", 302, None, &seeds), Kind::Pageview);
    }
}
