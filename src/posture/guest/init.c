/*
 * The L3 guest's native init: what initramfs.INIT and the session's setup script do with
 * busybox, in one process and with system calls only, because under TCG every process
 * the guest starts costs milliseconds (about 10 ms per busybox applet here).
 *
 * posture compiles it statically on the host with the native agent's compiler and puts it
 * in the initramfs as /init (l3/initramfs.py). It mounts /dev, /proc and /sys, loads the
 * modules listed in /lib/modules/posture.load (the root share's first, a line "--", then the
 * rest), mounts the two virtio-fs shares, and then performs the session's steps, read from
 * /.posture-guest/boot.steps in the root share (l3/guestboot.py writes them): NUL-terminated
 * fields, each step an operation name followed by its fields. The last step replaces this
 * process with the exec agent in the new root, as the user. The steps come from posture on
 * the host through the read-only root share; a malformed file stops the boot, loudly.
 * Every failure prints a `posture-init:` line on the console (console.log), as the busybox
 * init does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define R "/newroot"
#define STEPS R "/.posture-guest/boot.steps"
#define MAX_STEPS_FILE (1 << 20)
#define MAX_ARGS 64

static char dev[300], gwdev[300];
static int console = 1; /* where say() writes: the console */

static void say(const char *fmt, const char *a, const char *b) {
    char line[768];
    int n = snprintf(line, sizeof line, fmt, a ? a : "", b ? b : "");
    if (n > 0) (void)!write(console, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
}

static void die(const char *what, const char *detail) {
    say("posture-init: %s%s\n", what, detail);
    sync();
    reboot(RB_POWER_OFF);
    _exit(1);
}

static void mark(const char *label) {
    char up[64] = "?";
    int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, up, sizeof up - 1);
        up[n > 0 ? n : 1] = 0;
        close(fd);
        char *sp = strchr(up, ' ');
        if (sp) *sp = 0;
    }
    say("posture-t: %s %s\n", label, up);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* `path` under the new root (the steps name guest paths) */
static const char *in_root(const char *path, char *buf, size_t size) {
    if (snprintf(buf, size, R "%s", path) >= (int)size) die("path too long: ", path);
    return buf;
}

static int mkdir_p(const char *path, mode_t mode) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, mode) && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(buf, mode) && errno != EEXIST) ? -1 : 0;
}

static int mkdir_parent(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return 0;
    *slash = 0;
    return mkdir_p(buf, 0755);
}

/* busybox mount's -o: the flag words become mount flags, the rest the data string */
static int mount_opts(const char *src, const char *target, const char *fstype, const char *opts) {
    char data[512] = "", buf[512];
    unsigned long flags = 0;
    if (snprintf(buf, sizeof buf, "%s", opts) >= (int)sizeof buf) return -1;
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        if (!strcmp(w, "nosuid")) flags |= MS_NOSUID;
        else if (!strcmp(w, "nodev")) flags |= MS_NODEV;
        else if (!strcmp(w, "noexec")) flags |= MS_NOEXEC;
        else if (!strcmp(w, "ro")) flags |= MS_RDONLY;
        else {
            size_t have = strlen(data);
            if (snprintf(data + have, sizeof data - have, "%s%s", have ? "," : "", w) >= (int)(sizeof data - have)) return -1;
        }
    }
    return mount(src, target, fstype, flags, data[0] ? data : NULL);
}

/* ------------------------------------------------------------------ modules */

static void load_modules(FILE *list) {
    char line[512];
    while (fgets(line, sizeof line, list)) {
        line[strcspn(line, "\n")] = 0;
        if (!strcmp(line, "--")) return; /* the next group loads after the root share is mounted */
        if (!line[0]) continue;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { say("posture-init: no module %s%s\n", line, ""); continue; }
        if (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST) say("posture-init: cannot load %s: %s\n", line, strerror(errno));
        close(fd);
        unlink(line); /* the initramfs stays in memory: give the module's copy back */
    }
}

/* ------------------------------------------------------------------ network */

