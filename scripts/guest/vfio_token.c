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

	c = open_container();
	if (c < 0)
		return finish();
	gp = open_group(pf, 1);
	if (gp < 0)
		return finish();
	r = ioctl(gp, VFIO_GROUP_SET_CONTAINER, &c);
	check(r == 0, "PF group: VFIO_GROUP_SET_CONTAINER", "%s", errname(errno));
	r = ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	check(r == 0, "VFIO_SET_IOMMU type1v2", "%s", errname(errno));
	if (failed)
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

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	kmsg = open("/dev/kmsg", O_WRONLY);
	if (argc == 4 && !strcmp(argv[1], "token"))
		return cmd_token(argv[2], argv[3]);
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "container"))
		return cmd_container(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
	fprintf(stderr, "usage: vfio_token token PF VF\n"
			"       vfio_token container DEV eperm|ok [BIND-DRIVER]\n");
	return 2;
}
