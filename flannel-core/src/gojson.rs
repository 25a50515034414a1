//! JSON with Go `encoding/json` semantics, for wire compatibility.
//!
//! Go flannel decodes `net-conf.json`, lease values and backend options with
//! `encoding/json`, whose rules differ from serde's defaults:
//! object keys match struct fields **case-insensitively** (an exact match is
//! preferred), unknown keys are ignored, a repeated key overwrites the earlier
//! one, `null` leaves plain fields untouched, and type mismatches produce
//! texts such as `json: cannot unmarshal string into Go struct field
//! Config.SubnetLen of type uint`. [`Object`] gives backends and the core the
//! same behaviour. On the encoding side, [`write_string`] and [`compact`] write
//! exactly the bytes `json.Marshal` writes (HTML-safe escaping included).

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// A JSON decoding error with Go's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

impl JsonError {
    fn from_serde(e: &serde_json::Error) -> Self {
        if e.is_eof() {
            return JsonError("unexpected end of JSON input".into());
        }
        JsonError(e.to_string())
    }
}

/// Valid JSON text kept verbatim (Go's `json.RawMessage`): backend options
/// and lease backend data travel as raw JSON that only the backend decodes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// Checks that `text` is one valid JSON document and keeps it as written.
    pub fn new(text: &str) -> Result<RawJson, JsonError> {
        serde_json::from_str::<&RawValue>(text).map_err(|e| JsonError::from_serde(&e))?;
        Ok(RawJson(text.into()))
    }

    /// The JSON text, as written.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The text compacted the way Go's encoder writes an embedded raw message.
    pub fn compacted(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        compact(&mut out, &self.0);
        out
    }

    /// True for the literal `null`.
    pub fn is_null(&self) -> bool {
        self.0.trim() == "null"
    }
}