static int if_up(int s, const char *name) {
    struct ifreq r;
    memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, sizeof r.ifr_name, "%s", name);
    if (ioctl(s, SIOCGIFFLAGS, &r)) return -1;
    r.ifr_flags |= IFF_UP;
    return ioctl(s, SIOCSIFFLAGS, &r);
}

static int split_prefix(const char *cidr, char *addr, size_t size) {
    const char *slash = strchr(cidr, '/');
    size_t n = slash ? (size_t)(slash - cidr) : strlen(cidr);
    if (n >= size) return -1;
    memcpy(addr, cidr, n);
    addr[n] = 0;
    return slash ? atoi(slash + 1) : -1;
}

static void net4(const char *ifname, const char *cidr, const char *gw) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char ip[64];
    int prefix = split_prefix(cidr, ip, sizeof ip);
    struct ifreq r;
    memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, sizeof r.ifr_name, "%s", ifname);
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.ifr_addr;
    sin->sin_family = AF_INET;
    if (s < 0 || if_up(s, ifname)) {
        if (s >= 0) close(s);
        return; /* no eth0 (the shell's `ip link set eth0 up 2>/dev/null &&`) */
    }
    if (prefix < 0 || prefix > 32 || inet_pton(AF_INET, ip, &sin->sin_addr) != 1 || ioctl(s, SIOCSIFADDR, &r)) {
        say("posture-init: cannot give %s the address %s\n", ifname, cidr);
        close(s);
        return;
    }
    sin->sin_addr.s_addr = htonl(prefix ? ~0u << (32 - prefix) : 0);
    if (ioctl(s, SIOCSIFNETMASK, &r)) say("posture-init: cannot set the netmask of %s%s\n", ifname, "");
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
    ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
    struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
    g->sin_family = AF_INET;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (inet_pton(AF_INET, gw, &g->sin_addr) != 1 || ioctl(s, SIOCADDRT, &rt)) say("posture-init: cannot add the default route via %s%s\n", gw, "");
    close(s);
}

struct in6_ifreq_compat { struct in6_addr addr; uint32_t prefixlen; int ifindex; };

static void net6(const char *ifname, const char *cidr, const char *gw) {
    char path[128], ip[64];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/accept_dad", ifname);
    int fd = open(path, O_WRONLY | O_CLOEXEC); /* the shell's `nodad`: the address is usable at once */
    if (fd < 0) return; /* no IPv6 on this interface (the shell's `2>/dev/null`) */
    (void)!write(fd, "0", 1);
    close(fd);
    int prefix = split_prefix(cidr, ip, sizeof ip);
    int s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct in6_ifreq_compat r;
    memset(&r, 0, sizeof r);
    r.ifindex = (int)if_nametoindex(ifname);
    r.prefixlen = (uint32_t)prefix;
    if (s < 0 || !r.ifindex || prefix < 0 || inet_pton(AF_INET6, ip, &r.addr) != 1 || ioctl(s, SIOCSIFADDR, &r)) {
        if (s >= 0) close(s);
        return;
    }
    struct in6_rtmsg rt;
    memset(&rt, 0, sizeof rt);
    rt.rtmsg_flags = RTF_UP | RTF_GATEWAY;
    rt.rtmsg_metric = 1;
    rt.rtmsg_ifindex = r.ifindex;
    if (inet_pton(AF_INET6, gw, &rt.rtmsg_gateway) == 1) (void)ioctl(s, SIOCADDRT, &rt);
    close(s);
}

/* ------------------------------------------------------------------ virtio ports */

static int find_port(const char *name, char *out, size_t size) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d) return -1;
    int found = -1;
    for (struct dirent *e; found && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[512], got[256] = "", node[300];
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, got, sizeof got - 1);
        close(fd);
        got[n > 0 ? n : 0] = 0;
        got[strcspn(got, "\n")] = 0;
        snprintf(node, sizeof node, "/dev/%s", e->d_name);
        if (!strcmp(got, name) && access(node, F_OK) == 0 && strlen(node) < size) {
            memcpy(out, node, strlen(node) + 1);
            found = 0;
        }
    }
    closedir(d);
    return found;
}

