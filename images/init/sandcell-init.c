/*
 * sandcell-init: PID 1 of a sandcell microVM guest.
 *
 * Boots from the initramfs: mounts /dev, /proc and /sys, loads the kernel modules listed in
 * /modules/order, sets the clock and mixes in the seed the host put on the kernel command line,
 * mounts the template image (read-only), the sandcell image (node + agent, read-only) and the
 * per-VM writable disk as an overlay, moves into it, and starts the agent in its own PID and
 * mount namespace and cgroup (so that the sandbox sees only its own processes and its pids limit
 * applies). Then it stays PID 1: it reaps zombies, forwards SIGTERM, answers the host on the
 * `sandcell.ctl` virtio-serial port under QEMU or vsock port 1024 under Firecracker (stats, clock
 * and entropy sync after a restore, limits, disk growth), and powers the VM off when the agent exits. The agent's output goes to the serial
 * console, which the host keeps as the sandbox's log.
 *
 * One static C binary instead of busybox and a script: under TCG every fork+exec of a helper
 * costs milliseconds of emulated work, the ctl protocol needs a long-lived process anyway, and
 * a single file has no dependencies to put into the initramfs.
 *
 * Build: gcc -static -Os -Wall -Wextra -o init sandcell-init.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <net/route.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef EXT4_IOC_RESIZE_FS
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
#endif

#define AGENT_PORT "49983"
#define GUEST_IP "10.0.2.15"
#define GUEST_NETMASK "255.255.255.0"
#define GUEST_GATEWAY "10.0.2.2"
#define SANDBOX_CGROUP "/sys/fs/cgroup/sandbox"
#define CTL_PORT_NAME "sandcell.ctl"
/* Under Firecracker (no virtio-serial) the same protocol is served on this vsock port. */
#define CTL_VSOCK_PORT 1024
/* Seconds the agent gets to stop on SIGTERM before the VM powers off anyway. */
#define STOP_GRACE_MS 5000

static int console_fd = 2;
static int disk_fd = -1;   /* the writable disk's mount root, for statfs and resize */
static int disk_dev = -1;  /* the writable disk's block device */
static int ctl_fd = -1;
static int ctl_connected = 0;
static int vsock_listen_fd = -1;
static int vsock_client_fd = -1;
/* Where the answer to the request being handled goes: the serial port or the vsock client. */
static int reply_fd = -1;
static int agent_ready = 0;
static int debug = 0;
static pid_t reaper_pid = -1;
struct ctl_buffer {
  char data[4096];
  size_t len;
};
static struct ctl_buffer serial_in, vsock_in;

static void say(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) {
    return;
  }
  if ((size_t)n > sizeof line - 2) {
    n = sizeof line - 2;
  }
  line[n++] = '\n';
  /* "sandcell-init: " lets the host tell our lines from the kernel's and the agent's. */
  dprintf(console_fd, "sandcell-init: %.*s", n, line);
}

static void power_off(void) __attribute__((noreturn));

static void fatal(const char *fmt, ...) {
  char line[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  say("fatal: %s (%s)", line, strerror(errno));
  power_off();
}

static void power_off(void) {
  kill(-1, SIGKILL);
  sync();
  /* The host runs QEMU with -no-reboot: a reset ends the VM whatever the firmware supports. */
  reboot(RB_AUTOBOOT);
  for (;;) {
    pause();
  }
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, text, strlen(text)) < 0) {
    say("cannot write %s: %s", path, strerror(errno));
  }
  if (fd >= 0) {
    close(fd);
  }
}

static ssize_t read_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) {
    return -1;
  }
  buf[n] = 0;
  return n;
}

static void must_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                       const char *data) {
  mkdir(dst, 0755);
  if (mount(src, dst, type, flags, data) != 0) {
    fatal("mount %s on %s (%s)", src, dst, type ? type : "bind");
  }
}

