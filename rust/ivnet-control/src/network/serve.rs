//! The supervisor's main loop: the control socket ([`crate::control`]) and the metrics
//! endpoint, served from a snapshot of the status on threads of their own.

use super::*;

impl Supervisor {
    /// Runs until `down` (or SIGTERM via `term`): serves the control socket, and metrics from
    /// a snapshot of the status on a thread of their own (a slow HTTP client cannot stall
    /// the supervisor).
    pub fn serve(&mut self, control: UnixListener, metrics: TcpListener, term: &AtomicBool) {
        control.set_nonblocking(true).expect("nonblocking");
        let snapshot = Arc::new(Mutex::new(self.status()));
        let (snap, stop) = (snapshot.clone(), self.stop.clone());
        let metrics_thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve_metrics(metrics, snap, &stop));
        // Built, and every thread started (each dropped all of its capabilities, which needs
        // CAP_SETPCAP): from here on the main thread keeps only what running and tearing down
        // the network needs.
        if nix::unistd::geteuid().is_root() {
            match ivnet_dataplane::privs::keep_only(
                &ivnet_dataplane::privs::SUPERVISOR_CAPS,
                &ivnet_dataplane::privs::SUPERVISOR_EFFECTIVE,
            ) {
                Ok(()) => info!(
                    "privileges dropped: capabilities {:#x} permitted, {:#x} effective, no new \
                     privileges; cells run as {}",
                    ivnet_dataplane::privs::mask(&ivnet_dataplane::privs::SUPERVISOR_CAPS),
                    ivnet_dataplane::privs::mask(&ivnet_dataplane::privs::SUPERVISOR_EFFECTIVE),
                    self.qemu_user.as_deref().unwrap_or("?")
                ),
                Err(e) => error!("could not drop privileges ({e}): the supervisor keeps full root"),
            }
        }
        let mut last_snapshot = Instant::now();
        loop {
            if term.load(Ordering::Relaxed) {
                info!("terminated: tearing down");
                break;
            }
            self.poll();
            if let Ok((s, _)) = control.accept() {
                if self.handle_control(s) {
                    break;
                }
            }
            if last_snapshot.elapsed() >= Duration::from_millis(200) {
                *snapshot.lock().unwrap() = self.status();
                last_snapshot = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.teardown();
        let _ = fs::remove_file(self.paths.control());
        if let Ok(t) = metrics_thread {
            let _ = t.join();
        }
    }

    /// One control request; true when it asked to go down. The socket is root's (the state
    /// directory is 0700); a client that does not send its request within
    /// [`control::REQUEST_TIME`] is dropped.
    pub(super) fn handle_control(&mut self, s: UnixStream) -> bool {
        let _ = s.set_nonblocking(false);
        let (reply, down) = match control::read_request(&s) {
            Ok((Request::Status, _)) => (Reply::Status(Box::new(self.status())), false),
            Ok((Request::Reconcile, _)) => (
                Reply::Reconciled {
                    restarted: self.reconcile(),
                },
                false,
            ),
            Ok((Request::Down, _)) => {
                info!("down requested");
                self.teardown();
                let _ = fs::remove_file(self.paths.control());
                (Reply::Down, true)
            }
            Ok((Request::Capture(req), fd)) => (self.start_capture(&req, fd).into(), false),
            Ok((Request::EndCapture { link }, _)) => (self.end_capture(&link).into(), false),
            Err(e) => (
                Reply::Error {
                    message: e.to_string(),
                },
                false,
            ),
        };
        let _ = control::write_reply(&s, &reply);
        down
    }
}

/// Clients of the metrics endpoint served at once; more are turned away.
pub(super) const METRICS_CLIENTS: usize = 8;

/// One of the [`METRICS_CLIENTS`] places, given back when dropped.
pub(super) struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers metrics requests from `snapshot` until `stop`, each client on a thread of its own
/// (at most [`METRICS_CLIENTS`] at once), so that a client that is slow to send its request
/// cannot keep the others waiting.
pub(super) fn serve_metrics(
    listener: TcpListener,
    snapshot: Arc<Mutex<Status>>,
    stop: &AtomicBool,
) {
    // HTTP from anyone who can reach the address: handled with no capabilities (see privs),
    // or not at all.
    if let Err(e) = ivnet_dataplane::privs::drop_all_in_thread() {
        error!("metrics: {e}: not serving metrics");
        return;
    }
    listener.set_nonblocking(true).expect("nonblocking");
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= METRICS_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed at once
                }
                let slot = Slot(busy.clone());
                let snap = snapshot.clone();
                // The slot is given back when the thread ends, however it ends (or when it
                // could not be started).
                let _ = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || {
                        let _slot = slot;
                        let text = crate::metrics::render(&snap.lock().unwrap());
                        let _ = crate::metrics::respond(s, &text);
                    });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
