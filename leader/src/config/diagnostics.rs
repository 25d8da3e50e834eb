//! TOML errors and key positions: where in the text a key is written.

use super::*;

/// A key path like `region[1].peer_addr`: what error messages call a key, and how a position
/// in the file is found for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub(super) fn root() -> Self {
        Self::default()
    }

    pub(super) fn of(key: &str) -> Self {
        Self::root().key(key)
    }

    pub(super) fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    pub(super) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?
                    } else {
                        write!(f, "{k:?}")?
                    }
                }
            }
        }
        Ok(())
    }
}

pub(super) type Doc<'i> = Spanned<DeTable<'i>>;

/// The span of the deepest part of `path` written in the document: the value itself if it is
/// there, else the nearest enclosing table or array (so a missing key points at its table).
pub(super) fn locate(doc: &Doc<'_>, path: &KeyPath) -> Option<Range<usize>> {
    let mut value: Option<&Spanned<DeValue<'_>>> = None; // None: the document itself
    let mut found = None;
    for segment in &path.0 {
        let next = match (segment, value.map(Spanned::get_ref)) {
            (Segment::Key(k), None) => lookup(doc.get_ref(), k),
            (Segment::Key(k), Some(DeValue::Table(table))) => lookup(table, k),
            (Segment::Index(i), Some(DeValue::Array(array))) => array.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        found = Some(next.span());
        value = Some(next);
    }
    found
}

pub(super) fn lookup<'a, 'i>(
    table: &'a DeTable<'i>,
    key: &str,
) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// The key path of the innermost key or value whose span contains `offset`. Tables opened by
/// a `[header]` have the header as their span, which is how an error reported on a table
/// (e.g. a missing field of `[[region]]` number 2) maps to `region[1]`.
pub(super) fn path_at(doc: &Doc<'_>, offset: usize) -> KeyPath {
    let mut path = KeyPath::root();
    find_in_table(doc.get_ref(), offset, &mut path);
    path
}

pub(super) fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end
}

pub(super) fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut KeyPath) -> bool {
    for (key, value) in table {
        path.0.push(Segment::Key(key.get_ref().to_string()));
        if find_in_value(value.get_ref(), offset, path)
            || contains(&key.span(), offset)
            || contains(&value.span(), offset)
        {
            return true;
        }
        path.0.pop();
    }
    false
}

pub(super) fn find_in_value(value: &DeValue<'_>, offset: usize, path: &mut KeyPath) -> bool {
    match value {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(array) => {
            for (i, item) in array.iter().enumerate() {
                path.0.push(Segment::Index(i));
                if find_in_value(item.get_ref(), offset, path) || contains(&item.span(), offset) {
                    return true;
                }
                path.0.pop();
            }
            false
        }
        _ => false,
    }
}

/// Line and column (from 1, columns in characters) of byte `offset` in `text`.
pub(super) fn location_of(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let count = |n: usize| u32::try_from(n + 1).unwrap_or(u32::MAX);
    Location {
        line: count(before.matches('\n').count()),
        column: count(before[line_start..].chars().count()),
    }
}

pub(super) fn syntax_problem(err: &toml::de::Error, doc: &Doc<'_>, text: &str) -> Problem {
    let message = err.message();
    let span = err.span();
    let (problem, fix) = if message == "duplicate key" {
        // The duplicate is not in the partial document, so name it from the text.
        let key = span.clone().and_then(|s| text.get(s)).unwrap_or_default();
        (
            format!("invalid TOML: duplicate key `{key}`"),
            "each key may appear once per table (and each [table] once); remove or rename one",
        )
    } else {
        (
            format!("invalid TOML: {message}"),
            "correct the TOML here: strings are quoted, tables are written [name] and repeated \
             tables [[name]] (see https://toml.io)",
        )
    };
    let path = path_of_span(doc, span.as_ref());
    Problem {
        span,
        ..Problem::new(path, ErrorKind::Syntax, problem, fix.to_owned())
    }
}

/// The key path for a span the TOML parser reported. An empty span is the document itself
/// (e.g. a field missing at the top level).
pub(super) fn path_of_span(doc: &Doc<'_>, span: Option<&Range<usize>>) -> KeyPath {
    match span {
        Some(s) if !s.is_empty() => path_at(doc, s.start),
        _ => KeyPath::root(),
    }
}

