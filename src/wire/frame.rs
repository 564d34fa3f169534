//! Frames on the private pipes between the pool and one worker.
//!
//! A frame is a 17-byte header (one tag byte, the body length and the task id,
//! each a little-endian u64) followed by the body. A worker echoes the id of
//! the task it answers, so bytes a task writes into the pipe itself can never
//! be taken for another task's result. Sizes are 64-bit so multi-GiB
//! arguments and results travel intact. The reader is incremental because the
//! supervisor only ever does non-blocking reads: a slow or dead worker can leave
//! a frame half-written and the supervisor must simply come back later.

use crate::parent::buffers::BufferPool;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

pub const HEADER_LEN: usize = 17;

/// Bodies above this are treated as corruption rather than allocated: a garbage
/// header must fail one future, not make the parent try to allocate exabytes.
pub const MAX_BODY_LEN: u64 = 1 << 40;

wire_codes! {
    /// The first byte of a frame's header.
    ///
    /// Pool -> worker: `Config`, the pickled worker settings (the first frame
    /// a worker reads); `Task`, a pickled `(fn, args, kwargs)`; `Retire`, run
    /// the finalizer and atexit handlers, then exit;
    ///
    /// `TaskShared`, a task whose large buffers are in a shared-memory
    /// segment, sent (os/fd_passing.rs) just before this frame.
    ///
    /// Worker -> pool: `Ready`, initialised and waiting (the body is its pid,
    /// u32 LE); `Ok`, the pickled return value; `Err`, the pickled exception
    /// and its traceback text; `ErrMemory`, the same for a memory-limited
    /// task that raised `MemoryError` (the pool replaces the worker, whose
    /// heap may be in any state after that); `OkShared`, a return value whose
    /// large buffers the worker wrote into its task's own segment;
    /// `OkSegment`, one whose buffers are in a segment the worker made and
    /// sent just before this frame.
    ///
    /// The bodies of shared frames start with the layout of their buffers in
    /// the segment (python/deadpool/_payload.py writes and reads it).
    pub enum Tag: u8 {
        Config = 1, Task = 2, Retire = 3, TaskShared = 4,
        Ready = 10, Ok = 11, Err = 12, ErrMemory = 13, OkShared = 14, OkSegment = 15,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: Tag,
    pub id: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    UnknownTag(u8),
    TooLarge(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownTag(tag) => write!(f, "corrupt frame: unknown tag {tag}"),
            FrameError::TooLarge(len) => {
                write!(f, "corrupt frame: body length {len} is implausible")
            }
        }
    }
}

pub fn encode_header(tag: Tag, id: u64, body_len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = tag as u8;
    header[1..9].copy_from_slice(&(body_len as u64).to_le_bytes());
    header[9..].copy_from_slice(&id.to_le_bytes());
    header
}

pub fn decode_header(header: &[u8; HEADER_LEN], limit: u64) -> Result<(Tag, u64, u64), FrameError> {
    let tag = Tag::from_value(header[0]).ok_or(FrameError::UnknownTag(header[0]))?;
    let mut field = [0u8; 8];
    field.copy_from_slice(&header[1..9]);
    let len = u64::from_le_bytes(field);
    if len > limit {
        return Err(FrameError::TooLarge(len));
    }
    field.copy_from_slice(&header[9..]);
    Ok((tag, len, u64::from_le_bytes(field)))
}

/// What one call to [`FrameReader::read_from`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Frame(Frame),
    /// The source has nothing more for now (`WouldBlock`).
    Pending,
    /// End of stream. `mid_frame` says whether a partial frame was lost.
    Eof {
        mid_frame: bool,
    },
    Corrupt(FrameError),
}

/// How much a read between frames asks for: a small frame then arrives, header
/// and body, in one syscall.
const SMALL_READ: usize = 16 * 1024;

/// Incremental decoder. Between frames it reads up to [`SMALL_READ`] bytes, so
/// a small frame costs one syscall; the rest of a large body is read straight
/// into its exactly-sized buffer, so a large result is copied from the kernel once.
pub struct FrameReader {
    /// Bytes read but not yet part of a frame (the start of the next one).
    stash: Vec<u8>,
    body: Option<(Tag, u64, Vec<u8>, usize)>,
    limit: u64,
    buffers: Arc<BufferPool>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::with_limit(MAX_BODY_LEN)
    }
}

impl FrameReader {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limit(limit: u64) -> Self {
        Self::with_buffers(limit, Arc::new(BufferPool::new()))
    }

