//! Incremental UTF-8 validation across fragments, failing at the first byte that can never become valid.

#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    // Up to 3 carried bytes of an incomplete sequence and their count; implementer's choice.
    _carry: [u8; 3],
    _carry_len: u8,
}

impl Utf8Validator {
    /// Feeds the next bytes. Err as soon as the input so far cannot be a prefix of valid UTF-8.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let _ = bytes;
        todo!()
    }
    /// At the end of a message: Err if an incomplete sequence is left.
    pub fn finish(&mut self) -> Result<(), ()> {
        todo!()
    }
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}
