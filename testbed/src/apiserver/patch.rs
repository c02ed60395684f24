//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and the approximations of
//! strategic merge patch and server-side apply (both applied as a merge patch; lists replace
//! whole, field ownership is not tracked).

use serde_json::Value;

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError(pub String);

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A strategic merge patch, approximated as a merge patch whose directives are obeyed rather
/// than stored: `$retainKeys` (keep only the listed keys of that object), `$patch: replace` and
/// `$patch: delete` on an object; `$setElementOrder/…`, `$deleteFromPrimitiveList/…` and any
/// other `$` key are dropped (lists still replace whole).
pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    match fields.get("$patch").and_then(Value::as_str) {
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        Some("replace") => {
            *target = Value::Object(Default::default());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(object) = target else { return };
    for (key, value) in fields {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            object.remove(key);
        } else {
            let slot = object.entry(key.clone()).or_insert(Value::Null);
            strategic(slot, value);
            if slot.is_null() {
                object.remove(key);
            }
        }
    }
    if let Some(Value::Array(keep)) = fields.get("$retainKeys") {
        object.retain(|key, _| keep.iter().any(|k| k.as_str() == Some(key)));
    }
}

/// RFC 6902 operations `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError("a JSON patch must be an array of operations".into()))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| PatchError("operation without a path".into()))?;
        match op["op"].as_str() {
            Some("add") => add(target, path, op["value"].clone())?,
            Some("remove") => {
                remove(target, path)?;
            }
            Some("replace") => {
                remove(target, path)?;
                add(target, path, op["value"].clone())?;
            }
            Some("move") => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| PatchError("move without from".into()))?;
                let value = remove(target, from)?;
                add(target, path, value)?;
            }
            Some("copy") => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| PatchError("copy without from".into()))?;
                let value = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| PatchError(format!("no value at {from}")))?;
                add(target, path, value)?;
            }
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(PatchError(format!("test failed at {path}")));
                }
            }
            other => return Err(PatchError(format!("unknown operation {other:?}"))),
        }
    }
    Ok(())
}

fn split(path: &str) -> Result<(String, String), PatchError> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| PatchError(format!("invalid path {path:?}")))?;
    Ok((parent.to_string(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, key) = split(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
            Ok(())
        }
        Some(Value::Array(items)) if key == "-" => {
            items.push(value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index: usize = key.parse().map_err(|_| PatchError(format!("bad index in {path}")))?;
            if index > items.len() {
                return Err(PatchError(format!("index out of range in {path}")));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(PatchError(format!("no parent for {path}"))),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, key) = split(path)?;
    let missing = || PatchError(format!("no value at {path}"));
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&key).ok_or_else(missing),
        Some(Value::Array(items)) => {
            let index: usize = key.parse().map_err(|_| missing())?;
            (index < items.len()).then(|| items.remove(index)).ok_or_else(missing)
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_directives_are_obeyed_not_stored() {
        let mut target = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                                         "volumes": [{"name": "a"}], "replicas": 1}});
        strategic(
            &mut target,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                             "$setElementOrder/volumes": [{"name": "b"}], "volumes": [{"name": "b"}],
                             "template": {"$patch": "replace", "x": 1}}}),
        );
        assert_eq!(
            target,
            json!({"spec": {"strategy": {"type": "Recreate"}, "volumes": [{"name": "b"}], "replicas": 1,
                            "template": {"x": 1}}})
        );
        strategic(&mut target, &json!({"spec": {"template": {"$patch": "delete"}}}));
        assert_eq!(target["spec"].get("template"), None);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/list/0", "value": 0},
                {"op": "test", "path": "/list/2", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"metadata": {"labels": {"b": "2"}}, "list": [0, 2, 3]}));
        assert!(json_patch(&mut doc, &json!([{"op": "test", "path": "/list/0", "value": 9}])).is_err());
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