/* Value of `key=` on the kernel command line, or NULL. */
static char cmdline[4096];
static const char *cmdline_value(const char *key) {
  size_t klen = strlen(key);
  for (char *p = cmdline; p && *p;) {
    while (*p == ' ') {
      p++;
    }
    if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
      return p + klen + 1;
    }
    p = strchr(p, ' ');
  }
  return NULL;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes hex up to a space or the end; returns the byte count. */
static size_t decode_hex(const char *hex, unsigned char *out, size_t max) {
  size_t n = 0;
  while (n < max && hex[0] && hex[1] && hex_value(hex[0]) >= 0 && hex_value(hex[1]) >= 0) {
    out[n++] = (unsigned char)(hex_value(hex[0]) << 4 | hex_value(hex[1]));
    hex += 2;
  }
  return n;
}

/* Sets the wall clock from nanoseconds since the epoch. */
static void set_clock(const char *ns_text) {
  unsigned long long ns = strtoull(ns_text, NULL, 10);
  if (ns == 0) {
    return;
  }
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ULL), .tv_nsec = (long)(ns % 1000000000ULL)};
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) {
    say("cannot set the clock: %s", strerror(errno));
  }
}

/*
 * Adds host randomness to the kernel pool. `credit`: counts it as entropy and reseeds at once
 * (the private ctl channel, after a restore made this VM a copy of another); the command-line
 * seed is readable in /proc/cmdline, so it is only mixed in.
 */
static void add_entropy(const char *hex, int credit) {
  struct {
    struct rand_pool_info info;
    unsigned char bytes[64];
  } seed;
  size_t n = decode_hex(hex, seed.bytes, sizeof seed.bytes);
  if (n == 0) {
    return;
  }
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return;
  }
  if (credit) {
    seed.info.entropy_count = (int)(n * 8);
    seed.info.buf_size = (int)n;
    if (ioctl(fd, RNDADDENTROPY, &seed) != 0 || ioctl(fd, RNDRESEEDCRNG) != 0) {
      say("cannot reseed the random pool: %s", strerror(errno));
    }
  } else if (write(fd, seed.bytes, n) < 0) {
    say("cannot seed the random pool: %s", strerror(errno));
  }
  close(fd);
}

static void load_modules(void) {
  FILE *order = fopen("/modules/order", "re");
  if (!order) {
    fatal("open /modules/order");
  }
  char name[256];
  while (fgets(name, sizeof name, order)) {
    name[strcspn(name, "\n")] = 0;
    if (!name[0]) {
      continue;
    }
    char path[300];
    snprintf(path, sizeof path, "/modules/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fatal("open module %s", path);
    }
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) {
      fatal("load module %s", name);
    }
    close(fd);
    /* The initramfs stays in RAM for good: free what is not needed any more. */
    unlink(path);
  }
  fclose(order);
}

/*
 * Waits for the virtio disk called `name`; writes /dev/vdX into `dev`. Its serial is the name
 * under QEMU; Firecracker makes serials of its own, which the host passes as sandcell.disk.<name>.
 */
static void find_disk(const char *name, char *dev, size_t size) {
  char key[64], serial[64];
  snprintf(key, sizeof key, "sandcell.disk.%s", name);
  const char *given = cmdline_value(key);
  snprintf(serial, sizeof serial, "%.*s", given ? (int)strcspn(given, " ") : (int)strlen(name),
           given ? given : name);
  for (int attempt = 0; attempt < 1000; attempt++) {
    DIR *dir = opendir("/sys/block");
    struct dirent *entry;
    int found = 0;
    while (dir && !found && (entry = readdir(dir))) {
      char path[300], value[128];
      snprintf(path, sizeof path, "/sys/block/%s/serial", entry->d_name);
      if (strncmp(entry->d_name, "vd", 2) == 0 && read_file(path, value, sizeof value) > 0) {
        value[strcspn(value, "\n")] = 0;
        if (strcmp(value, serial) == 0) {
          snprintf(dev, size, "/dev/%s", entry->d_name);
          found = 1;
        }
      }
    }
    if (dir) {
      closedir(dir);
    }
    if (found && access(dev, F_OK) == 0) {
      return;
    }
    usleep(10000);
  }
  errno = ENODEV;
  fatal("no virtio disk with serial %s (%s)", serial, name);
}

