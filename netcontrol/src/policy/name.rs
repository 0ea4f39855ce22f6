//! Domain names in rules: normalization and wildcard patterns.
//!
//! Names are compared in their normal form: ASCII (IDNA/punycode for Unicode), lower case,
//! no trailing dot. A pattern is an exact name, `*.suffix` (exactly one more label) or
//! `**.suffix` (one or more labels). Neither wildcard matches the suffix itself:
//! `*.example.com` does not match `example.com`.

use std::fmt;

/// A domain rule's target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    pub kind: Kind,
    /// The normalized name (for wildcards: the part after `*.` / `**.`).
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Exact,
    /// `*.name`: exactly one label before `name`.
    OneLabel,
    /// `**.name`: one or more labels before `name`.
    AnyLabels,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, rest) = if let Some(r) = s.strip_prefix("**.") {
            (Kind::AnyLabels, r)
        } else if let Some(r) = s.strip_prefix("*.") {
            (Kind::OneLabel, r)
        } else {
            (Kind::Exact, s)
        };
        let name = normalize(rest)?;
        if kind != Kind::Exact && !name.contains('.') {
            return Err(format!(
                "{s:?} would match names directly under a top-level domain; name at least two labels after the wildcard"
            ));
        }
        Ok(Self { kind, name })
    }

    pub fn is_wildcard(&self) -> bool {
        self.kind != Kind::Exact
    }

    /// Whether a (normalized) name matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.kind {
            Kind::Exact => name == self.name,
            Kind::OneLabel | Kind::AnyLabels => {
                let Some(prefix) =
                    name.strip_suffix(self.name.as_str()).and_then(|p| p.strip_suffix('.'))
                else {
                    return false;
                };
                !prefix.is_empty()
                    && !prefix.split('.').any(str::is_empty)
                    && (self.kind == Kind::AnyLabels || !prefix.contains('.'))
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Exact => f.write_str(&self.name),
            Kind::OneLabel => write!(f, "*.{}", self.name),
            Kind::AnyLabels => write!(f, "**.{}", self.name),
        }
    }
}

/// The normal form of a DNS name: IDNA (UTS 46) to ASCII, lower case, no trailing dot; labels of
/// letters, digits, `-` and `_` (as in `_dmarc`), 1-63 bytes, 253 bytes in all.
pub fn normalize(s: &str) -> Result<String, String> {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    if trimmed.is_empty() {
        return Err("empty domain name".into());
    }
    if trimmed.contains('*') {
        return Err(format!(
            "{s:?}: a wildcard must be the whole first label (*.example.com or **.example.com)"
        ));
    }
    let ascii = idna::domain_to_ascii(trimmed)
        .map_err(|_| format!("{s:?} is not a valid domain name (IDNA)"))?;
    if ascii.len() > 253 {
        return Err(format!("{s:?} is {} characters long (max 253)", ascii.len()));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(format!("{s:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) =
            label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{s:?} is not a valid domain name ({c:?} in label {label:?})"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if ascii.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err(format!("{s:?} looks like an IPv4 address but is not a valid one"));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normal_form() {
        assert_eq!(normalize("API.GitHub.com.").as_deref(), Ok("api.github.com"));
        assert_eq!(normalize("Bücher.Example").as_deref(), Ok("xn--bcher-kva.example"));
        assert_eq!(normalize("_dmarc.example.com").as_deref(), Ok("_dmarc.example.com"));
        assert_eq!(normalize("xn--bcher-kva.example").as_deref(), Ok("xn--bcher-kva.example"));
        for bad in ["", ".", "a..b", "-a.com", "a-.com", "a b.com", "a!.com", "1.2.3", "x*.com"] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn one_label_wildcard() {
        let w = p("*.Example.com");
        assert_eq!(w.to_string(), "*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"), "the apex is not matched");
        assert!(!w.matches("aexample.com"));
        assert!(!w.matches(".example.com"));
    }

    #[test]
    fn any_labels_wildcard() {
        let w = p("**.example.com");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.c.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
        assert!(!w.matches("a..example.com"));
    }

    #[test]
    fn exact_and_bad_patterns() {
        assert!(p("example.com").matches("example.com"));
        assert!(!p("example.com").matches("a.example.com"));
        assert!(!p("example.com").is_wildcard());
        assert!(Pattern::parse("*.com").is_err(), "a whole TLD");
        assert!(Pattern::parse("a.*.com").is_err());
        assert!(Pattern::parse("***.com").is_err());
        assert!(Pattern::parse("*").is_err());
    }
}
