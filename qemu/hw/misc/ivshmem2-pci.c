/*
 * ivshmem 2.0 PCI device for QEMU 10.0.x, written for the ivnet project from the
 * ivshmem 2.0 specification (Jailhouse, Documentation/ivshmem-v2-specification.md).
 * One file of about 600 lines, as QEMU keeps each device (its ivshmem-pci.c is one file too):
 * it is copied into QEMU's tree by scripts/qemu-build.sh and registered in its meson.build.
 *
 * -chardev socket,path=SOCK,id=ivs -device ivshmem2,chardev=ivs[,msix=off]
 *
 * Everything about the link comes from the server on SOCK (`ivnet server --ivshmem 2`):
 *
 *   header   u32 type, u32 len (whole message, header included), little-endian
 *   INIT     type 0, len 40: u32 version (2), u32 compatible_version (2), u32 id,
 *            u32 max_peers, u32 vectors, u32 protocol, u64 output_section_size;
 *            the shared memory fd attached. Read synchronously while realizing.
 *   EVENT_FD type 1, len 16: u32 id, u32 vector; an eventfd attached (the own
 *            ones: interrupts to this device; the others: its doorbells to them).
 *   PEER_GONE type 2, len 12: u32 id (the server has zeroed its state entry).
 *
 * Shared memory (the fd's size): [state table][R/W section][output section 0]...
 * [output section max_peers-1]; the state table is max(4 KiB, 4 * max_peers rounded up to
 * 4 KiB), the R/W section what is left beside the output sections. BAR2 maps it with the
 * state table and the other peers' output sections read-only (guest writes to them are
 * dropped). BAR0 holds the registers (ID, MAX_PEERS, INT_CONTROL, DOORBELL, STATE),
 * BAR1 the MSI-X table (msix=on, the default) - or, with msix=off, INTx pin A signalled as
 * a pulse (configure the line edge-triggered) and any vector raising it.
 *
 * The server's messages after INIT are read in the main loop, and the guest may run first: a
 * doorbell for a peer whose EVENT_FD has not arrived yet is kept and rung when it does (for
 * a peer that left, it is dropped with its fds).
 *
 * Licensed under the GNU GPL, version 2 or later, like the QEMU it is built into.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qemu/error-report.h"
#include "qemu/event_notifier.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qapi/error.h"
#include "hw/pci/pci.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "migration/vmstate.h"
#include "chardev/char-fe.h"
#include "qom/object.h"

#define TYPE_IVSHMEM2 "ivshmem2"
OBJECT_DECLARE_SIMPLE_TYPE(IvShmem2, IVSHMEM2)

#define IVSHMEM2_VENDOR_ID      0x110a
#define IVSHMEM2_DEVICE_ID      0x4106

/* BAR0 registers. */
#define IVSHMEM2_REG_ID         0x00
#define IVSHMEM2_REG_MAX_PEERS  0x04
#define IVSHMEM2_REG_INT_CTRL   0x08
#define IVSHMEM2_REG_DOORBELL   0x0c
#define IVSHMEM2_REG_STATE      0x10
#define IVSHMEM2_REG_BAR_SIZE   0x1000

/* Vendor capability: at a fixed dword-aligned offset, 0x18 bytes (BAR2 present). */
#define IVSHMEM2_CAP_OFF        0x40
#define IVSHMEM2_CAP_LEN        0x18
#define IVSHMEM2_CAP_PRIV_CTRL  0x03
#define IVSHMEM2_CAP_STATE_SIZE 0x04
#define IVSHMEM2_CAP_RW_SIZE    0x08
#define IVSHMEM2_CAP_OUT_SIZE   0x10
#define IVSHMEM2_ONE_SHOT       0x01

/* Server messages. */
#define IVSHMEM2_MSG_INIT       0
#define IVSHMEM2_MSG_EVENT_FD   1
#define IVSHMEM2_MSG_PEER_GONE  2
#define IVSHMEM2_HDR_LEN        8
#define IVSHMEM2_INIT_LEN       40
#define IVSHMEM2_EVENT_FD_LEN   16
#define IVSHMEM2_PEER_GONE_LEN  12
#define IVSHMEM2_MSG_MAX        64
#define IVSHMEM2_VERSION        2

