//! The command template and GNU parallel's replacement strings.
//!
//! Each command word is cut into text and replacement strings: `{}` (or
//! the `-I` string) all the job's values, `{.}` without the extension,
//! `{/}` the basename, `{//}` the directory, `{/.}` the basename without
//! extension, the same on one value as `{1}`, `{2.}`, `{3/}`, `{2//}`,
//! `{1/.}`, and `{#}` the job number, `{%}` its slot. With no value
//! replacement string at all, the values are appended as `{}` would put
//! them.
//!
//! Quoting is GNU parallel's: each inserted value is one shell word
//! (`'...'` when it holds anything but `-_.+/` and alphanumerics, with
//! `'` as `'"'"'`), and the words are joined with spaces for `sh -c`, so
//! the command's own words keep their shell meaning. With `-q` each
//! expanded word is quoted whole instead, values inside it raw, so the
//! shell sees the words as given. With `-X` a word holding `{}` is repeated
//! once per record (context replace); with `-m` `{}` holds every value.

use super::inputs::Record;
use super::Usage;

/// What a value replacement string makes of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `{}`: the value.
    Whole,
    /// `{.}`: without its extension.
    NoExt,
    /// `{/}`: its basename.
    Base,
    /// `{//}`: its directory.
    Dir,
    /// `{/.}`: its basename without extension.
    BaseNoExt,
}

/// One piece of a command word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text copied as it is.
    Text(String),
    /// Every value of the job (`pos: None`) or the value `{pos}`, from 1.
    Value {
        /// Which value; `None` for all of them.
        pos: Option<usize>,
        /// What to make of it.
        form: Form,
    },
    /// `{#}`: the job number, from 1.
    Seq,
    /// `{%}`: the job's slot, from 1.
    Slot,
}

/// One command word, cut at its replacement strings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    /// Its pieces in order.
    pieces: Vec<Piece>,
}

impl Word {
    /// True if the word holds `{}` or a relative (all the values).
    fn has_all(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Value { pos: None, .. }))
    }
}

/// What a job fills a template with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fill<'a> {
    /// The job's records (one, or several with `-n`, `-X`, `-m`).
    pub(crate) records: &'a [Record],
    /// The job number.
    pub(crate) seq: u64,
    /// The slot it runs in.
    pub(crate) slot: usize,
}

/// A command template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    /// The words, each cut at its replacement strings.
    words: Vec<Word>,
    /// `-q`: quote each expanded word whole, values inside it raw.
    quote_words: bool,
    /// `-X`: repeat a word holding `{}` once per record.
    context: bool,
    /// Quote inserted values (off for `--tagstring`).
    quote_values: bool,
}

impl Template {
    /// Parses the command words. `replace` is the string for `{}` (`-I`);
    /// `append` adds `{}` as a last word when no word holds a value
    /// replacement string (off with `--pipe`).
    pub(crate) fn parse(
        words: &[String],
        replace: &str,
        quote_words: bool,
        context: bool,
        append: bool,
    ) -> Result<Template, Usage> {
        let mut parsed = Vec::new();
        for w in words {
            if let Some(i) = w.find("{=") {
                if w[i..].contains("=}") {
                    return Err(Usage(format!(
                        "perl expressions ({{= ... =}}) are not supported: {w:?}"
                    )));
                }
            }
            parsed.push(parse_word(w, replace));
        }
        let has_value = parsed
            .iter()
            .any(|w| w.pieces.iter().any(|p| !matches!(p, Piece::Text(_))));
        if append && !has_value {
            parsed.push(Word {
                pieces: vec![Piece::Value {
                    pos: None,
                    form: Form::Whole,
                }],
            });
        }
        Ok(Template {
            words: parsed,
            quote_words,
            context,
            quote_values: true,
        })
    }

    /// A template that inserts values raw (`--tagstring`).
    pub(crate) fn unquoted(mut self) -> Template {
        self.quote_values = false;
        self.quote_words = false;
        self
    }

    /// The command line for `fill`.
    pub(crate) fn expand(&self, fill: Fill<'_>) -> String {
        let mut out = String::new();
        for word in &self.words {
            let text = if self.context && word.has_all() {
                // One copy of the word per record; none without records.
                let copies: Vec<String> = fill
                    .records
                    .iter()
                    .map(|r| {
                        let one = Fill {
                            records: std::slice::from_ref(r),
                            ..fill
                        };
                        self.word(word, one)
                    })
                    .collect();
                copies.join(" ")
            } else {
                self.word(word, fill)
            };
            // An appended `{}` with no values (`-N 0`) leaves no word.
            if text.is_empty() && word.pieces.len() == 1 && word.has_all() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&text);
        }
        out
    }

    /// The length of the command for `records` (job number and slot as
    /// wide as they get), for packing.
    pub(crate) fn len_for(&self, records: &[Record]) -> usize {
        self.expand(Fill {
            records,
            seq: u64::MAX,
            slot: usize::MAX,
        })
        .len()
    }

    /// One word expanded.
    fn word(&self, word: &Word, fill: Fill<'_>) -> String {
        let inner_quote = self.quote_values && !self.quote_words;
        let value = |v: &str, form: Form| {
            let v = apply(v, form);
            if inner_quote {
                quote(&v)
            } else {
                v
            }
        };
        let mut s = String::new();
        for piece in &word.pieces {
            match piece {
                Piece::Text(t) => s.push_str(t),
                Piece::Seq => s.push_str(&fill.seq.to_string()),
                Piece::Slot => s.push_str(&fill.slot.to_string()),
                Piece::Value { pos: None, form } => {
                    let all: Vec<String> = fill
                        .records
                        .iter()
                        .flatten()
                        .map(|v| value(v, *form))
                        .collect();
                    s.push_str(&all.join(" "));
                }
                Piece::Value { pos: Some(n), form } => {
                    // A missing value (`-N` with too few records) is empty.
                    if let Some(v) = fill.records.iter().flatten().nth(n - 1) {
                        s.push_str(&value(v, *form));
                    }
                }
            }
        }
        if self.quote_words {
            quote(&s)
        } else {
            s
        }
    }
}

