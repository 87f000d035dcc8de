//! A capture of the frames a host peer moves, in the classic pcap format (libpcap 2.4,
//! microsecond timestamps, link type Ethernet), which tcpdump, tshark and Wireshark open.
//!
//! `ivnet peer --pcap FILE` writes both directions of its link: what the cell sent (read out of
//! the shared memory, as delivered to the TAP) and what it was given (as written into the
//! shared memory). The file is created new (an existing file is never overwritten), readable by
//! its owner only, and bounded: once `max_bytes` would be exceeded the capture stops, says so
//! once, and the link goes on.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::device::Frame;
use log::{info, warn};

/// pcap's magic number (microsecond timestamps, written in the host's byte order).
const MAGIC: u32 = 0xa1b2_c3d4;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// Longest frame kept whole; longer ones are cut (the record says their length).
pub const SNAPLEN: usize = 65_535;
const FILE_HEADER: usize = 24;
const RECORD_HEADER: usize = 16;

/// An open capture file.
#[derive(Debug)]
pub struct Capture {
    out: BufWriter<File>,
    /// Bytes that may still be written.
    left: u64,
    /// Frames recorded.
    pub frames: u64,
    /// Frames not recorded because the file reached its bound.
    pub missed: u64,
    buf: Vec<u8>,
}

impl Capture {
    /// Creates `path` (which must not exist, owner-only) and writes the pcap file header. At
    /// most `max_bytes` bytes are ever written to it (at least the header's 24).
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<Capture> {
        let f = Self::create_file(path)?;
        let c = Self::from_file(f, max_bytes)?;
        info!("capturing the link's frames into {}", path.display());
        Ok(c)
    }

    /// Creates `path` for a capture: new (an existing file is never overwritten) and readable
    /// by its owner only.
    pub fn create_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("capture file {}: {e}", path.display())))
    }

    /// A capture into `f`, an empty file open for writing (made by [`Capture::create_file`],
    /// perhaps by another process that passed it on): writes the pcap file header.
    pub fn from_file(f: File, max_bytes: u64) -> io::Result<Capture> {
        let mut c = Capture {
            out: BufWriter::new(f),
            left: max_bytes.saturating_sub(FILE_HEADER as u64),
            frames: 0,
            missed: 0,
            buf: Vec::new(),
        };
        let mut h = Vec::with_capacity(FILE_HEADER);
        h.extend_from_slice(&MAGIC.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes());
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes()); // GMT offset
        h.extend_from_slice(&0u32.to_ne_bytes()); // timestamp accuracy
        h.extend_from_slice(&(SNAPLEN as u32).to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        c.out.write_all(&h)?;
        c.out.flush()?;
        Ok(c)
    }

    /// Records one frame (cut to [`SNAPLEN`]); a frame that would pass the bound is counted
    /// in `missed` instead, and the first such is logged.
    pub fn record(&mut self, frame: &[u8]) {
        self.write_record(&frame[..frame.len().min(SNAPLEN)], frame.len());
    }

    /// One record: `kept` (at most [`SNAPLEN`] bytes) of a frame `orig` bytes long.
    fn write_record(&mut self, kept: &[u8], orig: usize) {
        let need = (RECORD_HEADER + kept.len()) as u64;
        if need > self.left {
            if self.missed == 0 {
                warn!(
                    "capture full after {} frames: the frames after it are not recorded",
                    self.frames
                );
            }
            self.missed += 1;
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&(now.as_secs() as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&now.subsec_micros().to_ne_bytes());
        h[8..12].copy_from_slice(&(kept.len() as u32).to_ne_bytes());
        h[12..16].copy_from_slice(&(orig as u32).to_ne_bytes());
        let r = self
            .out
            .write_all(&h)
            .and_then(|_| self.out.write_all(kept));
        match r {
            Ok(()) => {
                self.left -= need;
                self.frames += 1;
            }
            Err(e) => {
                // A failing disk stops the capture, never the link.
                warn!("capture: {e}; no more frames are recorded");
                self.left = 0;
                self.missed += 1;
            }
        }
    }

    /// Records `frame` wherever it lies (a copy of what is there now: a frame in shared
    /// memory may be changed by the peer at any time).
    pub fn record_frame(&mut self, frame: &Frame<'_>) {
        let kept = frame.len().min(SNAPLEN);
        self.buf.resize(kept, 0);
        let mut buf = std::mem::take(&mut self.buf);
        if frame.copy_to(&mut buf) == kept {
            self.write_record(&buf, frame.len());
        }
        self.buf = buf;
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            warn!("capture: {e}");
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.flush();
        info!(
            "capture: {} frames recorded{}",
            self.frames,
            if self.missed > 0 {
                format!(", {} not (the file was full)", self.missed)
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("ivnet-pcap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn header_records_and_bound() {
        let p = tmp("a.pcap");
        {
            let mut c = Capture::create(&p, 24 + 2 * (16 + 60)).unwrap();
            c.record(&[0xab; 60]);
            c.record(&[0xcd; 60]);
            c.record(&[0xef; 60]); // past the bound
            assert_eq!((c.frames, c.missed), (2, 1));
        }
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 24 + 2 * (16 + 60));
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), MAGIC);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[32..36].try_into().unwrap()), 60);
        assert_eq!(&b[40..100], &[0xab; 60][..]);
        assert_eq!(&b[116..176], &[0xcd; 60][..]);
        // Never overwrites a file.
        let e = Capture::create(&p, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_file(&p).unwrap();
    }
}