#define IVSHMEM2_MAX_PEERS      65536
#define IVSHMEM2_MAX_VECTORS    1024

typedef struct IvShmem2Vector {
    struct IvShmem2 *dev;
    unsigned vector;
} IvShmem2Vector;

struct IvShmem2 {
    PCIDevice parent_obj;

    CharBackend chr;
    bool msix;

    /* From INIT. */
    uint32_t id;
    uint32_t max_peers;
    uint32_t vectors;
    uint32_t protocol;
    uint64_t out_size;
    uint64_t state_size;
    uint64_t rw_size;
    uint64_t mem_size;
    int mem_fd;

    /* Registers. */
    uint32_t int_ctrl;
    uint32_t state;

    MemoryRegion regs;
    MemoryRegion shmem;         /* the whole fd, RW in QEMU */
    MemoryRegion bar2;          /* container, power of two */
    MemoryRegion state_alias;   /* read-only */
    MemoryRegion rw_alias;
    MemoryRegion *out_alias;    /* max_peers entries */
    uint32_t *state_table;      /* host pointer into shmem */

    /* notifiers[peer * vectors + vector]; have[] says which hold an fd. */
    EventNotifier *notifiers;
    bool *have;
    /*
     * pending[peer * vectors + vector]: rung by the guest before the server's EVENT_FD for it
     * arrived (the messages are read in the main loop, the guest may run first); rung when it
     * arrives, forgotten when that peer leaves.
     */
    bool *pending;
    IvShmem2Vector *own;        /* vectors entries, the opaques of the own fd handlers */

    /* The message being received after INIT. */
    uint8_t msg[IVSHMEM2_MSG_MAX];
    uint32_t msg_got;
    bool broken;
};

static EventNotifier *ivshmem2_notifier(IvShmem2 *s, uint32_t peer, uint32_t vector)
{
    return &s->notifiers[(size_t)peer * s->vectors + vector];
}

static bool *ivshmem2_have(IvShmem2 *s, uint32_t peer, uint32_t vector)
{
    return &s->have[(size_t)peer * s->vectors + vector];
}

/* Raises one of this device's own vectors, if the guest enabled interrupts. */
static void ivshmem2_deliver(IvShmem2 *s, unsigned vector)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    if (!(s->int_ctrl & 1)) {
        return; /* not latched: the specification drops events while disabled */
    }
    if (pdev->config[IVSHMEM2_CAP_OFF + IVSHMEM2_CAP_PRIV_CTRL] & IVSHMEM2_ONE_SHOT) {
        s->int_ctrl = 0;
    }
    if (s->msix) {
        if (msix_enabled(pdev)) {
            msix_notify(pdev, vector);
        }
    } else {
        pci_irq_assert(pdev);
        pci_irq_deassert(pdev);
    }
}

static void ivshmem2_own_vector(void *opaque)
{
    IvShmem2Vector *v = opaque;
    IvShmem2 *s = v->dev;

    if (event_notifier_test_and_clear(ivshmem2_notifier(s, s->id, v->vector))) {
        ivshmem2_deliver(s, v->vector);
    }
}

static void ivshmem2_ring(IvShmem2 *s, uint32_t peer, uint32_t vector)
{
    if (peer >= s->max_peers || vector >= s->vectors) {
        return;
    }
    if (!*ivshmem2_have(s, peer, vector)) {
        s->pending[(size_t)peer * s->vectors + vector] = true;
        return;
    }
    /* What the guest wrote before the doorbell is visible before the target's interrupt. */
    smp_wmb();
    event_notifier_set(ivshmem2_notifier(s, peer, vector));
}

static void ivshmem2_set_state(IvShmem2 *s, uint32_t state)
{
    uint32_t p;
    bool changed = state != s->state;

    s->state = state;
    qatomic_store_release(&s->state_table[s->id], cpu_to_le32(state));
    if (!changed) {
        return;
    }
    smp_mb();
    for (p = 0; p < s->max_peers; p++) {
        if (p != s->id) {
            ivshmem2_ring(s, p, 0);
        }
    }
}

