//! CRD schemas, enforced as the API server enforces them on create, update and patch:
//! `default`s applied, then the OpenAPI v3 structural checks (type, required, enum, pattern,
//! minimum/maximum, minLength/maxLength, minItems/maxItems, nullable) and the
//! `x-kubernetes-validations` CEL rules, including `oldSelf` transition rules (evaluated with
//! kube's `cel` feature). A refusal is the real 422 `Invalid` Status with one cause per problem
//! (`raw/invalid-patch.json`, `kubectl/apply-invalid.log`), so kubectl prints what it prints
//! against a cluster.
//!
//! Like a real server (validation ratcheting), a problem in a value that the write did not
//! change is not held against it, and a status write is judged on its status only.

use kube_core::cel::{ErrorKind, Validator, apply_defaults};
use serde_json::{Value, json};

use super::resources::{CelRules, Resource};
use super::store::ApiError;

/// One `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cause {
    reason: &'static str,
    message: String,
    field: String,
}

/// Fills in the schema's defaults.
pub fn default(resource: &Resource, object: &mut Value) {
    if let Some(schema) = resource.schema() {
        *object = apply_defaults(schema, object);
    }
}

/// Validates `new` (already defaulted) against the resource's schema; `old` is the stored
/// object for updates and patches.
pub fn validate(resource: &Resource, new: &Value, old: Option<&Value>, status_only: bool) -> Result<(), ApiError> {
    let Some(schema) = resource.schema() else {
        return Ok(());
    };
    let mut causes = Vec::new();
    structural(schema, new, "", &mut causes);
    if causes.iter().all(|c| c.reason != "FieldValueTypeInvalid")
        && let Some(rules) = resource.cel()
    {
        cel(schema, rules, new, old, &mut causes);
    }
    causes.sort_by(|a, b| a.field.cmp(&b.field));
    causes.retain(|c| {
        let path = pointer(&c.field);
        let changed = old.is_none_or(|old| old.pointer(&path) != new.pointer(&path));
        let in_scope =
            !status_only || c.field == "status" || c.field.starts_with("status.") || c.field.starts_with("status[");
        changed && in_scope
    });
    if causes.is_empty() {
        return Ok(());
    }
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    let listed: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    let summary = if listed.len() == 1 {
        listed[0].clone()
    } else {
        format!("[{}]", listed.join(", "))
    };
    Err(ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{}.{} \"{name}\" is invalid: {summary}", resource.kind, resource.group),
        details: json!({
            "name": name, "group": resource.group, "kind": resource.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        }),
    })
}

/// `spec.scopes[0]` → `/spec/scopes/0`.
fn pointer(field: &str) -> String {
    let mut out = String::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = part.split_once('[').map_or((part, ""), |(n, rest)| (n, rest));
        out.push('/');
        out.push_str(&name.replace('~', "~0").replace('/', "~1"));
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            out.push('/');
            out.push_str(index.trim_end_matches(']'));
        }
    }
    out
}

/// How Go's validation errors print a value: strings quoted, numbers and booleans bare.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn structural(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let invalid = |message: String| Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {}: {message}", shown(value)),
        field: path.to_string(),
    };
    if value.is_null() {
        // Nulls in non-nullable fields are dropped by a real server before validation.
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !value.is_string() && !value.is_i64() && !value.is_u64() {
            causes.push(invalid(format!(
                "{path} in body must be of type integer,string: {:?}",
                type_of(value)
            )));
        }
        return;
    }
    if let Some(want) = schema["type"].as_str() {
        let actual = type_of(value);
        let fits = actual == want || (want == "number" && actual == "integer");
        if !fits {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: {actual:?}: {path} in body must be of type {want}: {actual:?}"),
                field: path.to_string(),
            });
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(shown).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                supported.join(", ")
            ),
            field: path.to_string(),
        });
    }
    match value {
        Value::String(text) => {
            let length = text.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && length > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    message: format!("Too long: may not be more than {max} bytes"),
                    field: path.to_string(),
                });
            }
            if let Some(min) = schema["minLength"].as_u64()
                && length < min
            {
                causes.push(invalid(format!("{path} in body should be at least {min} chars long")));
            }
            if let Some(pattern) = schema["pattern"].as_str()
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
            {
                causes.push(invalid(format!("{path} in body should match '{pattern}'")));
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64() {
                let exclusive = schema["exclusiveMinimum"] == true;
                if n < min || (exclusive && n == min) {
                    let word = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    causes.push(invalid(format!(
                        "{path} in body should be {word} {}",
                        schema["minimum"]
                    )));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                let exclusive = schema["exclusiveMaximum"] == true;
                if n > max || (exclusive && n == max) {
                    let word = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    causes.push(invalid(format!(
                        "{path} in body should be {word} {}",
                        schema["maximum"]
                    )));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {max} items", items.len()),
                    field: path.to_string(),
                });
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                causes.push(invalid(format!("{path} in body should have at least {min} items")));
            }
            for (i, item) in items.iter().enumerate() {
                structural(&schema["items"], item, &format!("{path}[{i}]"), causes);
            }
        }
        Value::Object(map) => {
            for required in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if map.get(required).is_none_or(Value::is_null) {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                        field: join(path, required),
                    });
                }
            }
            if let Some(properties) = schema["properties"].as_object() {
                for (key, property) in properties {
                    if let Some(child) = map.get(key) {
                        structural(property, child, &join(path, key), causes);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for (key, child) in map {
                    structural(&schema["additionalProperties"], child, &join(path, key), causes);
                }
            }
        }
        _ => {}
    }
}

thread_local! {
    /// A validator registers every Kubernetes CEL function when made: once per thread.
    static VALIDATOR: Validator = Validator::new();
}

