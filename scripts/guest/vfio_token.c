/*
 * vfio_token - the guest's probe of the vfio group/container API and the SR-IOV VF token
 * (scenarios l and n of scripts/guest/scenarios.sh). Built static by scripts/provision.sh and
 * installed as /usr/bin/vfio_token in the test initramfs.
 *
 *   vfio_token token PF VF
 *       PF is bound to vfio-pci (enable_sriov=1), VF is one of its VFs, captured by vfio-pci.
 *       Container (type1v2) with the PF's group; the PF opens without a token; a VF token is set
 *       with VFIO_DEVICE_FEATURE_PCI_VF_TOKEN; then the VF's group joins the container and the VF
 *       cannot be opened without the token (EACCES), with a wrong one (EACCES) or a malformed one
 *       (EINVAL), but opens with the right one; while the VF is open the PF cannot be opened
 *       without the token or with a wrong one (EACCES), but can with the right one; once the VF
 *       is closed the PF opens without a token again.
 *   vfio_token container DEV eperm|ok [BIND-DRIVER]
 *       Open DEV's group and VFIO_GROUP_SET_CONTAINER it: "eperm" expects the group not viable
 *       (VFIO_GROUP_GET_STATUS) and EPERM (a member is bound to a DMA-API driver); "ok" expects
 *       it viable and attached, and then, with BIND-DRIVER, that binding DEV to that driver (its
 *       driver_override set by the caller) fails with EBUSY while the group is owned by vfio.
 *
 *   vfio_token dma VF PF-MAC PF-IP VF-IP
 *       A userspace virtio-net driver on VF (bound to vfio-pci, the PF on virtio-pci): container
 *       (type1v2) with the VF's group, 128 KiB of this process's memory mapped for DMA at IOVA
 *       0x40000000, the device driven through its virtio-pci modern capabilities (features
 *       VERSION_1 and ACCESS_PLATFORM, an RX and a TX queue in that memory). It sends an ARP
 *       request for PF-IP from VF-IP and waits for the PF's reply in its RX buffers, so the
 *       device reads and writes this process's memory only through the vIOMMU; then it posts a
 *       TX descriptor whose IOVA was never mapped and waits for the device to complete it
 *       without reading it (the daemon gives it up as malformed).
 *
 * DEV, PF and VF are PCI addresses (0000:01:00.0). Prints one "PASS <what>" or
 * "FAIL <what>: <why>" line per check and "vfio_token: N passed, M failed" last; exits 0 only if
 * nothing failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;
static int kmsg = -1;

/* Each step also goes to the kernel log, so that dmesg shows which step the kernel answered. */
static void klog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void klog(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	if (kmsg < 0)
		return;
	n = snprintf(buf, sizeof buf, "<6>vfio_token: ");
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
	va_end(ap);
	/* A record without its newline is not final: dmesg would not show it yet. */
	strcat(buf, "\n");
	if (write(kmsg, buf, strlen(buf)) < 0) {
		close(kmsg);
		kmsg = -1;
	}
}

