//! Optional strings of a request body that borrow from the body when they can. serde borrows a `Cow<str>` field
//! only when the field's type is exactly that: inside an `Option` (or a `Vec`) every string is copied into a new
//! `String`, one allocation per field per publish. These go through a newtype whose field is a bare `Cow`, so a
//! string without escapes stays a slice of the body (and one with escapes is unescaped into an owned string).

use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// For `#[serde(borrow, default, deserialize_with = "borrowed::str")]` on an `Option<Cow<'a, str>>`.
pub fn str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Str>::deserialize(d)?.map(|s| s.0))
}

/// For `#[serde(borrow, default, deserialize_with = "borrowed::strs")]` on an `Option<Vec<Cow<'a, str>>>`.
pub fn strs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cow<'de, str>>>, D::Error> {
    Ok(Option::<Vec<Str>>::deserialize(d)?.map(|v| v.into_iter().map(|s| s.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default, deserialize_with = "str")]
        one: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "strs")]
        many: Option<Vec<Cow<'a, str>>>,
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_unescaped() {
        let b: Body = serde_json::from_str(r#"{"one":"news","many":["a","b\"c"]}"#).unwrap();
        assert!(matches!(b.one, Some(Cow::Borrowed("news"))));
        let many = b.many.unwrap();
        assert!(matches!(many[0], Cow::Borrowed("a")));
        assert!(matches!(&many[1], Cow::Owned(s) if s == "b\"c"));
        let b: Body = serde_json::from_str(r#"{"one":null}"#).unwrap();
        assert!(b.one.is_none() && b.many.is_none());
        assert!(serde_json::from_str::<Body>(r#"{"one":5}"#).is_err());
        assert!(serde_json::from_str::<Body>(r#"{"many":"a"}"#).is_err());
    }
}