impl From<&RawValue> for RawJson {
    fn from(raw: &RawValue) -> Self {
        RawJson(raw.get().into())
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The JSON kind of a raw value, as Go names it in type errors.
pub fn kind_of(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// True when the raw value is the literal `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// Go's case folding for field names: ASCII case plus the two non-ASCII
/// characters that fold onto ASCII letters (`ſ` → s, Kelvin sign → k).
fn fold(c: char) -> char {
    match c {
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c if c.is_ascii() => c.to_ascii_lowercase(),
        c => c.to_lowercase().next().unwrap_or(c),
    }
}

/// Compares a JSON key with a Go field name the way `encoding/json` does.
pub fn key_matches(key: &str, field: &str) -> bool {
    key == field || {
        let mut a = key.chars().map(fold);
        let mut b = field.chars().map(fold);
        loop {
            match (a.next(), b.next()) {
                (None, None) => break true,
                (Some(x), Some(y)) if x == y => continue,
                _ => break false,
            }
        }
    }
}

/// A JSON object's members in document order, duplicates kept, values raw.
#[derive(Debug, Default)]
pub struct Object {
    members: Vec<(String, Box<RawValue>)>,
    /// Go type name used in error texts, e.g. `Config`.
    type_name: &'static str,
}

/// Decodes an optional document as Go's `json.Unmarshal` fills a struct
/// that already holds its defaults: `Ok(None)` when the document is absent
/// or `null` (the defaults stay), the object's members when it is an object,
/// and Go's type error naming `go_type` for any other kind. `type_name` is
/// the Go struct name [`Object`] uses in its field errors. Every backend's
/// options and lease data decode through this.
///
/// ```
/// use flannel_core::gojson::{decode_struct, RawJson};
/// let obj = RawJson::new(r#"{"VNI": 4}"#).unwrap();
/// assert!(decode_struct(Some(&obj), "cfg", "vxlan.backendConfig").unwrap().is_some());
/// let null = RawJson::new("null").unwrap();
/// assert!(decode_struct(Some(&null), "cfg", "vxlan.backendConfig").unwrap().is_none());
/// let list = RawJson::new("[1]").unwrap();
/// assert_eq!(
///     decode_struct(Some(&list), "cfg", "vxlan.backendConfig").unwrap_err().0,
///     "json: cannot unmarshal array into Go value of type vxlan.backendConfig"
/// );
/// ```
pub fn decode_struct(
    raw: Option<&RawJson>,
    type_name: &'static str,
    go_type: &str,
) -> Result<Option<Object>, JsonError> {
    let Some(raw) = raw else { return Ok(None) };
    match Object::parse(raw.get(), type_name)? {
        Ok(obj) => Ok(Some(obj)),
        Err(NotObject::Null) => Ok(None),
        Err(NotObject::Other(kind)) => Err(JsonError(format!(
            "json: cannot unmarshal {kind} into Go value of type {go_type}"
        ))),
    }
}

/// Result of [`Object::parse`] when the document is not an object.
#[derive(Debug)]
pub enum NotObject {
    /// The document is `null`: Go leaves the target unchanged.
    Null,
    /// The document is another kind (array, string, ...); carries the kind.
    Other(&'static str),
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
            out.push((k, v));
        }
        Ok(out)
    }
}

impl Object {
    /// Parses `input` as one JSON document. Syntax errors come first, as in Go
    /// (`unexpected end of JSON input` for truncated input). `type_name` is the
    /// Go struct name used in type errors.
    pub fn parse(
        input: &str,
        type_name: &'static str,
    ) -> Result<Result<Object, NotObject>, JsonError> {
        let raw: Box<RawValue> =
            serde_json::from_str(input).map_err(|e| JsonError::from_serde(&e))?;
        let kind = kind_of(raw.get());
        if kind == "null" {
            return Ok(Err(NotObject::Null));
        }
        if kind != "object" {
            return Ok(Err(NotObject::Other(kind)));
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let members = de
            .deserialize_map(MembersVisitor)
            .map_err(|e| JsonError::from_serde(&e))?;
        Ok(Ok(Object { members, type_name }))
    }

    /// Like [`Object::parse`] for a value embedded in a larger document.
    pub fn from_raw(
        raw: &RawValue,
        type_name: &'static str,
    ) -> Result<Result<Object, NotObject>, JsonError> {
        Self::parse(raw.get(), type_name)
    }

    /// The value that Go would store in field `field`: among the members whose
    /// key matches (exactly or case-insensitively), the **last** one, since each
    /// later occurrence overwrites the field again.
    pub fn get(&self, field: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(k, _)| key_matches(k, field))
            .map(|(_, v)| v.as_ref())
    }

    /// Every member, in document order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// Go's `UnmarshalTypeError` text for `field` of Go type `go_type`.
    pub fn type_error(&self, field: &str, raw: &RawValue, go_type: &str) -> JsonError {
        self.type_error_value(field, kind_of(raw.get()), go_type)
    }

    /// Like [`Object::type_error`] for a numeric field, where Go quotes the
    /// offending number (`number -1`).
    fn number_error(&self, field: &str, raw: &RawValue, go_type: &str) -> JsonError {
        match kind_of(raw.get()) {
            "number" => {
                self.type_error_value(field, &format!("number {}", raw.get().trim()), go_type)
            }
            kind => self.type_error_value(field, kind, go_type),
        }
    }

    fn type_error_value(&self, field: &str, value: &str, go_type: &str) -> JsonError {
        JsonError(format!(
            "json: cannot unmarshal {value} into Go struct field {}.{field} of type {go_type}",
            self.type_name
        ))
    }

    /// A Go `bool` field: `null` or absence leaves it `None`.
    pub fn bool(&self, field: &str) -> Result<Option<bool>, JsonError> {
        match self.get(field) {
            None => Ok(None),
            Some(raw) => match raw.get().trim() {
                "null" => Ok(None),
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(self.type_error(field, raw, "bool")),
            },
        }
    }

    /// A Go `string` field: `null` or absence leaves it `None`.
    pub fn string(&self, field: &str) -> Result<Option<String>, JsonError> {
        match self.get(field) {
            None => Ok(None),
            Some(raw) if is_null(raw) => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| self.type_error(field, raw, "string")),
        }
    }

    /// A Go unsigned integer field (`uint`, `uint32`...): negative numbers,
    /// fractions and exponents are type errors, as are values above `max`.
    pub fn uint(&self, field: &str, go_type: &str, max: u64) -> Result<Option<u64>, JsonError> {
        match self.get(field) {
            None => Ok(None),
            Some(raw) if is_null(raw) => Ok(None),
            Some(raw) => raw
                .get()
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|v| *v <= max)
                .map(Some)
                .ok_or_else(|| self.number_error(field, raw, go_type)),
        }
    }

