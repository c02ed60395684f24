//! `kubectl get` asks for `as=Table`: the server renders the rows (printer columns of a CRD,
//! name and age for built-ins), as in `raw/table.json`.
//!
//! Custom-resource cells follow the real API server's table convertor
//! (apiextensions-apiserver `tableconvertor.go`): a JSONPath that finds nothing is a `null` cell
//! (kubectl prints it empty); `string` columns print the value as JSONPath prints it (numbers and
//! booleans as text, lists and maps as JSON); `integer`, `number` and `boolean` cells are JSON
//! numbers and booleans (`null` when the value has another type); `date` cells are the time since
//! the instant in apimachinery's `HumanDuration` form, `<invalid>` for an instant more than a
//! second in the future or a string that is not RFC 3339, `<unknown>` for the zero time.

use serde_json::{Value, json};

use super::resources::{Column, Resource};

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// A Table of `objects`.
pub fn render(resource: &Resource, objects: &[Value], resource_version: u64) -> Value {
    if !resource.custom
        && let Some(table) = super::builtin_table::render(resource, objects, resource_version)
    {
        return table;
    }
    render_at(resource, objects, resource_version, jiff::Timestamp::now())
}

/// A Table of `objects` as rendered at `now` (the instant `date` cells are measured from).
pub fn render_at(resource: &Resource, objects: &[Value], resource_version: u64, now: jiff::Timestamp) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0}),
    ];
    let printer: Vec<Column> = if resource.columns.is_empty() {
        vec![Column {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            ..Column::default()
        }]
    } else {
        resource.columns.clone()
    };
    for c in &printer {
        let description = c.description.clone().unwrap_or_else(|| {
            format!(
                "Custom resource definition column (in JSONPath format): {}",
                c.json_path
            )
        });
        columns.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": description, "priority": c.priority}));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object["metadata"]["name"].clone()];
            for c in &printer {
                cells.push(cell(&c.type_, first_result(object, &c.json_path), now));
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version.to_string()}, "columnDefinitions": columns, "rows": rows})
}

/// One cell of a column of type `type_` holding `value` (`cellForJSONValue`, and the JSONPath
/// printer for `string` columns).
pub fn cell(type_: &str, value: Option<&Value>, now: jiff::Timestamp) -> Value {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match (type_, value) {
        ("string", v) => Value::String(jsonpath_text(v)),
        ("integer", Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => json!(i),
            // Go's int64(float64) truncates toward zero.
            (None, Some(f)) => json!(f.trunc() as i64),
            _ => Value::Null,
        },
        ("number", Value::Number(n)) => n.as_f64().map(go_json_float).unwrap_or(Value::Null),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(text)) => json!(date(text, now)),
        _ => Value::Null,
    }
}

/// A `date` cell: `metav1.Time` parsing, then `ConvertToHumanReadableDateType`.
fn date(text: &str, now: jiff::Timestamp) -> String {
    let Some(instant) = parse_rfc3339(text) else {
        return "<invalid>".into();
    };
    if instant.as_second() == ZERO_TIME_SECONDS && instant.subsec_nanosecond() == 0 {
        return "<unknown>".into();
    }
    let nanos = now.as_nanosecond() - instant.as_nanosecond();
    human_duration(nanos)
}

/// `0001-01-01T00:00:00Z` (Go's zero `time.Time`) as Unix seconds.
const ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// RFC 3339 as Go's `time.RFC3339` layout parses it: `T`, optional fraction, `Z` or `±hh:mm`.
fn parse_rfc3339(text: &str) -> Option<jiff::Timestamp> {
    let bytes = text.as_bytes();
    let well_formed = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && (text.ends_with('Z') || {
            let zone = &text[text.len().saturating_sub(6)..];
            zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) && zone.as_bytes()[3] == b':'
        });
    if !well_formed {
        return None;
    }
    text.parse().ok()
}

