//! The three PATCH flavours the API server accepts, on `serde_json::Value`:
//! JSON merge patch (RFC 7386), Kubernetes strategic merge patch (with the
//! merge keys of the Node and Pod fields that have them, and the `$patch`,
//! `$retainKeys`, `$setElementOrder/…` and `$deleteFromPrimitiveList/…`
//! directives) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// How a list field is merged by a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListMerge {
    /// A list of objects merged by this key (`patchMergeKey`).
    ByKey(&'static str),
    /// A list of scalars merged as a set (`patchStrategy:"merge"`).
    Primitive,
}

/// The `patchStrategy:"merge"` fields of core/v1 Node and Pod (the paths
/// are dot-joined field names from the object's root; list elements add no
/// segment). Every other list is replaced, as the API server does.
fn list_merge(path: &str) -> Option<ListMerge> {
    Some(match path {
        "metadata.finalizers" | "spec.podCIDRs" => ListMerge::Primitive,
        "metadata.ownerReferences" => ListMerge::ByKey("uid"),
        "status.conditions" | "status.addresses" => ListMerge::ByKey("type"),
        "status.volumesAttached" => ListMerge::ByKey("name"),
        "spec.containers"
        | "spec.initContainers"
        | "spec.ephemeralContainers"
        | "spec.volumes"
        | "spec.containers.env"
        | "spec.containers.volumeMounts"
        | "spec.initContainers.env"
        | "spec.initContainers.volumeMounts" => ListMerge::ByKey("name"),
        "spec.containers.volumeDevices" | "spec.initContainers.volumeDevices" => {
            ListMerge::ByKey("devicePath")
        }
        "spec.containers.ports" | "spec.initContainers.ports" => ListMerge::ByKey("containerPort"),
        "spec.imagePullSecrets" => ListMerge::ByKey("name"),
        "status.podIPs" | "status.hostIPs" => ListMerge::ByKey("ip"),
        _ => return None,
    })
}

/// Why a patch could not be applied (the API server answers 422 or 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatchError(pub(crate) String);

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies a strategic merge patch to `target` (an object's JSON).
pub(crate) fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError(
            "a strategic merge patch must be a JSON object".to_owned(),
        ));
    };
    merge_map(target, patch, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Drops every `$…` directive from a value that is being inserted as is.
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
        other => other.clone(),
    }
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>, path: &str) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = clean(&Value::Object(patch.clone()));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError(format!(
                "Unknown patch type: {other} in map: {}",
                Value::Object(patch.clone())
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return Ok(());
    };
    if let Some(retain) = patch.get("$retainKeys") {
        let Value::Array(keys) = retain else {
            return Err(PatchError("$retainKeys must be a list".to_owned()));
        };
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        map.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(remove) = value else {
                return Err(PatchError(format!("{key} must be a list")));
            };
            if let Some(Value::Array(items)) = map.get_mut(field) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            // `$setElementOrder/<field>` only orders the merged list; the
            // order of our lists is the order elements were added in.
            continue;
        }
        let child_path = join(path, key);
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(child) => {
                if child.get("$patch").and_then(Value::as_str) == Some("delete") {
                    map.remove(key);
                } else {
                    merge_map(
                        map.entry(key.clone()).or_insert(Value::Null),
                        child,
                        &child_path,
                    )?;
                }
            }
            Value::Array(items) => match list_merge(&child_path) {
                Some(strategy) => {
                    let slot = map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                    merge_list(slot, items, strategy, &child_path)?;
                }
                None => {
                    map.insert(key.clone(), clean(value));
                }
            },
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(
    target: &mut Value,
    patch: &[Value],
    strategy: ListMerge,
    path: &str,
) -> Result<(), PatchError> {
    // `[{"$patch": "replace"}, elements…]` replaces the whole list.
    if patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = Value::Array(
            patch
                .iter()
                .filter(|item| item.get("$patch").is_none())
                .map(clean)
                .collect(),
        );
        return Ok(());
    }
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Value::Array(items) = target else {
        return Ok(());
    };
    match strategy {
        ListMerge::Primitive => {
            for value in patch {
                if !items.contains(value) {
                    items.push(value.clone());
                }
            }
        }
        ListMerge::ByKey(merge_key) => {
            for element in patch {
                let Value::Object(element_map) = element else {
                    return Err(PatchError(format!(
                        "the list {path} is merged by key {merge_key:?} but the patch has a non-object element {element}"
                    )));
                };
                let Some(key_value) = element_map.get(merge_key) else {
                    return Err(PatchError(format!(
                        "map: {element} does not contain declared merge key: {merge_key}"
                    )));
                };
                let position = items
                    .iter()
                    .position(|item| item.get(merge_key) == Some(key_value));
                let delete = element_map.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(_), true) => items.retain(|item| item.get(merge_key) != Some(key_value)),
                    (None, true) => {}
                    (Some(i), false) => merge_map(&mut items[i], element_map, path)?,
                    (None, false) => items.push(clean(element)),
                }
            }
        }
    }
    Ok(())
}

