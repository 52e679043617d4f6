//! The wire between a pool and its worker processes: framed, versioned
//! messages over a Unix stream socket.
//!
//! A frame is a 4-byte little-endian body length, then the body: one
//! protocol-version byte, then one postcard-encoded [`ToWorker`] or
//! [`FromWorker`] message. postcard was chosen by measurement: a no-op call
//! round-trips in a few hundred nanoseconds of codec time, several times
//! less than JSON. A body longer than the cap (the pool's `max_payload`) is
//! refused before it is read, so a corrupt length can't make anyone
//! allocate gigabytes; a wrong version byte, a truncated body or an
//! undecodable message is a typed [`WireError`], never a panic or a hang.
//!
//! Waiting for a frame spins for a short while before it parks in `poll`:
//! on a machine whose idle CPUs halt, a blocking hand-off costs 20-25 µs
//! each way, while a round trip of a small task should cost a few.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::TaskError;

/// The protocol version; both sides must agree.
pub(crate) const VERSION: u8 = 3;

/// Bytes of the length prefix.
const HEADER: usize = 4;

/// The read buffer's initial size and growth step.
const READ_CHUNK: usize = 64 * 1024;

/// How long a reader spins before it parks in `poll`.
const SPIN: Duration = Duration::from_micros(60);

/// How long a frame in progress may go without a new byte before its
/// sender is taken for stalled. A peer writes a frame at memory speed once
/// it has started; one that sends half a frame and stops would otherwise
/// hold its reader (and, in a pool, the task and the slot) forever.
pub(crate) const FRAME_STALL: Duration = Duration::from_secs(5);

/// A message from the pool to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run a batch of a registered task.
    Call {
        /// The call's id, echoed in the reply.
        id: u64,
        /// The call's number on the worker's call board (`board.rs`),
        /// which the worker claims before it runs the call; 0 for a call
        /// that is not on a board.
        seq: u64,
        /// The task's registered name (borrowed when sent by a pool).
        task: Cow<'static, str>,
        /// The caller's signature hash of the task.
        signature: u64,
        /// The encoded `Vec<Input>`.
        payload: Vec<u8>,
        /// What to measure of the call ([`Usage`]): [`MEASURE_NONE`],
        /// [`MEASURE_TRACE`] or [`MEASURE_ALL`].
        measure: u8,
    },
}

/// Measure nothing.
pub(crate) const MEASURE_NONE: u8 = 0;
/// Measure for a trace: CPU time and allocations always, the peak RSS of
/// calls that run 1 ms or more (reading it costs some microseconds, more
/// than a short call itself).
pub(crate) const MEASURE_TRACE: u8 = 1;
/// Measure everything of every call (`measure_usage`).
pub(crate) const MEASURE_ALL: u8 = 2;

/// What a call used in its worker, when it was asked to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Usage {
    /// CPU time of the worker's thread during the call, in nanoseconds.
    pub(crate) cpu_ns: u64,
    /// The worker's peak resident set during the call, in bytes: the
    /// high-water mark is reset before the call (`/proc/self/clear_refs`),
    /// so this is the call's own peak, not the worker's lifetime one.
    pub(crate) peak_rss: Option<u64>,
    /// Bytes the call's thread allocated, when counted.
    pub(crate) allocated: Option<u64>,
}

/// A message from a worker to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The worker is up (its initializer, if any, has run).
    Hello {
        /// The worker's process id.
        pid: u32,
    },
    /// The initializer failed; the worker exits.
    InitFailed {
        /// Why.
        error: TaskError,
    },
    /// The outcome of a call.
    Reply {
        /// The call's id.
        id: u64,
        /// The encoded `Chunk<Output>`, or why the batch did not run.
        outcome: Result<Vec<u8>, TaskError>,
        /// What the call used, when it was asked to measure.
        usage: Option<Usage>,
    },
    /// The call was withdrawn on the call board before the worker reached
    /// it: it did not run.
    Skipped {
        /// The call's id.
        id: u64,
    },
    /// The worker has started and now runs its initializer; `Hello` (or
    /// `InitFailed`) follows. Lets a slow initializer be told from a start
    /// that never reached `init()`.
    Initializing,
}

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The peer closed the connection (a worker that died, or a pool gone).
    #[error("the peer closed the connection")]
    Eof,
    /// Nothing arrived before the deadline.
    #[error("timed out waiting for a frame")]
    Timeout,
    /// A frame announced a body over the cap.
    #[error("frame of {size} bytes is over the {cap}-byte cap")]
    TooLarge {
        /// The announced size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {got}, expected {VERSION}: both sides must be the same build")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The body did not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// A frame stopped part-way: no byte of it came in (or, writing, went
    /// out) for the stall limit.
    #[error(
        "a frame stopped after {have} bytes{} and did not move for {after:?}",
        announced(want)
    )]
    Stalled {
        /// The bytes of the frame that got through, its header included.
        have: usize,
        /// The frame's size, its header included, if its header came.
        want: Option<usize>,
        /// How long nothing came.
        after: Duration,
    },
}

