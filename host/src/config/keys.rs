//! Every unknown key of a config file, all in one run, each with the
//! nearest known key: `daemon.max_concurent: unknown key `max_concurent`;
//! did you mean `max_concurrent`?`. The parser itself stops at the first one.
//!
//! The known keys are read from the raw structures themselves (serde tells
//! a deserializer which fields a struct asks for), so a field added to a
//! raw structure is known here at once; nothing is listed twice. Tables
//! whose keys are free (`[plugin.NAME]`, a notifier's `templates`, labels)
//! are not looked into.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use toml::de::{DeTable, DeValue};

use super::Check;

/// Pushes a problem for every key `text` has where its table has no such
/// field; whether there was any. Text that does not parse is left to the
/// parser's own error.
pub(super) fn check_keys(text: &str, check: &mut Check<'_>) -> bool {
    let Ok(root) = DeTable::parse(text) else {
        return false;
    };
    let before = check.problems.len();
    let root = root.get_ref();
    let top = fields_of::<super::RawConfig>();
    unknown_in(root, top, "", check);
    for (key, value) in root.iter() {
        let section = key.get_ref().as_ref();
        let fields: &[&str] = match section {
            "daemon" => fields_of::<super::RawDaemon>(),
            "defaults" => fields_of::<super::RawCommon>(),
            "hook" => fields_of::<super::RawHook>(),
            "store" => fields_of::<super::store::RawStore>(),
            "fleet" => fields_of::<super::fleet::RawFleet>(),
            "repo" => fields_of::<super::RawRepo>(),
            "receiver" => fields_of::<super::receiver::RawReceiver>(),
            "credential" => fields_of::<super::RawCredential>(),
            "notifier" => {
                // [notifier.NAME]: one table per notifier.
                if let DeValue::Table(notifiers) = value.get_ref() {
                    let fields = fields_of::<super::notifier::RawNotifier>();
                    for (name, table) in notifiers.iter() {
                        if let DeValue::Table(t) = table.get_ref() {
                            let at = format!("notifier.{}.", name.get_ref());
                            unknown_in(t, fields, &at, check);
                        }
                    }
                }
                continue;
            }
            _ => continue,
        };
        match value.get_ref() {
            DeValue::Table(t) => unknown_in(t, fields, &format!("{section}."), check),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let DeValue::Table(t) = item.get_ref() else {
                        continue;
                    };
                    let at = format!("{}.", label(section, t, i));
                    unknown_in(t, fields, &at, check);
                    if section == "repo" {
                        steps(t, &at, check);
                    }
                }
            }
            _ => {}
        }
    }
    check.problems.len() > before
}

/// `[[repo.step]]` tables of one repository.
fn steps(repo: &DeTable<'_>, at: &str, check: &mut Check<'_>) {
    let fields = fields_of::<super::RawStep>();
    for (key, value) in repo.iter() {
        if key.get_ref().as_ref() != "step" {
            continue;
        }
        if let DeValue::Array(items) = value.get_ref() {
            for (i, item) in items.iter().enumerate() {
                if let DeValue::Table(t) = item.get_ref() {
                    unknown_in(t, fields, &format!("{at}step[{i}]."), check);
                }
            }
        }
    }
}

/// How problems name one table of an array: `repo "app"`, else `repo[2]`.
fn label(section: &str, table: &DeTable<'_>, index: usize) -> String {
    let name = table.iter().find_map(|(k, v)| match v.get_ref() {
        DeValue::String(s) if k.get_ref().as_ref() == "name" => Some(s.to_string()),
        _ => None,
    });
    match name {
        Some(name) => format!("{section} \"{name}\""),
        None => format!("{section}[{index}]"),
    }
}

fn unknown_in(table: &DeTable<'_>, fields: &[&str], at: &str, check: &mut Check<'_>) {
    for (key, _) in table.iter() {
        let name = key.get_ref().as_ref();
        if fields.contains(&name) {
            continue;
        }
        // A key may be a secret pasted in the wrong place: not repeated.
        let shown = super::without_secret_looking_words(name);
        let message = match nearest(name, fields) {
            Some(near) => format!("unknown key `{shown}`; did you mean `{near}`?"),
            None => format!("unknown key `{shown}`; known here: {}", fields.join(", ")),
        };
        check.at(key, format!("{at}{shown}"), message);
    }
}

/// The known key `name` most likely meant: a small edit away (a typo, a
/// letter doubled or dropped, `-` for `_`).
fn nearest<'a>(name: &str, fields: &[&'a str]) -> Option<&'a str> {
    let wanted = name.to_ascii_lowercase().replace('-', "_");
    fields
        .iter()
        .map(|f| (strsim::damerau_levenshtein(&wanted, f), *f))
        .filter(|(distance, f)| *distance <= 2.max(f.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, f)| f)
}

/// The fields the raw structure `T` asks for.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut asked = Fields(None);
    let _ = T::deserialize(&mut asked);
    asked.0.unwrap_or(&[])
}

/// A deserializer that only notes which fields a struct asks for.
struct Fields(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Noted;

impl std::fmt::Display for Noted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fields noted")
    }
}

impl std::error::Error for Noted {}

impl de::Error for Noted {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Noted
    }
}

impl<'de> Deserializer<'de> for &mut Fields {
    type Error = Noted;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Noted> {
        Err(Noted)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Noted> {
        self.0 = Some(fields);
        Err(Noted)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_keys_come_from_the_raw_structures() {
        let daemon = fields_of::<super::super::RawDaemon>();
        assert!(daemon.contains(&"max_concurrent") && daemon.contains(&"state_dir"));
        assert!(fields_of::<super::super::RawRepo>().contains(&"url"));
    }

    #[test]
    fn a_typo_gets_the_key_it_was_meant_to_be() {
        let fields = ["max_concurrent", "per_host", "state_dir"];
        assert_eq!(nearest("max_concurent", &fields), Some("max_concurrent"));
        assert_eq!(nearest("per-host", &fields), Some("per_host"));
        assert_eq!(nearest("colour", &fields), None);
    }
}
