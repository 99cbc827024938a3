//! Redis stream entry ids (`ms-seq`): the position of a user message in its notify stream, which clients
//! acknowledge and resume from.

/// A stream entry id `ms-seq`, ordered like Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    pub const ZERO: StreamId = StreamId(0, 0);

    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// Like [`StreamId::parse`], also accepting a bare millisecond time (`1700000000000` = `1700000000000-0`), as
    /// Redis does.
    pub fn parse_lenient(s: &str) -> Option<StreamId> {
        if s.contains('-') {
            StreamId::parse(s)
        } else {
            Some(StreamId(s.parse().ok()?, 0))
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(StreamId::parse("10-0").unwrap() > StreamId::parse("9-5").unwrap());
        assert!(StreamId::parse("9-10").unwrap() > StreamId::parse("9-9").unwrap());
        assert_eq!(StreamId::parse("x-1"), None);
        assert_eq!(
            StreamId::parse("5").unwrap_or(StreamId::ZERO),
            StreamId::ZERO
        );
        assert_eq!(StreamId(3, 4).to_string(), "3-4");
    }
}