static uint64_t ivshmem2_regs_read(void *opaque, hwaddr addr, unsigned size)
{
    IvShmem2 *s = opaque;

    switch (addr) {
    case IVSHMEM2_REG_ID:
        return s->id;
    case IVSHMEM2_REG_MAX_PEERS:
        return s->max_peers;
    case IVSHMEM2_REG_INT_CTRL:
        return s->int_ctrl;
    case IVSHMEM2_REG_STATE:
        return s->state;
    default:
        return 0;
    }
}

static void ivshmem2_regs_write(void *opaque, hwaddr addr, uint64_t val, unsigned size)
{
    IvShmem2 *s = opaque;
    uint32_t v = val;

    switch (addr) {
    case IVSHMEM2_REG_INT_CTRL:
        s->int_ctrl = v & 1;
        break;
    case IVSHMEM2_REG_DOORBELL:
        ivshmem2_ring(s, v >> 16, v & 0xffff);
        break;
    case IVSHMEM2_REG_STATE:
        ivshmem2_set_state(s, v);
        break;
    default:
        break;
    }
}

static const MemoryRegionOps ivshmem2_regs_ops = {
    .read = ivshmem2_regs_read,
    .write = ivshmem2_regs_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .impl = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
};

static void ivshmem2_forget(IvShmem2 *s, uint32_t peer, uint32_t vector)
{
    EventNotifier *n = ivshmem2_notifier(s, peer, vector);
    bool *have = ivshmem2_have(s, peer, vector);

    if (!*have) {
        return;
    }
    if (peer == s->id) {
        qemu_set_fd_handler(event_notifier_get_fd(n), NULL, NULL, NULL);
    }
    event_notifier_cleanup(n);
    *have = false;
}

static void ivshmem2_event_fd(IvShmem2 *s, uint32_t peer, uint32_t vector, int fd)
{
    EventNotifier *n;

    if (fd < 0) {
        error_report("ivshmem2: EVENT_FD for peer %u vector %u came without an fd", peer, vector);
        return;
    }
    if (peer >= s->max_peers || vector >= s->vectors) {
        error_report("ivshmem2: EVENT_FD for peer %u vector %u out of range (%u peers, %u vectors)",
                     peer, vector, s->max_peers, s->vectors);
        close(fd);
        return;
    }
    /* A reused id, or a server repeating itself: the new fd replaces the old one. */
    ivshmem2_forget(s, peer, vector);
    if (!g_unix_set_fd_nonblocking(fd, true, NULL)) {
        error_report("ivshmem2: cannot make the eventfd of peer %u non-blocking", peer);
    }
    n = ivshmem2_notifier(s, peer, vector);
    event_notifier_init_fd(n, fd);
    *ivshmem2_have(s, peer, vector) = true;
    if (peer == s->id) {
        qemu_set_fd_handler(fd, ivshmem2_own_vector, NULL, &s->own[vector]);
    }
    if (s->pending[(size_t)peer * s->vectors + vector]) {
        s->pending[(size_t)peer * s->vectors + vector] = false;
        ivshmem2_ring(s, peer, vector);
    }
}

static void ivshmem2_peer_gone(IvShmem2 *s, uint32_t peer)
{
    uint32_t v;

    if (peer >= s->max_peers || peer == s->id) {
        error_report("ivshmem2: PEER_GONE for peer %u ignored (own id %u, %u peers)",
                     peer, s->id, s->max_peers);
        return;
    }
    for (v = 0; v < s->vectors; v++) {
        ivshmem2_forget(s, peer, v);
        s->pending[(size_t)peer * s->vectors + v] = false;
    }
    /* Its state entry reads 0 now: tell the guest as a state change. */
    ivshmem2_deliver(s, 0);
}

static int ivshmem2_can_receive(void *opaque)
{
    IvShmem2 *s = opaque;
    uint32_t want;

    if (s->broken) {
        return 0;
    }
    if (s->msg_got < IVSHMEM2_HDR_LEN) {
        return IVSHMEM2_HDR_LEN - s->msg_got;
    }
    want = ldl_le_p(s->msg + 4);
    return want - s->msg_got;
}