/// apimachinery's `duration.HumanDuration` of a duration in nanoseconds (Go truncates every
/// division toward zero).
pub fn human_duration(nanos: i128) -> String {
    const SECOND: i128 = 1_000_000_000;
    const MINUTE: i128 = 60 * SECOND;
    const HOUR: i128 = 60 * MINUTE;
    let seconds = nanos / SECOND;
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / MINUTE;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / HOUR;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// What client-go's JSONPath printer writes for one value: strings as they are, numbers and
/// booleans as Go's `fmt` prints them, lists and maps as JSON.
fn jsonpath_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => go_fmt_float(f),
            _ => n.to_string(),
        },
        Value::Null => String::new(),
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

/// Go's `fmt.Sprint(float64)` (`%g` with the shortest precision): the exponent form when the
/// decimal exponent is below -4 or at least 6 (shortest `%g` decides with precision 6), written
/// with a sign and at least two exponent digits (`1.5e+07`).
fn go_fmt_float(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return format!("{f}");
    }
    let sci = format!("{f:e}"); // shortest round-trip digits, like "1.5e7"
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        format!("{f}")
    }
}

/// A `number` cell as Go's JSON encoder writes a float64: integral values without a fraction.
fn go_json_float(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        json!(f as i64)
    } else {
        json!(f)
    }
}

/// The first value a printer column's JSONPath finds, as the real convertor uses
/// (`results[0][0]`). Supports what printer columns use: `.field`, `['field']`, `[N]`, `[*]`
/// and filters `[?(@.path=="value")]` (also `!=`, numbers and booleans).
pub fn first_result<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let steps = parse_path(path)?;
    let mut current: Vec<&Value> = vec![object];
    for step in &steps {
        let mut next = Vec::new();
        for value in current {
            match step {
                Step::Field(name) => {
                    if let Some(v) = value.get(name.as_str()) {
                        next.push(v);
                    }
                }
                Step::Index(i) => {
                    if let Some(items) = value.as_array() {
                        let len = items.len() as i64;
                        let at = if *i < 0 { len + i } else { *i };
                        if (0..len).contains(&at) {
                            next.push(&items[at as usize]);
                        }
                    }
                }
                Step::All => match value {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter { path, equal, literal } => {
                    if let Some(items) = value.as_array() {
                        next.extend(items.iter().filter(|item| {
                            let found = path.iter().try_fold(*item, |at, field| at.get(field.as_str()));
                            found.is_some_and(|v| (v == literal) == *equal)
                        }));
                    }
                }
            }
        }
        current = next;
    }
    current.into_iter().next()
}

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Vec<String>,
        equal: bool,
        literal: Value,
    },
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path.strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end > 0 {
                steps.push(Step::Field(after[..end].to_string()));
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = closing_bracket(after)?;
            steps.push(bracket(after[..end].trim())?);
            rest = &after[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Field(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    Some(steps)
}

/// The index of the `]` closing a bracket, skipping quoted text.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::All);
    }
    if let Some(quoted) = unquote(inner) {
        return Some(Step::Field(quoted));
    }
    if let Ok(i) = inner.parse::<i64>() {
        return Some(Step::Index(i));
    }
    let filter = inner.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (left, equal, right) = if let Some((l, r)) = filter.split_once("==") {
        (l, true, r)
    } else {
        let (l, r) = filter.split_once("!=")?;
        (l, false, r)
    };
    let path = left
        .trim()
        .strip_prefix('@')?
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let right = right.trim();
    let literal = match unquote(right) {
        Some(s) => Value::String(s),
        None => serde_json::from_str(right).ok()?,
    };
    Some(Step::Filter { path, equal, literal })
}