    /// Bodies are taken from (and may be given back to) `buffers`.
    pub fn with_buffers(limit: u64, buffers: Arc<BufferPool>) -> Self {
        FrameReader {
            stash: Vec::new(),
            body: None,
            limit,
            buffers,
        }
    }

    /// Reads until one frame is complete, the source would block, or it ends.
    pub fn read_from<R: Read>(&mut self, source: &mut R) -> io::Result<ReadOutcome> {
        loop {
            if let Some((tag, id, body, filled)) = &mut self.body {
                if *filled == body.len() {
                    let (tag, id) = (*tag, *id);
                    let body = std::mem::take(body);
                    self.body = None;
                    return Ok(ReadOutcome::Frame(Frame { tag, id, body }));
                }
                match read_some(source, &mut body[*filled..])? {
                    Some(0) => return Ok(ReadOutcome::Eof { mid_frame: true }),
                    Some(n) => *filled += n,
                    None => return Ok(ReadOutcome::Pending),
                }
                continue;
            }
            if self.stash.len() >= HEADER_LEN {
                if let Err(error) = self.start_body() {
                    return Ok(ReadOutcome::Corrupt(error));
                }
                continue;
            }
            let mut chunk = [0u8; SMALL_READ];
            match read_some(source, &mut chunk)? {
                Some(0) => {
                    let mid_frame = !self.stash.is_empty();
                    return Ok(ReadOutcome::Eof { mid_frame });
                }
                Some(n) => self.stash.extend_from_slice(&chunk[..n]),
                None => return Ok(ReadOutcome::Pending),
            }
        }
    }

    /// Decodes the stashed header and moves what follows it into the body.
    fn start_body(&mut self) -> Result<(), FrameError> {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.stash[..HEADER_LEN]);
        let (tag, len, id) = decode_header(&header, self.limit)?;
        let size = usize::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
        let mut body = self.buffers.zeroed(size).ok_or(FrameError::TooLarge(len))?;
        let available = (self.stash.len() - HEADER_LEN).min(body.len());
        body[..available].copy_from_slice(&self.stash[HEADER_LEN..HEADER_LEN + available]);
        self.stash.drain(..HEADER_LEN + available);
        self.body = Some((tag, id, body, available));
        Ok(())
    }
}