static void ivshmem2_read(void *opaque, const uint8_t *buf, int size)
{
    IvShmem2 *s = opaque;
    uint32_t type, len;
    int fd;

    assert(size >= 0 && s->msg_got + size <= IVSHMEM2_MSG_MAX);
    memcpy(s->msg + s->msg_got, buf, size);
    s->msg_got += size;
    if (s->msg_got < IVSHMEM2_HDR_LEN) {
        return;
    }
    type = ldl_le_p(s->msg);
    len = ldl_le_p(s->msg + 4);
    if (len < IVSHMEM2_HDR_LEN || len > IVSHMEM2_MSG_MAX) {
        error_report("ivshmem2: server message of length %u (type %u): ignoring the server "
                     "from now on", len, type);
        s->broken = true;
        return;
    }
    if (s->msg_got < len) {
        return;
    }
    s->msg_got = 0;
    fd = qemu_chr_fe_get_msgfd(&s->chr);
    if (type == IVSHMEM2_MSG_EVENT_FD && len == IVSHMEM2_EVENT_FD_LEN) {
        ivshmem2_event_fd(s, ldl_le_p(s->msg + 8), ldl_le_p(s->msg + 12), fd);
        return;
    }
    if (fd >= 0) {
        close(fd);
    }
    if (type == IVSHMEM2_MSG_PEER_GONE && len == IVSHMEM2_PEER_GONE_LEN) {
        ivshmem2_peer_gone(s, ldl_le_p(s->msg + 8));
    } else {
        error_report("ivshmem2: unexpected server message type %u, length %u", type, len);
    }
}

/* Reads INIT and the memory fd; fills in the link's geometry. */
static bool ivshmem2_recv_init(IvShmem2 *s, Error **errp)
{
    uint8_t m[IVSHMEM2_INIT_LEN];
    uint32_t compat, n;
    uint64_t outs;
    struct stat st;
    int fd;

    if (qemu_chr_fe_read_all(&s->chr, m, sizeof(m)) != sizeof(m)) {
        error_setg(errp, "ivshmem2: the server sent no INIT");
        return false;
    }
    fd = qemu_chr_fe_get_msgfd(&s->chr);
    if (ldl_le_p(m) != IVSHMEM2_MSG_INIT || ldl_le_p(m + 4) != IVSHMEM2_INIT_LEN) {
        error_setg(errp, "ivshmem2: the server's first message is type %u length %u, not INIT "
                   "(is it an ivshmem 2.0 server?)", ldl_le_p(m), ldl_le_p(m + 4));
        goto fail;
    }
    compat = ldl_le_p(m + 12);
    s->id = ldl_le_p(m + 16);
    s->max_peers = ldl_le_p(m + 20);
    s->vectors = ldl_le_p(m + 24);
    s->protocol = ldl_le_p(m + 28);
    s->out_size = ldq_le_p(m + 32);
    if (compat != IVSHMEM2_VERSION) {
        error_setg(errp, "ivshmem2: the server speaks version %u (compatible with %u), not 2",
                   ldl_le_p(m + 8), compat);
        goto fail;
    }
    if (s->max_peers < 2 || s->max_peers > IVSHMEM2_MAX_PEERS || s->id >= s->max_peers) {
        error_setg(errp, "ivshmem2: id %u / max peers %u out of range", s->id, s->max_peers);
        goto fail;
    }
    if (s->vectors < 1 || s->vectors > IVSHMEM2_MAX_VECTORS || s->protocol > 0xffff) {
        error_setg(errp, "ivshmem2: %u vectors / protocol 0x%x out of range", s->vectors,
                   s->protocol);
        goto fail;
    }
    if (fd < 0 || fstat(fd, &st) != 0) {
        error_setg(errp, "ivshmem2: INIT came without a usable memory fd");
        goto fail;
    }
    s->mem_size = st.st_size;
    s->state_size = QEMU_ALIGN_UP((uint64_t)s->max_peers * 4, 4 * KiB);
    n = s->max_peers;
    if (s->out_size % (4 * KiB) || s->out_size > s->mem_size / n) {
        error_setg(errp, "ivshmem2: output sections of 0x%" PRIx64 " bytes do not fit %u peers "
                   "in 0x%" PRIx64 " bytes", s->out_size, n, s->mem_size);
        goto fail;
    }
    outs = s->out_size * n;
    if (s->mem_size < s->state_size + outs || s->mem_size % (4 * KiB)) {
        error_setg(errp, "ivshmem2: 0x%" PRIx64 " bytes of memory cannot hold the state table "
                   "(0x%" PRIx64 ") and %u output sections of 0x%" PRIx64, s->mem_size,
                   s->state_size, n, s->out_size);
        goto fail;
    }
    s->rw_size = s->mem_size - s->state_size - outs;
    s->mem_fd = fd;
    return true;
fail:
    if (fd >= 0) {
        close(fd);
    }
    return false;
}

