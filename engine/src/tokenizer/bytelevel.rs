//! GPT-2 style byte-level alphabet: every byte 0..=255 is represented by one printable
//! Unicode character, so that byte sequences can live in a string vocabulary.
//!
//! Bytes that are already printable (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) map to the character
//! with the same code point; the remaining 68 bytes map, in increasing byte order, to
//! U+0100, U+0101, ... (so space 0x20 becomes `Ġ` U+0120 and `\n` becomes `Ċ` U+010A).

/// Bidirectional byte <-> char table.
pub(crate) struct ByteLevel {
    to_char: [char; 256],
    /// Byte for each of the 68 characters U+0100..U+0143.
    high: [u8; 68],
}

fn is_direct(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

impl ByteLevel {
    pub(crate) fn new() -> Self {
        let mut to_char = ['\0'; 256];
        let mut high = [0u8; 68];
        let mut next = 0usize;
        for b in 0..=255u8 {
            to_char[b as usize] = if is_direct(b) {
                char::from(b)
            } else {
                // 256 + next < 256 + 68: always a valid scalar value.
                let c = char::from_u32(256 + next as u32).unwrap_or('\u{FFFD}');
                high[next] = b;
                next += 1;
                c
            };
        }
        ByteLevel { to_char, high }
    }

    /// Character standing for byte `b`.
    #[inline]
    pub(crate) fn char_of(&self, b: u8) -> char {
        self.to_char[b as usize]
    }

    /// Byte represented by `c`, if `c` belongs to the byte-level alphabet.
    #[inline]
    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        let u = c as u32;
        if u < 256 {
            let b = u as u8;
            return is_direct(b).then_some(b);
        }
        self.high.get((u - 256) as usize).copied()
    }

    /// Maps `bytes` into the byte-level alphabet, appending to `out`.
    pub(crate) fn encode_into(&self, bytes: &[u8], out: &mut String) {
        out.reserve(bytes.len() * 2);
        for &b in bytes {
            out.push(self.char_of(b));
        }
    }

    /// Maps a vocabulary string back to raw bytes. Characters outside the byte-level
    /// alphabet are kept as their own UTF-8 encoding.
    pub(crate) fn decode_into(&self, s: &str, out: &mut Vec<u8>) {
        for c in s.chars() {
            match self.byte_of(c) {
                Some(b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_points() {
        let bl = ByteLevel::new();
        assert_eq!(bl.char_of(b' '), 'Ġ');
        assert_eq!(bl.char_of(b'\n'), 'Ċ');
        assert_eq!(bl.char_of(b'\t'), 'ĉ');
        assert_eq!(bl.char_of(0), 'Ā');
        assert_eq!(bl.char_of(b'A'), 'A');
        assert_eq!(bl.char_of(0xAD), 'Ń');
        assert_eq!(bl.char_of(0xFF), 'ÿ');
    }

    #[test]
    fn roundtrip_all_bytes() {
        let bl = ByteLevel::new();
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = bl.char_of(b);
            assert!(seen.insert(c), "duplicate char for byte {b}");
            assert_eq!(bl.byte_of(c), Some(b));
        }
        assert_eq!(bl.byte_of('€'), None);
        assert_eq!(bl.byte_of('\u{0143}'), Some(0xAD));
        assert_eq!(bl.byte_of('\u{0144}'), None);
        assert_eq!(bl.byte_of('\u{00AD}'), None);
        let mut out = Vec::new();
        bl.decode_into("ĠhelloĊ€", &mut out);
        assert_eq!(out, b" hello\n\xE2\x82\xAC");
    }
}
