//! `ivnet capture` on a running network: the frames of one link in a new pcap file, for a
//! while.
//!
//! A link to the host is captured where its host peer moves the frames (every frame, both
//! ways: the peer's TAP is wrapped in a [`Tee`]). A cell<->cell link does not pass through the
//! host: a thread of its own samples the link's memory every millisecond, read-only, and
//! records the frames each end published since the last look (see
//! [`LinkObserver::sample_with`](ivnet_dataplane::observe::LinkObserver::sample_with) for what
//! a sampled view can miss).

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
    Peer(CaptureSlot),
    /// A sampling thread, which ends by itself at `until` (or when the network stops).
    Sampler(JoinHandle<()>),
}

impl Supervisor {
    /// Starts the capture `req` asks for.
    pub(super) fn start_capture(&mut self, req: &CaptureRequest) -> Result<Reply, String> {
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
        let how = if let Some(p) = self.peers.get(&i) {
            let capture = Capture::create(&req.file, req.max_bytes)
                .map_err(|e| format!("{}: {e}", req.file.display()))?;
            *p.capture
                .lock()
                .map_err(|_| "the host peer's capture slot is poisoned")? = Some(capture);
            How::Peer(p.capture.clone())
        } else {
            let obs = self
                .capture_observers
                .get(&i)
                .ok_or_else(|| format!("link {} has no memory the host can read", req.link))?
                .clone();
            let mut capture = Capture::create(&req.file, req.max_bytes)
                .map_err(|e| format!("{}: {e}", req.file.display()))?;
            let stop = self.stop.clone();
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
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(SAMPLE_EVERY);
                        o.sample_with(|_, f| capture.record_frame(f));
                    }
                })
                .map_err(|e| format!("capture thread: {e}"))?;
            How::Sampler(t)
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
                all || now >= c.until || matches!(&c.how, How::Sampler(t) if t.is_finished())
            });
        self.captures = running;
        for c in done {
            match c.how {
                // Dropping the capture writes out and closes the file.
                How::Peer(slot) => drop(slot.lock().map(|mut g| g.take())),
                // It ends by itself at `until`, or at once when the network stops.
                How::Sampler(t) => {
                    let _ = t.join();
                }
            }
            info!("capture into {} ended", c.file.display());
        }
    }

    /// The name of link `i` as the status shows it (`c1-host`).
    pub(super) fn link_name(&self, i: usize) -> String {
        let e = self.topo.links[i].ends.map(|e| self.end_name(e));
        format!("{}-{}", e[0], e[1])
    }
}
