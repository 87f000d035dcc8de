//! Safe handles for the network stack: packets (owned, or borrowed for a send) and
//! interfaces.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use ivnet_core::shm::Region;

use crate::copy;
use zephyr::time::Timeout;

use crate::sys::{self, net_if, net_pkt};

/// Most padding [`Pkt::fill`] puts in front of a received frame.
pub(crate) const RX_PAD_MAX: usize = 7;

/// A packet we own (one reference), released when dropped.
pub struct Pkt(NonNull<net_pkt>);

impl Drop for Pkt {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the packet (see the type) and give it back once.
        unsafe { sys::net_pkt_unref(self.0.as_ptr()) };
    }
}

impl Pkt {
    /// A receive packet on `iface` with buffers for `len` bytes, waiting up to `t` for them;
    /// None when the stack has none.
    pub fn rx_alloc(iface: Iface, len: usize, t: Timeout) -> Option<Pkt> {
        let t = sys::raw(t);
        // SAFETY: `iface` is live. A non-null result is a packet we own, with no buffer yet;
        // as a Pkt it is released on every path, also when its buffers cannot be allocated.
        unsafe {
            let pkt = Pkt(NonNull::new(sys::net_pkt_rx_alloc_on_iface(
                iface.raw(),
                t,
            ))?);
            (sys::net_pkt_alloc_buffer_raw(pkt.0.as_ptr(), len, t) >= 0).then_some(pkt)
        }
    }

    /// Appends the `len` bytes at `offset` of `src` (memory the peer may write) to the
    /// packet's buffers, which must hold no data yet; false when they are too short or the
    /// range lies outside `src`.
    ///
    /// The frame starts up to [`RX_PAD_MAX`] bytes into the first buffer, so that its TCP or
    /// UDP payload is 8-byte aligned (the idea of Linux's NET_IP_ALIGN, one layer up). The
    /// application's copy out of the packet then shares the alignment of its receive buffer;
    /// with Zephyr's minimal libc, a copy between differently aligned buffers runs byte by
    /// byte.
    pub fn fill(&mut self, src: &Region<'_>, offset: usize, len: usize) -> bool {
        let Ok(mut s) = src.ptr_range(offset, len) else {
            return false;
        };
        // The headers, for the padding only: the peer may change them meanwhile, which only
        // changes the padding chosen.
        let mut hdr = [0u8; 128];
        let h = len.min(hdr.len());
        if src.read_bytes(offset, &mut hdr[..h]).is_err() {
            return false;
        }
        let off = payload_offset(&hdr[..h]);
        let mut left = len;
        // SAFETY: a packet's buffer chain is a list of valid net_bufs ending in null, which we
        // may write as the packet is ours; `b` is a net_buf's net_buf_simple view. The reserve
        // is made only on an empty first buffer with the tailroom for it; each copy goes to
        // tailroom just claimed by net_buf_simple_add (n <= tailroom) from `s`, which has
        // `left` >= n readable bytes of the checked range in `src`. The ranges do not overlap
        // (the stack's buffers are not shared memory).
        unsafe {
            let mut buf = (*self.0.as_ptr()).__bindgen_anon_1.buffer;
            if !buf.is_null() {
                let sb = &mut (*buf).__bindgen_anon_1.b;
                let pad = (8 - (sb.data as usize + off) % 8) % 8;
                if sb.len == 0 && sys::net_buf_simple_tailroom(sb) > pad + off {
                    sys::net_buf_simple_reserve(sb, pad);
                }
            }
            while left > 0 && !buf.is_null() {
                let sb = &mut (*buf).__bindgen_anon_1.b;
                let n = left.min(sys::net_buf_simple_tailroom(sb));
                let dst = sys::net_buf_simple_add(sb, n) as *mut u8;
                copy::copy(dst, s, n);
                s = s.add(n);
                left -= n;
                buf = (*buf).frags;
            }
        }
        left == 0
    }
}