static void ivshmem2_realize(PCIDevice *dev, Error **errp)
{
    IvShmem2 *s = IVSHMEM2(dev);
    uint8_t *conf = dev->config;
    uint64_t off;
    uint32_t i;
    int cap;

    s->mem_fd = -1;
    if (!qemu_chr_fe_backend_connected(&s->chr)) {
        error_setg(errp, "ivshmem2: 'chardev' (the server's socket) is required");
        return;
    }
    if (!ivshmem2_recv_init(s, errp)) {
        return;
    }

    /* Memory: the fd, and BAR2 as a window with the read-only parts marked so. */
    if (!memory_region_init_ram_from_fd(&s->shmem, OBJECT(s), "ivshmem2.shmem", s->mem_size,
                                        RAM_SHARED, s->mem_fd, 0, errp)) {
        return;
    }
    s->state_table = memory_region_get_ram_ptr(&s->shmem);
    memory_region_init(&s->bar2, OBJECT(s), "ivshmem2.bar2", pow2ceil(s->mem_size));
    memory_region_init_alias(&s->state_alias, OBJECT(s), "ivshmem2.state-table", &s->shmem, 0,
                             s->state_size);
    memory_region_set_readonly(&s->state_alias, true);
    memory_region_add_subregion(&s->bar2, 0, &s->state_alias);
    off = s->state_size;
    if (s->rw_size) {
        memory_region_init_alias(&s->rw_alias, OBJECT(s), "ivshmem2.rw", &s->shmem, off,
                                 s->rw_size);
        memory_region_add_subregion(&s->bar2, off, &s->rw_alias);
        off += s->rw_size;
    }
    s->out_alias = g_new0(MemoryRegion, s->max_peers);
    for (i = 0; i < s->max_peers; i++, off += s->out_size) {
        if (!s->out_size) {
            break;
        }
        memory_region_init_alias(&s->out_alias[i], OBJECT(s), "ivshmem2.output", &s->shmem,
                                 off, s->out_size);
        memory_region_set_readonly(&s->out_alias[i], i != s->id);
        memory_region_add_subregion(&s->bar2, off, &s->out_alias[i]);
    }

    s->notifiers = g_new0(EventNotifier, (size_t)s->max_peers * s->vectors);
    s->have = g_new0(bool, (size_t)s->max_peers * s->vectors);
    s->pending = g_new0(bool, (size_t)s->max_peers * s->vectors);
    s->own = g_new0(IvShmem2Vector, s->vectors);
    for (i = 0; i < s->vectors; i++) {
        s->own[i].dev = s;
        s->own[i].vector = i;
    }

    /* Config space: class FFh, sub-class:prog-if = protocol. */
    pci_config_set_class(conf, 0xff00 | (s->protocol >> 8));
    pci_config_set_prog_interface(conf, s->protocol & 0xff);
    pci_config_set_interrupt_pin(conf, s->msix ? 0 : 1);

    cap = pci_add_capability(dev, PCI_CAP_ID_VNDR, IVSHMEM2_CAP_OFF, IVSHMEM2_CAP_LEN, errp);
    if (cap < 0) {
        return;
    }
    conf[cap + PCI_CAP_FLAGS] = IVSHMEM2_CAP_LEN;
    pci_set_long(conf + cap + IVSHMEM2_CAP_STATE_SIZE, s->state_size);
    pci_set_quad(conf + cap + IVSHMEM2_CAP_RW_SIZE, s->rw_size);
    pci_set_quad(conf + cap + IVSHMEM2_CAP_OUT_SIZE, s->out_size);
    /* One-shot mode is the only thing the guest may change here. */
    dev->wmask[cap + IVSHMEM2_CAP_PRIV_CTRL] = IVSHMEM2_ONE_SHOT;

    memory_region_init_io(&s->regs, OBJECT(s), &ivshmem2_regs_ops, s, "ivshmem2.regs",
                          IVSHMEM2_REG_BAR_SIZE);
    pci_register_bar(dev, 0, PCI_BASE_ADDRESS_SPACE_MEMORY, &s->regs);
    if (s->msix) {
        if (msix_init_exclusive_bar(dev, s->vectors, 1, errp)) {
            return;
        }
        for (i = 0; i < s->vectors; i++) {
            msix_vector_use(dev, i);
        }
    }
    pci_register_bar(dev, 2, PCI_BASE_ADDRESS_SPACE_MEMORY | PCI_BASE_ADDRESS_MEM_PREFETCH |
                     PCI_BASE_ADDRESS_MEM_TYPE_64, &s->bar2);

    /* The own state entry starts at 0 (a predecessor with this id may have left it set). */
    qatomic_store_release(&s->state_table[s->id], 0);

    qemu_chr_fe_set_handlers(&s->chr, ivshmem2_can_receive, ivshmem2_read, NULL, NULL, s,
                             NULL, true);
}