/* ------------------------------------------------------------------ steps */

static char *steps, *steps_end, *cursor;

static const char *field(void) {
    if (cursor >= steps_end) die("the boot steps end too early: ", STEPS);
    char *f = cursor;
    char *nul = memchr(cursor, 0, (size_t)(steps_end - cursor));
    if (!nul) die("the boot steps are malformed: ", STEPS);
    cursor = nul + 1;
    return f;
}

static long number(void) {
    const char *f = field();
    char *end;
    errno = 0;
    long v = strtol(f, &end, 10);
    if (!*f || *end || errno || v < 0 || v > 0xfffffffeL) die("the boot steps hold a bad number: ", f);
    return v;
}

static void read_steps(void) {
    int fd = open(STEPS, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("no boot steps: ", STEPS);
    steps = malloc(MAX_STEPS_FILE);
    ssize_t have = 0, n;
    while (steps && have < MAX_STEPS_FILE && (n = read(fd, steps + have, (size_t)(MAX_STEPS_FILE - have))) > 0) have += n;
    close(fd);
    if (!steps || have <= 0 || have >= MAX_STEPS_FILE) die("cannot read the boot steps: ", STEPS);
    cursor = steps;
    steps_end = steps + have;
}

static void step_bind(void) {
    const char *src = field(), *target = field();
    long is_dir = number(), ro = number();
    char s[4096], t[4096];
    in_root(src, s, sizeof s);
    in_root(target, t, sizeof t);
    int ok;
    if (is_dir) ok = mkdir_p(t, 0755) == 0;
    else {
        ok = mkdir_parent(t) == 0;
        /* read-only: the mount point may already be in the read-only root share, and must not be written */
        int fd = ok ? open(t, O_RDONLY | O_CREAT | O_CLOEXEC, 0644) : -1;
        ok = fd >= 0;
        if (fd >= 0) close(fd);
    }
    ok = ok && mount(s, t, NULL, MS_BIND, NULL) == 0;
    int bound = ok;
    if (ok && ro) ok = mount(NULL, t, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) == 0;
    if (!ok) say("posture-init: mount failed: %s (%s)\n", target, strerror(errno));
    if (bound && !ok && umount2(t, MNT_DETACH)) die("a bind that should be read-only stays writable: ", target);
}

static void step_door(void) {
    const char *name = field(), *ready = field();
    long argc = number();
    if (argc < 1 || argc > MAX_ARGS) die("the boot steps hold a bad door command", NULL);
    char *argv[MAX_ARGS + 3];
    for (long i = 0; i < argc; i++) argv[i] = (char *)field();
    for (int i = 0; i < 200 && find_port(name, gwdev, sizeof gwdev); i++) sleep_ms(10);
    if (find_port(name, gwdev, sizeof gwdev)) { say("posture-init: no gateway channel%s%s\n", "", ""); mark("door"); return; }
    argv[argc] = "--device";
    argv[argc + 1] = gwdev;
    argv[argc + 2] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (chroot(R) || chdir("/") || null < 0) { say("posture-init: cannot start the gateway door: %s%s\n", strerror(errno), ""); _exit(126); }
        console = fcntl(1, F_DUPFD_CLOEXEC, 3); /* for a failed exec's message; the door's own stdio is /dev/null */
        dup2(null, 0); dup2(null, 1); dup2(null, 2);
        execv(argv[0], argv);
        say("posture-init: cannot start the gateway door: %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    char r[4096];
    in_root(ready, r, sizeof r);
    int i = 0, status;
    while (pid > 0 && i < 3000 && access(r, F_OK)) {
        if (waitpid(pid, &status, WNOHANG) == pid) { say("posture-init: the gateway door exited before it opened%s%s\n", "", ""); break; }
        sleep_ms(10);
        i++;
    }
    if (pid < 0 || access(r, F_OK)) say("posture-init: the gateway door did not open%s%s\n", "", "");
    mark("door");
}

/*
 * The inode reaper: virtiofsd holds one descriptor for every inode the guest has looked up
 * until the guest forgets it, and the guest kernel keeps dentries (and so their inodes) for as
 * long as it has memory. One walk of /usr is 140,000 of them: past virtiofsd's RLIMIT_NOFILE
 * every lookup in the share fails with EMFILE, even loading libc. So a child stays guest root
 * (in the new root, no input from the session) and counts the guest's FUSE inodes (the
 * fuse_inode slab's active objects, in /proc/slabinfo: the descriptors virtiofsd holds for
 * this guest); past `budget` it drops the unused dentries and inodes and the clean page cache
 * (drop_caches 3: an inode with cached pages is not reclaimed otherwise; never what is open or
 * mapped). posture sets the budget to a quarter of virtiofsd's limit, which leaves room for a
 * directory of thousands of entries listed between two looks.
 *
 * The child enters the new root through a descriptor opened before the fork: PID 1 moves that
 * mount onto / right after (step_exec), and a chroot by path that ran later would land in the
 * initramfs's empty mount point, where /proc/slabinfo does not exist (it did, in about one boot
 * in three). What a drop cannot free (open files) raises the next trigger, at most to twice the
 * budget, and the next look waits longer, so the reaper neither spins nor gives up; a look that
 * fails is said once and tried again.
 */
static long fuse_inodes(void) {
    static char buf[1 << 18]; /* /proc/slabinfo is about 30 KiB with a few hundred caches */
    int fd = open("/proc/slabinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)n;
    close(fd);
    buf[got] = 0;
    char *line = strstr(buf, "\nfuse_inode ");
    return line ? strtol(line + strlen("\nfuse_inode "), NULL, 10) : -1;
}

static void step_reaper(void) {
    long budget = number(), late_ms = number();
    if (budget < 1 || late_ms < 0) die("the boot steps hold a bad inode budget", NULL);
    int root = open(R, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) { say("posture-init: cannot start the inode reaper: %s%s\n", strerror(errno), ""); return; }
    pid_t pid = fork();
    if (pid < 0) say("posture-init: cannot start the inode reaper: %s%s\n", strerror(errno), "");
    if (pid) { close(root); return; }
    if (late_ms) sleep_ms(late_ms); /* test hook: start after PID 1 has switched roots */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fchdir(root) || chroot(".") || chdir("/") || null < 0) { say("posture-init: the inode reaper cannot start: %s%s\n", strerror(errno), ""); _exit(126); }
    close(root);
    dup2(null, 0);
    prctl(PR_SET_NAME, "posture-reaper", 0, 0, 0);
    long trigger = budget, wait = 50;
    int told = 0;
    for (;;) {
        sleep_ms(wait);
        long n = fuse_inodes();
        if (n < 0) {
            if (!told) say("posture-init: the inode reaper cannot read fuse_inode in /proc/slabinfo; trying again%s%s\n", "", "");
            told = 1;
            wait = 1000;
            continue;
        }
        wait = 50;
        if (n <= trigger) continue;
        int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
        int dropped = fd >= 0 && write(fd, "3", 1) == 1;
        if (!dropped && !told) say("posture-init: the inode reaper cannot drop caches: %s; trying again%s\n", strerror(errno), "");
        if (fd >= 0) close(fd);
        if (!dropped) { told = 1; wait = 1000; continue; }
        long after = fuse_inodes(), next = after + budget / 4;
        trigger = next < budget ? budget : next > 2 * budget ? 2 * budget : next;
        if (after > budget) wait = 250; /* mostly open files: what a drop cannot free */
    }
}

static void step_exec(void) {
    long as_user = number(), uid = number(), gid = number(), argc = number();
    if (argc < 1 || argc > MAX_ARGS) die("the boot steps hold a bad agent command", NULL);
    char *argv[MAX_ARGS + 3];
    for (long i = 0; i < argc; i++) argv[i] = (char *)field();
    argv[argc] = "--device";
    argv[argc + 1] = dev;
    argv[argc + 2] = NULL;
    char a[4096];
    if (access(in_root(argv[0], a, sizeof a), X_OK)) say("posture-init: %s is missing from the view%s\n", argv[0], "");
    if (!dev[0]) die("no exec channel", NULL);
    if (as_user && (uid == 0 || gid == 0)) die("the boot steps name root as the user", NULL);
    if (as_user && chown(dev, (uid_t)uid, (gid_t)gid)) say("posture-init: cannot give %s to the user: %s\n", dev, strerror(errno));
    /* switch_root: the new root becomes / (the initramfs stays below it, unreachable) */
    if (chdir(R) || mount(R, "/", NULL, MS_MOVE, NULL) || chroot(".") || chdir("/")) die("cannot switch to the new root: ", strerror(errno));
    if (as_user) {
        if (setgroups(0, NULL) || setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) || setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid))
            die("cannot become the user: ", strerror(errno));
        if (getuid() != (uid_t)uid || geteuid() != (uid_t)uid || getgid() != (gid_t)gid) die("still privileged", NULL);
    }
    execv(argv[0], argv);
    die("cannot start the exec agent: ", strerror(errno));
}

