//! `RACKWATCH_*` overrides, typed by the key they set. An environment variable is text;
//! what it means depends on the field: `RACKWATCH_ALERTING__SMTP__PASSWORD=123456` is a
//! string, `RACKWATCH_SERVER__MAX_CONNECTIONS=123456` a number. Guessing from the text
//! alone turned a password of digits into an integer, which the string field refused.
//! So the overrides join the file's values in a small tree, and when the configuration
//! is deserialized each variable's text is parsed as whatever its field asks for.

use std::collections::BTreeMap;

use serde::de::value::{MapDeserializer, SeqDeserializer, StringDeserializer};
use serde::de::{Error as _, IntoDeserializer, Visitor};
use serde::Deserializer;

type Error = toml::de::Error;

/// The file's values with the environment's overrides in place.
pub(super) enum Node {
    /// A value from the config file.
    File(toml::Value),
    /// The text of an environment variable, read as its field's type.
    Env { var: String, text: String },
    /// A section, holding at least one override (or the file's root).
    Table(BTreeMap<String, Node>),
}

impl Node {
    /// The config file's values (an empty table without a file).
    pub(super) fn from_file(root: toml::Table) -> Node {
        Node::Table(root.into_iter().map(|(k, v)| (k, Node::File(v))).collect())
    }

    /// Set `keys` (a path of sections and a field) to the text of `var`.
    pub(super) fn set(&mut self, keys: &[String], var: &str, text: &str) -> Result<(), String> {
        let (last, parents) = keys.split_last().ok_or("empty key")?;
        let mut cur = self;
        for k in parents {
            let Node::Table(t) = cur else {
                unreachable!("only tables are descended into")
            };
            let entry = t
                .entry(same_key(t, k))
                .or_insert_with(|| Node::Table(BTreeMap::new()));
            // A section the file set: open it up so one key of it can be replaced.
            if let Node::File(toml::Value::Table(_)) = entry {
                let Node::File(toml::Value::Table(inner)) =
                    std::mem::replace(entry, Node::Table(BTreeMap::new()))
                else {
                    unreachable!()
                };
                *entry = Node::from_file(inner);
            }
            if !matches!(entry, Node::Table(_)) {
                return Err(format!("`{k}` is not a section"));
            }
            cur = entry;
        }
        let Node::Table(t) = cur else {
            unreachable!("only tables are descended into")
        };
        t.insert(
            same_key(t, last),
            Node::Env {
                var: var.to_string(),
                text: text.to_string(),
            },
        );
        Ok(())
    }
}

/// The key of `t` a variable's (lower-cased) `key` names: the file's own spelling of it
/// where the file has it in another case (`[energy.sites.FRA1]` from
/// `RACKWATCH_ENERGY__SITES__FRA1__PUE`), else `key`.
fn same_key(t: &BTreeMap<String, Node>, key: &str) -> String {
    if t.contains_key(key) {
        return key.to_string();
    }
    let mut found = t.keys().filter(|k| k.eq_ignore_ascii_case(key));
    match (found.next(), found.next()) {
        (Some(k), None) => k.clone(),
        _ => key.to_string(),
    }
}

/// A variable's text read as one TOML value (an array, an inline table).
fn inline_toml(var: &str, text: &str, what: &str) -> Result<toml::Value, Error> {
    let mut table: toml::Table = toml::from_str(&format!("v = {}", text.trim())).map_err(|e| {
        Error::custom(format!(
            "{var} ({}): not a TOML {what}: {}",
            key_of(var),
            e.message()
        ))
    })?;
    Ok(table
        .remove("v")
        .unwrap_or(toml::Value::Table(Default::default())))
}

/// A variable naming a section (or a table) where a value was given.
fn section_named(var: &str) -> Error {
    Error::custom(format!(
        "{var} ({}) names a section, not a value: set one of its keys ({var}__KEY)",
        key_of(var)
    ))
}

/// The configuration key a variable sets: `RACKWATCH_AGENT__INTERVAL_SECS` →
/// `agent.interval_secs`.
fn key_of(var: &str) -> String {
    var.trim_start_matches("RACKWATCH_")
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// What an override is taken to be where its field takes anything (an untagged value):
/// the old guess from the text.
fn guess(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() && text.contains('.') {
            return toml::Value::Float(f);
        }
    }
    match text {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(text.to_string()),
    }
}