static void ivshmem2_exit(PCIDevice *dev)
{
    IvShmem2 *s = IVSHMEM2(dev);
    uint32_t p, v;

    qemu_chr_fe_set_handlers(&s->chr, NULL, NULL, NULL, NULL, NULL, NULL, false);
    if (s->have) {
        for (p = 0; p < s->max_peers; p++) {
            for (v = 0; v < s->vectors; v++) {
                ivshmem2_forget(s, p, v);
            }
        }
    }
    if (s->msix && msix_present(dev)) {
        msix_uninit_exclusive_bar(dev);
    }
    g_free(s->notifiers);
    g_free(s->have);
    g_free(s->pending);
    g_free(s->own);
    s->notifiers = NULL;
    s->have = NULL;
    s->pending = NULL;
    s->own = NULL;
}

static void ivshmem2_reset(DeviceState *d)
{
    IvShmem2 *s = IVSHMEM2(d);
    PCIDevice *dev = PCI_DEVICE(d);

    s->int_ctrl = 0;
    dev->config[IVSHMEM2_CAP_OFF + IVSHMEM2_CAP_PRIV_CTRL] = 0;
    if (s->state_table) {
        ivshmem2_set_state(s, 0);
    }
}

static const VMStateDescription ivshmem2_vmsd = {
    .name = TYPE_IVSHMEM2,
    .unmigratable = 1,
};

static const Property ivshmem2_properties[] = {
    DEFINE_PROP_CHR("chardev", IvShmem2, chr),
    DEFINE_PROP_BOOL("msix", IvShmem2, msix, true),
};

static void ivshmem2_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);

    k->realize = ivshmem2_realize;
    k->exit = ivshmem2_exit;
    k->vendor_id = IVSHMEM2_VENDOR_ID;
    k->device_id = IVSHMEM2_DEVICE_ID;
    k->class_id = 0xff00;
    k->revision = 0;
    device_class_set_legacy_reset(dc, ivshmem2_reset);
    device_class_set_props(dc, ivshmem2_properties);
    dc->vmsd = &ivshmem2_vmsd;
    dc->hotpluggable = false;
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
    dc->desc = "Inter-VM shared memory, version 2.0 (ivnet)";
}

static const TypeInfo ivshmem2_info = {
    .name          = TYPE_IVSHMEM2,
    .parent        = TYPE_PCI_DEVICE,
    .instance_size = sizeof(IvShmem2),
    .class_init    = ivshmem2_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void ivshmem2_register_types(void)
{
    type_register_static(&ivshmem2_info);
}

type_init(ivshmem2_register_types)
