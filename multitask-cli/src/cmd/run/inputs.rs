//! Where a run's arguments come from, and how they become jobs.
//!
//! The command words end at the first separator. After it come input
//! sources, as GNU parallel has them: `::: a b` (the words), `:::: FILE`
//! (a file's records, `-` for stdin) and `-a FILE`; with none, stdin. A
//! record is a line (`-0`: a NUL-terminated string); `--colsep` cuts it
//! into columns. Several sources give every combination, the last source
//! varying fastest; `:::+` and `::::+` link a source to the one before it
//! instead, record by record, as long as the shorter lasts.
//!
//! A lone file or stdin is read lazily, a record as a job is wanted, so an
//! endless producer works; several sources, or a `--halt` by percentage,
//! are read whole first (the combinations and the percentage need them).
//! The records then go to jobs one by one, `-n`/`-N` at a time, or packed
//! as many as the command line holds (`-X`, `-m`, in [`Packer`]). With
//! `--pipe`, stdin is cut into blocks instead ([`Blocks`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;

use super::template::Template;
use super::Usage;

/// One record: its values (one, or one per `--colsep` column and per
/// combined source), which `{1}`..`{n}` name.
pub(crate) type Record = Vec<String>;

/// Where one source's records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The words after `:::`.
    Listed(Vec<String>),
    /// A file's records (`::::`, `-a`); `-` is stdin.
    File(PathBuf),
    /// Stdin's records (no source given).
    Stdin,
}

/// An input source and how it joins the ones before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// Where its records come from.
    pub(crate) source: Source,
    /// True for `:::+`/`::::+`: paired with the previous source record by
    /// record instead of combined with each of its records.
    pub(crate) linked: bool,
}

/// Splits `CMD... [SEP ARGS...]...` into the command words and the input
/// sources; the `-a` files come first. No source at all means stdin.
pub(crate) fn split_command(
    words: &[String],
    arg_files: &[PathBuf],
) -> Result<(Vec<String>, Vec<Group>), Usage> {
    let is_sep = |w: &str| matches!(w, ":::" | ":::+" | "::::" | "::::+");
    let end = words.iter().position(|w| is_sep(w)).unwrap_or(words.len());
    let cmd = words[..end].to_vec();
    if cmd.is_empty() {
        return Err(Usage(format!(
            "no command before '{}'",
            words.get(end).map_or(":::", String::as_str)
        )));
    }
    let mut groups: Vec<Group> = arg_files
        .iter()
        .map(|f| Group {
            source: Source::File(f.clone()),
            linked: false,
        })
        .collect();
    let mut i = end;
    while i < words.len() {
        let sep = words[i].as_str();
        let start = i + 1;
        let mut stop = start;
        while stop < words.len() && !is_sep(&words[stop]) {
            stop += 1;
        }
        let items = &words[start..stop];
        let linked = sep.ends_with('+');
        if sep.starts_with("::::") {
            if items.is_empty() {
                return Err(Usage(format!("'{sep}' needs a file name")));
            }
            for (k, f) in items.iter().enumerate() {
                groups.push(Group {
                    source: Source::File(PathBuf::from(f)),
                    linked: linked && k == 0,
                });
            }
        } else {
            groups.push(Group {
                source: Source::Listed(items.to_vec()),
                linked,
            });
        }
        i = stop;
    }
    if groups.is_empty() {
        groups.push(Group {
            source: Source::Stdin,
            linked: false,
        });
    }
    if groups[0].linked {
        return Err(Usage(format!(
            "'{}' links to the input source before it, and there is none",
            if matches!(groups[0].source, Source::Listed(_)) {
                ":::+"
            } else {
                "::::+"
            }
        )));
    }
    Ok((cmd, groups))
}

/// `--colsep`: how a record is cut into columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Colsep {
    /// At each occurrence of this string.
    Literal(String),
    /// At each run of whitespace (`\s+`), ends trimmed.
    Whitespace,
}

impl Colsep {
    /// Parses GNU parallel's `--colsep` regular expression, which is taken
    /// only where it means a fixed string (`,`, `\t`, `\|`, `::`) or `\s+`:
    /// anything else is refused rather than matched differently.
    pub(crate) fn parse(s: &str) -> Result<Colsep, Usage> {
        if s == r"\s+" || s == " +" {
            return Ok(Colsep::Whitespace);
        }
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('t') => out.push('\t'),
                    Some(e) if !e.is_ascii_alphanumeric() => out.push(e),
                    _ => return Err(Self::unsupported(s)),
                },
                '.' | '[' | ']' | '(' | ')' | '*' | '+' | '?' | '{' | '}' | '^' | '$' | '|' => {
                    return Err(Self::unsupported(s))
                }
                c => out.push(c),
            }
        }
        if out.is_empty() {
            return Err(Usage("--colsep needs a separator".into()));
        }
        Ok(Colsep::Literal(out))
    }

    fn unsupported(s: &str) -> Usage {
        Usage(format!(
            "--colsep {s:?}: only a fixed string (',', '\\t', '\\|') or '\\s+' is supported, \
             not a regular expression"
        ))
    }

    /// `record` cut into its columns.
    pub(crate) fn split(&self, record: &str) -> Record {
        match self {
            Colsep::Literal(sep) => record.split(sep.as_str()).map(String::from).collect(),
            Colsep::Whitespace => record.split_whitespace().map(String::from).collect(),
        }
    }
}