static void check(int ok, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void check(int ok, const char *what, const char *fmt, ...)
{
	klog("%s %s", ok ? "PASS" : "FAIL", what);
	if (ok) {
		printf("PASS %s\n", what);
		passed++;
	} else {
		va_list ap;
		printf("FAIL %s: ", what);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		printf("\n");
		failed++;
	}
	fflush(stdout);
}

static const char *errname(int e)
{
	switch (e) {
	case 0: return "success";
	case EACCES: return "EACCES";
	case EPERM: return "EPERM";
	case EINVAL: return "EINVAL";
	case EBUSY: return "EBUSY";
	case ENODEV: return "ENODEV";
	case ENOENT: return "ENOENT";
	case ENOTTY: return "ENOTTY";
	default: return strerror(e);
	}
}

static int finish(void)
{
	printf("vfio_token: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

/* The /dev/vfio/<group> node of a PCI device, from its iommu_group link. */
static int group_path(const char *dev, char *out, size_t len)
{
	char link[PATH_MAX], target[PATH_MAX];
	ssize_t n;

	snprintf(link, sizeof link, "/sys/bus/pci/devices/%s/iommu_group", dev);
	n = readlink(link, target, sizeof target - 1);
	if (n < 0)
		return -1;
	target[n] = 0;
	snprintf(out, len, "/dev/vfio/%s", basename(target));
	return 0;
}

static int open_container(void)
{
	int c = open("/dev/vfio/vfio", O_RDWR);
	int v;

	check(c >= 0, "open /dev/vfio/vfio", "%s", strerror(errno));
	if (c < 0)
		return -1;
	v = ioctl(c, VFIO_GET_API_VERSION);
	check(v == VFIO_API_VERSION, "VFIO_GET_API_VERSION", "got %d, expected %d", v, VFIO_API_VERSION);
	v = ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
	check(v > 0, "VFIO_CHECK_EXTENSION TYPE1v2", "got %d", v);
	return c;
}

/* Open DEV's group; report its viability as the caller expects. */
static int open_group(const char *dev, int want_viable)
{
	char path[PATH_MAX], what[PATH_MAX + 64];
	struct vfio_group_status st = { .argsz = sizeof st };
	int g, viable;

	if (group_path(dev, path, sizeof path) < 0) {
		check(0, "iommu_group link", "%s has no iommu_group (no IOMMU?): %s", dev, strerror(errno));
		return -1;
	}
	g = open(path, O_RDWR);
	snprintf(what, sizeof what, "open %s (group of %s)", path, dev);
	check(g >= 0, what, "%s", strerror(errno));
	if (g < 0)
		return -1;
	if (ioctl(g, VFIO_GROUP_GET_STATUS, &st) < 0) {
		check(0, "VFIO_GROUP_GET_STATUS", "%s", strerror(errno));
		return g;
	}
	viable = !!(st.flags & VFIO_GROUP_FLAGS_VIABLE);
	snprintf(what, sizeof what, "group of %s %s", dev, want_viable ? "viable" : "not viable");
	check(viable == want_viable, what, "flags 0x%x", st.flags);
	return g;
}

/* A type1v2 container holding DEV's group (WHO names it in the checks); the group goes to *G.
 * Returns the container, or -1 once any step failed. */
static int container_for(const char *dev, const char *who, int *g)
{
	char what[64];
	int c, r;

	c = open_container();
	if (c < 0)
		return -1;
	*g = open_group(dev, 1);
	if (*g < 0)
		return -1;
	r = ioctl(*g, VFIO_GROUP_SET_CONTAINER, &c);
	snprintf(what, sizeof what, "%s group: VFIO_GROUP_SET_CONTAINER", who);
	check(r == 0, what, "%s", errname(errno));
	r = ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	check(r == 0, "VFIO_SET_IOMMU type1v2", "%s", errname(errno));
	return failed ? -1 : c;
}

/* VFIO_GROUP_GET_DEVICE_FD with NAME; check errno EXPECT (0: a device fd). Returns the fd or -1. */
static int get_device(int g, const char *name, int expect, const char *what)
{
	int fd = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name);
	int e = fd < 0 ? errno : 0;
	char w[512];

	snprintf(w, sizeof w, "%s -> %s", what, errname(expect));
	check(e == expect, w, "\"%s\" gave %s", name, errname(e));
	if (fd >= 0 && expect != 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static void uuid_random(uint8_t u[16])
{
	int fd = open("/dev/urandom", O_RDONLY);

	if (fd < 0 || read(fd, u, 16) != 16) {
		/* No /dev/urandom: anything distinct will do for a test. */
		for (int i = 0; i < 16; i++)
			u[i] = (uint8_t)(rand() ^ getpid());
	}
	if (fd >= 0)
		close(fd);
	u[6] = (u[6] & 0x0f) | 0x40; /* version 4 */
	u[8] = (u[8] & 0x3f) | 0x80; /* variant 1 */
}

static void uuid_str(const uint8_t u[16], char s[37])
{
	snprintf(s, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
		 u[14], u[15]);
}

static int cmd_token(const char *pf, const char *vf)
{
	uint8_t tok[16], wrong[16];
	char ts[37], ws[37], name[128];
	struct {
		struct vfio_device_feature f;
		uint8_t uuid[16];
	} feat;
	char pg[PATH_MAX], vg[PATH_MAX];
	int c, gp, gv, pfd, vfd, fd, r;

	c = container_for(pf, "PF", &gp);
	if (c < 0)
		return finish();

	pfd = get_device(gp, pf, 0, "PF without a token, no VF open");
	if (pfd < 0)
		return finish();

	uuid_random(tok);
	do
		uuid_random(wrong);
	while (!memcmp(tok, wrong, 16));
	uuid_str(tok, ts);
	uuid_str(wrong, ws);

	memset(&feat, 0, sizeof feat);
	feat.f.argsz = sizeof feat;
	feat.f.flags = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN;
	r = ioctl(pfd, VFIO_DEVICE_FEATURE, &feat);
	check(r == 0, "VFIO_DEVICE_FEATURE probe PCI_VF_TOKEN on the PF", "%s", errname(errno));
	feat.f.flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN;
	memcpy(feat.uuid, tok, 16);
	r = ioctl(pfd, VFIO_DEVICE_FEATURE, &feat);
	check(r == 0, "VFIO_DEVICE_FEATURE set PCI_VF_TOKEN", "%s", errname(errno));
	printf("INFO token %s, wrong token %s\n", ts, ws);

	/* With ACS every function has its own group; without, the VF is in the PF's (open) one. */
	if (group_path(pf, pg, sizeof pg) == 0 && group_path(vf, vg, sizeof vg) == 0 && !strcmp(pg, vg))
		gv = gp;
	else
		gv = open_group(vf, 1);
	if (gv < 0)
		return finish();
	if (gv != gp) {
		r = ioctl(gv, VFIO_GROUP_SET_CONTAINER, &c);
		check(r == 0, "VF group: VFIO_GROUP_SET_CONTAINER (same container)", "%s", errname(errno));
	}

	get_device(gv, vf, EACCES, "VF without a token");
	snprintf(name, sizeof name, "%s vf_token=%s", vf, ws);
	get_device(gv, name, EACCES, "VF with a wrong token");
	snprintf(name, sizeof name, "%s vf_token=not-a-uuid", vf);
	get_device(gv, name, EINVAL, "VF with a malformed token");
	snprintf(name, sizeof name, "%s vf_token=%s", vf, ts);
	vfd = get_device(gv, name, 0, "VF with the right token");
	if (vfd < 0)
		return finish();

	klog("closing the PF");
	close(pfd);
	get_device(gp, pf, EACCES, "PF without a token while a VF is open");
	snprintf(name, sizeof name, "%s vf_token=%s", pf, ws);
	get_device(gp, name, EACCES, "PF with a wrong token while a VF is open");
	snprintf(name, sizeof name, "%s vf_token=%s", pf, ts);
	fd = get_device(gp, name, 0, "PF with the right token while a VF is open");
	if (fd >= 0)
		close(fd);

	klog("closing the VF");
	close(vfd);
	fd = get_device(gp, pf, 0, "PF without a token once the VF is closed");
	if (fd >= 0)
		close(fd);
	if (gv != gp) {
		ioctl(gv, VFIO_GROUP_UNSET_CONTAINER);
		close(gv);
	}
	ioctl(gp, VFIO_GROUP_UNSET_CONTAINER);
	close(gp);
	close(c);
	return finish();
}

static int cmd_container(const char *dev, const char *expect, const char *driver)
{
	int want_ok = !strcmp(expect, "ok");
	int c, g, r, e, be, fd;
	char what[256], path[PATH_MAX];

	if (!want_ok && strcmp(expect, "eperm")) {
		fprintf(stderr, "vfio_token container: expect eperm or ok, not %s\n", expect);
		return 2;
	}
	c = open_container();
	if (c < 0)
		return finish();
	g = open_group(dev, want_ok);
	if (g < 0)
		return finish();
	r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
	e = r < 0 ? errno : 0;
	snprintf(what, sizeof what, "VFIO_GROUP_SET_CONTAINER on the group of %s -> %s", dev,
		 want_ok ? "success" : "EPERM");
	check(e == (want_ok ? 0 : EPERM), what, "gave %s", errname(e));
	if (!e && driver) {
		/* The group is owned by vfio now: a DMA-API driver must not probe a member. */
		snprintf(path, sizeof path, "/sys/bus/pci/drivers/%s/bind", driver);
		fd = open(path, O_WRONLY);
		if (fd < 0) {
			check(0, "open bind", "%s: %s", path, strerror(errno));
		} else {
			r = write(fd, dev, strlen(dev));
			be = r < 0 ? errno : 0;
			close(fd);
			snprintf(what, sizeof what, "bind %s to %s while the group is owned by vfio -> EBUSY",
				 dev, driver);
			check(be == EBUSY, what, "gave %s", errname(be));
		}
	}
	if (!e)
		ioctl(g, VFIO_GROUP_UNSET_CONTAINER);
	close(g);
	close(c);
	return finish();
}

/* ---- dma: a userspace virtio-net driver on a VF, through vfio and the vIOMMU ---- */

#define IOVA_BASE 0x40000000ULL
#define DMA_SIZE 0x20000
#define UNMAPPED_IOVA (IOVA_BASE + 0x1000000)
#define QSIZE 16
#define RX_BUFS 4
#define BUF_LEN 0x800
/* virtio-pci modern common configuration (virtio 1.x, 4.1.4.3) */
#define C_DFSELECT 0x00
#define C_DF 0x04
#define C_GFSELECT 0x08
#define C_GF 0x0c
#define C_STATUS 0x14
#define C_Q_SELECT 0x16
#define C_Q_SIZE 0x18
#define C_Q_ENABLE 0x1c
#define C_Q_NOFF 0x1e
#define C_Q_DESCLO 0x20
#define C_Q_AVAILLO 0x28
#define C_Q_USEDLO 0x30
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

struct vdesc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vq {
	uint64_t iova;	/* descriptor table; avail at +0x1000, used at +0x2000, buffers at +0x3000 */
	uint8_t *host;
	uint16_t notify_off;
	uint16_t next;	/* avail index we publish next */
};

static int devfd = -1;
static uint64_t cfg_region, common, notify, devcfg;
static uint32_t notify_mult;

static uint32_t rd(uint64_t at, int size)
{
	uint32_t v = 0;

	if (pread(devfd, &v, size, at) != size)
		return 0xffffffff;
	return v;
}

static void wr(uint64_t at, int size, uint32_t v)
{
	if (pwrite(devfd, &v, size, at) != size)
		klog("write of %d bytes at 0x%llx failed: %s", size, (unsigned long long)at, strerror(errno));
}

static void wr64(uint64_t at, uint64_t v)
{
	wr(at, 4, (uint32_t)v);
	wr(at + 4, 4, (uint32_t)(v >> 32));
}

static int region_offset(int index, uint64_t *off)
{
	struct vfio_region_info ri = { .argsz = sizeof ri, .index = index };

	if (ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0)
		return -1;
	*off = ri.offset;
	return 0;
}

static uint32_t le32_at(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The common, notify and device-specific structures from the vendor capabilities. */
static int find_caps(void)
{
	uint8_t cfg[256];
	int found = 0, guard = 0;
	uint8_t p;
	uint64_t bar;

	if (pread(devfd, cfg, sizeof cfg, cfg_region) != sizeof cfg)
		return -1;
	for (p = cfg[0x34] & 0xfc; p && p < 0xfc && guard++ < 48; p = cfg[p + 1] & 0xfc) {
		if (cfg[p] != 0x09 || region_offset(cfg[p + 4], &bar) < 0)
			continue;
		switch (cfg[p + 3]) {
		case 1:
			if (!(found & 1))
				common = bar + le32_at(cfg + p + 8);
			found |= 1;
			break;
		case 2:
			if (!(found & 2)) {
				notify = bar + le32_at(cfg + p + 8);
				notify_mult = le32_at(cfg + p + 16);
			}
			found |= 2;
			break;
		case 4:
			if (!(found & 4))
				devcfg = bar + le32_at(cfg + p + 8);
			found |= 4;
			break;
		}
	}
	return found == 7 ? 0 : -1;
}

static void setup_queue(int index, struct vq *q, uint8_t *mem, uint64_t off)
{
	char what[64];
	uint16_t max;

	q->iova = IOVA_BASE + off;
	q->host = mem + off;
	q->next = 0;
	wr(common + C_Q_SELECT, 2, index);
	max = rd(common + C_Q_SIZE, 2);
	snprintf(what, sizeof what, "queue %d: size %u >= %d", index, max, QSIZE);
	check(max >= QSIZE && max != 0xffff, what, "too small");
	wr(common + C_Q_SIZE, 2, QSIZE);
	wr64(common + C_Q_DESCLO, q->iova);
	wr64(common + C_Q_AVAILLO, q->iova + 0x1000);
	wr64(common + C_Q_USEDLO, q->iova + 0x2000);
	q->notify_off = rd(common + C_Q_NOFF, 2);
	wr(common + C_Q_ENABLE, 2, 1);
}

static volatile uint16_t *avail_idx(struct vq *q)
{
	return (volatile uint16_t *)(q->host + 0x1000 + 2);
}

static volatile uint16_t *used_idx(struct vq *q)
{
	return (volatile uint16_t *)(q->host + 0x2000 + 2);
}

/* Descriptor ID (also its avail slot) with ADDR/LEN/FLAGS, published to the device. */
static void post(struct vq *q, uint16_t id, uint64_t addr, uint32_t len, uint16_t flags)
{
	struct vdesc *d = (struct vdesc *)q->host + id;
	uint16_t *ring = (uint16_t *)(q->host + 0x1000 + 4);

	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = 0;
	ring[q->next % QSIZE] = id;
	__sync_synchronize();
	q->next++;
	*avail_idx(q) = q->next;
	__sync_synchronize();
}

static void kick(int index, struct vq *q)
{
	wr(notify + (uint64_t)q->notify_off * notify_mult, 2, index);
}

/* Waits up to MS milliseconds for the device's used index of Q to reach N. */
static int wait_used(struct vq *q, uint16_t n, int ms)
{
	struct timespec t = { 0, 1000000 };

	for (int i = 0; i < ms; i++) {
		if ((uint16_t)(*used_idx(q) - n) < 0x8000)
			return 1;
		nanosleep(&t, NULL);
	}
	return 0;
}

static int parse_mac(const char *s, uint8_t m[6])
{
	unsigned v[6];

	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		m[i] = (uint8_t)v[i];
	return 0;
}

static int parse_ip(const char *s, uint8_t ip[4])
{
	unsigned v[4];

	if (sscanf(s, "%u.%u.%u.%u", &v[0], &v[1], &v[2], &v[3]) != 4)
		return -1;
	for (int i = 0; i < 4; i++)
		ip[i] = (uint8_t)v[i];
	return 0;
}

static int cmd_dma(const char *vf, const char *pf_mac_s, const char *pf_ip_s, const char *vf_ip_s)
{
	uint8_t pf_mac[6], vf_mac[6], pf_ip[4], vf_ip[4];
	struct vfio_iommu_type1_dma_map map = { .argsz = sizeof map };
	struct vq rx, tx;
	uint32_t lo, hi, st;
	uint16_t cmd;
	uint8_t *mem, *f, *got;
	int c, g, r, ok;

	if (parse_mac(pf_mac_s, pf_mac) < 0 || parse_ip(pf_ip_s, pf_ip) < 0 || parse_ip(vf_ip_s, vf_ip) < 0) {
		fprintf(stderr, "vfio_token dma: bad PF-MAC, PF-IP or VF-IP\n");
		return 2;
	}
	c = container_for(vf, "VF", &g);
	if (c < 0)
		return finish();
	devfd = get_device(g, vf, 0, "VF (PF on virtio-pci: no token)");
	if (devfd < 0)
		return finish();

	mem = mmap(NULL, DMA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	check(mem != MAP_FAILED, "DMA memory", "mmap: %s", strerror(errno));
	if (mem == MAP_FAILED)
		return finish();
	memset(mem, 0, DMA_SIZE);
	map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
	map.vaddr = (uintptr_t)mem;
	map.iova = IOVA_BASE;
	map.size = DMA_SIZE;
	r = ioctl(c, VFIO_IOMMU_MAP_DMA, &map);
	check(r == 0, "VFIO_IOMMU_MAP_DMA 128 KiB at IOVA 0x40000000", "%s", errname(errno));
	if (r)
		return finish();

	r = region_offset(VFIO_PCI_CONFIG_REGION_INDEX, &cfg_region);
	check(r == 0 && find_caps() == 0, "virtio-pci modern capabilities (common, notify, device)",
	      "not found");
	if (failed)
		return finish();
	/* Memory space and bus mastering: the device may now DMA, through the IOMMU only. */
	if (pread(devfd, &cmd, 2, cfg_region + 4) == 2) {
		cmd |= 0x6;
		r = pwrite(devfd, &cmd, 2, cfg_region + 4) == 2;
		check(r, "PCI command: memory and bus master", "%s", strerror(errno));
	}

	wr(common + C_STATUS, 1, 0);
	for (int i = 0; i < 100 && rd(common + C_STATUS, 1) != 0; i++)
		usleep(10000);
	wr(common + C_STATUS, 1, S_ACK);
	wr(common + C_STATUS, 1, S_ACK | S_DRIVER);
	wr(common + C_DFSELECT, 4, 0);
	lo = rd(common + C_DF, 4);
	wr(common + C_DFSELECT, 4, 1);
	hi = rd(common + C_DF, 4);
	check(hi & 1, "VIRTIO_F_VERSION_1 offered", "features %08x%08x", hi, lo);
	check(hi & 2, "VIRTIO_F_ACCESS_PLATFORM offered (the device's DMA goes through the vIOMMU)",
	      "features %08x%08x", hi, lo);
	check(lo & (1u << 5), "VIRTIO_NET_F_MAC offered", "features %08x%08x", hi, lo);
	wr(common + C_GFSELECT, 4, 0);
	wr(common + C_GF, 4, lo & (1u << 5));
	wr(common + C_GFSELECT, 4, 1);
	wr(common + C_GF, 4, 3);
	wr(common + C_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK);
	st = rd(common + C_STATUS, 1);
	check(st & S_FEATURES_OK, "FEATURES_OK (VERSION_1, ACCESS_PLATFORM, MAC)", "status 0x%x", st);
	if (failed)
		return finish();
	for (int i = 0; i < 6; i++)
		vf_mac[i] = rd(devcfg + i, 1);
	printf("INFO VF MAC %02x:%02x:%02x:%02x:%02x:%02x\n", vf_mac[0], vf_mac[1], vf_mac[2], vf_mac[3],
	       vf_mac[4], vf_mac[5]);

	setup_queue(0, &rx, mem, 0);
	setup_queue(1, &tx, mem, 0x8000);
	for (int i = 0; i < RX_BUFS; i++)
		post(&rx, i, rx.iova + 0x3000 + i * BUF_LEN, BUF_LEN, 2 /* VRING_DESC_F_WRITE */);
	wr(common + C_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	st = rd(common + C_STATUS, 1);
	check((st & S_DRIVER_OK) && !(st & S_NEEDS_RESET), "DRIVER_OK", "status 0x%x", st);
	kick(0, &rx);

	/* An ARP request for the PF's address, from this VF: 12-byte header (no offloads), frame. */
	f = tx.host + 0x3000;
	memset(f, 0, BUF_LEN);
	f += 12;
	memcpy(f, pf_mac, 6);
	memcpy(f + 6, vf_mac, 6);
	f[12] = 0x08, f[13] = 0x06;
	f[14] = 0, f[15] = 1, f[16] = 8, f[17] = 0, f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1;
	memcpy(f + 22, vf_mac, 6);
	memcpy(f + 28, vf_ip, 4);
	memcpy(f + 38, pf_ip, 4);
	post(&tx, 0, tx.iova + 0x3000, 12 + 60, 0);
	kick(1, &tx);
	check(wait_used(&tx, 1, 5000), "TX: an ARP request from this process's memory, completed",
	      "used index %u after 5 s", *used_idx(&tx));

	/* The PF's reply, written by the device into this process's memory through the vIOMMU. */
	ok = wait_used(&rx, 1, 5000);
	check(ok, "RX: a frame written into this process's memory", "used index %u after 5 s",
	      *used_idx(&rx));
	if (ok) {
		uint32_t id = *(volatile uint32_t *)(rx.host + 0x2000 + 4);
		got = rx.host + 0x3000 + (id % RX_BUFS) * BUF_LEN + 12;
		check(got[12] == 0x08 && got[13] == 0x06 && got[21] == 2 && !memcmp(got + 6, pf_mac, 6) &&
		      !memcmp(got + 28, pf_ip, 4) && !memcmp(got, vf_mac, 6),
		      "RX: the PF's ARP reply to this VF", "ethertype %02x%02x op %u from %02x:%02x:%02x:%02x:%02x:%02x",
		      got[12], got[13], got[21], got[6], got[7], got[8], got[9], got[10], got[11]);
	}

	/* A descriptor whose IOVA this process never mapped: the device must not read through it. */
	post(&tx, 1, UNMAPPED_IOVA, 12 + 60, 0);
	kick(1, &tx);
	check(wait_used(&tx, 2, 10000), "TX: a descriptor at an unmapped IOVA, completed unread",
	      "used index %u after 10 s", *used_idx(&tx));

	wr(common + C_STATUS, 1, 0);
	for (int i = 0; i < 100 && rd(common + C_STATUS, 1) != 0; i++)
		usleep(10000);
	close(devfd);
	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof unmap, .iova = IOVA_BASE, .size = DMA_SIZE };
	r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &unmap);
	check(r == 0, "VFIO_IOMMU_UNMAP_DMA", "%s", errname(errno));
	ioctl(g, VFIO_GROUP_UNSET_CONTAINER);
	close(g);
	close(c);
	return finish();
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	kmsg = open("/dev/kmsg", O_WRONLY);
	if (argc == 4 && !strcmp(argv[1], "token"))
		return cmd_token(argv[2], argv[3]);
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "container"))
		return cmd_container(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
	if (argc == 6 && !strcmp(argv[1], "dma"))
		return cmd_dma(argv[2], argv[3], argv[4], argv[5]);
	fprintf(stderr, "usage: vfio_token token PF VF\n"
			"       vfio_token container DEV eperm|ok [BIND-DRIVER]\n"
			"       vfio_token dma VF PF-MAC PF-IP VF-IP\n");
	return 2;
}