/// Cuts `w` at its replacement strings.
fn parse_word(w: &str, replace: &str) -> Word {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = w;
    while !rest.is_empty() {
        let found = if let Some(after) = rest.strip_prefix(replace) {
            Some((
                Piece::Value {
                    pos: None,
                    form: Form::Whole,
                },
                after,
            ))
        } else if rest.starts_with('{') {
            brace(rest, replace == "{}")
        } else {
            None
        };
        match found {
            Some((piece, after)) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
                rest = after;
            }
            None => {
                let c = rest.chars().next().expect("rest is not empty");
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Word { pieces }
}

/// The replacement string `{...}` at the start of `s`, and what follows.
fn brace(s: &str, plain_braces: bool) -> Option<(Piece, &str)> {
    let close = s.find('}')?;
    let inner = &s[1..close];
    let after = &s[close + 1..];
    let digits = inner.len() - inner.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, form) = inner.split_at(digits);
    let form = match form {
        "" => Form::Whole,
        "." => Form::NoExt,
        "/" => Form::Base,
        "//" => Form::Dir,
        "/." => Form::BaseNoExt,
        "#" if number.is_empty() => return Some((Piece::Seq, after)),
        "%" if number.is_empty() => return Some((Piece::Slot, after)),
        _ => return None,
    };
    let pos = match number {
        "" if form == Form::Whole && !plain_braces => return None,
        "" => None,
        n => Some(n.parse::<usize>().ok().filter(|&n| n >= 1)?),
    };
    Some((Piece::Value { pos, form }, after))
}

/// `v` as `form` makes it, by GNU parallel's rules.
fn apply(v: &str, form: Form) -> String {
    match form {
        Form::Whole => v.to_string(),
        Form::NoExt => without_ext(v).to_string(),
        Form::Base => base(v).to_string(),
        Form::Dir => dir(v),
        Form::BaseNoExt => without_ext(base(v)).to_string(),
    }
}

/// `s` without the extension of its last path component, GNU parallel's
/// `s:\.[^/.]*$::` (`a/b.tar.gz` -> `a/b.tar`, `.bashrc` -> ``, `a.d/b`
/// unchanged).
pub(crate) fn without_ext(s: &str) -> &str {
    match s.rfind('.') {
        Some(dot) if !s[dot + 1..].contains('/') => &s[..dot],
        _ => s,
    }
}

/// What follows the last `/` (`dir/` -> ``).
fn base(s: &str) -> &str {
    s.rfind('/').map_or(s, |i| &s[i + 1..])
}

/// The directory, as Perl's `dirname` gives it: `.` for a bare name,
/// `/` for a top-level path, trailing slashes ignored.
fn dir(s: &str) -> String {
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return if s.is_empty() { ".".into() } else { "/".into() };
    }
    match trimmed.rfind('/') {
        None => ".".into(),
        Some(i) => {
            let d = trimmed[..i].trim_end_matches('/');
            if d.is_empty() {
                "/".into()
            } else {
                d.to_string()
            }
        }
    }
}

/// `s` as one shell word, GNU parallel's way: unchanged if it holds only
/// `-_.+/` and ASCII alphanumerics, `''` if empty, else in single quotes
/// with each run of `'` as `'"'''"'` and the empty `''` at the ends left
/// out.
pub(crate) fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.+/".contains(c);
    if s.is_empty() {
        return "''".into();
    }
    if s.chars().all(safe) {
        return s.to_string();
    }
    let mut out = String::from("'");
    let mut rest = s;
    while let Some(i) = rest.find('\'') {
        out.push_str(&rest[..i]);
        let run = rest[i..].len() - rest[i..].trim_start_matches('\'').len();
        out.push_str("'\"");
        out.push_str(&rest[i..i + run]);
        out.push_str("\"'");
        rest = &rest[i + run..];
    }
    out.push_str(rest);
    out.push('\'');
    let out = out.strip_prefix("''").unwrap_or(&out);
    let out = out.strip_suffix("''").unwrap_or(out);
    out.to_string()
}