fn announced(want: &Option<usize>) -> String {
    want.map(|w| format!(" of the {w} announced"))
        .unwrap_or_default()
}

/// Encodes `msg` as one frame (length, version, body).
#[cfg(test)]
pub(crate) fn encode_frame<M: Serialize>(msg: &M) -> Result<Vec<u8>, WireError> {
    encode_frame_into(msg, Vec::new())
}

/// Encodes `msg` as one frame into `buf`, which is cleared first (a
/// connection reuses its write buffer: no allocation per frame).
fn encode_frame_into<M: Serialize>(msg: &M, mut buf: Vec<u8>) -> Result<Vec<u8>, WireError> {
    buf.clear();
    buf.resize(HEADER + 1, 0);
    buf[HEADER] = VERSION;
    let buf =
        crate::task::postcard_into(msg, buf).map_err(|e| WireError::Malformed(e.to_string()))?;
    let body = u32::try_from(buf.len() - HEADER).map_err(|_| WireError::TooLarge {
        size: buf.len() - HEADER,
        cap: u32::MAX as usize,
    })?;
    let mut buf = buf;
    buf[..HEADER].copy_from_slice(&body.to_le_bytes());
    Ok(buf)
}

/// Decodes a frame body (version byte and message).
pub(crate) fn decode_body<M: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<M, WireError> {
    let (&version, rest) = body
        .split_first()
        .ok_or_else(|| WireError::Malformed("empty frame body".to_string()))?;
    if version != VERSION {
        return Err(WireError::Version { got: version });
    }
    let (msg, left) =
        postcard::take_from_bytes(rest).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !left.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes after the message",
            left.len()
        )));
    }
    Ok(msg)
}

/// One end of a framed connection. The socket is non-blocking; reads spin,
/// then park in `poll` until a deadline.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The socket.
    sock: UnixStream,
    /// The read buffer, zeroed once when it grows: bytes `start..end` are
    /// read and not yet consumed as frames; `end..` is free.
    buf: Vec<u8>,
    /// Where the unconsumed bytes in `buf` start.
    start: usize,
    /// Where they end.
    end: usize,
    /// The body-size cap.
    cap: usize,
    /// When bytes last came in: with a frame in progress, the stall clock.
    last_read: Instant,
    /// How long a frame in progress may wait for its next byte
    /// ([`FRAME_STALL`]; shorter in unit tests).
    stall: Duration,
    /// The last frame sent, kept for its memory: the next is encoded into
    /// it.
    wbuf: Vec<u8>,
}

impl Conn {
    /// Wraps `sock`, refusing frames over `cap` bytes.
    pub(crate) fn new(sock: UnixStream, cap: usize) -> io::Result<Conn> {
        sock.set_nonblocking(true)?;
        Ok(Conn {
            sock,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            cap,
            last_read: Instant::now(),
            stall: FRAME_STALL,
            wbuf: Vec::new(),
        })
    }

    /// When the frame in progress, if any, counts as stalled unless more
    /// of it comes.
    pub(crate) fn stall_deadline(&self) -> Option<Instant> {
        (self.start < self.end).then(|| self.last_read + self.stall)
    }

    /// Fails with [`WireError::Stalled`] if a frame in progress is past
    /// its stall deadline.
    fn check_stall(&self) -> Result<(), WireError> {
        match self.stall_deadline() {
            Some(at) if Instant::now() >= at => {
                let have = self.end - self.start;
                let want = match self.buf.get(self.start..self.start + HEADER) {
                    Some(h) if have >= HEADER => {
                        let size = u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize;
                        Some(HEADER + size)
                    }
                    _ => None,
                };
                Err(WireError::Stalled {
                    have,
                    want,
                    after: self.stall,
                })
            }
            _ => Ok(()),
        }
    }

