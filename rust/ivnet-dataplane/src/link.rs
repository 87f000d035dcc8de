//! One end of an ivshmem-net link on the host, over the flat v1 region an ivnet server
//! manages (the slot lookup in its owner table) or over ivshmem 2.0 memory (the id is the
//! slot; the host peer writes its state-table entry as a device would): the link state machine
//! and the two queues.
//!
//! A [`Link`] knows nothing about where frames come from or go to; [`crate::bridge`] connects
//! it to a TAP device, and tests connect two of them to each other.

use std::io;

use ivnet_core::endpoint::{Effects, Endpoint, StateWords, V1Words};
use ivnet_core::queue::{Queues, RxFrame, MIN_FRAME};
use ivnet_core::ratelimit::RateLimit;
use ivnet_core::shm::Region;
use ivnet_core::state::LinkState;
use ivnet_core::v1::{V1Region, VECTOR_DATA, VECTOR_STATE};
use ivnet_core::v2::{V2Region, PROTOCOL_NET};
use ivnet_core::ProtocolError;
use log::info;

use crate::client::{Client, ServerEvent};

/// Counters of one link end. Their names are the keys of a link's `counters` in `ivnet status
/// --json` (serialised as they are) and in the host peer's log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Frames sent to the peer.
    pub tx_frames: u64,
    /// Frames received from the peer.
    pub rx_frames: u64,
    /// Doorbells we rang.
    pub doorbells: u64,
    /// Times the link was reset because the peer broke the protocol.
    pub protocol_resets: u64,
    /// Times the carrier went on.
    pub carrier_ups: u64,
    /// Frames not sent because they were shorter than an Ethernet header (the peer would
    /// take one for a protocol error and reset the link).
    pub runts_dropped: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Times a frame found the transmit ring full (the sender then waits for completions).
    pub ring_full: u64,
    /// Frames received from the peer that could not be delivered (e.g. the TAP refused them).
    pub rx_dropped: u64,
    /// Link state changes (RESET/INIT/READY/RUN).
    pub state_changes: u64,
    /// Frames from the peer longer than the MTU allows, dropped.
    pub rx_oversize: u64,
}