/// How records are read and cut.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    /// The record terminator: `\n`, or NUL with `-0`.
    pub(crate) terminator: u8,
    /// `--colsep`, if given.
    pub(crate) colsep: Option<Colsep>,
}

impl Reading {
    /// The values of one raw record.
    fn record(&self, raw: String) -> Record {
        match &self.colsep {
            Some(c) => c.split(&raw),
            None => vec![raw],
        }
    }

    /// The records of `reader`, read as they are needed; a trailing `\r`
    /// of a line goes, invalid UTF-8 is replaced.
    fn records(&self, reader: Box<dyn BufRead>) -> impl Iterator<Item = Record> {
        let terminator = self.terminator;
        let this = self.clone();
        reader.split(terminator).map_while(move |raw| {
            let mut raw = raw.ok()?;
            if terminator == b'\n' && raw.last() == Some(&b'\r') {
                raw.pop();
            }
            Some(this.record(String::from_utf8_lossy(&raw).into_owned()))
        })
    }
}

/// The records of a run and, when known, how many there are.
pub(crate) struct Records {
    /// The records, in job order.
    pub(crate) iter: Box<dyn Iterator<Item = Record>>,
    /// Their number, if read or listed already.
    pub(crate) total: Option<usize>,
}

/// Opens a file source (`-` is stdin).
fn open(path: &PathBuf) -> Result<Box<dyn BufRead>, Usage> {
    if path.as_os_str() == "-" {
        return Ok(stdin_reader());
    }
    File::open(path)
        .map(|f| Box::new(BufReader::new(f)) as Box<dyn BufRead>)
        .map_err(|e| Usage(format!("cannot open input file {}: {e}", path.display())))
}

/// Stdin as a reader, with GNU parallel's warning when it is a terminal.
fn stdin_reader() -> Box<dyn BufRead> {
    if io::stdin().is_terminal() {
        crate::term::note(
            "reading arguments from the terminal, one per line (end with Ctrl-D); \
             did you forget ':::', '::::' or -a, or to pipe them in?",
        );
    }
    Box::new(BufReader::new(io::stdin()))
}

/// The records of `groups`: lazy for one file or stdin unless `whole`,
/// else read whole and combined.
pub(crate) fn records(groups: &[Group], reading: &Reading, whole: bool) -> Result<Records, Usage> {
    if let [group] = groups {
        let reader = match &group.source {
            Source::Listed(words) => {
                let all: Vec<Record> = words.iter().map(|w| reading.record(w.clone())).collect();
                return Ok(Records {
                    total: Some(all.len()),
                    iter: Box::new(all.into_iter()),
                });
            }
            Source::File(path) => open(path)?,
            Source::Stdin => stdin_reader(),
        };
        let lazy = reading.records(reader);
        if !whole {
            return Ok(Records {
                iter: Box::new(lazy),
                total: None,
            });
        }
        let all: Vec<Record> = lazy.collect();
        return Ok(Records {
            total: Some(all.len()),
            iter: Box::new(all.into_iter()),
        });
    }
    // Each run of linked sources zips into one list of records; the lists
    // then combine, the last varying fastest.
    let mut lists: Vec<Vec<Record>> = Vec::new();
    for group in groups {
        let these: Vec<Record> = match &group.source {
            Source::Listed(words) => words.iter().map(|w| reading.record(w.clone())).collect(),
            Source::File(path) => reading.records(open(path)?).collect(),
            Source::Stdin => reading.records(stdin_reader()).collect(),
        };
        match lists.last_mut() {
            Some(last) if group.linked => {
                last.truncate(these.len());
                for (record, more) in last.iter_mut().zip(these) {
                    record.extend(more);
                }
            }
            _ => lists.push(these),
        }
    }
    let all = combinations(&lists);
    Ok(Records {
        total: Some(all.len()),
        iter: Box::new(all.into_iter()),
    })
}

/// Every combination of one record from each list, the last list varying
/// fastest, each the concatenation of its records' values.
fn combinations(lists: &[Vec<Record>]) -> Vec<Record> {
    let mut out: Vec<Record> = vec![Vec::new()];
    for list in lists {
        let mut next = Vec::with_capacity(out.len() * list.len());
        for prefix in &out {
            for record in list {
                let mut r = prefix.clone();
                r.extend(record.iter().cloned());
                next.push(r);
            }
        }
        out = next;
    }
    out
}