/// `Ok(None)` when the read would block; interrupted reads are retried.
fn read_some<R: Read>(source: &mut R, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match source.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// An encoded frame on its way out through a non-blocking pipe.
pub struct PendingWrite {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    written: usize,
}

impl PendingWrite {
    pub fn new(tag: Tag, id: u64, body: Vec<u8>) -> Self {
        let header = encode_header(tag, id, body.len());
        PendingWrite {
            header,
            body,
            written: 0,
        }
    }

    fn total(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// The body, to recycle once the frame is out.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Writes as much as the sink takes; `Ok(true)` once the frame is all out.
    pub fn write_to<W: Write>(&mut self, sink: &mut W) -> io::Result<bool> {
        while self.written < self.total() {
            let result = if self.written < HEADER_LEN {
                let slices = [
                    IoSlice::new(&self.header[self.written..]),
                    IoSlice::new(&self.body),
                ];
                sink.write_vectored(&slices)
            } else {
                sink.write(&self.body[self.written - HEADER_LEN..])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Hands out at most `chunk` bytes per read, then `WouldBlock` every other call,
    /// the way a non-blocking pipe behaves under a slow writer.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        block_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.block_next && self.pos < self.data.len() {
                self.block_next = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.block_next = true;
            let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn encode(tag: Tag, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pending = PendingWrite::new(tag, 42, body.to_vec());
        assert!(pending.write_to(&mut out).expect("vec write"));
        out
    }

    fn read_all(reader: &mut FrameReader, source: &mut impl Read) -> Vec<ReadOutcome> {
        let mut outcomes = Vec::new();
        loop {
            match reader.read_from(source).expect("read") {
                ReadOutcome::Pending => continue,
                outcome @ (ReadOutcome::Eof { .. } | ReadOutcome::Corrupt(_)) => {
                    outcomes.push(outcome);
                    return outcomes;
                }
                frame => outcomes.push(frame),
            }
        }
    }

    #[test]
    fn round_trips_a_frame() {
        let bytes = encode(Tag::Ok, b"hello");
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        let mut reader = FrameReader::new();
        let outcome = reader.read_from(&mut Cursor::new(bytes)).expect("read");
        assert_eq!(
            outcome,
            ReadOutcome::Frame(Frame {
                tag: Tag::Ok,
                id: 42,
                body: b"hello".to_vec()
            })
        );
    }

    #[test]
    fn empty_body_is_a_frame() {
        let mut reader = FrameReader::new();
        let outcome = reader
            .read_from(&mut Cursor::new(encode(Tag::Retire, b"")))
            .expect("read");
        assert_eq!(
            outcome,
            ReadOutcome::Frame(Frame {
                tag: Tag::Retire,
                id: 42,
                body: vec![]
            })
        );
    }

    #[test]
    fn unknown_tag_is_corrupt() {
        let mut bytes = encode(Tag::Ok, b"x");
        bytes[0] = 99;
        let mut reader = FrameReader::new();
        let outcome = reader.read_from(&mut Cursor::new(bytes)).expect("read");
        assert_eq!(outcome, ReadOutcome::Corrupt(FrameError::UnknownTag(99)));
    }

    #[test]
    fn absurd_length_is_corrupt_not_allocated() {
        let mut bytes = encode(Tag::Ok, b"");
        bytes[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut reader = FrameReader::new();
        let outcome = reader.read_from(&mut Cursor::new(bytes)).expect("read");
        assert_eq!(
            outcome,
            ReadOutcome::Corrupt(FrameError::TooLarge(u64::MAX))
        );
    }

    #[test]
    fn an_unallocatable_length_is_corrupt_not_an_abort() {
        let mut bytes = encode(Tag::Ok, b"");
        bytes[1..9].copy_from_slice(&(MAX_BODY_LEN - 1).to_le_bytes());
        let mut reader = FrameReader::new();
        // Either the allocator refuses (corrupt) or it maps lazily and the
        // stream then ends mid-frame; the process must survive both.
        let outcome = reader.read_from(&mut Cursor::new(bytes)).expect("read");
        assert!(matches!(
            outcome,
            ReadOutcome::Corrupt(FrameError::TooLarge(_)) | ReadOutcome::Eof { mid_frame: true }
        ));
    }

    #[test]
    fn lengths_are_64_bit() {
        let header = encode_header(Tag::Task, 7, (5u64 << 32) as usize);
        assert_eq!(
            decode_header(&header, MAX_BODY_LEN),
            Ok((Tag::Task, 5u64 << 32, 7))
        );
    }

    #[test]
    fn truncated_frame_reports_mid_frame_eof() {
        let bytes = encode(Tag::Ok, b"abcdef");
        let mut reader = FrameReader::new();
        let outcome = reader
            .read_from(&mut Cursor::new(&bytes[..12]))
            .expect("read");
        assert_eq!(outcome, ReadOutcome::Eof { mid_frame: true });
    }

    #[test]
    fn clean_eof_between_frames() {
        let mut reader = FrameReader::new();
        let outcome = reader
            .read_from(&mut Cursor::new(Vec::new()))
            .expect("read");
        assert_eq!(outcome, ReadOutcome::Eof { mid_frame: false });
    }

    /// A sink that accepts a few bytes at a time and then would block.
    struct Narrow {
        out: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                self.room = 3;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pending_write_resumes_after_would_block() {
        let mut sink = Narrow {
            out: Vec::new(),
            room: 3,
        };
        let mut pending = PendingWrite::new(Tag::Task, 42, b"0123456789".to_vec());
        let mut rounds = 0;
        while !pending.write_to(&mut sink).expect("write") {
            rounds += 1;
        }
        assert!(rounds > 1);
        assert_eq!(sink.out, encode(Tag::Task, b"0123456789"));
    }

    proptest! {
        #[test]
        fn any_sequence_of_frames_survives_any_chunking(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            chunk in 1usize..64,
        ) {
            let mut data = Vec::new();
            for body in &bodies {
                data.extend(encode(Tag::Ok, body));
            }
            let mut source = Trickle { data, pos: 0, chunk, block_next: false };
            let mut reader = FrameReader::new();
            let outcomes = read_all(&mut reader, &mut source);
            let (last, frames) = outcomes.split_last().expect("at least eof");
            prop_assert_eq!(last, &ReadOutcome::Eof { mid_frame: false });
            let got: Vec<Vec<u8>> = frames.iter().map(|o| match o {
                ReadOutcome::Frame(f) => f.body.clone(),
                other => panic!("unexpected {other:?}"),
            }).collect();
            prop_assert_eq!(got, bodies);
        }

        #[test]
        fn garbage_never_panics_and_always_terminates(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            // A small limit keeps random headers from asking for huge allocations.
            let mut reader = FrameReader::with_limit(4096);
            let outcomes = read_all(&mut reader, &mut Cursor::new(data));
            let last = outcomes.last().expect("some outcome");
            let terminal = matches!(last, ReadOutcome::Eof { .. } | ReadOutcome::Corrupt(_));
            prop_assert!(terminal);
        }
    }
}