/// Milliseconds of a monotonic clock (for rate limits and liveness).
pub fn millis() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Where the state words live: the v1 control page (by slot) or the v2 state table (by id),
/// which the host peer writes by hand (there is no device), ringing the peer's vector 0 after
/// every change on both.
#[derive(Clone, Copy)]
enum Layout {
    V1(V1Words<'static>),
    V2(V2Region<'static>),
}

impl StateWords for Layout {
    fn peer_state(&self) -> Result<LinkState, ProtocolError> {
        match self {
            Layout::V1(w) => w.peer_state(),
            Layout::V2(w) => StateWords::peer_state(w),
        }
    }

    fn set_state(&self, s: LinkState) -> Result<(), ProtocolError> {
        match self {
            Layout::V1(w) => w.set_state(s),
            Layout::V2(w) => StateWords::set_state(w, s),
        }
    }

    fn peer_id(&self) -> Option<u32> {
        match self {
            Layout::V1(w) => w.peer_id(),
            Layout::V2(w) => StateWords::peer_id(w),
        }
    }

    fn rings_on_state_change(&self) -> bool {
        true
    }
}

/// One end of a link.
pub struct Link {
    /// The link's views of the client's mapping. They are `'static` only inside this struct:
    /// the Link owns the client, so the memory stays mapped while they exist, and no method
    /// hands a region out for longer than a borrow of the Link.
    ep: Endpoint<'static, Layout, Vec<u32>>,
    client: Client,
    slot: usize,
    carrier: bool,
    /// Vectors rung while the peer's eventfds were not known yet (bit per vector): the peer
    /// announced itself in the owner table before the server's message with its eventfds
    /// reached us. Delivered when they arrive.
    pending_rings: u32,
    /// Protocol errors are logged at most once a second (a peer can provoke them).
    errors: RateLimit,
    /// Counters.
    pub stats: Stats,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Link {
    /// Takes over a connected client: finds our slot in the owner table (v1; on v2 the id is
    /// the slot) and lays the queues over our section and the other slot's.
    pub fn new(client: Client) -> io::Result<Link> {
        // SAFETY: the region lives in the mapping of `client`, which the Link owns (moving the
        // client does not move the memory); the Link uses it only through `layout` and
        // `ep`, which is private, and lends it out only as `&Region<'_>` borrowed from
        // the Link.
        let region = unsafe { client.mapping().region_unbounded() };
        if let Some(info) = client.v2() {
            if info.protocol != PROTOCOL_NET {
                return Err(invalid(format!(
                    "the ivshmem 2.0 link carries protocol {:#06x}, not ivshmem-net ({PROTOCOL_NET:#06x})",
                    info.protocol
                )));
            }
            let out = usize::try_from(info.output_section_size)
                .map_err(|_| invalid("output section size out of range".into()))?;
            let v2 = V2Region::new(region, client.id(), info.max_peers, out)
                .map_err(|e| invalid(format!("shared memory from the server: {e}")))?;
            let own = v2.section(v2.id()).map_err(|e| invalid(format!("{e:?}")))?;
            let peer = v2
                .section(v2.peer())
                .map_err(|e| invalid(format!("{e:?}")))?;
            if info.vectors < 2 {
                return Err(invalid(format!(
                    "the ivshmem 2.0 link has {} vector(s): the host peer needs 2 (state, data)",
                    info.vectors
                )));
            }
            return Link::finish(client, Layout::V2(v2), v2.id() as usize, own, peer);
        }
        let v1 = V1Region::new(region)
            .map_err(|e| invalid(format!("shared memory from the server: {e}")))?;
        // A peer may have scribbled over the owner table; an ivnet server puts it back within
        // a round (200 ms): look again for a second before giving up (and reconnecting, which
        // would use up an id).
        let t = std::time::Instant::now();
        let slot = loop {
            match v1.slot_of(client.id()) {
                Ok(Some(s)) => break s,
                Ok(None) if t.elapsed() < std::time::Duration::from_secs(1) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Ok(None) => {
                    return Err(invalid(format!(
                        "peer id {} owns no slot in the control page: is the server an ivnet \
                         server?",
                        client.id()
                    )))
                }
                Err(e) => return Err(invalid(format!("{e:?}"))),
            }
        };
        let own = v1.section(slot).map_err(|e| invalid(format!("{e:?}")))?;
        let peer = v1
            .section(1 - slot)
            .map_err(|e| invalid(format!("{e:?}")))?;
        Link::finish(
            client,
            Layout::V1(V1Words { ctl: v1, slot }),
            slot,
            own,
            peer,
        )
    }

    fn finish(
        client: Client,
        layout: Layout,
        slot: usize,
        own: Region<'static>,
        peer: Region<'static>,
    ) -> io::Result<Link> {
        let slots = vec![0u32; Queues::<Vec<u32>>::slots_needed(own.len())];
        let ep = Endpoint::new(layout, own, peer, slots).map_err(|e| invalid(e.to_string()))?;
        let mut link = Link {
            client,
            ep,
            slot,
            carrier: false,
            pending_rings: 0,
            errors: RateLimit::new(1000),
            stats: Stats::default(),
        };
        // RESET published; nobody to ring yet (the peer rings when it comes).
        link.ep.reset();
        info!(
            "link: id {} in slot {}{}",
            link.client.id(),
            slot,
            if link.client.v2().is_some() {
                " (ivshmem 2.0)"
            } else {
                ""
            }
        );
        Ok(link)
    }

    /// The ivshmem client (for its fds).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Our slot (0 or 1).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Our link state.
    pub fn state(&self) -> LinkState {
        self.ep.state()
    }

    /// True while frames can flow (both ends READY or RUN and we are RUN).
    pub fn running(&self) -> bool {
        self.ep.running()
    }

    /// Carrier as the state machine last set it.
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// Rings the peer's vector `v`, if there is a peer.
    pub fn ring(&mut self, v: u16) {
        if let Some(p) = self.ep.peer_id() {
            if self.client.ring(p, v) {
                self.stats.doorbells += 1;
            } else {
                self.pending_rings |= 1 << v;
            }
        }
    }

    fn deliver_pending_rings(&mut self) {
        let pending = std::mem::take(&mut self.pending_rings);
        for v in 0..32u16 {
            if pending & (1 << v) != 0 {
                self.ring(v);
            }
        }
    }

    /// Brings the interface up or down (down leaves the link: the peer sees RESET).
    pub fn set_up(&mut self, up: bool) {
        self.ep.set_up(up);
        self.update_state();
    }

    /// Re-reads the peer's state and runs the state machine until it settles.
    pub fn update_state(&mut self) {
        let before = self.ep.state();
        let fx = self.ep.update();
        self.apply(fx);
        if before != self.ep.state() {
            info!("link: {:?} -> {:?}", before, self.ep.state());
        }
        if self.running() {
            // Ask for a doorbell on the peer's next frame.
            let _ = self.ep.queues.rx.enable_notify();
        }
    }

    /// Carries out what the endpoint asked for: logs, counters, carrier, doorbell.
    fn apply(&mut self, fx: Effects) {
        if let Some((old, new)) = fx.replaced {
            // A peer replaced faster than we looked (a cell restarted): not an error.
            self.log_peer(
                log::Level::Warn,
                format_args!("the peer slot's owner changed from {old:?} to {new:?}"),
            );
        }
        if let Some(e) = fx.error {
            self.log_peer(log::Level::Error, format_args!("peer protocol error: {e}"));
            self.stats.protocol_resets += 1;
        }
        self.stats.state_changes += u64::from(fx.transitions);
        if let Some(c) = fx.carrier {
            self.set_carrier(c);
        }
        if fx.ring_state {
            self.ring(VECTOR_STATE);
        }
    }

    /// Logs what a peer caused, at most once a second.
    fn log_peer(&mut self, level: log::Level, what: std::fmt::Arguments<'_>) {
        if let Some(n) = self.errors.check(millis()) {
            let more = if n > 0 {
                format!(" ({n} more since the last one logged)")
            } else {
                String::new()
            };
            log::log!(level, "link: {what}, resetting the link{more}");
        }
    }

    fn set_carrier(&mut self, on: bool) {
        if on != self.carrier {
            self.carrier = on;
            if on {
                self.stats.carrier_ups += 1;
            }
            info!("link: carrier {}", if on { "on" } else { "off" });
        }
    }

    /// Writes our state word again from the state machine's own view, and rings the peer.
    ///
    /// An honest end's word always equals its state; this is for an end whose word was
    /// overwritten behind its back (the hostile peer of the tests, which lies about its state
    /// and then behaves). Without it such an end can sit in RESET, waiting for the other end
    /// to leave RUN, while its word still says RUN to an other end that is content to stay.
    pub fn republish_state(&mut self) {
        let _ = self.ep.words().set_state(self.ep.state());
        self.ring(VECTOR_STATE);
        self.update_state();
    }

    /// The peer broke the protocol: log it, drop the carrier and start over from RESET.
    pub fn protocol_reset(&mut self, e: ProtocolError) {
        let fx = Effects {
            error: Some(e),
            ..self.ep.reset()
        };
        self.apply(fx);
    }

    /// Handles a message from the server (peer joined or left). Errors when the server went
    /// away.
    pub fn handle_server_message(&mut self) -> io::Result<()> {
        match self.client.handle_message()? {
            ServerEvent::Closed => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the ivshmem server closed the connection",
            )),
            ServerEvent::PeerGone(_) => {
                self.pending_rings = 0;
                self.update_state();
                Ok(())
            }
            ServerEvent::PeerVector(_) => {
                self.deliver_pending_rings();
                self.update_state();
                Ok(())
            }
        }
    }

    /// Frees completed TX frames. Errors reset the link and are returned.
    pub fn reclaim(&mut self) -> Result<u16, ProtocolError> {
        let r = self.ep.queues.tx.reclaim();
        if let Err(e) = r {
            self.protocol_reset(e);
        }
        r
    }

    /// Queues one frame for the peer, or returns `Ok(false)` when there is no room (or the
    /// link is not running). Call [`Link::flush_tx`] after a batch. A frame shorter than an
    /// Ethernet header is dropped (counted in `runts_dropped`) and reported as sent.
    pub fn send(&mut self, frame: &[u8]) -> Result<bool, ProtocolError> {
        if !self.running() {
            return Ok(false);
        }
        if frame.len() < MIN_FRAME as usize {
            self.stats.runts_dropped += 1;
            return Ok(true);
        }
        let r = self.ep.queues.tx.send(frame);
        match r {
            Ok(true) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
            }
            Ok(false) => self.stats.ring_full += 1,
            Err(e) => self.protocol_reset(e),
        }
        r
    }