    /// Sends `msg` as one frame.
    pub(crate) fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), WireError> {
        let frame = encode_frame_into(msg, std::mem::take(&mut self.wbuf))?;
        let sent = if frame.len() - HEADER > self.cap {
            Err(WireError::TooLarge {
                size: frame.len() - HEADER,
                cap: self.cap,
            })
        } else {
            self.write_all(&frame)
        };
        // A large frame's memory is given back; a small one's is kept.
        if frame.capacity() <= READ_CHUNK {
            self.wbuf = frame;
        }
        sent
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), WireError> {
        let total = data.len();
        // When the peer last took some of the frame: a peer that stops
        // reading part-way holds the writer (in a pool, the slot's lock)
        // no longer than the stall limit.
        let mut progress = Instant::now();
        while !data.is_empty() {
            match self.sock.write(data) {
                Ok(0) => return Err(WireError::Eof),
                Ok(n) => {
                    data = &data[n..];
                    progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let stalled = WireError::Stalled {
                        have: total - data.len(),
                        want: Some(total),
                        after: self.stall,
                    };
                    match self.park(rustix::event::PollFlags::OUT, Some(progress + self.stall)) {
                        Err(WireError::Timeout) => return Err(stalled),
                        r => r?,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(WireError::Eof),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one message, waiting until `deadline` (forever if `None`).
    pub(crate) fn recv<M: for<'de> Deserialize<'de>>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<M, WireError> {
        let spin_until = Instant::now() + SPIN;
        let mut tries = 0u32;
        loop {
            if let Some(body) = self.take_frame()? {
                let msg = decode_body(&self.buf[body.clone()]);
                self.start = body.end;
                return msg;
            }
            match self.fill() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Err(e),
            }
            self.check_stall()?;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(WireError::Timeout);
            }
            if now < spin_until {
                // Each try is a system call already; yield only now and
                // then, to let the sender run on a busy machine (a yield
                // per try made the reply wait for one, 0.3 µs).
                tries += 1;
                if tries % 16 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let wake = match (deadline, self.stall_deadline()) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            match self.park(rustix::event::PollFlags::IN, wake) {
                // The stall deadline passed: the next turn says so.
                Err(WireError::Timeout) if deadline.is_none_or(|d| Instant::now() < d) => {}
                r => r?,
            }
        }
    }

    /// Receives one message if a whole one has come in; never waits.
    pub(crate) fn try_recv<M: for<'de> Deserialize<'de>>(
        &mut self,
    ) -> Result<Option<M>, WireError> {
        loop {
            if let Some(body) = self.take_frame()? {
                let msg = decode_body(&self.buf[body.clone()]);
                self.start = body.end;
                return msg.map(Some);
            }
            if !self.fill()? {
                self.check_stall()?;
                return Ok(None);
            }
        }
    }

    /// True if a whole frame has come in and waits to be taken: the next
    /// `try_recv` returns it without a system call.
    pub(crate) fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..self.end];
        avail.len() >= HEADER
            && avail.len()
                >= HEADER
                    + u32::from_le_bytes(avail[..HEADER].try_into().expect("4 bytes")) as usize
    }

    /// The socket, to wait on with `poll`.
    pub(crate) fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The range of the next complete frame's body in `buf`, if one is there.
    fn take_frame(&mut self) -> Result<Option<std::ops::Range<usize>>, WireError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER {
            return Ok(None);
        }
        let size = u32::from_le_bytes(avail[..HEADER].try_into().expect("4 bytes")) as usize;
        if size > self.cap {
            return Err(WireError::TooLarge {
                size,
                cap: self.cap,
            });
        }
        if avail.len() < HEADER + size {
            // Room for the whole frame, so that reads fill it in place.
            if self.start + HEADER + size > self.buf.len() {
                self.compact();
                self.buf.resize(HEADER + size, 0);
            }
            return Ok(None);
        }
        let body = self.start + HEADER..self.start + HEADER + size;
        Ok(Some(body))
    }

    /// Moves the unconsumed bytes to the front of the buffer.
    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Reads what is there; true if anything was read.
    fn fill(&mut self) -> Result<bool, WireError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_CHUNK {
                // A large frame has gone: give its memory back.
                self.buf = vec![0; READ_CHUNK];
            }
        } else if self.buf.len() - self.end < READ_CHUNK / 4 {
            self.compact();
        }
        if self.buf.len() - self.end < READ_CHUNK / 4 {
            self.buf.resize(self.buf.len() + READ_CHUNK, 0);
        }
        match self.sock.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(WireError::Eof),
            Ok(n) => {
                self.end += n;
                self.last_read = Instant::now();
                Ok(true)
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
                io::ErrorKind::ConnectionReset => Err(WireError::Eof),
                _ => Err(e.into()),
            },
        }
    }

    /// Parks in `poll` until the socket is ready for `flags` or `deadline`.
    fn park(
        &self,
        flags: rustix::event::PollFlags,
        deadline: Option<Instant>,
    ) -> Result<(), WireError> {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(WireError::Timeout);
                }
                Some(rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        let mut fds = [rustix::event::PollFd::new(&self.sock, flags)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(WireError::Io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(cap: usize) -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::new(a, cap).unwrap(), Conn::new(b, cap).unwrap())
    }

    #[test]
    fn frames_round_trip() {
        let (mut a, mut b) = pair(1 << 20);
        let call = ToWorker::Call {
            id: 7,
            seq: 3,
            task: "m::is_prime".into(),
            signature: 42,
            payload: vec![1, 2, 3],
            measure: MEASURE_ALL,
        };
        a.send(&call).unwrap();
        a.send(&call).unwrap();
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        assert_eq!(b.recv::<ToWorker>(deadline).unwrap(), call);
        assert_eq!(b.recv::<ToWorker>(deadline).unwrap(), call);
        let reply = FromWorker::Reply {
            id: 7,
            outcome: Err(TaskError::Cancelled { task: "t".into() }),
            usage: Some(Usage {
                cpu_ns: 1_500,
                peak_rss: Some(4 << 20),
                allocated: Some(1 << 10),
            }),
        };
        b.send(&reply).unwrap();
        assert_eq!(a.recv::<FromWorker>(deadline).unwrap(), reply);
    }

    #[test]
    fn a_frame_read_along_with_another_is_seen_without_a_read() {
        let (mut a, mut b) = pair(1024);
        for id in [1, 2] {
            a.send(&FromWorker::Skipped { id }).unwrap();
        }
        assert!(!b.has_frame(), "nothing read yet");
        // Both frames are in the socket, so one read brings both.
        let first = loop {
            if let Some(m) = b.try_recv::<FromWorker>().unwrap() {
                break m;
            }
        };
        assert_eq!(first, FromWorker::Skipped { id: 1 });
        assert!(b.has_frame(), "the second came with the first");
        assert_eq!(
            b.try_recv::<FromWorker>().unwrap(),
            Some(FromWorker::Skipped { id: 2 })
        );
        assert!(!b.has_frame());
    }

    #[test]
    fn large_and_small_frames_interleave_and_the_buffer_shrinks_back() {
        let (mut a, mut b) = pair(8 << 20);
        let call = |id: u64, len: usize| ToWorker::Call {
            id,
            seq: id,
            task: "t".into(),
            signature: 0,
            payload: (0..len).map(|i| i as u8).collect(),
            measure: MEASURE_NONE,
        };
        // The writer blocks once the socket buffer fills: write from a thread.
        let sent: Vec<_> = [(1, 10), (2, 3 << 20), (3, 10), (4, 100_000), (5, 1)]
            .into_iter()
            .map(|(id, len)| call(id, len))
            .collect();
        let expect = sent.clone();
        let writer = std::thread::spawn(move || {
            for c in &sent {
                a.send(c).unwrap();
            }
            a
        });
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        for want in &expect {
            assert_eq!(&b.recv::<ToWorker>(deadline).unwrap(), want);
        }
        let mut a = writer.join().unwrap();
        assert!(b.fill().is_ok());
        assert!(
            b.buf.len() <= READ_CHUNK * 4,
            "buffer kept {} bytes",
            b.buf.len()
        );
        // The writer keeps a small frame's buffer for the next, not a
        // large one's; a kept buffer carries nothing into the next frame.
        assert!(
            a.wbuf.capacity() <= READ_CHUNK,
            "kept {}",
            a.wbuf.capacity()
        );
        a.send(&call(6, 1000)).unwrap();
        assert!(a.wbuf.capacity() >= 1000);
        a.send(&call(7, 2)).unwrap();
        for want in [call(6, 1000), call(7, 2)] {
            assert_eq!(b.recv::<ToWorker>(deadline).unwrap(), want);
        }
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let (mut a, mut b) = pair(16);
        let big = ToWorker::Call {
            id: 1,
            seq: 0,
            task: "t".into(),
            signature: 0,
            payload: vec![0; 64],
            measure: MEASURE_NONE,
        };
        assert!(matches!(a.send(&big), Err(WireError::TooLarge { .. })));
        // A peer that lies about the size is refused before the body is read.
        use std::io::Write;
        a.sock.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let r = b.recv::<ToWorker>(Some(Instant::now() + Duration::from_secs(5)));
        assert!(
            matches!(r, Err(WireError::TooLarge { size, cap: 16 }) if size == u32::MAX as usize)
        );
    }

    #[test]
    fn a_frame_that_stops_part_way_is_stalled_not_waited_for() {
        let (mut a, mut b) = pair(1024);
        b.stall = Duration::from_millis(50);
        use std::io::Write;
        // A header announcing 100 bytes, then 3 of them.
        a.sock.write_all(&100u32.to_le_bytes()).unwrap();
        a.sock.write_all(&[VERSION, 0, 0]).unwrap();
        let t = Instant::now();
        let r = b.recv::<ToWorker>(None);
        assert!(
            matches!(&r, Err(WireError::Stalled { have: 7, want, .. }) if *want == Some(104)),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let (mut a, mut b) = pair(1024);
        b.stall = Duration::from_millis(50);
        a.sock.write_all(&[1, 0]).unwrap();
        assert!(matches!(b.try_recv::<ToWorker>(), Ok(None)));
        assert!(b.stall_deadline().is_some());
        std::thread::sleep(Duration::from_millis(60));
        let r = b.try_recv::<ToWorker>();
        assert!(
            matches!(r, Err(WireError::Stalled { have: 2, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn eof_timeout_and_version_are_typed() {
        let (a, mut b) = pair(1024);
        let r = b.recv::<ToWorker>(Some(Instant::now() + Duration::from_millis(20)));
        assert!(matches!(r, Err(WireError::Timeout)));
        drop(a);
        let r = b.recv::<ToWorker>(Some(Instant::now() + Duration::from_secs(5)));
        assert!(matches!(r, Err(WireError::Eof)));
        let mut frame = encode_frame(&FromWorker::Hello { pid: 1 }).unwrap();
        frame[HEADER] = 99;
        let r = decode_body::<FromWorker>(&frame[HEADER..]);
        assert!(matches!(r, Err(WireError::Version { got: 99 })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// The decoder never panics: any body is a message or a typed error.
        #[test]
        fn decoder_survives_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body::<ToWorker>(&body);
            let _ = decode_body::<FromWorker>(&body);
        }

        /// Mutating one byte of a valid frame gives a message or a typed
        /// error, never a panic.
        #[test]
        fn decoder_survives_bit_flips(
            id in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let frame = encode_frame(&ToWorker::Call { id, seq: id, task: "t".into(), signature: 1, payload, measure: MEASURE_NONE }).unwrap();
            let mut body = frame[HEADER..].to_vec();
            let i = at.index(body.len());
            body[i] ^= flip;
            let _ = decode_body::<ToWorker>(&body);
        }

        /// A stream of valid frames cut at any points decodes to the same
        /// messages.
        #[test]
        fn frames_survive_any_chunking(ids in proptest::collection::vec(any::<u64>(), 1..8), cut in 1usize..7) {
            let (a, mut b) = pair(1 << 16);
            let mut bytes = Vec::new();
            for &id in &ids {
                bytes.extend(encode_frame(&FromWorker::Reply { id, outcome: Ok(vec![id as u8; 3]), usage: None }).unwrap());
            }
            let mut s = a.sock.try_clone().unwrap();
            s.set_nonblocking(false).unwrap();
            for piece in bytes.chunks(cut) {
                std::io::Write::write_all(&mut s, piece).unwrap();
            }
            for &id in &ids {
                let m: FromWorker = b.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap();
                prop_assert_eq!(m, FromWorker::Reply { id, outcome: Ok(vec![id as u8; 3]), usage: None });
            }
        }
    }
}