/// Turns a serde error from `toml::from_str` into a problem with a key path and a fix. The
/// messages come from serde's derive and have stable shapes (`unknown field `x`, expected one
/// of ...`, `missing field `x``, `invalid type: ..., expected ...`).
pub(super) fn serde_problem(err: &toml::de::Error, doc: &Doc<'_>) -> Problem {
    let message = err.message();
    let span = err.span();
    let path = path_of_span(doc, span.as_ref());
    let names = backquoted(message);
    let problem = if message.starts_with("unknown field") {
        unknown_key(path, &names)
    } else if let (true, Some(field)) = (message.starts_with("missing field"), names.first()) {
        let path = path.key(field);
        let fix = format!("add `{field}`; {REFERENCE} describes it");
        Problem::new(
            path,
            ErrorKind::MissingKey,
            format!("required key `{field}` is missing"),
            fix,
        )
    } else if let Some((found, expected)) = message.split_once(", expected ") {
        let expected = expected_in_words(expected);
        let fix = format!("write {expected} here; {REFERENCE} lists every key with its type");
        let found = found
            .replace("invalid type: ", "found ")
            .replace("invalid value: ", "found ");
        Problem::new(
            path,
            ErrorKind::WrongType,
            format!("{found}, expected {expected}"),
            fix,
        )
    } else {
        let fix = format!("see {REFERENCE} for what this key accepts");
        Problem::new(path, ErrorKind::Invalid, message.to_owned(), fix)
    };
    Problem { span, ..problem }
}

pub(super) fn unknown_key(path: KeyPath, names: &[&str]) -> Problem {
    let unknown = names.first().copied().unwrap_or_default();
    let allowed = names.get(1..).unwrap_or_default();
    let mut parent = path.clone();
    parent.0.pop();
    let place = if parent.0.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in {parent}")
    };
    let fix = if allowed.is_empty() {
        format!("remove it: no keys are allowed {place}")
    } else {
        format!(
            "{}remove it or use one of the keys allowed {place}: {}",
            did_you_mean(unknown, allowed.iter().copied()),
            allowed.join(", "),
        )
    };
    Problem::new(
        path,
        ErrorKind::UnknownKey,
        format!("unknown key `{unknown}`"),
        fix,
    )
}

/// The words between backquotes in a serde message, in order.
pub(super) fn backquoted(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// Serde's Rust-flavoured type names in the words of a TOML user.
pub(super) fn expected_in_words(expected: &str) -> String {
    let words = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number >= 0",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        s if s.starts_with("struct ") => "a table",
        "a boolean" => "true or false",
        other => other,
    };
    words.to_owned()
}

/// `"did you mean `x`? "` when one of `candidates` is a likely correction of `word`.
pub(super) fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map_or_else(String::new, |(_, c)| format!("did you mean `{c}`? "))
}

/// Levenshtein distance, for suggestions only (inputs are short names).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_render_like_toml() {
        let path = KeyPath::of("region").index(1).key("peer_addr");
        assert_eq!(path.to_string(), "region[1].peer_addr");
        assert_eq!(
            KeyPath::of("tables").key("a.b").to_string(),
            "tables.\"a.b\""
        );
        assert_eq!(KeyPath::root().to_string(), "");
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(location_of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(location_of(text, 6), Location { line: 2, column: 1 });
        // The two-byte 'é' counts as one column.
        assert_eq!(location_of(text, 9), Location { line: 2, column: 3 });
        assert_eq!(location_of(text, 999), Location { line: 3, column: 1 });
    }

    #[test]
    fn offsets_map_to_the_innermost_key() {
        let text = "cluster = \"c\"\n[[region]]\nname = \"a\"\n[[region]]\nname = \"b\"\n\
                    [limits]\nmax_siblings = 3\n";
        let doc = DeTable::parse(text).unwrap();
        let at = |needle: &str| path_at(&doc, text.find(needle).unwrap()).to_string();
        assert_eq!(at("cluster"), "cluster");
        assert_eq!(at("\"b\""), "region[1].name");
        assert_eq!(at("[[region]]\nname = \"b\""), "region[1]");
        assert_eq!(at("max_siblings"), "limits.max_siblings");
        let located = locate(&doc, &KeyPath::of("region").index(1).key("name")).unwrap();
        assert_eq!(&text[located], "\"b\"");
        let missing = locate(&doc, &KeyPath::of("limits").key("nope")).unwrap();
        assert_eq!(&text[missing], "[limits]");
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(edit_distance("peer_adr", "peer_addr"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            did_you_mean("lwww", ["lww", "multi-value"].into_iter()),
            "did you mean `lww`? "
        );
        assert_eq!(did_you_mean("zzz", ["lww"].into_iter()), "");
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(check_name("us-east-1", &REGION_NAME, KeyPath::root()).is_ok());
        for bad in ["", "-us", "us-", "US", "us_east", &"a".repeat(33)] {
            assert!(
                check_name(bad, &REGION_NAME, KeyPath::root()).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_name("shopping_carts", &TABLE_NAME, KeyPath::root()).is_ok());
        assert!(check_name("_x-", &TABLE_NAME, KeyPath::root()).is_ok());
    }
}
