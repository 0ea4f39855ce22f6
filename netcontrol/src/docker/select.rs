//! Which containers a daemon sandbox means: by name (a glob, `web-*`) or by label
//! (`netcontrol.policy=web`, or just the key).

use std::fmt;

use globset::{Glob, GlobMatcher};

use super::Container;

#[derive(Clone, Debug)]
pub enum Selector {
    Name(GlobMatcher),
    Label { key: String, value: Option<String> },
}

impl Selector {
    pub fn name(pattern: &str) -> Result<Self, String> {
        Glob::new(pattern.trim())
            .map(|g| Self::Name(g.compile_matcher()))
            .map_err(|e| format!("{pattern:?} is not a name pattern: {e}"))
    }

    /// `key=value`, or `key` for any value.
    pub fn label(spec: &str) -> Result<Self, String> {
        let (key, value) = match spec.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (spec.trim(), None),
        };
        if key.is_empty() {
            return Err(format!("{spec:?} is not a label selector (KEY or KEY=VALUE)"));
        }
        Ok(Self::Label { key: key.to_owned(), value })
    }

    pub fn matches(&self, c: &Container) -> bool {
        match self {
            Self::Name(g) => g.is_match(&c.name),
            Self::Label { key, value } => {
                c.labels.get(key).is_some_and(|v| value.as_ref().is_none_or(|want| v == want))
            }
        }
    }

    /// The label key whose value names the policy (`label: KEY` without a value).
    pub fn policy_label(&self) -> Option<&str> {
        match self {
            Self::Label { key, value: None } => Some(key),
            _ => None,
        }
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(g) => write!(f, "name {}", g.glob()),
            Self::Label { key, value: Some(v) } => write!(f, "label {key}={v}"),
            Self::Label { key, value: None } => write!(f, "label {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: "0123456789abcdef".into(),
            name: name.into(),
            pid: Some(1),
            running: true,
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    #[test]
    fn names_match_by_glob() {
        let s = Selector::name("web-*").expect("glob");
        assert!(s.matches(&container("web-1", &[])));
        assert!(!s.matches(&container("db-1", &[])));
    }

    #[test]
    fn labels_match_by_key_or_value() {
        let key = Selector::label("netcontrol.policy").expect("label");
        let value = Selector::label("netcontrol.policy=web").expect("label");
        let web = container("a", &[("netcontrol.policy", "web")]);
        let ci = container("b", &[("netcontrol.policy", "ci")]);
        assert!(key.matches(&web) && key.matches(&ci));
        assert!(value.matches(&web) && !value.matches(&ci));
        assert!(!key.matches(&container("c", &[])));
        assert_eq!(key.policy_label(), Some("netcontrol.policy"));
        assert_eq!(value.policy_label(), None);
        assert!(Selector::label("=x").is_err());
    }
}