    /// A Go signed integer field (`int`): fractions are type errors.
    pub fn int(&self, field: &str, go_type: &str) -> Result<Option<i64>, JsonError> {
        match self.get(field) {
            None => Ok(None),
            Some(raw) if is_null(raw) => Ok(None),
            Some(raw) => raw
                .get()
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| self.number_error(field, raw, go_type)),
        }
    }

    /// The raw token of a field whose Go type has its own `UnmarshalJSON`
    /// that trims quotes (flannel's `IP4`, `IP4Net`, ...): `null` is passed
    /// through as the text `null`, as Go passes it to the unmarshaller.
    pub fn trimmed_token(&self, field: &str) -> Option<String> {
        self.get(field)
            .map(|raw| raw.get().trim().trim_matches('"').to_string())
    }
}

/// Writes `s` as a JSON string exactly as Go's `json.Marshal` does: `<`, `>`,
/// `&`, U+2028 and U+2029 escaped as `\u003c`..., control characters as
/// `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Compacts valid JSON text the way Go's encoder does when it embeds a
/// `json.RawMessage`: insignificant whitespace removed, HTML characters
/// inside strings escaped, everything else (number spelling, other escapes)
/// kept byte for byte.
pub fn compact(out: &mut String, json: &str) {
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
                continue;
            }
            match c {
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        } else {
            match c {
                ' ' | '\t' | '\n' | '\r' => {}
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_like_go() {
        assert!(key_matches("network", "Network"));
        assert!(key_matches("NETWORK", "Network"));
        assert!(key_matches("enableIPv6", "EnableIPv6"));
        assert!(key_matches("\u{017F}ubnetLen", "SubnetLen"));
        assert!(key_matches("bac\u{212A}end", "Backend"));
        assert!(!key_matches("Network ", "Network"));
        assert!(!key_matches("Netw", "Network"));
    }

    #[test]
    fn last_duplicate_wins_and_unknown_ignored() {
        let o = Object::parse(r#"{"Network":"a","x":1,"network":"b"}"#, "Config")
            .unwrap()
            .unwrap();
        assert_eq!(o.trimmed_token("Network").as_deref(), Some("b"));
        assert_eq!(o.get("Missing").map(|r| r.get().to_string()), None);
    }

    #[test]
    fn type_errors_use_go_wording() {
        let o = Object::parse(
            r#"{"SubnetLen":"24","A":-1,"B":1.5,"C":"x","D":null}"#,
            "Config",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            o.uint("SubnetLen", "uint", u64::MAX).unwrap_err().0,
            "json: cannot unmarshal string into Go struct field Config.SubnetLen of type uint"
        );
        assert_eq!(
            o.uint("A", "uint", u64::MAX).unwrap_err().0,
            "json: cannot unmarshal number -1 into Go struct field Config.A of type uint"
        );
        assert_eq!(
            o.int("B", "int").unwrap_err().0,
            "json: cannot unmarshal number 1.5 into Go struct field Config.B of type int"
        );
        assert_eq!(
            o.bool("C").unwrap_err().0,
            "json: cannot unmarshal string into Go struct field Config.C of type bool"
        );
        assert_eq!(o.bool("D"), Ok(None));
        assert_eq!(o.uint("D", "uint", 9), Ok(None));
        assert_eq!(o.trimmed_token("D").as_deref(), Some("null"));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            Object::parse("", "C").unwrap_err().0,
            "unexpected end of JSON input"
        );
        assert_eq!(
            Object::parse("{\"a\":", "C").unwrap_err().0,
            "unexpected end of JSON input"
        );
        assert!(Object::parse("{} x", "C").is_err());
        assert!(matches!(
            Object::parse(" null ", "C").unwrap(),
            Err(NotObject::Null)
        ));
        assert!(matches!(
            Object::parse("[1]", "C").unwrap(),
            Err(NotObject::Other("array"))
        ));
    }

    #[test]
    fn encodes_like_go() {
        let mut s = String::new();
        write_string(&mut s, "a<b>&\"\\\n\u{1}\u{8}\u{2028}é");
        assert_eq!(s, r#""a\u003cb\u003e\u0026\"\\\n\u0001\b\u2028é""#);
        let mut c = String::new();
        compact(
            &mut c,
            "{ \"VNI\" : 1,\n \"VtepMAC\":\"a b<\\\"\" , \"n\": 1e3 }",
        );
        assert_eq!(c, r#"{"VNI":1,"VtepMAC":"a b\u003c\"","n":1e3}"#);
    }
}
