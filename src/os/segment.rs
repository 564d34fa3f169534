//! Anonymous shared memory for large payloads: memfd segments.
//!
//! A segment is a `memfd`: memory with a file descriptor and no name, so
//! nothing can leak it. It lives exactly as long as some process holds a
//! descriptor to it (or a mapping of it): a SIGKILLed sender, receiver or
//! parent frees it with its descriptor table, and nothing ever appears in
//! `/dev/shm`.
//!
//! The parent keeps its segments, and so keeps each one mapped
//! ([`Segment::copy_in`], [`Segment::copy_out`]): once its page-table
//! entries exist, a copy runs at memory speed, where `pwrite`/`pread` walk
//! the page cache page by page at half that. A worker gets a new descriptor
//! for every task, whose mapping would have to build those entries afresh
//! each time, so it uses `pread`/`pwrite` ([`read_exact_at_uninit`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The name `/proc/<pid>/fd` shows: `/memfd:deadpool-payload (deleted)`.
pub const SEGMENT_NAME: &std::ffi::CStr = c"deadpool-payload";

pub struct Segment {
    fd: OwnedFd,
    len: u64,
    map: Option<Mapping>,
}

/// The segment's first `len` bytes, mapped shared into this process.
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory of the process, valid on any thread;
// `Segment` hands out access to it only through `&mut self`.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`, placed by
        // the kernel; it aliases no Rust memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing borrows it now.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Segment {
    /// A new zero-filled segment of `len` bytes (its pages are allocated as
    /// they are first written).
    pub fn create(len: u64) -> io::Result<Segment> {
        // SAFETY: a valid C string and flags; the result is checked below.
        let raw = unsafe { libc::memfd_create(SEGMENT_NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor memfd_create just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut segment = Segment {
            fd,
            len: 0,
            map: None,
        };
        segment.grow_to(len)?;
        Ok(segment)
    }

    /// A segment received from another process.
    pub fn adopt(fd: OwnedFd) -> io::Result<Segment> {
        let mut segment = Segment {
            fd,
            len: 0,
            map: None,
        };
        segment.refresh_len()?;
        Ok(segment)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// At least `len` bytes long (a segment never shrinks: its pages stay warm).
    pub fn grow_to(&mut self, len: u64) -> io::Result<()> {
        if len > self.len {
            let size = i64::try_from(len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
            nix::unistd::ftruncate(&self.fd, size)?;
            self.len = len;
        }
        Ok(())
    }

    /// Copies `data` into the segment at `offset`, growing it if need be.
    pub fn copy_in(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        self.grow_to(end)?;
        let base = self.mapped(end)?;
        // SAFETY: [offset, end) lies inside the mapping, which no one else in
        // this process touches meanwhile (`&mut self`).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset as usize), data.len())
        };
        Ok(())
    }

    /// Fills `buf` from the segment at `offset`; an error if the segment is
    /// shorter (its writer died, or lied).
    pub fn copy_out(
        &mut self,
        offset: u64,
        buf: &mut [std::mem::MaybeUninit<u8>],
    ) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.len {
            self.refresh_len()?;
            if end > self.len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let base = self.mapped(end)?;
        // SAFETY: [offset, end) lies inside the mapping; `buf` is ours alone.
        unsafe {
            std::ptr::copy_nonoverlapping(
                base.add(offset as usize),
                buf.as_mut_ptr().cast::<u8>(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// The mapping, made (again) to cover at least `end` bytes.
    fn mapped(&mut self, end: u64) -> io::Result<*mut u8> {
        let covers = self.map.as_ref().is_some_and(|m| m.len as u64 >= end);
        if !covers {
            let len = usize::try_from(self.len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
            self.map = None;
            self.map = Some(Mapping::new(self.fd.as_fd(), len)?);
        }
        self.map
            .as_ref()
            .map(|m| m.ptr.as_ptr())
            .ok_or_else(|| io::ErrorKind::Other.into())
    }

    /// Reads the length again: the process the segment was lent to may have
    /// grown it to fit its result.
    pub fn refresh_len(&mut self) -> io::Result<()> {
        let size = nix::sys::stat::fstat(&self.fd)?.st_size;
        self.len = u64::try_from(size).unwrap_or(0);
        Ok(())
    }
}

/// Fills `buf` from `fd` at `offset`; a segment shorter than promised is an
/// error. (The test suite's reader; Python objects are filled by
/// [`read_exact_at_uninit`], and written by Python itself.)
#[cfg(test)]
pub fn read_exact_at(fd: BorrowedFd<'_>, mut offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = i64::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        match nix::sys::uio::pread(fd, &mut buf[filled..], at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                offset += n as u64;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `data` to `fd` at `offset` (for the test suite).
#[cfg(test)]
pub fn write_all_at(fd: BorrowedFd<'_>, mut offset: u64, data: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < data.len() {
        let at = i64::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        match nix::sys::uio::pwrite(fd, &data[written..], at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                offset += n as u64;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Fills `buf`, memory not yet initialised (a Python object's fresh
/// buffer), from `fd` at `offset`; a segment shorter than promised is an
/// error (its writer died, or lied).
pub fn read_exact_at_uninit(
    fd: BorrowedFd<'_>,
    offset: u64,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = libc::off_t::try_from(offset + filled as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let rest = &mut buf[filled..];
        // SAFETY: pread writes at most `rest.len()` bytes into `rest`, memory
        // we own exclusively; it never reads it.
        let n = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => filled += n as usize,
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

const HUGE_PAGE: usize = 2 << 20;

/// Asks for transparent huge pages under the untouched memory that is about
/// to receive a large payload. A fresh 64 MiB buffer is 16,384 page faults
/// with 4 KiB pages and 32 with 2 MiB ones; inside a virtual machine each
/// fault costs microseconds, more than copying its page. Only the whole 2
/// MiB blocks inside `buf` are advised, so memory around it is untouched;
/// where THP is off or refused this does nothing.
pub fn advise_huge_pages<T>(buf: &mut [T]) {
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + std::mem::size_of_val(buf)) / HUGE_PAGE * HUGE_PAGE;
    if end >= first + 2 * HUGE_PAGE {
        // SAFETY: [first, end) lies inside `buf`, memory this process owns;
        // MADV_HUGEPAGE changes how it is backed, never its contents.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_the_segment_grows_but_never_shrinks() {
        let mut segment = Segment::create(10).expect("memfd");
        write_all_at(segment.fd(), 3, b"payload").expect("write");
        let mut back = [0u8; 7];
        read_exact_at(segment.fd(), 3, &mut back).expect("read");
        assert_eq!(&back, b"payload");
        segment.grow_to(1 << 20).expect("grow");
        segment.grow_to(5).expect("no shrink");
        assert_eq!(segment.len(), 1 << 20);
    }

    #[test]
    fn reading_into_uninitialised_memory_fills_all_of_it() {
        let segment = Segment::create(5).expect("memfd");
        write_all_at(segment.fd(), 0, b"12345").expect("write");
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4];
        read_exact_at_uninit(segment.fd(), 1, &mut buf).expect("read");
        // SAFETY: read_exact_at_uninit filled every byte.
        let bytes = buf.map(|b| unsafe { b.assume_init() });
        assert_eq!(&bytes, b"2345");
        let mut long = [std::mem::MaybeUninit::<u8>::uninit(); 9];
        assert!(read_exact_at_uninit(segment.fd(), 0, &mut long).is_err());
    }

    #[test]
    fn copies_through_the_mapping_meet_what_the_descriptor_holds() {
        let mut segment = Segment::create(8).expect("memfd");
        segment.copy_in(2, b"mapped").expect("copy in");
        let mut back = [0u8; 6];
        read_exact_at(segment.fd(), 2, &mut back).expect("read");
        assert_eq!(&back, b"mapped");
        // Grown by another holder, as a worker grows it for its result.
        write_all_at(segment.fd(), 10_000, b"grown").expect("write past the end");
        let mut out = [std::mem::MaybeUninit::<u8>::uninit(); 5];
        segment
            .copy_out(10_000, &mut out)
            .expect("copy out, remapped");
        // SAFETY: copy_out filled every byte.
        assert_eq!(&out.map(|b| unsafe { b.assume_init() }), b"grown");
        let mut past = [std::mem::MaybeUninit::<u8>::uninit(); 10];
        assert!(segment.copy_out(10_000, &mut past).is_err());
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let segment = Segment::create(4).expect("memfd");
        let mut buf = [0u8; 8];
        let error = read_exact_at(segment.fd(), 0, &mut buf).expect_err("short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn an_adopted_segment_knows_the_length_another_holder_gave_it() {
        let segment = Segment::create(16).expect("memfd");
        let copy = segment.fd().try_clone_to_owned().expect("dup");
        nix::unistd::ftruncate(&copy, 4096).expect("grow through the copy");
        let adopted = Segment::adopt(copy).expect("adopt");
        assert_eq!(adopted.len(), 4096);
    }

    #[test]
    fn segments_are_named_for_proc_and_absent_from_dev_shm() {
        let segment = Segment::create(1).expect("memfd");
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&segment.fd())
        ))
        .expect("readlink");
        assert!(link
            .to_string_lossy()
            .starts_with("/memfd:deadpool-payload"));
    }

    #[test]
    fn advising_a_small_or_odd_buffer_is_harmless() {
        let mut small = vec![1u8; 100];
        advise_huge_pages(&mut small);
        let mut big = vec![2u8; 9 << 20];
        advise_huge_pages(&mut big[1..]);
        assert!(small.iter().all(|&b| b == 1) && big.iter().all(|&b| b == 2));
    }
}