fn unquote(text: &str) -> Option<String> {
    ['"', '\''].iter().find_map(|q| {
        text.strip_prefix(*q)
            .and_then(|t| t.strip_suffix(*q))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    #[test]
    fn human_duration_matches_apimachinery() {
        // Expected strings from apimachinery's duration_test.go style cases, worked by hand
        // from the Go function: every branch and its boundaries.
        for (nanos, want) in [
            (-3 * S, "<invalid>"),
            (-2 * S, "<invalid>"),
            (-2 * S + 1, "0s"),
            (-S, "0s"),
            (0, "0s"),
            (S, "1s"),
            (119 * S, "119s"),
            (120 * S, "2m"),
            (121 * S, "2m1s"),
            (599 * S, "9m59s"),
            (600 * S, "10m"),
            (179 * 60 * S, "179m"),
            (180 * 60 * S, "3h"),
            (181 * 60 * S, "3h1m"),
            (8 * 3600 * S, "8h"),
            (47 * 3600 * S, "47h"),
            (48 * 3600 * S, "2d"),
            (49 * 3600 * S, "2d1h"),
            (8 * 24 * 3600 * S, "8d"),
            (729 * 24 * 3600 * S, "729d"),
            (730 * 24 * 3600 * S, "2y"),
            (731 * 24 * 3600 * S, "2y1d"),
            (8 * 365 * 24 * 3600 * S, "8y"),
        ] {
            assert_eq!(human_duration(nanos), want, "{nanos} ns");
        }
    }

    #[test]
    fn cells_carry_the_types_the_real_convertor_gives() {
        let now: jiff::Timestamp = "2026-11-22T22:30:00Z".parse().unwrap();
        assert_eq!(cell("integer", Some(&json!(3)), now), json!(3));
        assert_eq!(cell("integer", Some(&json!(3.9)), now), json!(3));
        assert_eq!(cell("integer", Some(&json!("3")), now), Value::Null);
        assert_eq!(cell("number", Some(&json!(2)), now), json!(2));
        assert_eq!(cell("number", Some(&json!(2.5)), now), json!(2.5));
        assert_eq!(cell("boolean", Some(&json!(true)), now), json!(true));
        assert_eq!(cell("boolean", Some(&json!("true")), now), Value::Null);
        assert_eq!(cell("string", Some(&json!(7)), now), json!("7"));
        assert_eq!(cell("string", Some(&json!(false)), now), json!("false"));
        assert_eq!(cell("string", Some(&json!(1.5e7)), now), json!("1.5e+07"));
        assert_eq!(cell("string", Some(&json!(0.25)), now), json!("0.25"));
        assert_eq!(cell("string", Some(&json!(["a", "b"])), now), json!(r#"["a","b"]"#));
        assert_eq!(cell("string", None, now), Value::Null);
        assert_eq!(cell("date", Some(&json!("2026-11-22T22:29:30Z")), now), json!("30s"));
        assert_eq!(
            cell("date", Some(&json!("2026-11-22T23:00:00Z")), now),
            json!("<invalid>")
        );
        assert_eq!(cell("date", Some(&json!("yesterday")), now), json!("<invalid>"));
        assert_eq!(
            cell("date", Some(&json!("0001-01-01T00:00:00Z")), now),
            json!("<unknown>")
        );
        assert_eq!(cell("date", Some(&json!(5)), now), Value::Null);
    }

    #[test]
    fn jsonpath_filters_and_indexes() {
        let object = json!({"status": {"conditions": [
            {"type": "Authorized", "status": "True"},
            {"type": "Ready", "status": "False"}
        ], "n": 1}});
        assert_eq!(
            first_result(&object, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("False"))
        );
        assert_eq!(
            first_result(&object, r#".status.conditions[?(@.type=="Healthy")].status"#),
            None
        );
        assert_eq!(
            first_result(&object, ".status.conditions[0].type"),
            Some(&json!("Authorized"))
        );
        assert_eq!(
            first_result(&object, ".status.conditions[-1].type"),
            Some(&json!("Ready"))
        );
        assert_eq!(first_result(&object, ".status['n']"), Some(&json!(1)));
        assert_eq!(first_result(&object, ".status.missing.deeper"), None);
    }
}