static void set_address(int sock, unsigned long request, const char *ifname, const char *address) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  sin->sin_family = AF_INET;
  inet_pton(AF_INET, address, &sin->sin_addr);
  if (ioctl(sock, request, &ifr) != 0) {
    say("cannot configure %s: %s", ifname, strerror(errno));
  }
}

static void link_up(int sock, const char *ifname) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(sock, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) == 0) {
      return;
    }
  }
  say("cannot bring %s up: %s", ifname, strerror(errno));
}

static void add_default_route(int sock, const char *gateway) {
  struct rtentry route;
  memset(&route, 0, sizeof route);
  struct sockaddr_in *dst = (struct sockaddr_in *)&route.rt_dst;
  struct sockaddr_in *mask = (struct sockaddr_in *)&route.rt_genmask;
  struct sockaddr_in *gw = (struct sockaddr_in *)&route.rt_gateway;
  dst->sin_family = AF_INET;
  mask->sin_family = AF_INET;
  gw->sin_family = AF_INET;
  inet_pton(AF_INET, gateway, &gw->sin_addr);
  route.rt_flags = RTF_UP | RTF_GATEWAY;
  if (ioctl(sock, SIOCADDRT, &route) != 0 && errno != EEXIST) {
    say("cannot add the default route: %s", strerror(errno));
  }
}

/*
 * lo and eth0 on the TAP the host made. Every guest has the same address and gateway, so a
 * restored snapshot or a clone never needs re-addressing; the host decides what the gateway
 * forwards (nothing, without networking).
 */
static void setup_network(void) {
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    fatal("socket");
  }
  link_up(sock, "lo");
  set_address(sock, SIOCSIFADDR, "eth0", GUEST_IP);
  set_address(sock, SIOCSIFNETMASK, "eth0", GUEST_NETMASK);
  link_up(sock, "eth0");
  add_default_route(sock, GUEST_GATEWAY);
  close(sock);
}

/* Opens the virtio-serial port named CTL_PORT_NAME, non-blocking, with SIGIO on changes. */
static void open_ctl_port(void) {
  DIR *dir = opendir("/sys/class/virtio-ports");
  struct dirent *entry;
  while (dir && (entry = readdir(dir))) {
    char path[300], name[64];
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry->d_name);
    if (read_file(path, name, sizeof name) > 0 && strncmp(name, CTL_PORT_NAME, strlen(CTL_PORT_NAME)) == 0) {
      snprintf(path, sizeof path, "/dev/%s", entry->d_name);
      ctl_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
      break;
    }
  }
  if (dir) {
    closedir(dir);
  }
  if (ctl_fd < 0) {
    say("no %s port: the host cannot query this VM", CTL_PORT_NAME);
    return;
  }
  /* The port reports POLLHUP while no host is connected; SIGIO says when one connects. */
  fcntl(ctl_fd, F_SETOWN, getpid());
  fcntl(ctl_fd, F_SETFL, fcntl(ctl_fd, F_GETFL) | O_ASYNC);
}

static void ctl_reply(const char *fmt, ...) {
  if (reply_fd < 0) {
    return;
  }
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n > sizeof line - 2) {
    return;
  }
  line[n++] = '\n';
  /* Non-blocking: with no host listening the line is dropped, never blocking PID 1. */
  ssize_t written = write(reply_fd, line, (size_t)n);
  if (debug) {
    say("ctl reply %.*s -> %zd (%s)", n - 1, line, written, written < 0 ? strerror(errno) : "ok");
  }
  if (written < 0 && errno != EAGAIN && reply_fd == ctl_fd) {
    ctl_connected = 0;
  }
}

