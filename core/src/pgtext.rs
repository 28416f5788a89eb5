//! Text Postgres cannot hold: U+0000.
//!
//! Neither `text` nor `jsonb` accepts a NUL character (`jsonb` refuses the `\u0000` escape),
//! and one such string in a batch parameter makes Postgres refuse the whole statement. The
//! store runs every batch parameter through [`rows_param`] before binding it: the common
//! case (no NUL anywhere) costs one scan of the encoded text; otherwise the named
//! lossless fields (a job's `result`) move, whole, into a `text` twin holding their JSON
//! text (`result` → `result_text`, where the NUL stays escaped), and any other string has
//! its NULs replaced by U+FFFD. Readers turn `result_text` back into the value with
//! [`restore`].

use serde::Serialize;
use serde_json::Value;

/// JSON text of `rows` safe to bind as a `jsonb` parameter. `lossless` names the fields
/// kept exactly, moved into `<field>_text`.
pub fn rows_param<T: Serialize + ?Sized>(
    rows: &T,
    lossless: &[&str],
) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string(rows)?;
    if !text.contains("\\u0000") {
        return Ok(text);
    }
    let mut value: Value = serde_json::from_str(&text)?;
    if let Value::Array(items) = &mut value {
        for item in items.iter_mut() {
            let Value::Object(obj) = item else { continue };
            for field in lossless {
                let keep = obj.get(*field).is_some_and(has_nul);
                if keep {
                    if let Some(v) = obj.insert((*field).to_string(), Value::Null) {
                        obj.insert(format!("{field}_text"), Value::String(v.to_string()));
                    }
                }
            }
        }
    }
    replace_nul(&mut value);
    serde_json::to_string(&value)
}

/// Whether any string (or key) in `v` contains U+0000.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The first path (`a.b[2]`) in `v` holding a string or key with U+0000.
pub fn nul_path(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::String(s) => s.contains('\0').then(|| at.to_string()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, &format!("{at}[{i}]"))),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(here)
            } else {
                nul_path(x, &here)
            }
        }),
        _ => None,
    }
}

fn replace_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(a) => a.iter_mut().for_each(replace_nul),
        Value::Object(o) => {
            if o.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(o);
                for (k, x) in old {
                    o.insert(k.replace('\0', "\u{FFFD}"), x);
                }
            }
            o.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
}

/// A lossless field as read back: the `jsonb` column, or else its JSON text twin.
pub fn restore(value: Option<Value>, text: Option<&str>) -> Option<Value> {
    value.or_else(|| text.and_then(|t| serde_json::from_str(t).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_without_nul_pass_unchanged() {
        let rows = json!([{"result": {"a": "b"}, "error_message": "x"}]);
        assert_eq!(
            rows_param(&rows, &["result"]).unwrap(),
            serde_json::to_string(&rows).unwrap()
        );
    }

    #[test]
    fn a_result_with_nul_moves_to_its_text_twin_and_comes_back_exact() {
        let result = json!({"content": "a\u{0000}b"});
        let rows = json!([{"result": result, "error_message": "bad\u{0000}"}]);
        let param = rows_param(&rows, &["result"]).unwrap();
        let back: Value = serde_json::from_str(&param).unwrap();
        assert_eq!(back[0]["result"], Value::Null);
        assert_eq!(back[0]["error_message"], "bad\u{FFFD}");
        let text = back[0]["result_text"].as_str().unwrap();
        assert_eq!(restore(None, Some(text)), Some(result));
    }

    #[test]
    fn nul_path_names_the_field() {
        let v = json!({"metadata": {"k": ["ok", "x\u{0000}"]}});
        assert_eq!(nul_path(&v, "").as_deref(), Some("metadata.k[1]"));
        assert_eq!(nul_path(&json!({"a": 1}), ""), None);
    }
}
