//! The two peers of the microbenchmark: a sender and a receiver thread on one link, each with
//! its doorbell, and the frames' pattern that the receiver verifies.

use super::*;

/// One direction's doorbell.
pub(super) struct Doorbell {
    efd: Option<EventFd>,
    count: AtomicU64,
}

impl Doorbell {
    pub(super) fn new(mode: WaitMode) -> io::Result<Doorbell> {
        let efd = match mode {
            WaitMode::Eventfd => Some(EventFd::from_flags(
                EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
            )?),
            WaitMode::Spin => None,
        };
        Ok(Doorbell {
            efd,
            count: AtomicU64::new(0),
        })
    }

    pub(super) fn ring(&self) {
        self.count.fetch_add(1, Ordering::Release);
        if let Some(e) = &self.efd {
            let _ = e.write(1);
        }
    }

    /// Waits for a ring after the one last seen (`seen`, for spinning) and clears it. Errors
    /// when the run is stopped, or after [`STALL`] without a ring.
    pub(super) fn wait(&self, seen: &mut u64, ctl: &Shared<'_>, who: &str) -> Result<(), String> {
        let start = Instant::now();
        let stalled = || {
            format!(
                "{who}: no doorbell for {} s (lost notification?)",
                STALL.as_secs()
            )
        };
        match &self.efd {
            Some(e) => loop {
                ctl.check()?;
                let mut fds = [PollFd::new(e.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(100u16)) {
                    Ok(n) if n > 0 => {
                        // Clears the count; EAGAIN cannot happen with one reader after POLLIN.
                        let _ = e.read();
                        return Ok(());
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(err) => return Err(format!("{who}: poll: {err}")),
                }
                if start.elapsed() > STALL {
                    return Err(stalled());
                }
            },
            None => {
                let mut spins = 0u32;
                loop {
                    let c = self.count.load(Ordering::Acquire);
                    if c != *seen {
                        *seen = c;
                        return Ok(());
                    }
                    spins = spins.wrapping_add(1);
                    if spins % 1024 == 0 {
                        ctl.check()?;
                        if start.elapsed() > STALL {
                            return Err(stalled());
                        }
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
}

/// What the two peer threads share besides the region.
pub(super) struct Shared<'a> {
    pub(super) to_receiver: Doorbell,
    pub(super) to_sender: Doorbell,
    pub(super) abort: AtomicBool,
    pub(super) stop: &'a AtomicBool,
    pub(super) ready: AtomicU32,
    pub(super) done: AtomicBool,
    pub(super) total: AtomicU64,
}

impl Shared<'_> {
    pub(super) fn check(&self) -> Result<(), String> {
        if self.stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if self.abort.load(Ordering::Relaxed) {
            return Err(ABORTED.into());
        }
        Ok(())
    }

    /// This peer failed: stop the other one, wherever it waits.
    pub(super) fn fail(&self) {
        self.abort.store(true, Ordering::Relaxed);
        self.to_receiver.ring();
        self.to_sender.ring();
    }

    /// Passes a peer's result on, stopping the other peer when it is an error.
    pub(super) fn guard<T>(&self, r: Result<T, String>) -> Result<T, String> {
        if r.is_err() {
            self.fail();
        }
        r
    }

    /// Both peers are up: start together.
    pub(super) fn start_line(&self) -> Result<(), String> {
        self.ready.fetch_add(1, Ordering::AcqRel);
        let t = Instant::now();
        while self.ready.load(Ordering::Acquire) < 2 {
            self.check()?;
            if t.elapsed() > STALL {
                return Err("the other peer did not come up".into());
            }
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// The frame pattern: bodies are windows of it.
pub(super) fn pattern(max_frame: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..max_frame + BODY_SHIFTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The body (everything after the sequence number) of frame `seq` of `len` bytes.
pub(super) fn body(pattern: &[u8], seq: u64, len: usize) -> &[u8] {
    let shift = (seq % BODY_SHIFTS as u64) as usize;
    &pattern[shift..shift + len - SEQ_BYTES]
}

/// Checks that a received frame is frame `seq` of `want` bytes, byte for byte.
pub(super) fn verify(
    pattern: &[u8],
    frame: &[u8],
    len: usize,
    want: usize,
    seq: u64,
) -> Result<(), String> {
    if len != want {
        return Err(format!(
            "frame {seq}: received {len} bytes, sent {want} (corrupted descriptor)"
        ));
    }
    let mut b = [0u8; SEQ_BYTES];
    b.copy_from_slice(&frame[..SEQ_BYTES]);
    let got = u64::from_le_bytes(b);
    if got != seq {
        return Err(format!(
            "expected frame {seq}, received frame {got} (lost, duplicated or reordered)"
        ));
    }
    let expected = body(pattern, seq, len);
    let received = &frame[SEQ_BYTES..len];
    if received != expected {
        let at = received
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "frame {seq}: byte {} is {:#04x}, sent {:#04x} (corrupted frame)",
            SEQ_BYTES + at,
            received[at],
            expected[at]
        ));
    }
    Ok(())
}

pub(super) fn protocol(who: &str) -> impl Fn(ProtocolError) -> String + '_ {
    move |e| format!("{who}: protocol error: {e}")
}

/// One peer: the link endpoint over its slot of the v1 region.
pub(super) struct Peer<'m> {
    ep: Endpoint<'m, V1Words<'m>, Vec<u32>>,
}

impl<'m> Peer<'m> {
    pub(super) fn new(map: &'m Mapping, slot: usize) -> Result<Peer<'m>, String> {
        let v1 = V1Region::new(map.region()).map_err(|e| e.to_string())?;
        let section = |s| v1.section(s).map_err(|e| format!("section {s}: {e:?}"));
        let (own, peer) = (section(slot)?, section(1 - slot)?);
        let slots = vec![0u32; Queues::<Vec<u32>>::slots_needed(own.len())];
        let ep = Endpoint::new(V1Words { ctl: v1, slot }, own, peer, slots)
            .map_err(|e| e.to_string())?;
        Ok(Peer { ep })
    }

    /// Runs the link state machine until this side is RUN (resetting the queue on the way;
    /// both peers poll, so the doorbells the effects ask for are not needed).
    pub(super) fn link_up(&mut self, sh: &Shared<'_>, who: &str) -> Result<(), String> {
        self.ep.reset();
        let t = Instant::now();
        loop {
            if let Some(e) = self.ep.update().error {
                return Err(protocol(who)(e));
            }
            if self.ep.running() {
                return Ok(());
            }
            sh.check()?;
            if t.elapsed() > STALL {
                return Err(format!("{who}: link not up after {} s", STALL.as_secs()));
            }
            std::thread::yield_now();
        }
    }
}

#[derive(Default)]
pub(super) struct SenderStats {
    pub(super) sent: u64,
    pub(super) rings: u64,
    pub(super) full: u64,
    pub(super) waits: u64,
}

pub(super) fn sender(
    map: &Mapping,
    sh: &Shared<'_>,
    pattern: &[u8],
    size: usize,
    dur: Duration,
) -> Result<SenderStats, String> {
    const WHO: &str = "sender";
    let mut p = Peer::new(map, 0)?;
    p.link_up(sh, WHO)?;
    sh.start_line()?;
    let end = Instant::now() + dur;
    let tx = &mut p.ep.queues.tx;
    let mut st = SenderStats::default();
    let mut seen = 0u64;
    let mut seq = 0u64;
    let publish = |tx: &mut ivnet_core::queue::TxQueue<Vec<u32>>,
                   st: &mut SenderStats|
     -> Result<(), String> {
        if tx.publish().map_err(protocol(WHO))? {
            sh.to_receiver.ring();
            st.rings += 1;
        }
        Ok(())
    };
    loop {
        match tx.reserve(size) {
            Some(slot) => {
                let r = *tx.region();
                r.write_bytes(slot.offset(), &seq.to_le_bytes())
                    .and_then(|()| {
                        r.write_bytes(slot.offset() + SEQ_BYTES, body(pattern, seq, size))
                    })
                    .map_err(|e| protocol(WHO)(e.into()))?;
                tx.push(slot).map_err(protocol(WHO))?;
                seq += 1;
                if seq % BATCH == 0 {
                    publish(tx, &mut st)?;
                    tx.reclaim().map_err(protocol(WHO))?;
                    if Instant::now() >= end {
                        break;
                    }
                    sh.check()?;
                }
            }
            None => {
                // No room: make what is pushed visible, then wait for completions the way a
                // driver does: ask for a doorbell, look again, sleep only if still full.
                st.full += 1;
                publish(tx, &mut st)?;
                if tx.reclaim().map_err(protocol(WHO))? > 0 {
                    continue;
                }
                tx.request_completion_notify().map_err(protocol(WHO))?;
                if tx.reclaim().map_err(protocol(WHO))? > 0 {
                    continue;
                }
                if Instant::now() >= end {
                    break;
                }
                st.waits += 1;
                sh.to_sender.wait(&mut seen, sh, WHO)?;
                tx.reclaim().map_err(protocol(WHO))?;
            }
        }
    }
    publish(tx, &mut st)?;
    st.sent = seq;
    sh.total.store(seq, Ordering::Release);
    sh.done.store(true, Ordering::Release);
    // "Look again": the receiver may be asleep with nothing left to wake it.
    sh.to_receiver.ring();
    Ok(st)
}

#[derive(Default)]
pub(super) struct ReceiverStats {
    pub(super) received: u64,
    pub(super) secs: f64,
    pub(super) rings: u64,
    pub(super) waits: u64,
}

pub(super) fn receiver(
    map: &Mapping,
    sh: &Shared<'_>,
    pattern: &[u8],
    size: usize,
) -> Result<ReceiverStats, String> {
    const WHO: &str = "receiver";
    let mut p = Peer::new(map, 1)?;
    p.link_up(sh, WHO)?;
    sh.start_line()?;
    let start = Instant::now();
    let rx = &mut p.ep.queues.rx;
    let mut st = ReceiverStats::default();
    let mut buf = vec![0u8; size];
    let mut seen = 0u64;
    let mut next = 0u64;
    loop {
        let mut n = 0;
        while n < BATCH {
            match rx.recv(&mut buf).map_err(protocol(WHO))? {
                Some(len) => {
                    verify(pattern, &buf, len, size, next)?;
                    next += 1;
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 && rx.publish().map_err(protocol(WHO))? {
            sh.to_sender.ring();
            st.rings += 1;
        }
        if n == BATCH {
            continue;
        }
        if sh.done.load(Ordering::Acquire) {
            // The sender published its last frame before saying so.
            let total = sh.total.load(Ordering::Acquire);
            if rx.poll().map_err(protocol(WHO))?.is_some() {
                continue;
            }
            if next != total {
                return Err(format!(
                    "{WHO}: the sender sent {total} frames, {next} arrived ({} lost)",
                    total.saturating_sub(next)
                ));
            }
            break;
        }
        if rx.enable_notify().map_err(protocol(WHO))? {
            continue;
        }
        st.waits += 1;
        sh.to_receiver.wait(&mut seen, sh, WHO)?;
        sh.check()?;
    }
    st.secs = start.elapsed().as_secs_f64();
    st.received = next;
    Ok(st)
}

pub(super) fn join<T>(
    h: std::thread::ScopedJoinHandle<'_, Result<T, String>>,
    who: &str,
) -> Result<T, String> {
    h.join()
        .unwrap_or_else(|_| Err(format!("the {who} thread panicked")))
}