/// A packet the stack lends us for one send() call.
#[repr(transparent)]
pub struct PktRef<'a>(NonNull<net_pkt>, PhantomData<&'a net_pkt>);

impl PktRef<'_> {
    /// The packet's length in bytes.
    pub fn len(&self) -> usize {
        // SAFETY: the packet is valid for the call (see the type).
        unsafe { sys::net_pkt_get_len(self.0.as_ptr()) }
    }

    /// Copies the packet's `len` bytes (its whole buffer chain) to `[offset, offset + len)`
    /// of `dst`; false if the chain does not hold exactly `len` bytes or the range lies
    /// outside `dst`.
    pub fn copy_to(&self, dst: &Region<'_>, offset: usize, len: usize) -> bool {
        let Ok(mut d) = dst.ptr_range(offset, len) else {
            return false;
        };
        let mut left = len;
        // SAFETY: the packet is valid for the call; its buffer chain is a list of valid
        // net_bufs ending in null, each holding `len` bytes at `data`. Each copy writes n <=
        // `left` bytes of the checked range in `dst` (shared memory, never a stack buffer).
        unsafe {
            let mut buf = (*self.0.as_ptr()).__bindgen_anon_1.buffer;
            while !buf.is_null() {
                let sb = &(*buf).__bindgen_anon_1.b;
                let n = sb.len as usize;
                if n > left {
                    return false;
                }
                copy::copy(d, sb.data, n);
                d = d.add(n);
                left -= n;
                buf = (*buf).frags;
            }
        }
        left == 0
    }
}

/// A live network interface of one of our devices. Only C makes one (the argument of the
/// interface init entry point, `repr(transparent)` over the pointer C passes); interfaces
/// live as long as the system.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Iface(NonNull<net_if>);

/// The calls on an interface.
enum Op<'a> {
    EthernetInit,
    LinkAddr([u8; 6]),
    CarrierOff,
    EthCarrier(bool),
    Ipv4(&'a sys::in_addr, &'a sys::in_addr),
    Gw(&'a sys::in_addr),
    #[cfg(ivnet_ipv6)]
    Ipv6(&'a sys::in6_addr, &'a sys::in6_addr, u8),
    #[cfg(ivnet_dhcpv4)]
    Dhcpv4,
    SetDefault,
}

impl Iface {
    /// The interface for a kernel call.
    pub fn raw(self) -> *mut net_if {
        self.0.as_ptr()
    }

    fn op(self, op: Op<'_>) -> bool {
        let i = self.raw();
        // SAFETY: `i` is a live interface (see the type). Each call takes the interface and
        // copies what it is given (addresses, the link address) before it returns.
        unsafe {
            match op {
                Op::EthernetInit => sys::ethernet_init(i),
                Op::LinkAddr(mut mac) => {
                    return sys::net_if_set_link_addr(
                        i,
                        mac.as_mut_ptr(),
                        6,
                        sys::net_link_type_NET_LINK_ETHERNET as _,
                    ) == 0
                }
                Op::CarrierOff => sys::net_if_carrier_off(i),
                Op::EthCarrier(true) => sys::net_eth_carrier_on(i),
                Op::EthCarrier(false) => sys::net_eth_carrier_off(i),
                Op::Ipv4(a, mask) => {
                    return !sys::net_if_ipv4_addr_add(i, a, sys::net_addr_type_NET_ADDR_MANUAL, 0)
                        .is_null()
                        && sys::net_if_ipv4_set_netmask_by_addr(i, a, mask)
                }
                Op::Gw(g) => sys::net_if_ipv4_set_gw(i, g),
                #[cfg(ivnet_ipv6)]
                Op::Ipv6(a, net, prefix) => {
                    return !sys::net_if_ipv6_addr_add(i, a, sys::net_addr_type_NET_ADDR_MANUAL, 0)
                        .is_null()
                        && !sys::net_if_ipv6_prefix_add(i, net, prefix, u32::MAX).is_null()
                }
                #[cfg(ivnet_dhcpv4)]
                Op::Dhcpv4 => sys::net_dhcpv4_start(i),
                Op::SetDefault => sys::net_if_set_default(i),
            }
        }
        true
    }

