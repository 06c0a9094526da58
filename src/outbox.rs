//! Where a worker's hits wait for the next tick, and how they travel to the VM that sends for
//! the whole Envoy: one message on a Proxy-Wasm shared queue per tick, not one host call per
//! request. Pure.

use crate::request::RequestFacts;
use crate::text::push_hex;

/// A hit on its way: its token group (the bulk calls it may share, see `Settings::tokens`), its
/// visitor key, when its request arrived (Unix milliseconds: the sender puts hits from several
/// workers back in order), and the hit.
pub type Entry = (usize, u32, u64, String);

/// Hits a worker encoded since its last tick.
pub struct Outbox {
    entries: Vec<Entry>,
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
    pub fn push(&mut self, group: usize, key: u32, at: u64, hit: String) -> bool {
        if self.entries.len() >= self.max_hits || self.bytes + hit.len() > self.max_bytes {
            return false;
        }
        self.bytes += hit.len();
        self.entries.push((group, key, at, hit));
        true
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything held, in order, leaving the outbox empty.
    pub fn take(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }

    /// Everything held as one shared-queue message, leaving the outbox empty.
    pub fn take_message(&mut self) -> Vec<u8> {
        encode(&self.take())
    }
}

/// A message: per hit, its group in 4 hex digits, its key in 8, its time in 12, the hit, a
/// newline. Hits hold only URL-safe characters, so nothing needs escaping.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let size = entries.iter().map(|(_, _, _, h)| h.len() + 25).sum();
    let mut out = Vec::with_capacity(size);
    for (group, key, at, hit) in entries {
        push_hex(&mut out, *group as u64, 4);
        push_hex(&mut out, u64::from(*key), 8);
        push_hex(&mut out, *at, 12);
        out.extend_from_slice(hit.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The entries of a message; a malformed line is skipped.
pub fn decode(message: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    message.split(|&b| b == b'\n').filter_map(|line| {
        let hex = |range: std::ops::Range<usize>| {
            u64::from_str_radix(std::str::from_utf8(line.get(range)?).ok()?, 16).ok()
        };
        let group = usize::try_from(hex(0..4)?).ok()?;
        let key = u32::try_from(hex(4..12)?).ok()?;
        let at = hex(12..24)?;
        let hit = std::str::from_utf8(line.get(24..)?).ok()?;
        hit.starts_with('?')
            .then(|| (group, key, at, hit.to_owned()))
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
        let entries = vec![
            (0, 0, 1_700_000_000_123, "?a=1".to_string()),
            (3, u32::MAX, 0, "?b=%0A".into()),
        ];
        let message = encode(&entries);
        assert_eq!(decode(&message).collect::<Vec<_>>(), entries);
        let junk = b"zz\n00000000000000000000000g?x\n000000000001000000000000notahit\n000100000002000000000003?ok\n\xff";
        assert_eq!(
            decode(junk).collect::<Vec<_>>(),
            [(1, 2, 3, "?ok".to_string())]
        );
        assert_eq!(decode(b"").count(), 0);
    }

    #[test]
    fn the_outbox_is_bounded_and_emptied_by_take() {
        let mut o = Outbox::new(2, 10);
        assert!(o.push(0, 1, 0, "?12345".into()));
        assert!(!o.push(0, 1, 0, "?12345".into()), "bytes");
        assert!(o.push(0, 1, 0, "?1".into()));
        assert!(!o.push(0, 1, 0, "?2".into()), "hits");
        assert_eq!(decode(&o.take_message()).count(), 2);
        assert!(o.is_empty());
        assert!(o.push(0, 1, 0, "?12345".into()));
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
