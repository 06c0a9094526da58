//! People stay people without a token. Without `token_auth`, Matomo sees every hit coming from
//! the proxy's address and tells visitors apart by a fingerprint of that address, the OS,
//! browser and language, so everyone behind the proxy with the same browser is one visitor. The
//! filter then sends a visitor id (`cid`) of its own: the first 16 hex digits of a keyed hash
//! (SipHash-2-4, 128-bit key) of the UTC day, the client address as Envoy computed it, the
//! User-Agent, the Accept-Language (Matomo's own fingerprint has the language too) and the site. The key is the same on every worker and proxy that share the
//! config, so one person is one visitor whichever pod answers; the day in the hash means no id
//! lives longer than a day, and no address can be read back from it.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};

/// The 128-bit key of the visitor id hash.
#[derive(Clone, PartialEq, Eq)]
pub struct VisitorKey([u8; 16]);

impl std::fmt::Debug for VisitorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VisitorKey(<redacted>)")
    }
}

impl VisitorKey {
    /// A key stretched from a secret (`visitor_id_secret`), or, failing one, from the plugin
    /// configuration: identical on every proxy that shares it, but guessable by whoever knows
    /// the configuration, who could then match ids against guessed addresses.
    pub fn derive(material: &[u8]) -> VisitorKey {
        // A fixed key turns any material into 128 bits; the secrecy is the material's.
        let mut h = SipHasher128::new_with_keys(0x6d61_746f_6d6f_2d70, 0x726f_7879_2d77_6173);
        h.write(material);
        let hash = h.finish128();
        let mut key = [0u8; 16];
        for (slot, byte) in key.iter_mut().zip(
            hash.h1
                .to_le_bytes()
                .into_iter()
                .chain(hash.h2.to_le_bytes()),
        ) {
            *slot = byte;
        }
        VisitorKey(key)
    }

    /// The visitor id of one client address, User-Agent and language on one site on one UTC day.
    pub fn visitor_id(
        &self,
        unix_secs: u64,
        address: &str,
        user_agent: &str,
        language: &str,
        site: u64,
    ) -> String {
        let mut h = SipHasher24::new_with_key(&self.0);
        h.write(&(unix_secs / 86_400).to_le_bytes());
        for part in [address, user_agent, language].map(str::as_bytes) {
            h.write(&(part.len() as u64).to_le_bytes());
            h.write(part);
        }
        h.write(&site.to_le_bytes());
        let mut id = Vec::with_capacity(16);
        crate::text::push_hex(&mut id, h.finish(), 16);
        String::from_utf8(id).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn one_person_one_id_per_day_and_site() {
        let key = VisitorKey::derive(b"secret");
        let id = key.visitor_id(100 * DAY + 5, "203.0.113.9", "Firefox", "fr", 1);
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(
            id,
            key.visitor_id(100 * DAY + 80_000, "203.0.113.9", "Firefox", "fr", 1)
        );
        for other in [
            key.visitor_id(101 * DAY, "203.0.113.9", "Firefox", "fr", 1),
            key.visitor_id(100 * DAY, "203.0.113.10", "Firefox", "fr", 1),
            key.visitor_id(100 * DAY, "203.0.113.9", "Chrome", "fr", 1),
            key.visitor_id(100 * DAY, "203.0.113.9", "Firefox", "de", 1),
            key.visitor_id(100 * DAY, "203.0.113.9", "Firefox", "fr", 2),
            VisitorKey::derive(b"other").visitor_id(100 * DAY, "203.0.113.9", "Firefox", "fr", 1),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let key = VisitorKey::derive(b"k");
        assert_ne!(
            key.visitor_id(0, "1.2.3.4", "5", "fr", 1),
            key.visitor_id(0, "1.2.3.", "45", "fr", 1)
        );
    }

    #[test]
    fn the_key_never_shows() {
        assert_eq!(
            format!("{:?}", VisitorKey::derive(b"s")),
            "VisitorKey(<redacted>)"
        );
    }
}
