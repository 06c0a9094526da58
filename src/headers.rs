//! Decodes a header map as the proxy-wasm host serialises it, lossily and bounds-checked. The
//! SDK's own decoder unwraps the UTF-8 conversion of names, so a single odd byte in a header
//! name would panic the VM; this one cannot.

/// `[count: u32][(name_len: u32, value_len: u32) × count][name \0 value \0 …]`, little-endian.
pub fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(<[u8; 4]>::try_from(b).ok()?) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut pairs = Vec::with_capacity(count.min(256));
    let mut data = 4usize.saturating_add(count.saturating_mul(8));
    for i in 0..count {
        let sizes = 4 + i * 8;
        let (Some(name_len), Some(value_len)) = (word(sizes), word(sizes + 4)) else {
            break;
        };
        let name = bytes.get(data..data.saturating_add(name_len));
        data = data.saturating_add(name_len).saturating_add(1);
        let value = bytes.get(data..data.saturating_add(value_len));
        data = data.saturating_add(value_len).saturating_add(1);
        match (name, value) {
            (Some(n), Some(v)) => pairs.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )),
            _ => break,
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn decodes_pairs_lossily() {
        let bytes = encode(&[(b":status", b"200"), (b"x-\xff", b"\xfe"), (b"e", b"")]);
        assert_eq!(
            decode_pairs(&bytes),
            [
                (":status".to_string(), "200".to_string()),
                ("x-\u{fffd}".into(), "\u{fffd}".into()),
                ("e".into(), "".into())
            ]
        );
    }

    #[test]
    fn truncated_or_lying_input_yields_what_is_whole() {
        let bytes = encode(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..bytes.len() {
            let got = decode_pairs(&bytes[..cut]);
            assert!(got.len() <= 2);
        }
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(decode_pairs(&[]).is_empty());
    }
}
