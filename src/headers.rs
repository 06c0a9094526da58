//! Header maps as the proxy-wasm host serialises them, read lossily and bounds-checked. One
//! host call hands over a whole map; lookups then happen here, without copying. (The SDK's own
//! decoder unwraps the UTF-8 conversion of names, so one odd byte would panic the VM.)

/// `[count: u32][(name_len: u32, value_len: u32) × count][name \0 value \0 …]`, little-endian.
pub struct Pairs<'a> {
    bytes: &'a [u8],
    count: usize,
    next: usize,
    data: usize,
}

impl<'a> Pairs<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let count = word(bytes, 0).unwrap_or(0);
        Pairs {
            bytes,
            count,
            next: 0,
            data: 4usize.saturating_add(count.saturating_mul(8)),
        }
    }
}

fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(<[u8; 4]>::try_from(b).ok()?) as usize)
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let sizes = 4 + self.next * 8;
        let name_len = word(self.bytes, sizes)?;
        let value_len = word(self.bytes, sizes + 4)?;
        let name = self
            .bytes
            .get(self.data..self.data.saturating_add(name_len))?;
        self.data = self.data.saturating_add(name_len).saturating_add(1);
        let value = self
            .bytes
            .get(self.data..self.data.saturating_add(value_len))?;
        self.data = self.data.saturating_add(value_len).saturating_add(1);
        self.next += 1;
        Some((name, value))
    }
}

/// A whole serialised header map, looked up by (lower-case) name.
pub struct HeaderMap(Vec<u8>);

impl HeaderMap {
    pub fn new(bytes: Vec<u8>) -> Self {
        HeaderMap(bytes)
    }

    /// Every value of a header (a header may be sent several times, as `cookie` may), joined
    /// with `separator` and capped like [`capped_value`].
    pub fn get_all_capped(
        &self,
        name: &str,
        separator: &str,
        max: usize,
    ) -> Option<(String, bool)> {
        self.values(name).next()?;
        Some(capped(self.values(name), separator, max, false))
    }

    /// The first value of each of `N` headers, in one pass over the map.
    pub fn first_of<const N: usize>(&self, names: [&str; N]) -> [Option<&[u8]>; N] {
        let mut found = [None; N];
        for (name, value) in Pairs::new(&self.0) {
            for (slot, wanted) in found.iter_mut().zip(names) {
                if slot.is_none() && name == wanted.as_bytes() {
                    *slot = Some(value);
                }
            }
        }
        found
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        Pairs::new(&self.0)
            .filter(move |(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The headers whose name starts with `prefix`, converted lossily; the others cost no copy.
    pub fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, String)> + 'a {
        Pairs::new(&self.0)
            .filter(move |(n, _)| n.starts_with(prefix.as_bytes()))
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
    }
}

/// One value converted lossily and cut to at most `max` bytes (with `escapes`, not inside a
/// `%XX` escape); true when cut. Only what is kept is converted.
pub fn capped_value(value: &[u8], max: usize, escapes: bool) -> (String, bool) {
    capped([value].into_iter(), "", max, escapes)
}

/// Values joined and converted lossily, reading at most a few bytes past `max`, then cut.
fn capped<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    separator: &str,
    max: usize,
    escapes: bool,
) -> (String, bool) {
    let mut bytes = Vec::new();
    let mut over = false;
    for (i, value) in values.enumerate() {
        if i > 0 {
            bytes.extend_from_slice(separator.as_bytes());
        }
        // Room for the character or escape the cut lands in; `truncate` then cuts exactly.
        let room = (max + 4).saturating_sub(bytes.len());
        over |= value.len() > room;
        bytes.extend_from_slice(value.get(..room.min(value.len())).unwrap_or_default());
        if over {
            break;
        }
    }
    let mut text = crate::text::lossy(bytes);
    let cut_off = crate::text::truncate(&mut text, max, escapes);
    (text, over || cut_off)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(map: &HeaderMap, name: &str) -> Option<String> {
        map.first_of([name])[0].map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn first_capped(
        map: &HeaderMap,
        name: &str,
        max: usize,
        escapes: bool,
    ) -> Option<(String, bool)> {
        map.first_of([name])[0].map(|v| capped_value(v, max, escapes))
    }

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend((n.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend(*n);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn picks_prefixed_pairs_lossily() {
        let map = HeaderMap::new(encode(&[
            (b":status", b"200"),
            (b"x-m-\xff", b"\xfe"),
            (b"x-other", b"1"),
            (b"x-m-e", b""),
        ]));
        assert_eq!(
            map.prefixed("x-m-").collect::<Vec<_>>(),
            [
                ("x-m-\u{fffd}".to_string(), "\u{fffd}".to_string()),
                ("x-m-e".into(), "".into())
            ]
        );
        assert_eq!(map.prefixed("x-none-").count(), 0);
    }

    #[test]
    fn looks_up_the_first_value_by_name() {
        let map = HeaderMap::new(encode(&[
            (b":path", b"/a?b"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"user-agent", b"\xff"),
        ]));
        assert_eq!(first(&map, ":path").as_deref(), Some("/a?b"));
        assert_eq!(first(&map, "cookie").as_deref(), Some("a=1"));
        assert_eq!(first(&map, "user-agent").as_deref(), Some("\u{fffd}"));
        assert_eq!(first(&map, "referer"), None);
        assert_eq!(first(&HeaderMap::new(Vec::new()), ":path"), None);
    }

    #[test]
    fn first_values_of_several_headers_in_one_pass() {
        let map = HeaderMap::new(encode(&[
            (b":path", b"/a"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b":method", b"GET"),
        ]));
        assert_eq!(
            map.first_of([":method", "cookie", "referer", ":path"]),
            [Some(&b"GET"[..]), Some(&b"a=1"[..]), None, Some(&b"/a"[..])]
        );
    }

    #[test]
    fn capped_reads_convert_only_what_they_keep() {
        let long = vec![b'a'; 70_000];
        let map = HeaderMap::new(encode(&[
            (b"user-agent", &long),
            (b":path", b"/a%2Fb"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x", b"\xc3\xa9\xc3\xa9"),
        ]));
        let (ua, cut) = first_capped(&map, "user-agent", 512, false).unwrap();
        assert_eq!((ua.len(), cut), (512, true));
        assert_eq!(
            first_capped(&map, ":path", 5, true).unwrap(),
            ("/a%2F".into(), true)
        );
        assert_eq!(
            first_capped(&map, ":path", 4, true).unwrap(),
            ("/a".into(), true)
        );
        assert_eq!(
            first_capped(&map, ":path", 10, true).unwrap(),
            ("/a%2Fb".into(), false)
        );
        assert_eq!(
            first_capped(&map, "x", 3, false).unwrap(),
            ("é".into(), true)
        );
        assert_eq!(
            map.get_all_capped("cookie", "; ", 100).unwrap(),
            ("a=1; b=2".into(), false)
        );
        assert_eq!(
            map.get_all_capped("cookie", "; ", 5).unwrap(),
            ("a=1; ".into(), true)
        );
        assert_eq!(map.get_all_capped("none", "; ", 5), None);
    }

    #[test]
    fn truncated_or_lying_input_yields_what_is_whole() {
        let bytes = encode(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..bytes.len() {
            assert!(Pairs::new(&bytes[..cut]).count() <= 2);
        }
        assert_eq!(Pairs::new(&bytes).count(), 2);
        assert_eq!(Pairs::new(&[0xff, 0xff, 0xff, 0xff]).count(), 0);
        assert_eq!(Pairs::new(&[]).count(), 0);
    }
}
