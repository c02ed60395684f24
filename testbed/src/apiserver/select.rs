//! Label and field selectors, as `labelSelector` / `fieldSelector` write them.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (requirements ANDed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set_values(set)?)
            } else if let Some((k, set)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set_values(set)?)
            } else {
                Requirement::Exists(part.to_string())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    /// True when the object's labels satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn split_top_level(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth) = (Vec::new(), String::new(), 0);
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

fn set_values(set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("invalid set {set:?}"))?;
    Ok(inner
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Field selectors (`=`, `==`, `!=`) on the fields a real server indexes: `metadata.name` and
/// `metadata.namespace` for every kind, and the Event, Secret and Namespace fields
/// (`involvedObject.*`, `reason`, `type`, `source`, `reportingComponent`, `status.phase`), as
/// `kubectl describe` uses them to find an object's Events.
pub fn field_matches(selector: &str, object: &Value) -> Result<bool, String> {
    for part in selector.split(',').filter(|p| !p.trim().is_empty()) {
        let (field, value, equal) = match part.split_once("!=") {
            Some((f, v)) => (f, v, false),
            None => {
                let (f, v) = part
                    .split_once("==")
                    .or_else(|| part.split_once('='))
                    .ok_or_else(|| format!("invalid field selector {part:?}"))?;
                (f, v, true)
            }
        };
        let path = match field.trim() {
            "source" => "source.component",
            f @ ("metadata.name"
            | "metadata.namespace"
            | "involvedObject.kind"
            | "involvedObject.namespace"
            | "involvedObject.name"
            | "involvedObject.uid"
            | "involvedObject.apiVersion"
            | "involvedObject.resourceVersion"
            | "involvedObject.fieldPath"
            | "reason"
            | "reportingComponent"
            | "type"
            | "status.phase") => f,
            other => return Err(format!("field label not supported: {other}")),
        };
        let mut at = object;
        for part in path.split('.') {
            at = &at[part];
        }
        let actual = at.as_str().unwrap_or("");
        if (actual == value.trim()) != equal {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_follow_kubernetes_syntax() {
        let obj = json!({"metadata": {"name": "x", "labels": {"app": "web", "tier": "gold"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=gold", true),
            ("app!=web", false),
            ("tier in (gold,silver)", true),
            ("tier notin (gold)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing notin (a)", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
        assert!(field_matches("metadata.name=x", &obj).unwrap());
        assert!(!field_matches("metadata.name!=x", &obj).unwrap());
        assert!(field_matches("spec.x=1", &obj).is_err());
        let event = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Sample", "name": "s1", "uid": "u"}, "source": {"component": "c"}});
        assert!(
            field_matches(
                "involvedObject.name=s1,involvedObject.kind=Sample,involvedObject.uid=u",
                &event
            )
            .unwrap()
        );
        assert!(!field_matches("involvedObject.name=s2", &event).unwrap());
        assert!(field_matches("source=c,involvedObject.namespace=", &event).unwrap());
    }
}