static unsigned long long meminfo_kib(const char *text, const char *key) {
  const char *p = strstr(text, key);
  return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

static void ctl_stats(const char *id) {
  char buf[8192];
  unsigned long long pids = 0, total = 0, available = 0, oom = 0;
  if (read_file(SANDBOX_CGROUP "/pids.current", buf, sizeof buf) > 0) {
    pids = strtoull(buf, NULL, 10);
  }
  if (read_file("/proc/meminfo", buf, sizeof buf) > 0) {
    total = meminfo_kib(buf, "MemTotal:") * 1024;
    available = meminfo_kib(buf, "MemAvailable:") * 1024;
  }
  if (read_file("/proc/vmstat", buf, sizeof buf) > 0) {
    oom = meminfo_kib(buf, "\noom_kill ");
  }
  struct statfs disk;
  unsigned long long disk_total = 0, disk_free = 0;
  if (disk_fd >= 0 && fstatfs(disk_fd, &disk) == 0) {
    disk_total = (unsigned long long)disk.f_blocks * disk.f_bsize;
    disk_free = (unsigned long long)disk.f_bfree * disk.f_bsize;
  }
  ctl_reply("%s ok pids=%llu mem_total=%llu mem_available=%llu oom_kills=%llu disk_total=%llu "
            "disk_free=%llu ready=%d",
            id, pids, total, available, oom, disk_total, disk_free, agent_ready);
}

/* Grows the writable disk's filesystem to the device's new size (after QMP block_resize). */
static void ctl_resize_disk(const char *id, const char *bytes_text) {
  unsigned long long want = strtoull(bytes_text, NULL, 10), size = 0;
  for (int i = 0; i < 300; i++) {
    if (ioctl(disk_dev, BLKGETSIZE64, &size) == 0 && size >= want) {
      break;
    }
    usleep(10000);
  }
  if (size < want) {
    ctl_reply("%s err the disk is %llu bytes, not %llu", id, size, want);
    return;
  }
  struct statfs fs;
  if (fstatfs(disk_fd, &fs) != 0) {
    ctl_reply("%s err statfs: %s", id, strerror(errno));
    return;
  }
  uint64_t blocks = size / (uint64_t)fs.f_bsize;
  if (ioctl(disk_fd, EXT4_IOC_RESIZE_FS, &blocks) != 0) {
    ctl_reply("%s err resize: %s", id, strerror(errno));
    return;
  }
  ctl_reply("%s ok blocks=%llu", id, (unsigned long long)blocks);
}

static void ctl_command(char *line) {
  char *id = strtok(line, " ");
  char *command = strtok(NULL, " ");
  if (!id || !command) {
    return;
  }
  if (strcmp(command, "ping") == 0) {
    ctl_reply("%s ok ready=%d", id, agent_ready);
  } else if (strcmp(command, "stats") == 0) {
    ctl_stats(id);
  } else if (strcmp(command, "sync") == 0) {
    /* sync <epoch ns> <seed hex>: after a restore this VM is one of many identical copies. */
    char *ns = strtok(NULL, " ");
    char *seed = strtok(NULL, " ");
    if (ns) set_clock(ns);
    if (seed) add_entropy(seed, 1);
    ctl_reply("%s ok", id);
  } else if (strcmp(command, "pids") == 0) {
    char *max = strtok(NULL, " ");
    if (max && strspn(max, "0123456789") == strlen(max)) {
      write_file(SANDBOX_CGROUP "/pids.max", max);
      ctl_reply("%s ok", id);
    } else {
      ctl_reply("%s err pids takes a number", id);
    }
  } else if (strcmp(command, "resize-disk") == 0) {
    char *bytes = strtok(NULL, " ");
    if (bytes) {
      ctl_resize_disk(id, bytes);
    } else {
      ctl_reply("%s err resize-disk takes a size in bytes", id);
    }
  } else if (strcmp(command, "shutdown") == 0) {
    ctl_reply("%s ok", id);
    if (reaper_pid > 0) {
      kill(reaper_pid, SIGTERM);
    }
  } else {
    ctl_reply("%s err unknown command %s", id, command);
  }
}

/* Reads what `fd` has and runs every complete line, answering on `fd`; 0 at end of file. */
static int ctl_read(int fd, struct ctl_buffer *in) {
  for (;;) {
    ssize_t n = read(fd, in->data + in->len, sizeof in->data - 1 - in->len);
    if (debug) {
      say("ctl read -> %zd (%s)", n, n < 0 ? strerror(errno) : "ok");
    }
    if (n == 0) {
      in->len = 0;
      return 0;
    }
    if (n < 0) {
      return 1; /* Nothing more now (EAGAIN); a broken peer shows as POLLHUP or POLLERR. */
    }
    in->len += (size_t)n;
    in->data[in->len] = 0;
    char *newline;
    while ((newline = strchr(in->data, '\n'))) {
      *newline = 0;
      reply_fd = fd;
      ctl_command(in->data);
      size_t rest = in->len - (size_t)(newline + 1 - in->data);
      memmove(in->data, newline + 1, rest);
      in->len = rest;
      in->data[in->len] = 0;
    }
    if (in->len == sizeof in->data - 1) {
      in->len = 0; /* A line this long is no request of ours. */
    }
  }
}

/* Listens on CTL_VSOCK_PORT when the VM has a vsock device (Firecracker); QEMU here has none. */
static void open_ctl_vsock(void) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return;
  }
  struct sockaddr_vm addr = {
      .svm_family = AF_VSOCK, .svm_port = CTL_VSOCK_PORT, .svm_cid = VMADDR_CID_ANY};
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 4) != 0) {
    close(fd);
    return;
  }
  vsock_listen_fd = fd;
}

