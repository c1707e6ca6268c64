//! The strict-key check: any key the built-in defaults do not name is refused, with where it came from
//! and the closest known key (or, for a renamed key, its new name).

use config::{Config, File, FileFormat, Source};

use super::{ConfigError, DEFAULT_TOML};

/// Keys that once existed under another name, refused with the name that replaced them.
const MOVED: &[(&str, &str)] = &[
    // Was a copy of server.lean_streams that nothing read.
    ("redis.lean_streams", "server.lean_streams"),
];

/// Every key the built-in defaults name is a setting; any other key in a file, the environment or a flag is
/// a mistake, refused with where it came from and the closest known key.
pub(super) fn refuse_unknown_keys(merged: &Config) -> Result<(), ConfigError> {
    let known = Config::builder()
        .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
        .build()?
        .collect()?;
    let known_keys: Vec<String> = known
        .iter()
        .flat_map(|(section, value)| match &value.kind {
            config::ValueKind::Table(keys) => keys.keys().map(|k| format!("{section}.{k}")).collect(),
            _ => vec![section.clone()],
        })
        .collect();
    let unknown = |key: String, value: &config::Value| {
        let origin = match value.origin() {
            Some("the environment") => format!(
                "the environment variable HERALD__{}",
                key.replace('.', "__").to_uppercase()
            ),
            Some(path) => path.to_string(),
            None => "the command line".to_string(),
        };
        let hint = match MOVED.iter().find(|(old, _)| *old == key) {
            Some((_, new)) => format!(": it is {new} now"),
            None => closest(&key, &known_keys).map_or(String::new(), |k| format!(": did you mean {k}?")),
        };
        Err(ConfigError::Unknown { key, origin, hint })
    };
    let mut sections: Vec<_> = merged.collect()?.into_iter().collect();
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    for (section, value) in sections {
        let Some(known_section) = known.get(&section) else {
            // A whole section nobody knows: name its first key, which says where it came from.
            return match &value.kind {
                config::ValueKind::Table(keys) => match keys.iter().min_by(|a, b| a.0.cmp(b.0)) {
                    Some((k, v)) => unknown(format!("{section}.{k}"), v),
                    None => unknown(section, &value),
                },
                _ => unknown(section, &value),
            };
        };
        if let (config::ValueKind::Table(keys), config::ValueKind::Table(known_keys)) =
            (&value.kind, &known_section.kind)
        {
            let mut keys: Vec<_> = keys.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for (key, v) in keys {
                if !known_keys.contains_key(key) {
                    return unknown(format!("{section}.{key}"), v);
                }
            }
        }
    }
    Ok(())
}

/// The known key nearest to `key` (edit distance at most a third of its length, and at least 2 allowed).
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a String> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (prev + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(row[j + 1] + 1);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    let allowed = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (distance(key, k), k))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
