//! How much of each client-controlled value the filter keeps, in bytes. Envoy lets through
//! 60 KB paths and headers; everything after the host read works on at most these, so a
//! request's memory and CPU in the filter are bounded whatever the client sends. A value cut
//! here counts in `hits_truncated`. A leaf: it imports nothing of the crate.

/// Matomo keeps the first 1024 characters of a page URL, page title and referrer URL
/// (`[Tracker] page_maximum_length`); the tracked `url`, `action_name` and `urlref` are cut
/// there, never inside an escape or a character.
pub const MATOMO_TEXT: usize = 1024;
/// The raw `:path` as read: four times what Matomo keeps, room for the query filter to drop
/// parameters and for escapes that decode to one byte.
pub const PATH: usize = 4 * MATOMO_TEXT;
/// What ignore patterns and action rules see of the path (without query). regex-lite's engine
/// costs about 70 ns per input byte and pattern (`/users/\d+/orders` on 1 KiB of digits:
/// 75 µs), so a hostile path is matched on its first 512 bytes; a pattern that would only
/// match past this point is missed. Real paths are far shorter.
pub const RULES_PATH: usize = 512;
/// A host name is at most 253 bytes, plus a port.
pub const AUTHORITY: usize = 260;
/// Real User-Agents stay under 300 bytes; Matomo's device detection needs no more. This is
/// also what `ignored_ua_patterns` see, for the same reason as [`RULES_PATH`].
pub const USER_AGENT: usize = 512;
/// Accept-Language: Matomo keeps the first language (20 bytes).
pub const ACCEPT_LANGUAGE: usize = 256;
/// The Referer as read, before the query filter and the cut to [`MATOMO_TEXT`].
pub const REFERER: usize = PATH;
/// All `cookie` headers together, searched for Matomo's `_pk_id` cookie.
pub const COOKIE: usize = 8 * 1024;
/// Matomo's `user_id` column holds 200 characters.
pub const USER_ID: usize = 200;
/// Matomo's custom dimension columns hold 255 characters.
pub const DIMENSION: usize = 255;
/// Any other free text an app or a header sets (event category, action and name, search
/// keyword, campaign): Matomo's action name length.
pub const APP_VALUE: usize = MATOMO_TEXT;
/// Matomo's custom variable names and values hold 200 characters.
pub const CVAR_TEXT: usize = 200;
/// Matomo has five custom variable slots per scope by default.
pub const CVAR_ENTRIES: usize = 5;
/// The method and scheme are short tokens.
pub const TOKEN: usize = 32;
/// `x-matomo-*` response headers read per request; the rest are refused and counted.
pub const APP_HEADERS: usize = 32;
