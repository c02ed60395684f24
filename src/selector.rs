//! `--selector`: the label selector that makes one operator a shard (DESIGN.md section 9).
//!
//! Parsed here, at start, with the grammar of Kubernetes label selectors (`k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`), so a typo stops the operator with a
//! message instead of a watch the API server refuses over and over. The API server applies it;
//! the operator only needs its keys (copied from each credential onto its Secrets, so that the
//! shard's Secret watch selects by the same labels) and, in tests, [`Selector::matches`].

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `k=v`, `k==v`, `k in (v, …)`.
    In(String, Vec<String>),
    /// `k!=v`, `k notin (v, …)`: also true when the label is absent.
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
    /// `k>n`.
    Gt(String, i64),
    /// `k<n`.
    Lt(String, i64),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Self::In(k, _)
            | Self::NotIn(k, _)
            | Self::Exists(k)
            | Self::DoesNotExist(k)
            | Self::Gt(k, _)
            | Self::Lt(k, _) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key());
        let number = || value.and_then(|v| v.parse::<i64>().ok());
        match self {
            Self::In(_, values) => value.is_some_and(|v| values.contains(v)),
            Self::NotIn(_, values) => value.is_none_or(|v| !values.contains(v)),
            Self::Exists(_) => value.is_some(),
            Self::DoesNotExist(_) => value.is_none(),
            Self::Gt(_, n) => number().is_some_and(|v| v > *n),
            Self::Lt(_, n) => number().is_some_and(|v| v < *n),
        }
    }
}

/// A parsed, valid label selector (requirements ANDed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses `text`; the error names the requirement that is wrong and how.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty selector would select every credential: leave --selector out instead".into());
        }
        let requirements = split_top_level(text)?
            .into_iter()
            .map(requirement)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_string(),
            requirements,
        })
    }

    /// The selector as given (what the watches send as `labelSelector`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The label keys the selector reads, each once.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.requirements.iter().map(|r| r.key().to_string()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// True when `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits on the commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("{text:?} has a ')' without a '('"))?
            }
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{text:?} has a '(' without a ')'"));
    }
    parts.push(text[start..].trim());
    if let Some(empty) = parts.iter().position(|p| p.is_empty()) {
        return Err(format!("{text:?} has an empty requirement (position {})", empty + 1));
    }
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement, String> {
    let bad = |why: &str| format!("{part:?} is not a label requirement: {why}");
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(label_key(key.trim()).map_err(|e| bad(&e))?));
    }
    for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((key, value)) = part.split_once(op) {
            let key = label_key(key.trim()).map_err(|e| bad(&e))?;
            let value = label_value(value.trim()).map_err(|e| bad(&e))?;
            return Ok(if equal {
                Requirement::In(key, vec![value])
            } else {
                Requirement::NotIn(key, vec![value])
            });
        }
    }
    for (op, greater) in [(">", true), ("<", false)] {
        if let Some((key, value)) = part.split_once(op) {
            let key = label_key(key.trim()).map_err(|e| bad(&e))?;
            let n = value
                .trim()
                .parse::<i64>()
                .map_err(|_| bad(&format!("{op} needs an integer")))?;
            return Ok(if greater {
                Requirement::Gt(key, n)
            } else {
                Requirement::Lt(key, n)
            });
        }
    }
    if let Some(open) = part.find('(') {
        let head: Vec<&str> = part[..open].split_whitespace().collect();
        let body = part[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| bad("nothing may follow the ')'"))?;
        let (key, negate) = match head.as_slice() {
            [key, "in"] => (*key, false),
            [key, "notin"] => (*key, true),
            _ => return Err(bad("expected `key in (values)` or `key notin (values)`")),
        };
        let key = label_key(key).map_err(|e| bad(&e))?;
        let values = body
            .split(',')
            .map(|v| label_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        return Ok(if negate {
            Requirement::NotIn(key, values)
        } else {
            Requirement::In(key, values)
        });
    }
    Ok(Requirement::Exists(label_key(part).map_err(|e| bad(&e))?))
}

/// `[prefix/]name`: prefix a DNS subdomain, name up to 63 alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric.
fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(format!("the key prefix {prefix:?} is not a DNS subdomain"));
        }
    }
    if name.is_empty() {
        return Err("a key is missing".into());
    }
    if !name_ok(name) {
        return Err(format!(
            "the key {key:?} is not a label key (up to 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || name_ok(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "the value {value:?} is not a label value (up to 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ))
    }
}

fn name_ok(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator_of_the_kubernetes_grammar_parses_and_matches_like_the_api_server() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("shard=a", &[("shard", "a")], true),
            ("shard=a", &[("shard", "b")], false),
            ("shard=a", &[], false),
            ("shard==a", &[("shard", "a")], true),
            ("shard!=a", &[("shard", "b")], true),
            ("shard!=a", &[], true),
            ("shard!=a", &[("shard", "a")], false),
            ("shard in (a, b)", &[("shard", "b")], true),
            ("shard in (a,b)", &[("shard", "c")], false),
            ("shard notin (a,b)", &[("shard", "c")], true),
            ("shard notin (a,b)", &[], true),
            ("shard", &[("shard", "")], true),
            ("shard", &[], false),
            ("!shard", &[], true),
            ("!shard", &[("shard", "a")], false),
            ("tier>2", &[("tier", "3")], true),
            ("tier>2", &[("tier", "x")], false),
            ("tier<2", &[("tier", "1")], true),
            (
                "example.com/shard=a,env in (prod)",
                &[("example.com/shard", "a"), ("env", "prod")],
                true,
            ),
            (
                "example.com/shard=a,env in (prod)",
                &[("example.com/shard", "a"), ("env", "dev")],
                false,
            ),
        ];
        for (text, on, expected) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selector.matches(&labels(on)), *expected, "{text} on {on:?}");
        }
    }

    #[test]
    fn keys_are_every_key_once() {
        let selector = Selector::parse("b=1, a in (x), !c, b!=2").unwrap();
        assert_eq!(selector.keys(), ["a", "b", "c"]);
        assert_eq!(selector.as_str(), "b=1, a in (x), !c, b!=2");
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_part_that_is_wrong() {
        for (text, part) in [
            ("", "empty selector"),
            ("shard=a,", "empty requirement"),
            ("shard in (a", "'(' without a ')'"),
            ("shard=a)", "')' without a '('"),
            ("shard=a b", "\"a b\" is not a label value"),
            ("-shard=a", "\"-shard\" is not a label key"),
            ("Example.COM/shard=a", "prefix \"Example.COM\""),
            ("shard within (a)", "`key in (values)`"),
            ("tier>two", "needs an integer"),
            ("=a", "a key is missing"),
        ] {
            let error = Selector::parse(text).unwrap_err();
            assert!(error.contains(part), "{text:?}: {error}");
        }
    }
}
