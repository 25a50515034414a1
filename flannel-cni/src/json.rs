//! JSON read and written the way Go's `encoding/json` does it.
//!
//! The upstream plugin is a Go program; what a container runtime sees from it
//! (error texts, the saved delegate config, the printed result) is shaped by
//! `encoding/json`. This module reproduces the parts that show:
//!
//! * [`parse`] checks syntax first, as `json.Unmarshal` does, and fails with
//!   Go's texts (`invalid character 'x' looking for beginning of value`,
//!   `unexpected end of JSON input`, ...). The [`Value`] it returns keeps object
//!   members in document order, duplicates included, and numbers as written.
//! * [`GoValue`] is what Go decodes into an `interface{}`: maps (keys sorted
//!   when written, the last duplicate winning), `float64` numbers, strings.
//!   [`GoValue::write`] gives the bytes of `json.Marshal`.
//! * [`Value::write_indented`] gives the bytes of `json.MarshalIndent(v, "", "    ")`
//!   for a document whose key order is already the wanted one.
//! * [`go_quote`] is Go's `%q`, [`go_float`] Go's `float64` encoding, and
//!   [`type_error`] the text of an `*json.UnmarshalTypeError`.
//!
//! It is its own parser (not `serde_json`) because it must report Go's error
//! texts, keep number spelling and duplicate keys, and order keys without
//! switching on `serde_json/preserve_order` for the whole workspace.

use flannel_core::gojson::write_string;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A parsed JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, exactly as written.
    Number(String),
    /// A string, unescaped (invalid UTF-8 and lone surrogates become U+FFFD, as in Go).
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object's members in document order, duplicates kept.
    Object(Vec<(String, Value)>),
}

/// A JSON syntax error with Go's wording, e.g. `unexpected end of JSON input`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

/// Go's limit on nesting (`maxNestingDepth`).
const MAX_DEPTH: usize = 10_000;

/// Parses one JSON document (surrounding whitespace allowed) with Go's
/// syntax rules and error texts.
pub fn parse(input: &[u8]) -> Result<Value, SyntaxError> {
    let mut p = Parser {
        b: input,
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.skip_ws();
    if p.i < p.b.len() {
        return Err(p.fail("after top-level value"));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn is_digit(&self) -> bool {
        matches!(self.peek(), Some(b'0'..=b'9'))
    }

    /// An error at the current byte; at the end of input Go reports
    /// `unexpected end of JSON input` for states that accept whitespace.
    fn fail(&self, ctx: &str) -> SyntaxError {
        match self.peek() {
            None => SyntaxError("unexpected end of JSON input".into()),
            Some(c) => SyntaxError(format!("invalid character {} {ctx}", quote_char(c))),
        }
    }

    /// Like [`Parser::fail`] for states that reject whitespace: Go ends the
    /// input by feeding the scanner a space, so the error names `' '`.
    fn fail_sp(&self, ctx: &str) -> SyntaxError {
        let c = self.peek().unwrap_or(b' ');
        SyntaxError(format!("invalid character {} {ctx}", quote_char(c)))
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            _ => Err(self.fail("looking for beginning of value")),
        }
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.fail("exceeded max depth"));
        }
        self.i += 1;
        Ok(())
    }

    fn object(&mut self) -> Result<Value, SyntaxError> {
        self.enter()?;
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Value::Object(members));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.fail("looking for beginning of object key string"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.fail("after object key"));
            }
            self.i += 1;
            let v = self.value()?;
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.fail("after object key:value pair")),
            }
        }
        self.depth -= 1;
        Ok(Value::Object(members))
    }

    fn array(&mut self) -> Result<Value, SyntaxError> {
        self.enter()?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.fail("after array element")),
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items))
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, SyntaxError> {
        let name = String::from_utf8_lossy(word).into_owned();
        self.i += 1;
        for &want in &word[1..] {
            if self.peek() != Some(want) {
                return Err(self.fail_sp(&format!(
                    "in literal {name} (expecting {})",
                    quote_char(want)
                )));
            }
            self.i += 1;
        }
        Ok(v)
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while self.is_digit() {
                    self.i += 1;
                }
            }
            _ => return Err(self.fail_sp("in numeric literal")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.is_digit() {
                return Err(self.fail_sp("after decimal point in numeric literal"));
            }
            while self.is_digit() {
                self.i += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.is_digit() {
                return Err(self.fail_sp("in exponent of numeric literal"));
            }
            while self.is_digit() {
                self.i += 1;
            }
        }
        Ok(Value::Number(
            String::from_utf8_lossy(&self.b[start..self.i]).into_owned(),
        ))
    }

    /// Four hex digits of a `\u` escape, consumed.
    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut r = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c) => (c as char).to_digit(16),
                None => None,
            };
            let Some(d) = d else {
                return Err(self.fail_sp("in \\u hexadecimal character escape"));
            };
            r = r * 16 + d;
            self.i += 1;
        }
        Ok(r)
    }

    /// A `\uXXXX` escape starting at the current byte, if there is a
    /// well-formed one (lookahead only, nothing consumed).
    fn peek_u_escape(&self) -> Option<u32> {
        let b = self.b.get(self.i..self.i + 6)?;
        if b[0] != b'\\' || b[1] != b'u' {
            return None;
        }
        let s = std::str::from_utf8(&b[2..]).ok()?;
        u32::from_str_radix(s, 16).ok()
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.fail(""));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    self.i += 1;
                    let plain = match self.peek() {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'b') => 8,
                        Some(b'f') => 12,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'u') => {
                            self.i += 1;
                            let r = self.hex4()?;
                            let ch = if (0xD800..0xE000).contains(&r) {
                                // Go pairs a surrogate with a following
                                // `\uXXXX` when the two decode; anything else
                                // becomes U+FFFD and the next escape stands alone.
                                match self.peek_u_escape() {
                                    Some(r2)
                                        if (0xD800..0xDC00).contains(&r)
                                            && (0xDC00..0xE000).contains(&r2) =>
                                    {
                                        self.i += 6;
                                        char::from_u32(
                                            0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00),
                                        )
                                        .unwrap_or('\u{FFFD}')
                                    }
                                    _ => '\u{FFFD}',
                                }
                            } else {
                                char::from_u32(r).unwrap_or('\u{FFFD}')
                            };
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        _ => return Err(self.fail_sp("in string escape code")),
                    };
                    out.push(plain);
                    self.i += 1;
                }
                c if c < 0x20 => return Err(self.fail("in string literal")),
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        Ok(utf8_lossy_per_byte(&out))
    }
}