fn cel(schema: &Value, rules: &CelRules, new: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let outcome = VALIDATOR.with(|validator| validator.validate_compiled(rules.compiled(), new, old));
    let Err(errors) = outcome else {
        return;
    };
    for error in errors.into_vec() {
        let path = error.field_path.trim_start_matches('.').to_string();
        let value_type = type_at(schema, &path);
        let (reason, message) = match (error.kind, error.reason.as_deref()) {
            (ErrorKind::ValidationFailure, Some("FieldValueForbidden")) => {
                ("FieldValueForbidden", format!("Forbidden: {}", error.message))
            }
            (ErrorKind::ValidationFailure, Some("FieldValueRequired")) => {
                ("FieldValueRequired", format!("Required value: {}", error.message))
            }
            (ErrorKind::ValidationFailure, Some("FieldValueDuplicate")) => {
                ("FieldValueDuplicate", format!("Duplicate value: {}", error.message))
            }
            (ErrorKind::ValidationFailure, _) => (
                "FieldValueInvalid",
                format!("Invalid value: \"{value_type}\": {}", error.message),
            ),
            _ => ("InternalError", format!("Internal error: {}", error.message)),
        };
        causes.push(Cause {
            reason,
            message,
            field: path,
        });
    }
}

/// The schema `type` at a field path (what a CEL failure names as the "value").
fn type_at<'a>(schema: &'a Value, path: &str) -> &'a str {
    let mut at = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let name = part.split('[').next().unwrap_or(part);
        at = &at["properties"][name];
        for _ in part.matches('[') {
            at = &at["items"];
        }
    }
    at["type"].as_str().unwrap_or("object")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Resource {
        let crd: Value = serde_yaml_ng::from_str(include_str!("../../tests/fixtures/sample-crd.yaml")).unwrap();
        Resource::from_crd(&crd).remove(0)
    }

    #[test]
    fn refusals_read_as_the_real_server_words_them() {
        let resource = sample();
        let bad = json!({"apiVersion": "reference.test/v1", "kind": "Sample", "metadata": {"name": "bad"}, "spec": {"color": "green", "size": 0}});
        let error = validate(&resource, &bad, None, false).unwrap_err();
        // kubectl/apply-invalid.log, byte for byte.
        assert_eq!(
            error.status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Sample.reference.test \"bad\" is invalid: [spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\", spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1]","reason":"Invalid","details":{"name":"bad","group":"reference.test","kind":"Sample","causes":[{"reason":"FieldValueNotSupported","message":"Unsupported value: \"green\": supported values: \"red\", \"blue\"","field":"spec.color"},{"reason":"FieldValueInvalid","message":"Invalid value: 0: spec.size in body should be greater than or equal to 1","field":"spec.size"}]},"code":422})
        );
        // An unchanged bad value is not held against a later write (ratcheting).
        let mut relabelled = bad.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(validate(&resource, &relabelled, Some(&bad), false), Ok(()));
        let mut worse = bad.clone();
        worse["spec"]["size"] = json!(-1);
        let error = validate(&resource, &worse, Some(&bad), false).unwrap_err();
        assert_eq!(error.details["causes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn cel_rules_and_transition_rules_apply() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [{"rule": "self.size > 1 || self.color == 'red'", "message": "small ones are red"}],
            "properties": {"color": {"type": "string"}, "size": {"type": "integer"},
                "ref": {"type": "object", "properties": {"name": {"type": "string"}},
                    "x-kubernetes-validations": [{"rule": "self.name == oldSelf.name", "message": "ref.name is immutable"}]}}}}});
        let mut resource = sample();
        resource.set_schema(Some(schema));
        let object = |color: &str, name: &str| json!({"metadata": {"name": "x"}, "spec": {"color": color, "size": 1, "ref": {"name": name}}});
        let error = validate(&resource, &object("blue", "a"), None, false).unwrap_err();
        assert_eq!(
            error.message,
            "Sample.reference.test \"x\" is invalid: spec: Invalid value: \"object\": small ones are red"
        );
        assert_eq!(validate(&resource, &object("red", "a"), None, false), Ok(()));
        let error = validate(&resource, &object("red", "b"), Some(&object("red", "a")), false).unwrap_err();
        assert_eq!(
            error.message,
            "Sample.reference.test \"x\" is invalid: spec.ref: Invalid value: \"object\": ref.name is immutable"
        );
    }

    #[test]
    fn structural_checks_cover_types_required_patterns_and_lengths() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["id"],
            "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[a-z]+$"},
                "n": {"type": "integer", "maximum": 5}, "list": {"type": "array", "maxItems": 1, "items": {"type": "string"}}}}}});
        let mut resource = sample();
        resource.set_schema(Some(schema));
        let causes = |spec: Value| -> Vec<String> {
            match validate(
                &resource,
                &json!({"metadata": {"name": "x"}, "spec": spec}),
                None,
                false,
            ) {
                Ok(()) => Vec::new(),
                Err(e) => e.details["causes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| format!("{}: {}", c["field"].as_str().unwrap(), c["message"].as_str().unwrap()))
                    .collect(),
            }
        };
        assert_eq!(causes(json!({"id": "ab"})), Vec::<String>::new());
        assert_eq!(causes(json!({})), ["spec.id: Required value"]);
        assert_eq!(
            causes(json!({"id": "ABCD", "n": 6, "list": ["a", 1]})),
            [
                "spec.id: Too long: may not be more than 3 bytes",
                "spec.id: Invalid value: \"ABCD\": spec.id in body should match '^[a-z]+$'",
                "spec.list: Too many: 2: must have at most 1 items",
                "spec.list[1]: Invalid value: \"integer\": spec.list[1] in body must be of type string: \"integer\"",
                "spec.n: Invalid value: 6: spec.n in body should be less than or equal to 5",
            ]
        );
    }
}