/// The command line limit `-X`/`-m` pack to: a job's command is one
/// argument of `sh -c`, and Linux caps one argument at 128 KiB
/// (`MAX_ARG_STRLEN`); a margin stays for the shell's name and the NUL.
pub(crate) const MAX_LINE: usize = 128 * 1024 - 1024;

/// Groups records into jobs: `per_job` at a time (`-n`/`-N`), or packed
/// by [`Template`] length up to [`MAX_LINE`] and `per_job` (`-X`/`-m`).
pub(crate) struct Packer<'t> {
    /// The records, peekable so a record that does not fit waits.
    records: std::iter::Peekable<Box<dyn Iterator<Item = Record>>>,
    /// The most records in one job.
    per_job: usize,
    /// With `-X`/`-m`: the template whose length limits a job.
    packing: Option<&'t Template>,
    /// `-N 0`: each record makes a job that gets none of it.
    drop_values: bool,
}

impl<'t> Packer<'t> {
    /// Jobs of `per_job` records (at least 1), or packed when `packing`.
    pub(crate) fn new(
        records: Box<dyn Iterator<Item = Record>>,
        per_job: usize,
        packing: Option<&'t Template>,
    ) -> Packer<'t> {
        Packer {
            records: records.peekable(),
            per_job: per_job.max(1),
            packing,
            drop_values: per_job == 0,
        }
    }
}

impl Iterator for Packer<'_> {
    type Item = Vec<Record>;

    fn next(&mut self) -> Option<Vec<Record>> {
        let first = self.records.next()?;
        if self.drop_values {
            return Some(Vec::new());
        }
        let mut job = vec![first];
        let Some(template) = self.packing else {
            while job.len() < self.per_job {
                match self.records.next() {
                    Some(r) => job.push(r),
                    None => break,
                }
            }
            return Some(job);
        };
        let base = template.len_for(&[]);
        let mut len = base + template.len_for(&job[..1]) - base;
        while job.len() < self.per_job {
            let Some(next) = self.records.peek() else {
                break;
            };
            let more = template.len_for(std::slice::from_ref(next)) - base + 1;
            if len + more > MAX_LINE {
                break;
            }
            len += more;
            job.push(self.records.next().expect("peeked"));
        }
        Some(job)
    }
}

/// `--pipe`: stdin cut into blocks of about `block` bytes that end at a
/// record's end (a record longer than a block makes a block of its own),
/// or into `records` records each (`-N`).
pub(crate) struct Blocks<R> {
    /// Stdin.
    input: R,
    /// Bytes read and not yet handed out.
    buf: Vec<u8>,
    /// True once the input has ended.
    eof: bool,
    /// The block size to aim for.
    block: usize,
    /// With `-N`: records per block instead.
    records: Option<usize>,
    /// The record terminator.
    terminator: u8,
}

impl<R: Read> Blocks<R> {
    /// Blocks of `input`.
    pub(crate) fn new(input: R, block: usize, records: Option<usize>, terminator: u8) -> Self {
        Blocks {
            input,
            buf: Vec::new(),
            eof: false,
            block: block.max(1),
            records,
            terminator,
        }
    }

    /// Reads more into `buf`, up to the rest of a block (at least 64 KiB);
    /// false at the end of the input.
    ///
    /// NOTE: `read_to_end` on a `take` fills only the spare capacity it
    /// needs; sizing the buffer up front instead zeroed a whole block for
    /// each pipe-sized (64 KiB) read.
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let want = self
            .block
            .saturating_sub(self.buf.len())
            .clamp(64 * 1024, 4 << 20) as u64;
        match (&mut self.input).take(want).read_to_end(&mut self.buf) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(_) => true,
        }
    }

    /// Where the block to hand out ends, if the buffer holds one.
    fn cut(&self) -> Option<usize> {
        let t = self.terminator;
        match self.records {
            Some(n) => {
                let mut seen = 0;
                for (i, &b) in self.buf.iter().enumerate() {
                    if b == t {
                        seen += 1;
                        if seen == n {
                            return Some(i + 1);
                        }
                    }
                }
                None
            }
            None => {
                if self.buf.len() < self.block {
                    return None;
                }
                // The last record end within the block, else the first
                // after it.
                match self.buf[..self.block].iter().rposition(|&b| b == t) {
                    Some(i) => Some(i + 1),
                    None => self.buf[self.block..]
                        .iter()
                        .position(|&b| b == t)
                        .map(|i| self.block + i + 1),
                }
            }
        }
    }
}

impl<R: Read> Iterator for Blocks<R> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.cut() {
                let rest = self.buf.split_off(end);
                return Some(std::mem::replace(&mut self.buf, rest));
            }
            if !self.fill() {
                return (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf));
            }
        }
    }
}