/// UTF-8 text with each invalid byte replaced by U+FFFD (Go's decoding rule).
fn utf8_lossy_per_byte(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        s.push_str(chunk.valid());
        for _ in chunk.invalid() {
            s.push('\u{FFFD}');
        }
    }
    s
}

/// Go's `quoteChar`: how a byte is named in a syntax error.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_string(),
        b'"' => "'\"'".to_string(),
        _ => {
            let q = go_quote(&char::from(c).to_string());
            format!("'{}'", &q[1..q.len() - 1])
        }
    }
}

/// Whether Go's `strconv.IsPrint` holds, closely enough: controls, spaces
/// other than U+0020, format characters and private use are not printable.
fn go_is_print(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x206F | 0xD800..=0xF8FF | 0xFEFF
        | 0xFFF0..=0xFFFB | 0xFFFE | 0xFFFF | 0xE0000..=0xE007F | 0xF0000..)
}

/// Go's `strconv.Quote` (the `%q` verb) of possibly invalid UTF-8 bytes.
pub fn go_quote_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('"');
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if go_is_print(c) => out.push(c),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.Quote` (the `%q` verb).
pub fn go_quote(s: &str) -> String {
    go_quote_bytes(s.as_bytes())
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s.as_ref())).collect();
    format!("[{}]", quoted.join(" "))
}

/// A `float64` as `json.Marshal` writes it: shortest round-trip digits,
/// plain notation for 1e-6 <= |f| < 1e21, otherwise `1e+21` / `1e-7` style.
pub fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mant, exp)) => match exp.strip_prefix('-') {
                Some(neg) => format!("{mant}e-{neg}"),
                None => format!("{mant}e+{exp:0>2}"),
            },
            None => s,
        }
    } else {
        format!("{f}")
    }
}

/// The text of Go's `*json.UnmarshalTypeError`. `value` is the JSON kind
/// (`string`, `number`, `number 1.5`, ...); `strukt` and `field` give the
/// context (both empty for a top-level value).
pub fn type_error(value: &str, strukt: &str, field: &str, go_type: &str) -> String {
    if strukt.is_empty() && field.is_empty() {
        format!("json: cannot unmarshal {value} into Go value of type {go_type}")
    } else {
        format!(
            "json: cannot unmarshal {value} into Go struct field {strukt}.{field} of type {go_type}"
        )
    }
}

impl Value {
    /// The JSON kind as Go names it in type errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Writes the value as `json.MarshalIndent(v, "", "    ")` would, keeping
    /// member order and number spelling; `level` is the current depth.
    pub fn write_indented(&self, out: &mut String, level: usize) {
        fn indent(out: &mut String, level: usize) {
            out.push('\n');
            for _ in 0..level {
                out.push_str("    ");
            }
        }
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(n),
            Value::String(s) => write_string(out, s),
            Value::Array(items) if items.is_empty() => out.push_str("[]"),
            Value::Array(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    indent(out, level + 1);
                    item.write_indented(out, level + 1);
                }
                indent(out, level);
                out.push(']');
            }
            Value::Object(members) if members.is_empty() => out.push_str("{}"),
            Value::Object(members) => {
                out.push('{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    indent(out, level + 1);
                    write_string(out, k);
                    out.push_str(": ");
                    v.write_indented(out, level + 1);
                }
                indent(out, level);
                out.push('}');
            }
        }
    }

    /// The indented text (see [`Value::write_indented`]).
    pub fn to_indented(&self) -> String {
        let mut out = String::new();
        self.write_indented(&mut out, 0);
        out
    }
}

/// A Go `interface{}` value as `encoding/json` produces and consumes it.
#[derive(Debug, Clone, PartialEq)]
pub enum GoValue {
    /// `nil`
    Null,
    /// `bool`
    Bool(bool),
    /// `float64`, every number decoded into an `interface{}`
    Float(f64),
    /// An unsigned integer set by the plugin itself (`FLANNEL_MTU`).
    Uint(u64),
    /// `string`
    String(String),
    /// `[]interface{}`
    List(Vec<GoValue>),
    /// `map[string]interface{}`; written with its keys sorted.
    Map(BTreeMap<String, GoValue>),
    /// A value that a typed Go marshaller already encoded (a route), written verbatim.
    Raw(String),
}

/// A Go `map[string]interface{}`.
pub type GoMap = BTreeMap<String, GoValue>;

impl GoValue {
    /// Decodes a parsed value the way Go decodes into `interface{}`. A number
    /// that does not fit a `float64` becomes `nil`, and its text is recorded
    /// in `bad_number` (the first one only) so the caller can build Go's
    /// `cannot unmarshal number 1e400 ... of type float64` error.
    pub fn from_json(v: &Value, bad_number: &mut Option<String>) -> GoValue {
        match v {
            Value::Null => GoValue::Null,
            Value::Bool(b) => GoValue::Bool(*b),
            Value::Number(n) => match n.parse::<f64>() {
                Ok(f) if f.is_finite() => GoValue::Float(f),
                _ => {
                    bad_number.get_or_insert_with(|| n.clone());
                    GoValue::Null
                }
            },
            Value::String(s) => GoValue::String(s.clone()),
            Value::Array(items) => GoValue::List(
                items
                    .iter()
                    .map(|i| GoValue::from_json(i, bad_number))
                    .collect(),
            ),
            Value::Object(members) => {
                let mut m = GoMap::new();
                for (k, v) in members {
                    m.insert(k.clone(), GoValue::from_json(v, bad_number));
                }
                GoValue::Map(m)
            }
        }
    }

    /// The JSON kind of the value once marshalled, as Go names it in type errors.
    pub fn kind(&self) -> &'static str {
        match self {
            GoValue::Null => "null",
            GoValue::Bool(_) => "bool",
            GoValue::Float(_) | GoValue::Uint(_) => "number",
            GoValue::String(_) => "string",
            GoValue::List(_) => "array",
            GoValue::Map(_) => "object",
            GoValue::Raw(r) => flannel_core::gojson::kind_of(r),
        }
    }

    /// Appends the bytes of `json.Marshal(v)`.
    pub fn write(&self, out: &mut String) {
        match self {
            GoValue::Null => out.push_str("null"),
            GoValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            GoValue::Float(f) => out.push_str(&go_float(*f)),
            GoValue::Uint(u) => {
                let _ = write!(out, "{u}");
            }
            GoValue::String(s) => write_string(out, s),
            GoValue::List(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            GoValue::Map(m) => {
                out.push('{');
                for (n, (k, v)) in m.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
            GoValue::Raw(r) => out.push_str(r),
        }
    }

    /// The bytes of `json.Marshal(v)` as a string.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse(s.as_bytes()).unwrap_err().0
    }

    #[test]
    fn syntax_errors_read_like_go() {
        assert_eq!(err(""), "unexpected end of JSON input");
        assert_eq!(err("   "), "unexpected end of JSON input");
        assert_eq!(
            err("x"),
            "invalid character 'x' looking for beginning of value"
        );
        assert_eq!(err("{"), "unexpected end of JSON input");
        assert_eq!(
            err("{'a':1}"),
            r"invalid character '\'' looking for beginning of object key string"
        );
        assert_eq!(err(r#"{"a" 1}"#), "invalid character '1' after object key");
        assert_eq!(
            err(r#"{"a":1 "b":2}"#),
            "invalid character '\"' after object key:value pair"
        );
        assert_eq!(
            err(r#"{"a":1,}"#),
            "invalid character '}' looking for beginning of object key string"
        );
        assert_eq!(
            err("[1,]"),
            "invalid character ']' looking for beginning of value"
        );
        assert_eq!(err("[1 2]"), "invalid character '2' after array element");
        assert_eq!(err("{} {}"), "invalid character '{' after top-level value");
        assert_eq!(err("01"), "invalid character '1' after top-level value");
        assert_eq!(err("-"), "invalid character ' ' in numeric literal");
        assert_eq!(err("-x"), "invalid character 'x' in numeric literal");
        assert_eq!(
            err("1."),
            "invalid character ' ' after decimal point in numeric literal"
        );
        assert_eq!(
            err("1e+"),
            "invalid character ' ' in exponent of numeric literal"
        );
        assert_eq!(
            err("tru"),
            "invalid character ' ' in literal true (expecting 'e')"
        );
        assert_eq!(
            err("nul1"),
            "invalid character '1' in literal null (expecting 'l')"
        );
        assert_eq!(err("\"a\tb\""), r"invalid character '\t' in string literal");
        assert_eq!(
            err(r#""\x""#),
            "invalid character 'x' in string escape code"
        );
        assert_eq!(
            err(r#""\u12g4""#),
            r"invalid character 'g' in \u hexadecimal character escape"
        );
        assert_eq!(err("\"abc"), "unexpected end of JSON input");
        assert_eq!(
            err("\u{e9}"),
            "invalid character '\u{c3}' looking for beginning of value"
        );
        assert_eq!(
            err("\x01"),
            r"invalid character '\x01' looking for beginning of value"
        );
    }

    #[test]
    fn values_keep_order_duplicates_and_spelling() {
        let v = parse(br#" {"b": 1.50, "a": [true, null, "x\u00e9\ud83d\ude00\ud800"], "b": -0} "#)
            .unwrap();
        assert_eq!(
            v,
            Value::Object(vec![
                ("b".into(), Value::Number("1.50".into())),
                (
                    "a".into(),
                    Value::Array(vec![
                        Value::Bool(true),
                        Value::Null,
                        Value::String("x\u{e9}\u{1F600}\u{FFFD}".into())
                    ])
                ),
                ("b".into(), Value::Number("-0".into())),
            ])
        );
        assert_eq!(
            v.to_indented(),
            "{\n    \"b\": 1.50,\n    \"a\": [\n        true,\n        null,\n        \"x\u{e9}\u{1F600}\u{FFFD}\"\n    ],\n    \"b\": -0\n}"
        );
        assert_eq!(parse(b"{}").unwrap().to_indented(), "{}");
    }

    #[test]
    fn go_marshal_sorts_keys_and_formats_floats() {
        let mut bad = None;
        let v = GoValue::from_json(
            &parse(br#"{"z": 1450, "a": {"y": 1e21, "x": 1e-7, "w": 0.5}, "m": "<&>", "z": 2.0}"#)
                .unwrap(),
            &mut bad,
        );
        assert_eq!(bad, None);
        assert_eq!(
            v.to_json(),
            r#"{"a":{"w":0.5,"x":1e-7,"y":1e+21},"m":"\u003c\u0026\u003e","z":2}"#
        );
        GoValue::from_json(&parse(b"[1e400]").unwrap(), &mut bad);
        assert_eq!(bad.as_deref(), Some("1e400"));
        assert_eq!(
            go_float(100_000_000_000_000_000_000.0),
            "100000000000000000000"
        );
        assert_eq!(go_float(1.5e300), "1.5e+300");
        assert_eq!(go_float(-0.0), "-0");
        assert_eq!(go_float(1e-10), "1e-10");
    }

    #[test]
    fn quoting_like_go() {
        assert_eq!(
            go_quote("a\"b\\c\n\u{7f}\u{a0}é"),
            r#""a\"b\\c\n\x7f\u00a0é""#
        );
        assert_eq!(go_quote_bytes(b"x\xffy"), r#""x\xffy""#);
        assert_eq!(go_quote_list(&["0.1.0", "1.1.0"]), r#"["0.1.0" "1.1.0"]"#);
    }
}
