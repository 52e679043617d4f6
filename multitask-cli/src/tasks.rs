//! The named tasks the `multitask` binary runs: the seed's `is_prime`, its
//! pid-reporting twin, and `run_shell`, one job of `multitask run`.
//!
//! They are `#[multitasking::task]` functions compiled into the binary, so the
//! binary's own worker processes (it re-executes itself) find them by name.
//! The shell mechanics (process group, timeout, kill) live in
//! [`crate::shell`]; this file only says what crosses the wire.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The seed's test: 2 is prime, other even numbers are not, odd numbers are
/// tried against every odd divisor up to ⌊√n⌋. Numbers below 2 are not
/// prime (the seed's Python says 1 is; it never asks).
#[multitasking::task]
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let root = isqrt(n);
    let mut d = 3;
    while d <= root {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// `is_prime` and the pid of the process that computed it: the seed's
/// `getpid()` demonstration, showing which worker did the work.
#[multitasking::task]
pub(crate) fn is_prime_with_pid(n: u64) -> (bool, u32) {
    (is_prime.call(n), std::process::id())
}

/// ⌊√n⌋, exactly. `f64` has 53 bits of mantissa, so its square root of a
/// large `u64` can be off by one either way; the estimate is corrected in
/// integers.
pub(crate) fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r.checked_mul(r).is_none_or(|sq| sq > n) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= n) {
        r += 1;
    }
    r
}

/// One job of `multitask run`: a command line for `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShellJob {
    /// The job number (`{#}`), from 1; echoed in the outcome so outcomes
    /// arriving out of order can be matched to their job.
    pub(crate) seq: u64,
    /// The command line, placeholders already replaced.
    pub(crate) cmd: String,
    /// What the job reads on stdin (`--pipe`); `None` is `/dev/null`.
    #[serde(with = "opt_bytes")]
    pub(crate) stdin: Option<Vec<u8>>,
    /// Kill the job's process group after this many milliseconds.
    pub(crate) timeout_ms: Option<u64>,
    /// How many times a failing job runs in all (GNU parallel's
    /// `--retries`); 0 and 1 both mean once.
    pub(crate) tries: u32,
    /// `--line-buffer`, `--ungroup` on this machine: the Unix socket the
    /// job's output is streamed to as it comes (see [`stream_to`]); its
    /// outcome then holds none. `None`: the output comes back whole in
    /// the outcome.
    #[serde(default)]
    pub(crate) stream: Option<String>,
}

/// How a job ended (its last attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShellOutcome {
    /// The job number, as in [`ShellJob::seq`].
    pub(crate) seq: u64,
    /// The command line that ran.
    pub(crate) cmd: String,
    /// The exit code, if the shell exited.
    pub(crate) code: Option<i32>,
    /// The signal that killed the shell, if one did.
    pub(crate) signal: Option<i32>,
    /// True if the job was killed for running past its timeout.
    pub(crate) timed_out: bool,
    /// Everything the job wrote to stdout.
    #[serde(with = "bytes")]
    pub(crate) stdout: Vec<u8>,
    /// Everything the job wrote to stderr (and why it could not start).
    #[serde(with = "bytes")]
    pub(crate) stderr: Vec<u8>,
    /// When the last attempt started, in seconds since the Unix epoch.
    pub(crate) start: f64,
    /// How long the last attempt ran, in seconds.
    pub(crate) seconds: f64,
    /// How many times the job ran.
    pub(crate) attempts: u32,
    /// The host that ran it.
    pub(crate) host: String,
    /// True if its output was streamed to [`ShellJob::stream`] as it came
    /// (and `stdout`, `stderr` hold none of it).
    #[serde(default)]
    pub(crate) streamed: bool,
}

impl ShellOutcome {
    /// True if the job exited with status 0.
    pub(crate) fn succeeded(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Byte buffers as one serde byte string rather than a sequence of `u8`:
/// postcard (the process pool's wire) then copies a job's stdin block or
/// output whole instead of a byte at a time.
mod bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Visitor)
    }

    /// Takes a byte string, or a sequence of bytes (what JSON holds).
    struct Visitor;

    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

/// [`bytes`] for an optional buffer.
mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// One buffer read back, through [`super::bytes`].
    #[derive(Deserialize)]
    struct Buf(#[serde(with = "super::bytes")] Vec<u8>);

    /// One buffer to write, borrowed.
    struct BufRef<'a>(&'a [u8]);

    impl Serialize for BufRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub(crate) fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_some(&BufRef(b)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Buf>::deserialize(d)?.map(|b| b.0))
    }
}

