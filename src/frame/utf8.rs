//! Incremental UTF-8 validation across fragments, failing at the first byte that can never become valid.
//!
//! The heavy lifting is `std::str::from_utf8`: its `error_len() == None` means "the input ends in the middle of a
//! sequence that is still a valid prefix" (it checks the restricted second-byte ranges of E0/ED/F0/F4, so overlongs,
//! surrogates and code points above U+10FFFF are reported at the first byte that rules them out). The validator only
//! has to carry up to 3 bytes of such an incomplete tail from one `feed` to the next.

#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    /// The first bytes of an incomplete (but so far valid) sequence left over from the previous `feed`.
    carry: [u8; 3],
    /// How many bytes of `carry` are in use (0..=3).
    carry_len: u8,
}

/// Total length of the UTF-8 sequence started by lead byte `b` (only called on bytes std accepted as a lead).
fn sequence_len(b: u8) -> usize {
    match b {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

impl Utf8Validator {
    /// Feeds the next bytes. Err as soon as the input so far cannot be a prefix of valid UTF-8.
    // `()` is the agreed error: there is one failure (close with 1007) and nothing more to say about it.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let mut rest = bytes;
        let carried = usize::from(self.carry_len);
        if carried > 0 {
            // Complete the carried sequence with the bytes it still needs (or as many as there are).
            let mut seq = [0u8; 4];
            seq[..carried].copy_from_slice(&self.carry[..carried]);
            let need = sequence_len(self.carry[0]).saturating_sub(carried);
            let take = need.min(rest.len());
            seq[carried..carried + take].copy_from_slice(&rest[..take]);
            match std::str::from_utf8(&seq[..carried + take]) {
                Ok(_) => {
                    self.carry_len = 0;
                    rest = &rest[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: every new byte was consumed and the prefix is still possible.
                    let len = carried + take;
                    self.carry[..len.min(3)].copy_from_slice(&seq[..len.min(3)]);
                    self.carry_len = len.min(3) as u8;
                    return Ok(());
                }
                Err(_) => return Err(()),
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &rest[e.valid_up_to()..];
                // An incomplete tail is at most 3 bytes (a 4-byte sequence minus its last byte).
                let len = tail.len().min(3);
                self.carry[..len].copy_from_slice(&tail[..len]);
                self.carry_len = len as u8;
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    /// At the end of a message: Err if an incomplete sequence is left. The validator is reset either way.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        let incomplete = self.carry_len != 0;
        self.reset();
        if incomplete {
            Err(())
        } else {
            Ok(())
        }
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True if `p` can still be extended to valid UTF-8.
    fn possible_prefix(p: &[u8]) -> bool {
        match std::str::from_utf8(p) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        }
    }

    /// Index of the first byte after which `s` can no longer be a prefix of valid UTF-8.
    fn first_impossible(s: &[u8]) -> Option<usize> {
        (0..s.len()).find(|&k| !possible_prefix(&s[..=k]))
    }

    /// Feeds `s` in the given chunk sizes (cycled); returns the index of the chunk that failed, if any.
    fn feed_chunks(s: &[u8], sizes: &[usize]) -> (Option<usize>, Result<(), ()>) {
        let mut v = Utf8Validator::default();
        let mut pos = 0;
        let mut i = 0;
        while pos < s.len() {
            let n = sizes[i % sizes.len()].max(1).min(s.len() - pos);
            if v.feed(&s[pos..pos + n]).is_err() {
                return (Some(pos + n - 1), Err(()));
            }
            pos += n;
            i += 1;
        }
        (None, v.finish())
    }

    #[test]
    fn size_is_four_bytes() {
        assert_eq!(std::mem::size_of::<Utf8Validator>(), 4);
    }

    #[test]
    fn valid_text_split_everywhere() {
        let s = "a€😀ß\u{10FFFF}\u{FFFD}z\u{7FF}\u{800}\u{D7FF}\u{E000}\u{10000}";
        let b = s.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let mut v = Utf8Validator::default();
                assert!(v.feed(&b[..i]).is_ok(), "split {i}/{j}");
                assert!(v.feed(&b[i..j]).is_ok(), "split {i}/{j}");
                assert!(v.feed(&b[j..]).is_ok(), "split {i}/{j}");
                assert!(v.finish().is_ok(), "split {i}/{j}");
            }
        }
        // Byte by byte and with empty feeds in between.
        let mut v = Utf8Validator::default();
        for &x in b {
            assert!(v.feed(&[]).is_ok());
            assert!(v.feed(&[x]).is_ok());
        }
        assert!(v.finish().is_ok());
    }

    #[test]
    fn four_byte_char_every_split() {
        let b = "😀".as_bytes();
        for (a, c) in [(1, 3), (2, 2), (3, 1)] {
            let mut v = Utf8Validator::default();
            assert!(v.feed(&b[..a]).is_ok());
            assert!(v.feed(&b[a..a + c]).is_ok());
            assert!(v.finish().is_ok());
        }
    }

    #[test]
    fn incomplete_at_end_fails_finish() {
        for tail in [&[0xC3][..], &[0xE2, 0x82], &[0xF0, 0x9F, 0x98], &[0xE2]] {
            let mut v = Utf8Validator::default();
            assert!(v.feed(b"ok").is_ok());
            assert!(v.feed(tail).is_ok());
            assert!(v.finish().is_err());
            // finish resets.
            assert!(v.feed(b"x").is_ok());
            assert!(v.finish().is_ok());
        }
    }

    #[test]
    fn fails_at_first_impossible_byte() {
        // (bytes, index of the first byte that makes it impossible)
        let cases: &[(&[u8], usize)] = &[
            (&[0xFF], 0),
            (&[0x80], 0),
            (&[0xC0], 0),
            (&[0xC1, 0x80], 0),
            (&[0xF5], 0),
            (&[0xF8], 0),
            (&[0x41, 0xF4, 0x90, 0x80, 0x80], 2), // > U+10FFFF
            (&[0xED, 0xA0, 0x80], 1),             // surrogate
            (&[0xED, 0xBF, 0xBF], 1),             // surrogate
            (&[0xE0, 0x80, 0x80], 1),             // overlong
            (&[0xE0, 0x9F, 0xBF], 1),             // overlong
            (&[0xF0, 0x8F, 0xBF, 0xBF], 1),       // overlong
            (&[0xE2, 0x82, 0x41], 2),             // truncated then ASCII
            (&[0xF0, 0x9F, 0x98, 0xC3], 3),
            (
                &[
                    0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0,
                    0x80,
                ],
                12,
            ),
        ];
        for &(bytes, at) in cases {
            assert_eq!(first_impossible(bytes), Some(at), "{bytes:x?}");
            // Byte by byte: the error is reported exactly at that byte.
            assert_eq!(feed_chunks(bytes, &[1]).0, Some(at), "{bytes:x?}");
            // Every two-way split: the error comes with the chunk containing it.
            for i in 0..=bytes.len() {
                let mut v = Utf8Validator::default();
                let r1 = v.feed(&bytes[..i]);
                if at < i {
                    assert!(r1.is_err(), "{bytes:x?} split {i}");
                } else {
                    assert!(r1.is_ok(), "{bytes:x?} split {i}");
                    assert!(v.feed(&bytes[i..]).is_err(), "{bytes:x?} split {i}");
                }
            }
        }
    }

    #[test]
    fn random_against_std_oracle() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Alphabet biased towards interesting bytes so sequences are often nearly valid.
        let alphabet = [
            0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1, 0xED,
            0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF,
        ];
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let want_fail = first_impossible(&s);
            let sizes = [
                (next() % 4 + 1) as usize,
                (next() % 4 + 1) as usize,
                (next() % 4 + 1) as usize,
            ];
            let (fail_at, fin) = feed_chunks(&s, &sizes);
            match want_fail {
                Some(k) => {
                    // The failing chunk is the one containing byte k.
                    let fail_at = fail_at.expect("must fail");
                    assert!(fail_at >= k, "{s:x?} {sizes:?}");
                    // It did not fail at an earlier chunk.
                    let (one_by_one, _) = feed_chunks(&s, &[1]);
                    assert_eq!(one_by_one, Some(k), "{s:x?}");
                }
                None => {
                    assert_eq!(fail_at, None, "{s:x?}");
                    assert_eq!(fin.is_ok(), std::str::from_utf8(&s).is_ok(), "{s:x?}");
                }
            }
        }
    }
}
