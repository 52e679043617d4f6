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
//! The job closes its connection before its outcome is sent, so the
//! outcome loop [`Streamer::finish`]es a job (waits for its reader to
//! print the rest) before it logs it: its output is out before anything
//! printed after it.

use std::collections::HashMap;
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
    /// Listens and starts accepting jobs' connections.
    pub(crate) fn start(mode: Mode) -> Result<Streamer> {
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
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
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
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .tags
            .insert(seq, tag);
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
        // A closed stdout (`| head`) is the reader's business: the rest
        // is dropped, the jobs go on.
        let _ = match mode {
            Mode::Raw => write_to(i, &bytes),
            Mode::Lines => lines[i].push(i, &bytes, tag.as_deref()),
        };
    }
    if mode == Mode::Lines {
        for (i, buf) in lines.iter_mut().enumerate() {
            let _ = buf.end(i, tag.as_deref());
        }
    }
    let (lock, ready) = shared;
    lock.lock()
        .unwrap_or_else(|p| p.into_inner())
        .done
        .insert(seq, received);
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
    /// Takes a chunk and prints the lines it completes, in one write.
    fn push(&mut self, i: usize, bytes: &[u8], tag: Option<&str>) -> io::Result<()> {
        let Some(last) = bytes.iter().rposition(|&b| b == b'\n') else {
            self.partial.extend_from_slice(bytes);
            return Ok(());
        };
        let mut whole = std::mem::take(&mut self.partial);
        whole.extend_from_slice(&bytes[..=last]);
        self.partial.extend_from_slice(&bytes[last + 1..]);
        write_to(i, &tagged(&whole, tag))
    }

    /// The job ended: prints its last line, newline or not.
    fn end(&mut self, i: usize, tag: Option<&str>) -> io::Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.partial);
        write_to(i, &tagged(&rest, tag))
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
        buf.push(0, b"par", None).unwrap();
        assert_eq!(buf.partial, b"par");
        // Completing it keeps only what follows the last newline.
        buf.push(1, b"t\nne", None).unwrap();
        assert_eq!(buf.partial, b"ne");
    }
}