/* One host client at a time (the host opens one connection per request); a newer one wins. */
static void ctl_accept_vsock(void) {
  int fd = accept4(vsock_listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    return;
  }
  if (vsock_client_fd >= 0) {
    close(vsock_client_fd);
  }
  vsock_client_fd = fd;
  vsock_in.len = 0;
}

/*
 * Mounts the images and the writable disk, puts the overlay at / and moves /dev, /proc and /sys
 * along (switch_root without exec: this process stays PID 1).
 */
static void mount_root(void) {
  char rootfs[300], sandcell[300], disk[300];
  find_disk("rootfs", rootfs, sizeof rootfs);
  find_disk("sandcell", sandcell, sizeof sandcell);
  find_disk("disk", disk, sizeof disk);
  must_mount(rootfs, "/lower", "erofs", MS_RDONLY, NULL);
  must_mount(sandcell, "/sandcell", "erofs", MS_RDONLY, NULL);
  must_mount(disk, "/disk", "ext4", MS_NOATIME, NULL);
  mkdir("/disk/upper", 0755);
  mkdir("/disk/work", 0700);
  disk_fd = open("/disk", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  disk_dev = open(disk, O_RDONLY | O_CLOEXEC);
  must_mount("overlay", "/newroot", "overlay", 0,
             "lowerdir=/lower,upperdir=/disk/upper,workdir=/disk/work");
  must_mount("/sandcell", "/newroot/.sandcell", NULL, MS_BIND | MS_RDONLY, NULL);
  mount(NULL, "/newroot/.sandcell", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
  must_mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL);
  must_mount("/proc", "/newroot/proc", NULL, MS_MOVE, NULL);
  must_mount("/sys", "/newroot/sys", NULL, MS_MOVE, NULL);
  if (chdir("/newroot") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 ||
      chdir("/") != 0) {
    fatal("switch to the overlay root");
  }
  must_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620");
  must_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  must_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mkdir("/run", 0755);
  must_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
}

static void setup_cgroup(void) {
  write_file("/sys/fs/cgroup/cgroup.subtree_control", "+pids +memory");
  if (mkdir(SANDBOX_CGROUP, 0755) != 0 && errno != EEXIST) {
    say("cannot create the sandbox cgroup: %s", strerror(errno));
  }
  const char *pids = cmdline_value("sandcell.pids");
  if (pids) {
    char value[32];
    snprintf(value, sizeof value, "%.*s", (int)strcspn(pids, " "), pids);
    write_file(SANDBOX_CGROUP "/pids.max", value);
  }
}

static volatile sig_atomic_t reaper_stop = 0;
static void on_reaper_term(int sig) {
  (void)sig;
  reaper_stop = 1;
}

/*
 * PID 1 of the sandbox's PID namespace (what bwrap is in the container driver): starts the
 * agent as PID 2, reaps orphans, forwards SIGTERM, exits with the agent's status.
 */
static void run_reaper(int ready_fd) __attribute__((noreturn));
static void run_reaper(int ready_fd) {
  write_file(SANDBOX_CGROUP "/cgroup.procs", "0");
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
      mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
    say("reaper: cannot mount its /proc: %s", strerror(errno));
    _exit(120);
  }
  struct sigaction sa = {.sa_handler = on_reaper_term};
  sigaction(SIGTERM, &sa, NULL);
  pid_t agent = fork();
  if (agent == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGTERM, SIG_DFL);
    setsid();
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(console_fd, 1);
    dup2(console_fd, 2);
    if (ready_fd != 3) {
      dup2(ready_fd, 3);
    }
    fcntl(3, F_SETFD, 0);
    for (int fd = 4; fd < 64; fd++) {
      close(fd);
    }
    char *argv[] = {"/.sandcell/lib/ld.so",
                    "--library-path",
                    "/.sandcell/lib",
                    "/.sandcell/bin/node",
                    "--v8-pool-size=1",
                    "/.sandcell/agent/agent.mjs",
                    "--listen",
                    "tcp:0.0.0.0:" AGENT_PORT,
                    "--ready-fd",
                    "3",
                    NULL};
    char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    execve(argv[0], argv, envp);
    say("cannot start the agent: %s", strerror(errno));
    _exit(127);
  }
  close(ready_fd);
  sigset_t unblock;
  sigemptyset(&unblock);
  sigprocmask(SIG_SETMASK, &unblock, NULL);
  int forwarded = 0;
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid == agent) {
      if (WIFSIGNALED(status)) {
        say("the agent was killed by signal %d", WTERMSIG(status));
        _exit(128 + WTERMSIG(status));
      }
      say("the agent exited with code %d", WEXITSTATUS(status));
      _exit(WEXITSTATUS(status));
    }
    if (pid < 0 && errno != EINTR) {
      _exit(121);
    }
    if (reaper_stop && !forwarded) {
      kill(agent, SIGTERM);
      forwarded = 1;
    }
  }
}