/// Runs one shell job here, a failure again until it has run `job.tries`
/// times.
///
/// Dangerous: it runs whatever command its input holds, so a cluster
/// worker serves it only with `--allow-shell`.
#[multitasking::task(dangerous)]
pub(crate) fn run_shell(job: ShellJob) -> ShellOutcome {
    let timeout = job.timeout_ms.map(Duration::from_millis);
    // Closed (end-of-file for the reader) when this returns, before the
    // outcome is sent: the reader has all the output by the time the
    // outcome arrives.
    let mut stream = job.stream.as_deref().and_then(|p| stream_to(p, job.seq));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let clock = Instant::now();
        let ran = match stream.as_mut() {
            Some(conn) => {
                let mut sink = |which: crate::shell::Stream, bytes: &[u8]| {
                    conn.send(which, bytes);
                };
                crate::shell::run_streaming(
                    &job.cmd,
                    job.stdin.as_deref(),
                    timeout,
                    Some(&mut sink),
                )
            }
            None => crate::shell::run_with_input(&job.cmd, job.stdin.as_deref(), timeout),
        };
        let seconds = clock.elapsed().as_secs_f64();
        let outcome = match ran {
            Ok(done) => ShellOutcome {
                seq: job.seq,
                cmd: job.cmd.clone(),
                code: done.code,
                signal: done.signal,
                timed_out: done.timed_out,
                stdout: done.stdout,
                stderr: done.stderr,
                start,
                seconds,
                attempts,
                host: multitasking::host_name(),
                streamed: stream.is_some(),
            },
            Err(e) => ShellOutcome {
                seq: job.seq,
                cmd: job.cmd.clone(),
                // The shell's own code for "command could not be run".
                code: Some(127),
                signal: None,
                timed_out: false,
                stdout: Vec::new(),
                stderr: format!("multitask: could not start sh: {e}\n").into_bytes(),
                start,
                seconds,
                attempts,
                host: multitasking::host_name(),
                streamed: stream.is_some(),
            },
        };
        if outcome.succeeded() || attempts >= job.tries {
            return outcome;
        }
    }
}

/// A job's connection to the socket its output is streamed to.
///
/// The wire: the job number (8 bytes, little-endian), then frames of a
/// stream byte (1 stdout, 2 stderr), a length (4 bytes, little-endian)
/// and that many bytes; end-of-file when the job is done.
pub(crate) struct Streaming {
    /// The connection; `None` once a write failed (the reader is gone,
    /// the rest of the output is dropped as a closed stdout would).
    conn: Option<std::os::unix::net::UnixStream>,
}

/// Connects to `path` for job `seq`; `None` if the socket is not there.
fn stream_to(path: &str, seq: u64) -> Option<Streaming> {
    use std::io::Write;
    let mut conn = std::os::unix::net::UnixStream::connect(path).ok()?;
    conn.write_all(&seq.to_le_bytes()).ok()?;
    Some(Streaming { conn: Some(conn) })
}

impl Streaming {
    /// Sends one chunk of output.
    fn send(&mut self, which: crate::shell::Stream, bytes: &[u8]) {
        use std::io::Write;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let kind = match which {
            crate::shell::Stream::Stdout => 1u8,
            crate::shell::Stream::Stderr => 2u8,
        };
        let mut frame = Vec::with_capacity(5 + bytes.len());
        frame.push(kind);
        frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        frame.extend_from_slice(bytes);
        if conn.write_all(&frame).is_err() {
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_match_the_seed() {
        let seed = [
            (112272535095293, true),
            (112582705942171, true),
            (115280095190773, true),
            (115797848077099, true),
            (1099726899285419, false),
        ];
        for (n, prime) in seed {
            assert_eq!(is_prime.call(n), prime, "{n}");
        }
        let small: Vec<u64> = (0..30).filter(|&n| is_prime.call(n)).collect();
        assert_eq!(small, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    }

    #[test]
    fn isqrt_is_exact_where_f64_is_not() {
        for n in [0, 1, 2, 3, 4, 15, 16, 17, u64::MAX, (1 << 53) + 1] {
            let r = isqrt(n);
            assert!(r * r <= n, "{n}");
            assert!((r + 1).checked_mul(r + 1).is_none_or(|sq| sq > n), "{n}");
        }
        let p: u64 = 4_294_967_291; // the largest prime below 2^32
        assert_eq!(isqrt(p * p), p);
        assert_eq!(isqrt(p * p - 1), p - 1);
        assert!(!is_prime.call(p * p));
    }

    #[test]
    fn jobs_and_outcomes_survive_a_self_describing_codec() {
        let job = ShellJob {
            seq: 1,
            cmd: "cat".into(),
            stdin: Some(b"a\nb\n".to_vec()),
            timeout_ms: None,
            tries: 1,
            stream: None,
        };
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<ShellJob>(&json).unwrap(), job);
        let none = ShellJob { stdin: None, ..job };
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(serde_json::from_str::<ShellJob>(&json).unwrap(), none);
    }

    #[test]
    fn run_shell_reports_code_output_and_retries() {
        let job = ShellJob {
            seq: 7,
            cmd: "echo out; echo err >&2; exit 3".to_string(),
            stdin: None,
            timeout_ms: None,
            tries: 2,
            stream: None,
        };
        let o = run_shell.call(job);
        assert_eq!((o.seq, o.code, o.signal, o.attempts), (7, Some(3), None, 2));
        assert_eq!(
            (&o.stdout[..], &o.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }
}

/// One unit of `multitask bench` work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Work {
    /// CPU-bound: the seed's prime test of this number.
    Cpu(u64),
    /// I/O-bound: a blocking wait of this many milliseconds.
    Io(u64),
}

/// Does one unit of bench work; the prime verdict (I/O work is "prime").
#[multitasking::task]
pub(crate) fn bench_work(work: Work) -> bool {
    match work {
        Work::Cpu(n) => is_prime.call(n),
        Work::Io(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            true
        }
    }
}