static void run_steps(void) {
    for (;;) {
        const char *op = field();
        if (!strcmp(op, "mount")) {
            const char *src = field(), *target = field(), *fstype = field(), *opts = field();
            long make = number(); /* every failure is reported (the shell script reports only some) */
            char t[4096];
            in_root(target, t, sizeof t);
            if (make) mkdir_p(t, 0755);
            errno = EINVAL;
            if (mount_opts(src, t, fstype, opts)) say("posture-init: mount failed: %s (%s)\n", target, strerror(errno));
        } else if (!strcmp(op, "mkdir")) {
            char t[4096];
            mkdir_p(in_root(field(), t, sizeof t), 0755);
        } else if (!strcmp(op, "bind")) {
            step_bind();
        } else if (!strcmp(op, "link")) {
            const char *path = field(), *target = field();
            char p[4096];
            in_root(path, p, sizeof p);
            mkdir_parent(p);
            unlink(p);
            if (symlink(target, p)) say("posture-init: mount failed: %s (%s)\n", path, strerror(errno));
        } else if (!strcmp(op, "mark")) {
            mark(field());
        } else if (!strcmp(op, "lo")) {
            int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            if (s < 0 || if_up(s, "lo")) say("posture-init: cannot bring up the loopback%s%s\n", "", "");
            if (s >= 0) close(s);
        } else if (!strcmp(op, "net")) {
            const char *ifname = field(), *ip4 = field(), *gw4 = field(), *ip6 = field(), *gw6 = field();
            net4(ifname, ip4, gw4);
            net6(ifname, ip6, gw6);
        } else if (!strcmp(op, "channel")) {
            const char *name = field();
            for (int i = 0; i < 200 && find_port(name, dev, sizeof dev); i++) sleep_ms(10);
            if (find_port(name, dev, sizeof dev)) { dev[0] = 0; say("posture-init: no exec channel%s%s\n", "", ""); }
        } else if (!strcmp(op, "door")) {
            step_door();
        } else if (!strcmp(op, "reaper")) {
            step_reaper();
        } else if (!strcmp(op, "stall")) {
            say("posture-init: stalled on purpose (test hook)%s%s\n", "", "");
            for (;;) pause();
        } else if (!strcmp(op, "exec")) {
            step_exec(); /* does not return */
        } else {
            die("unknown boot step: ", op);
        }
    }
}

int main(void) {
    mount("dev", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sys", "/sys", "sysfs", 0, NULL);
    mark("init");
    FILE *list = fopen("/lib/modules/posture.load", "re");
    if (!list) die("no module list in the initramfs", NULL);
    load_modules(list);
    if (mount("root", R, "virtiofs", MS_RDONLY, NULL)) die("cannot mount the root share: ", strerror(errno));
    load_modules(list);
    fclose(list);
    mark("modules");
    if (mount("rw", R "/.posture-guest/rw", "virtiofs", 0, NULL)) die("cannot mount the rw share: ", strerror(errno));
    read_steps();
    run_steps();
    return 1;
}
