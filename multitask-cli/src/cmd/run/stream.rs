//! `--line-buffer` and `--ungroup`: jobs' output printed while they run.
//!
//! The run listens on a Unix socket in a private directory (mode 0700)
//! under the temporary directory. Each job, on whichever local executor
//! runs it (a thread of this process or a worker process), connects to it
//! and streams its stdout and stderr as the shell writes them (the wire is
//! [`crate::tasks::Streaming`]'s); a thread here per connection prints
//! them:
//!
//! - `--ungroup`: each chunk as it arrives, so bytes of different jobs may
//!   mix within a line, as in GNU parallel (`--tag` does not apply);
//! - `--line-buffer`: whole lines as they complete, each block of lines
//!   written under the stream's lock, so a line is never split or mixed
//!   with another job's; `--tag` prefixes every line; a last line without
//!   a newline is printed when the job ends.
//!
//! With `-k` (`--line-buffer` only), lines are printed live for the oldest
//! job still running, as GNU parallel does, and held for the others: when
//! the outcome loop has printed a job in its turn it [`Streamer::release`]s
//! it, the next oldest job's held lines go out, and its next ones are
//! printed as they come.
//!
//! The job closes its connection before its outcome is sent, so the
//! outcome loop [`Streamer::finish`]es a job (waits for its reader to
//! print the rest) before it logs it: its output is out before anything
//! printed after it.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result};

/// How streamed output is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `--line-buffer`: whole lines, tagged.
    Lines,
    /// `--ungroup`: bytes as they come.
    Raw,
}

/// What the readers and the outcome loop share.
#[derive(Default)]
struct State {
    /// The `--tag` text of each job not yet connected, by job number.
    tags: HashMap<u64, Option<String>>,
    /// Jobs whose connection ended, with the stdout bytes they sent.
    done: HashMap<u64, usize>,
    /// True with `-k`: only the oldest job's lines are printed as they come.
    ordered: bool,
    /// With `-k`, the jobs started and not yet released, oldest first: the
    /// first prints live.
    running: BTreeSet<u64>,
    /// With `-k`, the lines of the other jobs, held.
    held: HashMap<u64, Held>,
}

/// A job's lines held for `-k`: (stream, bytes), in the order written.
type Held = Vec<(usize, Vec<u8>)>;

impl State {
    /// Prints `bytes` for job `seq` on stream `i` now, or holds them if
    /// another job's lines come first.
    fn emit(&mut self, seq: u64, i: usize, bytes: Vec<u8>) {
        if !self.ordered || self.running.first() == Some(&seq) {
            // A closed stdout (`| head`) is the reader's business: the
            // rest is dropped, the jobs go on.
            let _ = write_to(i, &bytes);
        } else {
            self.held.entry(seq).or_default().push((i, bytes));
        }
    }
}

