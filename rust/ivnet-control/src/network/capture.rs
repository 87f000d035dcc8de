//! `ivnet capture` on a running network: the frames of one link in a new pcap file, for a
//! while.
//!
//! A link to the host is captured where its host peer moves the frames (every frame, both
//! ways: the peer's TAP is wrapped in a [`Tee`]). A cell<->cell link does not pass through the
//! host: a thread of its own samples the link's memory every millisecond, read-only, and
//! records the frames each end published since the last look (see
//! [`LinkObserver::sample_with`](ivnet_dataplane::observe::LinkObserver::sample_with) for what
//! a sampled view can miss).
//!
//! The file is the client's: `ivnet capture` creates it (new, owner-only, as whoever runs it)
//! and sends it with the request as a descriptor. The supervisor only checks that it is an
//! empty regular file open for writing, and never opens a path.

use super::*;

/// How often a cell<->cell link's memory is looked at while it is captured.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// A capture that runs.
pub(super) struct RunningCapture {
    /// The link's index.
    pub(super) link: usize,
    /// The file it writes.
    pub(super) file: PathBuf,
    /// When it ends.
    until: Instant,
    how: How,
}

enum How {
    /// Attached to the host peer's port.
    Peer(Arc<CaptureSlot>),
    /// A sampling thread, which ends by itself at `until`, when `stop` is set, or when the
    /// network stops.
    Sampler(JoinHandle<()>, Arc<AtomicBool>),
}

/// The capture file a client sent: an empty regular file open for writing.
fn capture_file(fd: Option<OwnedFd>, max_bytes: u64) -> Result<Capture, String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd =
        fd.ok_or("a capture request carries its file as a descriptor (use `ivnet capture`)")?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| format!("capture file: {e}"))?;
    use nix::sys::stat::SFlag;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG || st.st_size != 0 {
        return Err("the capture file must be a new, empty regular file".into());
    }
    let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| format!("capture file: {e}"))?;
    let acc = OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE;
    if acc != OFlag::O_WRONLY && acc != OFlag::O_RDWR {
        return Err("the capture file is not open for writing".into());
    }
    Capture::from_file(fs::File::from(fd), max_bytes).map_err(|e| format!("capture file: {e}"))
}

impl Supervisor {
    /// Starts the capture `req` asks for.
    pub(super) fn start_capture(
        &mut self,
        req: &CaptureRequest,
        fd: Option<OwnedFd>,
    ) -> Result<Reply, String> {
        req.check()?;
        let i = (0..self.topo.links.len())
            .find(|&i| self.link_name(i) == req.link)
            .ok_or_else(|| {
                let names: Vec<String> = (0..self.topo.links.len())
                    .map(|i| self.link_name(i))
                    .collect();
                format!(
                    "no link {:?} in network {}: its links are {}",
                    req.link,
                    self.paths.name,
                    names.join(", ")
                )
            })?;
        if self.captures.iter().any(|c| c.link == i) {
            return Err(format!("link {} is being captured already", req.link));
        }
        let until = Instant::now() + Duration::from_secs(req.seconds);
        let sampled = !self.peers.contains_key(&i);
        let capture = capture_file(fd, req.max_bytes)?;
        let how = if let Some(p) = self.peers.get(&i) {
            p.capture.attach(capture);
            How::Peer(p.capture.clone())
        } else {
            let obs = self
                .capture_observers
                .get(&i)
                .ok_or_else(|| format!("link {} has no memory the host can read", req.link))?
                .clone();
            let mut capture = capture;
            let (stop, end) = (self.stop.clone(), Arc::new(AtomicBool::new(false)));
            let end2 = end.clone();
            let t = std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || {
                    // It reads shared memory and writes an open file: no capabilities needed.
                    if let Err(e) = ivnet_dataplane::privs::drop_all_in_thread() {
                        error!("capture: {e}: not capturing");
                        return;
                    }
                    let Ok(mut o) = obs.lock() else {
                        return;
                    };
                    // From now on: what was published before is not this capture's.
                    o.sample();
                    while Instant::now() < until
                        && !stop.load(Ordering::Relaxed)
                        && !end2.load(Ordering::Relaxed)
                    {
                        std::thread::sleep(SAMPLE_EVERY);
                        o.sample_with(|_, f| capture.record_frame(f));
                    }
                })
                .map_err(|e| format!("capture thread: {e}"))?;
            How::Sampler(t, end)
        };
        info!(
            "capturing link {} into {} for {} s",
            req.link,
            req.file.display(),
            req.seconds
        );
        self.captures.push(RunningCapture {
            link: i,
            file: req.file.clone(),
            until,
            how,
        });
        Ok(Reply::Capturing {
            file: req.file.clone(),
            sampled,
        })
    }

    /// Ends the captures whose time is up, or all of them; each file is closed when it ends.
    pub(super) fn end_captures(&mut self, all: bool) {
        let now = Instant::now();
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.captures)
            .into_iter()
            .partition(|c| {
                all || now >= c.until || matches!(&c.how, How::Sampler(t, _) if t.is_finished())
            });
        self.captures = running;
        for c in done {
            Self::end(c);
        }
    }

    /// Ends the capture of link `name` now (`ivnet capture` interrupted).
    pub(super) fn end_capture(&mut self, name: &str) -> Result<Reply, String> {
        let at = self
            .captures
            .iter()
            .position(|c| self.link_name(c.link) == name)
            .ok_or_else(|| format!("no capture of link {name:?} runs"))?;
        let c = self.captures.remove(at);
        let file = c.file.clone();
        Self::end(c);
        Ok(Reply::CaptureEnded { file })
    }

    /// Ends one capture; its file is complete when this returns.
    fn end(c: RunningCapture) {
        match c.how {
            // Dropping the capture writes out and closes the file.
            How::Peer(slot) => drop(slot.detach()),
            // It ends by itself at `until`, at once when told to or when the network stops.
            How::Sampler(t, end) => {
                end.store(true, Ordering::Relaxed);
                let _ = t.join();
            }
        }
        info!("capture into {} ended", c.file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ivnet-capture-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&p);
        p
    }

    #[test]
    fn only_a_new_empty_regular_file_open_for_writing_is_taken() {
        let ok = tmp("ok.pcap");
        let f = Capture::create_file(&ok).unwrap();
        assert!(capture_file(Some(f.into()), 1 << 20).is_ok());
        assert_eq!(fs::metadata(&ok).unwrap().len(), 24, "the pcap header");

        let full = tmp("full.pcap");
        let mut f = Capture::create_file(&full).unwrap();
        f.write_all(b"not empty").unwrap();
        assert!(capture_file(Some(f.into()), 1 << 20)
            .unwrap_err()
            .contains("empty regular"));
        let ro = fs::File::open(&ok).unwrap();
        // Not empty either, but open read-only: refused before anything is written.
        assert!(capture_file(Some(ro.into()), 1 << 20).is_err());
        let empty_ro = tmp("ro.pcap");
        drop(Capture::create_file(&empty_ro).unwrap());
        let ro = fs::File::open(&empty_ro).unwrap();
        assert!(capture_file(Some(ro.into()), 1 << 20)
            .unwrap_err()
            .contains("not open for writing"));
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(capture_file(Some(a.into()), 1 << 20)
            .unwrap_err()
            .contains("regular"));
        assert!(capture_file(None, 1 << 20)
            .unwrap_err()
            .contains("descriptor"));
        for p in [ok, full, empty_ro] {
            fs::remove_file(p).unwrap();
        }
    }
}
