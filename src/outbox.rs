//! Where a worker's hits wait for the next tick, and how they travel to the VM that sends for
//! the whole Envoy: one message on a Proxy-Wasm shared queue per tick, not one host call per
//! request. Pure.

use crate::request::RequestFacts;

/// Hits a worker encoded since its last tick, each with its visitor key.
pub struct Outbox {
    entries: Vec<(u32, String)>,
    bytes: usize,
    max_hits: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_hits: usize, max_bytes: usize) -> Self {
        Outbox {
            entries: Vec::new(),
            bytes: 0,
            max_hits,
            max_bytes,
        }
    }

    /// Keeps a hit; false (and the hit dropped) when the outbox is full.
    pub fn push(&mut self, key: u32, hit: String) -> bool {
        if self.entries.len() >= self.max_hits || self.bytes + hit.len() > self.max_bytes {
            return false;
        }
        self.bytes += hit.len();
        self.entries.push((key, hit));
        true
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything held, in order, leaving the outbox empty.
    pub fn take(&mut self) -> Vec<(u32, String)> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }

    /// Everything held as one shared-queue message, leaving the outbox empty.
    pub fn take_message(&mut self) -> Vec<u8> {
        encode(&self.take())
    }
}

/// A message: per hit, its key in 8 hex digits, the hit, a newline. Hits hold only URL-safe
/// characters, so neither the newline nor anything else needs escaping.
pub fn encode(entries: &[(u32, String)]) -> Vec<u8> {
    let size = entries.iter().map(|(_, h)| h.len() + 9).sum();
    let mut out = Vec::with_capacity(size);
    for (key, hit) in entries {
        out.extend_from_slice(format!("{key:08x}").as_bytes());
        out.extend_from_slice(hit.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The hits of a message, with their keys; a malformed line is skipped.
pub fn decode(message: &[u8]) -> impl Iterator<Item = (u32, &str)> {
    message.split(|&b| b == b'\n').filter_map(|line| {
        let key = std::str::from_utf8(line.get(..8)?).ok()?;
        let hit = std::str::from_utf8(line.get(8..)?).ok()?;
        Some((u32::from_str_radix(key, 16).ok()?, hit)).filter(|(_, h)| h.starts_with('?'))
    })
}

/// The key that decides a hit's lane: the same for every request of one person (one client
/// address and browser), so that person's hits stay in one lane, in order.
pub fn visitor_key(facts: &RequestFacts) -> u32 {
    let mut hash: u32 = 0x811c_9dc5; // FNV-1a
    let ip = facts.client_ip.as_deref().unwrap_or_default();
    let ua = facts.user_agent.as_deref().unwrap_or_default();
    for b in ip.bytes().chain([0]).chain(ua.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_skip_what_is_malformed() {
        let entries = vec![(0, "?a=1".to_string()), (u32::MAX, "?b=%0A".into())];
        let message = encode(&entries);
        let back: Vec<_> = decode(&message).collect();
        assert_eq!(back, [(0, "?a=1"), (u32::MAX, "?b=%0A")]);
        let junk = b"zz\n0000000g?x\n00000001notahit\n00000002?ok\n\xff";
        assert_eq!(decode(junk).collect::<Vec<_>>(), [(2, "?ok")]);
        assert_eq!(decode(b"").count(), 0);
    }

    #[test]
    fn the_outbox_is_bounded_and_emptied_by_take() {
        let mut o = Outbox::new(2, 10);
        assert!(o.push(1, "?12345".into()));
        assert!(!o.push(1, "?12345".into()), "bytes");
        assert!(o.push(1, "?1".into()));
        assert!(!o.push(1, "?2".into()), "hits");
        assert_eq!(decode(&o.take_message()).count(), 2);
        assert!(o.is_empty());
        assert!(o.push(1, "?12345".into()));
    }

    #[test]
    fn one_person_one_key() {
        let person = |ip: &str, ua: &str| RequestFacts {
            client_ip: Some(ip.into()),
            user_agent: Some(ua.into()),
            path: format!("/{ip}"),
            ..RequestFacts::default()
        };
        let a = visitor_key(&person("10.0.0.1", "Firefox"));
        assert_eq!(
            a,
            visitor_key(&RequestFacts {
                path: "/other".into(),
                ..person("10.0.0.1", "Firefox")
            })
        );
        assert_ne!(a, visitor_key(&person("10.0.0.2", "Firefox")));
        assert_ne!(a, visitor_key(&person("10.0.0.1", "Chrome")));
    }
}