    /// Fills one frame of at most `max` bytes in place with `fill` (which returns the length it
    /// wrote, or `None` to give up) and queues it. `Ok(None)`: no room, or not running.
    pub fn send_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&Region<'_>, usize) -> Option<usize>,
    ) -> Result<Option<usize>, ProtocolError> {
        if !self.running() {
            return Ok(None);
        }
        let Some(slot) = self.ep.queues.tx.reserve(max) else {
            self.stats.ring_full += 1;
            return Ok(None);
        };
        let Some(n) = fill(self.ep.queues.tx.region(), slot.offset()) else {
            return Ok(None);
        };
        if n < MIN_FRAME as usize {
            // Consumed by `fill` but too short to send: dropped.
            self.stats.runts_dropped += 1;
            return Ok(Some(n));
        }
        let slot = slot.shrink(n);
        if let Err(e) = self.ep.queues.tx.push(slot) {
            self.protocol_reset(e);
            return Err(e);
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += n as u64;
        Ok(Some(n))
    }

    /// True when a frame of `len` bytes would fit now.
    pub fn tx_room(&self, len: usize) -> bool {
        self.running() && self.ep.queues.tx.reserve(len).is_some()
    }

    /// Publishes queued frames and rings the peer if it asked for it.
    pub fn flush_tx(&mut self) {
        match self.ep.queues.tx.publish() {
            Ok(true) => self.ring(VECTOR_DATA),
            Ok(false) => {}
            Err(e) => self.protocol_reset(e),
        }
    }

    /// Asks for a doorbell when completions free room; returns true when room appeared
    /// meanwhile.
    pub fn wait_tx_room(&mut self, len: usize) -> bool {
        if let Err(e) = self.ep.queues.tx.request_completion_notify() {
            self.protocol_reset(e);
            return false;
        }
        let _ = self.reclaim();
        self.tx_room(len)
    }

    /// Receives up to `budget` frames, handing each to `deliver(region, frame)`, then publishes
    /// the completions (ringing the peer if it asked). Returns the number received and whether
    /// more may be pending.
    ///
    /// The region is lent for the call only; keeping it does not compile:
    ///
    /// ```compile_fail
    /// fn keep(link: &mut ivnet_dataplane::link::Link) {
    ///     let mut saved = None;
    ///     link.receive(1, |r, _| saved = Some(*r));
    ///     let _ = saved;
    /// }
    /// ```
    pub fn receive(
        &mut self,
        budget: usize,
        mut deliver: impl FnMut(&Region<'_>, RxFrame),
    ) -> (usize, bool) {
        if !self.running() {
            return (0, false);
        }
        let mut n = 0;
        while n < budget {
            match self.ep.queues.rx.poll() {
                Ok(Some(f)) => {
                    self.stats.rx_bytes += f.len as u64;
                    deliver(self.ep.queues.rx.region(), f);
                    if let Err(e) = self.ep.queues.rx.complete(f) {
                        self.protocol_reset(e);
                        return (n, false);
                    }
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    self.protocol_reset(e);
                    return (n, false);
                }
            }
        }
        self.stats.rx_frames += n as u64;
        match self.ep.finish_rx(n == budget) {
            Ok(done) => {
                if done.ring_data {
                    self.ring(VECTOR_DATA);
                }
                (n, done.more)
            }
            Err(e) => {
                self.protocol_reset(e);
                (n, false)
            }
        }
    }

    /// Receives one frame into `buf`: its length, or `None`. Frames longer than `buf` are
    /// dropped (their length is returned, nothing copied).
    ///
    /// `None` means the ring is empty and the doorbell is armed: a frame arriving during the
    /// re-arm is picked up here rather than left waiting for a doorbell that may never come.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut got = None;
            let (_, more) = self.receive(1, |r, f| {
                if f.len <= buf.len() {
                    let _ = r.read_bytes(f.offset, &mut buf[..f.len]);
                }
                got = Some(f.len);
            });
            if got.is_some() || !more {
                return got;
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.ep.reset();
        self.ring(VECTOR_STATE);
    }
}