/// Applies a JSON patch (RFC 6902) to `target`.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(operations) = patch else {
        return Err(PatchError("a JSON patch must be a JSON array".to_owned()));
    };
    for operation in operations {
        let op = operation.get("op").and_then(Value::as_str).unwrap_or("");
        let path = operation
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError(format!("operation {operation} has no path")))?;
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| PatchError(format!("operation {operation} has no value")))
        };
        let from = || {
            operation
                .get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError(format!("operation {operation} has no from")))
        };
        match op {
            "add" => pointer_add(target, path, value()?)?,
            "remove" => {
                pointer_remove(target, path)?;
            }
            "replace" => {
                let slot = target
                    .pointer_mut(path)
                    .ok_or_else(|| missing(path, "replace"))?;
                *slot = value()?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(PatchError(format!("testing value {path} failed")));
                }
            }
            "move" => {
                let moved = pointer_remove(target, from()?)?;
                pointer_add(target, path, moved)?;
            }
            "copy" => {
                let copied = target
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| missing(path, "copy"))?;
                pointer_add(target, path, copied)?;
            }
            other => return Err(PatchError(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(())
}

fn missing(path: &str, op: &str) -> PatchError {
    PatchError(format!(
        "the server rejected our request due to an error in our request: {op} operation does not apply: doc is missing path: \"{path}\""
    ))
}

fn split_pointer(path: &str) -> Result<(String, String), PatchError> {
    let Some(slash) = path.rfind('/') else {
        return Err(PatchError(format!("invalid JSON pointer {path:?}")));
    };
    let last = path[slash + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..slash].to_owned(), last))
}

fn pointer_add(target: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| missing(path, "add"))?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(missing(path, "add")),
    }
}

fn pointer_remove(target: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or_else(|| missing(path, "remove")),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing(path, "remove")),
        },
        _ => Err(missing(path, "remove")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1, 2]});
        merge_patch(&mut target, &json!({"a": [3]}));
        assert_eq!(target, json!({"a": [3]}));
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
        ]}});
        strategic_merge_patch(
            &mut node,
            &json!({"status": {
                "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "NetworkUnavailable"}],
                "conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"}]
            }}),
        )
        .unwrap();
        assert_eq!(
            node,
            json!({"status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"}
            ]}})
        );
    }

    #[test]
    fn strategic_merge_directives() {
        let mut node = json!({
            "metadata": {"annotations": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}], "podCIDRs": ["10.0.0.0/24"]},
            "status": {"conditions": [{"type": "Ready"}, {"type": "Gone"}]}
        });
        strategic_merge_patch(
            &mut node,
            &json!({
                "metadata": {"annotations": {"a": null, "c": "3"}, "finalizers": ["y", "x"]},
                "spec": {"taints": [{"key": "other"}], "$deleteFromPrimitiveList/podCIDRs": ["10.0.0.0/24"]},
                "status": {"conditions": [{"type": "Gone", "$patch": "delete"}]}
            }),
        )
        .unwrap();
        assert_eq!(
            node,
            json!({
                "metadata": {"annotations": {"b": "2", "c": "3"}, "finalizers": ["x", "y"]},
                "spec": {"taints": [{"key": "other"}], "podCIDRs": []},
                "status": {"conditions": [{"type": "Ready"}]}
            })
        );
        let mut labels = json!({"metadata": {"labels": {"a": "1"}}});
        strategic_merge_patch(
            &mut labels,
            &json!({"metadata": {"labels": {"$patch": "replace", "b": "2"}}}),
        )
        .unwrap();
        assert_eq!(labels, json!({"metadata": {"labels": {"b": "2"}}}));
        let err = strategic_merge_patch(
            &mut labels,
            &json!({"status": {"conditions": [{"status": "True"}]}}),
        )
        .unwrap_err();
        assert!(err.0.contains("merge key: type"), "{}", err.0);
    }

    #[test]
    fn json_patch_operations() {
        let mut target = json!({"metadata": {"annotations": {"a/b": "1"}}, "list": [1, 3]});
        json_patch(
            &mut target,
            &json!([
                {"op": "add", "path": "/list/1", "value": 2},
                {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
                {"op": "test", "path": "/list/2", "value": 3},
                {"op": "copy", "from": "/list/0", "path": "/first"},
                {"op": "remove", "path": "/list/0"}
            ]),
        )
        .unwrap();
        assert_eq!(
            target,
            json!({"metadata": {"annotations": {"a/b": "2"}}, "list": [2, 3], "first": 1})
        );
        assert!(json_patch(&mut target, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
