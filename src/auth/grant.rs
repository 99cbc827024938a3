//! Channel grants: the channels a connection may subscribe to, as exact names or `prefix*` patterns
//! (`doc:*` = every channel starting with `doc:`, `*` = every channel).

/// Most patterns one token (or `auth.default_channels`) may carry.
pub const MAX_PATTERNS: usize = 1024;
/// Longest pattern, bytes.
pub const MAX_PATTERN_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

/// What a connection may subscribe to. Immutable; shared between a user's connections when equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    patterns: Box<[Pattern]>,
}

impl Grant {
    /// From a token's `channels` claim.
    pub fn from_claim(list: &[String]) -> Result<Grant, &'static str> {
        if list.len() > MAX_PATTERNS {
            return Err("too many entries in the channels claim");
        }
        let mut patterns = Vec::with_capacity(list.len());
        for p in list {
            if p.is_empty() || p.len() > MAX_PATTERN_LEN || p.chars().any(char::is_control) {
                return Err("invalid entry in the channels claim");
            }
            patterns.push(parse(p, p));
        }
        Ok(Grant {
            patterns: patterns.into(),
        })
    }

    /// From `auth.default_channels` templates: `{sub}` and `{tenant}` are replaced by the claims. Whether an entry
    /// is a prefix pattern is decided by the template, so a `*` inside a user id never widens the grant.
    pub fn from_templates(templates: &[String], sub: &str, tenant: Option<&str>) -> Grant {
        let patterns = templates
            .iter()
            .take(MAX_PATTERNS)
            .map(|t| {
                let value = t
                    .replace("{sub}", sub)
                    .replace("{tenant}", tenant.unwrap_or(""));
                parse(t, &value)
            })
            .collect::<Vec<_>>();
        Grant {
            patterns: patterns.into(),
        }
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Exact(name) => **name == *channel,
            Pattern::Prefix(prefix) => channel.starts_with(&**prefix),
        })
    }

    /// The patterns as written (for the API).
    pub fn describe(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| match p {
                Pattern::Any => "*".to_string(),
                Pattern::Exact(n) => n.to_string(),
                Pattern::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }
}

/// `template` decides the kind (a trailing `*` makes a prefix pattern); `value` is the expanded text.
fn parse(template: &str, value: &str) -> Pattern {
    if template == "*" {
        Pattern::Any
    } else if template.ends_with('*') {
        Pattern::Prefix(value[..value.len() - 1].into())
    } else {
        Pattern::Exact(value.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(list: &[&str]) -> Grant {
        Grant::from_claim(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_prefix_and_any() {
        let g = claim(&["doc:42", "team:7:*"]);
        assert!(g.allows("doc:42"));
        assert!(!g.allows("doc:421"));
        assert!(!g.allows("doc:4"));
        assert!(g.allows("team:7:chat"));
        assert!(g.allows("team:7:"));
        assert!(!g.allows("team:70:chat"));
        assert!(claim(&["*"]).allows("anything"));
        assert!(!Grant::default().allows("x"));
        assert_eq!(g.describe(), vec!["doc:42", "team:7:*"]);
        assert!(Grant::from_claim(&["".to_string()]).is_err());
        assert!(Grant::from_claim(&["a\u{1}".to_string()]).is_err());
    }

    #[test]
    fn templates_expand_claims_without_widening() {
        let t = vec!["user:{sub}".to_string(), "tenant:{tenant}:*".to_string()];
        let g = Grant::from_templates(&t, "u*", Some("acme"));
        assert!(g.allows("user:u*"));
        assert!(!g.allows("user:u2"));
        assert!(g.allows("tenant:acme:news"));
        assert!(!g.allows("tenant:other:news"));
    }
}