/// The listening end; see the module docs.
pub(crate) struct Streamer {
    /// The socket's path, given to each job.
    path: String,
    /// The private directory holding it, removed on drop.
    dir: PathBuf,
    /// Shared with the reader threads.
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Streamer {
    /// Listens and starts accepting jobs' connections; `ordered` for `-k`
    /// (with [`Mode::Lines`]).
    pub(crate) fn start(mode: Mode, ordered: bool) -> Result<Streamer> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("multitask-run-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        crate::shell::remove_at_stop(dir.clone());
        let sock = dir.join("out.sock");
        let listener = UnixListener::bind(&sock)
            .with_context(|| format!("listening on {}", sock.display()))?;
        let state: Arc<(Mutex<State>, Condvar)> = Arc::new((
            Mutex::new(State {
                ordered: ordered && mode == Mode::Lines,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("run-output".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    let _ = std::thread::Builder::new()
                        .name("run-output-job".into())
                        .spawn(move || read_job(conn, mode, &shared));
                }
            })
            .context("starting the output thread")?;
        Ok(Streamer {
            path: sock.to_string_lossy().into_owned(),
            dir,
            state,
        })
    }

    /// The socket's path, for [`crate::tasks::ShellJob::stream`].
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Job `seq` is about to start, tagged with `tag`.
    pub(crate) fn expect(&self, seq: u64, tag: Option<String>) {
        let (lock, _) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.tags.insert(seq, tag);
        if st.ordered {
            st.running.insert(seq);
        }
    }

    /// With `-k`: job `seq` was printed in its turn; the next oldest job's
    /// held lines go out, and its next ones as they come.
    pub(crate) fn release(&self, seq: u64) {
        let (lock, _) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !st.ordered || !st.running.remove(&seq) {
            return;
        }
        st.held.remove(&seq);
        if let Some(&next) = st.running.first() {
            for (i, bytes) in st.held.remove(&next).unwrap_or_default() {
                let _ = write_to(i, &bytes);
            }
        }
    }

    /// Waits until job `seq`'s output is all printed (its connection
    /// ended; the job closed it before its outcome came back) and returns
    /// how many bytes it wrote to stdout.
    pub(crate) fn finish(&self, seq: u64) -> usize {
        let (lock, ready) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(n) = st.done.remove(&seq) {
                return n;
            }
            st = ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Job `seq` did not stream after all: forgets it.
    pub(crate) fn forget(&self, seq: u64) {
        let (lock, _) = &*self.state;
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .tags
            .remove(&seq);
    }

    /// With `-k`, at the run's end: prints whatever is still held, oldest
    /// job first (lines of jobs after one whose outcome was lost, a job
    /// that failed to run, which was never released).
    pub(crate) fn release_all(&self) {
        let (lock, _) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut held: Vec<(u64, Held)> = st.held.drain().collect();
        held.sort_by_key(|(seq, _)| *seq);
        st.running.clear();
        for (_, lines) in held {
            for (i, bytes) in lines {
                let _ = write_to(i, &bytes);
            }
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One job's connection: prints what it sends until it ends.
fn read_job(mut conn: UnixStream, mode: Mode, shared: &(Mutex<State>, Condvar)) {
    let mut seq = [0u8; 8];
    if conn.read_exact(&mut seq).is_err() {
        return;
    }
    let seq = u64::from_le_bytes(seq);
    let tag = {
        let mut st = shared.0.lock().unwrap_or_else(|p| p.into_inner());
        st.tags.remove(&seq).flatten()
    };
    let mut lines = [LineBuffer::default(), LineBuffer::default()];
    let mut received = 0;
    loop {
        let mut head = [0u8; 5];
        if conn.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut bytes = vec![0u8; len];
        if conn.read_exact(&mut bytes).is_err() {
            break;
        }
        let i = match head[0] {
            1 => 0,
            2 => 1,
            _ => break,
        };
        if i == 0 {
            received += len;
        }
        let out = match mode {
            Mode::Raw => Some(bytes),
            Mode::Lines => lines[i].push(&bytes, tag.as_deref()),
        };
        if let Some(out) = out {
            shared
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .emit(seq, i, out);
        }
    }
    let (lock, ready) = shared;
    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
    if mode == Mode::Lines {
        for (i, buf) in lines.iter_mut().enumerate() {
            if let Some(rest) = buf.end(tag.as_deref()) {
                st.emit(seq, i, rest);
            }
        }
    }
    st.done.insert(seq, received);
    drop(st);
    ready.notify_all();
}

/// Writes `bytes` to stdout (`i` = 0) or stderr (1) at once.
fn write_to(i: usize, bytes: &[u8]) -> io::Result<()> {
    if i == 0 {
        let mut out = io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()
    } else {
        let mut err = io::stderr().lock();
        err.write_all(bytes)?;
        err.flush()
    }
}

/// The unfinished last line of one stream of a job.
#[derive(Default)]
struct LineBuffer {
    /// Bytes after the last newline seen.
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Takes a chunk; the lines it completes, to print in one write.
    fn push(&mut self, bytes: &[u8], tag: Option<&str>) -> Option<Vec<u8>> {
        let Some(last) = bytes.iter().rposition(|&b| b == b'\n') else {
            self.partial.extend_from_slice(bytes);
            return None;
        };
        let mut whole = std::mem::take(&mut self.partial);
        whole.extend_from_slice(&bytes[..=last]);
        self.partial.extend_from_slice(&bytes[last + 1..]);
        Some(tagged(&whole, tag))
    }

    /// The job ended: its last line, newline or not.
    fn end(&mut self, tag: Option<&str>) -> Option<Vec<u8>> {
        if self.partial.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.partial);
        Some(tagged(&rest, tag))
    }
}

/// `bytes` with each line prefixed by `tag` and a tab, when tagging.
fn tagged(bytes: &[u8], tag: Option<&str>) -> Vec<u8> {
    let Some(tag) = tag else {
        return bytes.to_vec();
    };
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_are_tagged_and_the_rest_waits() {
        assert_eq!(tagged(b"a\nb\n", Some("t")), b"t\ta\nt\tb\n");
        assert_eq!(tagged(b"a\nb", None), b"a\nb");
        let mut buf = LineBuffer::default();
        // Nothing complete: held back.
        assert_eq!(buf.push(b"par", None), None);
        assert_eq!(buf.partial, b"par");
        // Completing it keeps only what follows the last newline.
        assert_eq!(buf.push(b"t\nne", Some("x")), Some(b"x\tpart\n".to_vec()));
        assert_eq!(buf.partial, b"ne");
        assert_eq!(buf.end(None), Some(b"ne".to_vec()));
    }
}