impl<'de> IntoDeserializer<'de, Error> for Node {
    type Deserializer = Node;
    fn into_deserializer(self) -> Node {
        self
    }
}

/// A field asking for a number or a flag parses the variable's text as one.
macro_rules! parse_as {
    ($($method:ident => $ty:ty, $visit:ident, $what:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Node::Env { var, text } => match text.trim().parse::<$ty>() {
                    Ok(x) => visitor.$visit(x),
                    // A whole number too large (or negative) for the setting.
                    Err(_) if text.trim().parse::<i128>().is_ok() => Err(Error::custom(format!(
                        "{var} ({}) = {text:?} is out of range: {} is expected",
                        key_of(&var),
                        $what
                    ))),
                    Err(_) => Err(Error::custom(format!(
                        "{var} ({}) = {text:?}: {} is expected",
                        key_of(&var),
                        $what
                    ))),
                },
                Node::File(v) => v.$method(visitor),
                t @ Node::Table(_) => t.deserialize_any(visitor),
            }
        }
    )*};
}

/// A field asking for a structure takes the file's value or the section as it is; an
/// override can only supply it by the old guess (which fails with serde's message).
macro_rules! as_is {
    ($($method:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Node::File(v) => v.$method(visitor),
                other => other.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_any(visitor),
            Node::Env { text, .. } => guess(&text).deserialize_any(visitor),
            Node::Table(t) => visitor.visit_map(MapDeserializer::new(t.into_iter())),
        }
    }

    parse_as! {
        deserialize_bool => bool, visit_bool, "true or false";
        deserialize_i8 => i8, visit_i8, format!("a whole number from {} to {}", i8::MIN, i8::MAX);
        deserialize_i16 => i16, visit_i16, format!("a whole number from {} to {}", i16::MIN, i16::MAX);
        deserialize_i32 => i32, visit_i32, "a whole number";
        deserialize_i64 => i64, visit_i64, "a whole number";
        deserialize_u8 => u8, visit_u8, "a whole number from 0 to 255";
        deserialize_u16 => u16, visit_u16, "a whole number from 0 to 65535";
        deserialize_u32 => u32, visit_u32, "a whole number, 0 or more";
        deserialize_u64 => u64, visit_u64, "a whole number, 0 or more";
        deserialize_f32 => f32, visit_f32, "a number";
        deserialize_f64 => f64, visit_f64, "a number";
    }

    /// A list: a TOML array (`["a@example.com", "b@example.com"]`), or items separated
    /// by commas, each read as the list's element type (`a@example.com, b@example.com`).
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Env { var, text } if text.trim_start().starts_with('[') => {
                inline_toml(&var, &text, "array")?.deserialize_seq(visitor)
            }
            Node::Env { var, text } => {
                let items: Vec<Node> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Node::Env {
                        var: var.clone(),
                        text: t.to_string(),
                    })
                    .collect();
                visitor.visit_seq(SeqDeserializer::new(items.into_iter()))
            }
            Node::File(v) => v.deserialize_seq(visitor),
            t @ Node::Table(_) => t.deserialize_any(visitor),
        }
    }

    /// A table: the file's, the section the variables build, or one variable's inline
    /// TOML table (`{ team = "ml" }`).
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_map(visitor),
            Node::Env { var, text } if text.trim_start().starts_with('{') => {
                inline_toml(&var, &text, "inline table")?.deserialize_map(visitor)
            }
            Node::Env { var, .. } => Err(section_named(&var)),
            other => other.deserialize_any(visitor),
        }
    }

    as_is! {
        deserialize_bytes;
        deserialize_byte_buf;
        deserialize_unit;
        deserialize_ignored_any;
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Env { text, .. } => visitor.visit_string(text),
            Node::File(v) => v.deserialize_string(visitor),
            t @ Node::Table(_) => t.deserialize_any(visitor),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_option(visitor),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_unit_struct(name, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_tuple(len, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_tuple_struct(name, len, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_struct(name, fields, visitor),
            Node::Env { var, .. } => Err(section_named(&var)),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::File(v) => v.deserialize_enum(name, variants, visitor),
            Node::Env { text, .. } => {
                let unit: StringDeserializer<Error> = text.into_deserializer();
                visitor.visit_enum(unit)
            }
            t @ Node::Table(_) => t.deserialize_any(visitor),
        }
    }
}