static void start_agent(int *ready_read) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) {
    fatal("pipe");
  }
  reaper_pid = (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | SIGCHLD, NULL, NULL, NULL, NULL);
  if (reaper_pid < 0) {
    fatal("clone the sandbox namespace");
  }
  if (reaper_pid == 0) {
    close(ready[0]);
    /* The ready fd must survive the agent's exec: dup without O_CLOEXEC happens in the child. */
    run_reaper(ready[1]);
  }
  close(ready[1]);
  *ready_read = ready[0];
}

int main(void) {
  if (getpid() != 1) {
    fprintf(stderr, "sandcell-init must run as PID 1\n");
    return 1;
  }
  mkdir("/dev", 0755);
  mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  int console = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (console >= 0) {
    console_fd = console;
  }
  must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  must_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  read_file("/proc/cmdline", cmdline, sizeof cmdline);
  cmdline[strcspn(cmdline, "\n")] = 0;
  debug = cmdline_value("sandcell.debug") != NULL;
  const char *clock = cmdline_value("sandcell.clock");
  if (clock) set_clock(clock);
  const char *seed = cmdline_value("sandcell.seed");
  if (seed) add_entropy(seed, 0);
  reboot(RB_DISABLE_CAD);
  if (cmdline_value("sandcell.probe")) {
    /* The host only asks whether this accelerator can run the kernel this far. */
    say("probe ok");
    power_off();
  }

  /* Everything PID 1 handles arrives through signalfd; the default actions never run. */
  sigset_t handled;
  sigemptyset(&handled);
  sigaddset(&handled, SIGCHLD);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGPWR);
  sigaddset(&handled, SIGIO);
  sigprocmask(SIG_BLOCK, &handled, NULL);
  int sigfd = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);

  load_modules();
  mount_root();
  setup_cgroup();
  sethostname("sandbox", 7);
  setup_network();
  write_file("/proc/sys/vm/overcommit_memory", "1");
  open_ctl_port();
  open_ctl_vsock();
  int ready_fd = -1;
  start_agent(&ready_fd);
  /* The host's stats and the shutdown path must get through even when the sandbox is busy. */
  setpriority(PRIO_PROCESS, 0, -15);
  ctl_connected = 1;

  char ready_line[512];
  size_t ready_len = 0;
  long long stop_deadline = -1;
  for (;;) {
    struct pollfd fds[5] = {{.fd = sigfd, .events = POLLIN},
                            {.fd = ready_fd, .events = POLLIN},
                            {.fd = ctl_connected ? ctl_fd : -1, .events = POLLIN},
                            {.fd = vsock_listen_fd, .events = POLLIN},
                            {.fd = vsock_client_fd, .events = POLLIN}};
    /*
     * With no host connected the port reports POLLHUP, so it leaves the poll set until SIGIO
     * says a host came; a re-check every 200 ms covers a connection whose signal was merged
     * with the previous disconnect's.
     */
    int timeout = ctl_fd >= 0 && !ctl_connected ? 200 : -1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long now_ms = now.tv_sec * 1000LL + now.tv_nsec / 1000000;
    if (stop_deadline >= 0) {
      if (now_ms >= stop_deadline) {
        say("the agent did not stop in time");
        power_off();
      }
      timeout = (int)(stop_deadline - now_ms);
    }
    int ready = poll(fds, 5, timeout);
    if (ready < 0 && errno != EINTR) {
      fatal("poll");
    }
    if (ready == 0 && ctl_fd >= 0 && !ctl_connected) {
      ctl_connected = 1;
    }
    if (fds[1].revents) {
      ssize_t n = read(ready_fd, ready_line + ready_len, sizeof ready_line - 1 - ready_len);
      if (n > 0) {
        ready_len += (size_t)n;
        ready_line[ready_len] = 0;
        if (strchr(ready_line, '\n')) {
          agent_ready = strncmp(ready_line, "ready", 5) == 0;
          say("agent %s", agent_ready ? "ready" : "failed to start");
          close(ready_fd);
          ready_fd = -1;
        }
      } else {
        close(ready_fd);
        ready_fd = -1;
      }
    }
    if (debug && fds[2].revents) {
      say("ctl revents %x", fds[2].revents);
    }
    if (fds[2].revents & POLLIN) {
      if (!ctl_read(ctl_fd, &serial_in)) {
        /* No host connected: wait for SIGIO instead of spinning on POLLHUP. */
        ctl_connected = 0;
      }
    } else if (fds[2].revents & (POLLHUP | POLLERR)) {
      ctl_connected = 0;
    }
    if (fds[4].revents && vsock_client_fd >= 0 &&
        (!(fds[4].revents & POLLIN) || !ctl_read(vsock_client_fd, &vsock_in))) {
      close(vsock_client_fd);
      vsock_client_fd = -1;
    }
    if (fds[3].revents & POLLIN) {
      ctl_accept_vsock();
    }
    if (fds[0].revents & POLLIN) {
      struct signalfd_siginfo info;
      while (read(sigfd, &info, sizeof info) == sizeof info) {
        if (debug) {
          say("signal %d", (int)info.ssi_signo);
        }
        if (info.ssi_signo == SIGIO) {
          ctl_connected = ctl_fd >= 0;
        } else if (info.ssi_signo == SIGCHLD) {
          int status;
          pid_t pid;
          while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid == reaper_pid) {
              say("powering off: the agent exited (%s %d)",
                  WIFSIGNALED(status) ? "signal" : "code",
                  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
              power_off();
            }
          }
        } else if (stop_deadline < 0) {
          say("stopping on signal %d", (int)info.ssi_signo);
          kill(reaper_pid, SIGTERM);
          clock_gettime(CLOCK_MONOTONIC, &now);
          stop_deadline = now.tv_sec * 1000LL + now.tv_nsec / 1000000 + STOP_GRACE_MS;
        }
      }
    }
  }
}