    /// Ethernet L2 init (from the interface's init).
    pub fn ethernet_init(self) {
        self.op(Op::EthernetInit);
    }

    /// Sets the interface's MAC address (the stack copies it).
    pub fn set_link_addr(self, mac: [u8; 6]) {
        self.op(Op::LinkAddr(mac));
    }

    /// Carrier off, from the interface's init.
    pub fn carrier_off(self) {
        self.op(Op::CarrierOff);
    }

    /// The Ethernet carrier on or off (the link came up or went down).
    pub fn set_carrier(self, on: bool) {
        self.op(Op::EthCarrier(on));
    }

    /// Adds a static IPv4 address and its netmask; false when the stack refused.
    pub fn add_ipv4(self, addr: [u8; 4], mask: [u8; 4]) -> bool {
        self.op(Op::Ipv4(&in_addr(addr), &in_addr(mask)))
    }

    /// Sets the IPv4 gateway.
    pub fn set_gw(self, gw: [u8; 4]) {
        self.op(Op::Gw(&in_addr(gw)));
    }

    /// Adds a static IPv6 address and its on-link prefix; false when the stack refused.
    #[cfg(ivnet_ipv6)]
    pub fn add_ipv6(self, addr: [u8; 16], net: [u8; 16], prefix: u8) -> bool {
        let (mut a, mut n) = (sys::in6_addr::default(), sys::in6_addr::default());
        a.__bindgen_anon_1.s6_addr = addr;
        n.__bindgen_anon_1.s6_addr = net;
        self.op(Op::Ipv6(&a, &n, prefix))
    }

    /// Starts the DHCPv4 client.
    #[cfg(ivnet_dhcpv4)]
    pub fn start_dhcpv4(self) {
        self.op(Op::Dhcpv4);
    }

    /// Makes this the default interface.
    pub fn set_default(self) {
        self.op(Op::SetDefault);
    }

    /// Hands a received packet to the stack; a packet the stack refuses is released.
    pub fn recv(self, pkt: Pkt) -> bool {
        let p = pkt.0.as_ptr();
        // SAFETY: the interface is live and the packet ours; the stack takes our reference
        // when it accepts the packet (>= 0), else it stays ours.
        let ok = unsafe { sys::net_recv_data(self.raw(), p) } >= 0;
        if ok {
            core::mem::forget(pkt);
        }
        ok
    }
}

fn in_addr(a: [u8; 4]) -> sys::in_addr {
    let mut r = sys::in_addr::default();
    r.__bindgen_anon_1.s4_addr = a;
    r
}

/// Where an interface is kept once the stack has made it (empty until then).
pub struct IfaceCell(AtomicPtr<net_if>);

impl IfaceCell {
    /// Empty.
    pub const fn new() -> IfaceCell {
        IfaceCell(AtomicPtr::new(ptr::null_mut()))
    }

    /// Keeps `iface`.
    pub fn set(&self, iface: Iface) {
        self.0.store(iface.raw(), Ordering::Release);
    }

    /// The interface, once set.
    pub fn get(&self) -> Option<Iface> {
        NonNull::new(self.0.load(Ordering::Acquire)).map(Iface)
    }
}

/// Where the transport payload of an Ethernet frame starts (TCP or UDP over IPv4 or IPv6;
/// else the network header), from its first bytes. Only chooses padding: a wrong answer from
/// a bad peer costs speed, nothing else.
fn payload_offset(h: &[u8]) -> usize {
    let at = |i: usize| h.get(i).copied().unwrap_or(0) as usize;
    let (l3, proto) = match (at(12) << 8) | at(13) {
        0x0800 => (14 + (at(14) & 0xf) * 4, at(23)),
        0x86dd => (14 + 40, at(20)),
        _ => return 14,
    };
    match proto {
        6 => l3 + (at(l3 + 12) >> 4) * 4,
        17 => l3 + 8,
        _ => l3,
    }
}
