/*
 * nitrokms-init: PID 1 of the nitrokms enclave image (the bootstrap ramdisk's /init).
 *
 * Written for this project from the documented behaviour of AWS's enclave init (nitro-facts 6.2),
 * so that the whole boot path is source we can read. One console line per step, prefixed
 * "nitrokms-init: ". In order:
 *   1. mount devtmpfs on /dev, proc on /proc, sysfs on /sys;
 *   2. load the kernel modules listed in /modules.order (files under /modules/, in that order),
 *      passing each its "MODULE.param=value" words from the kernel command line; a module that
 *      is built in (EEXIST) is fine;
 *   3. send the 0xB7 heartbeat to vsock (parent CID, heartbeat port) and wait for its echo, at
 *      most HEARTBEAT_TIMEOUT_MS in all; failure is logged and the boot goes on;
 *   4. read /cmd (argv, one per line) and /env (NAME=value, one per line);
 *   5. chroot /rootfs, mount /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and /run there;
 *   6. fork and exec the command; reap every child; when the command exits, power off.
 * Parameters on the kernel command line: nitrokms.parent_cid=N (default 3, the parent on Nitro;
 * 2 under a VM whose host is the vsock peer) and nitrokms.heartbeat_port=N (default 9000).
 * Nothing here reads input from the parent except the heartbeat echo byte.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define HEARTBEAT 0xB7
#define HEARTBEAT_TIMEOUT_MS 3000
#define MAX_FILE 65536
#define MAX_ITEMS 256
#define DEFAULT_PARENT_CID 3
#define DEFAULT_HEARTBEAT_PORT 9000

static char cmdline[4096];

static void say(const char *format, ...) {
    char line[512];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line - 1, format, args);
    va_end(args);
    if (n < 0) return;
    if (n > (int)sizeof line - 2) n = sizeof line - 2;
    line[n] = '\n';
    dprintf(STDOUT_FILENO, "nitrokms-init: %.*s", n + 1, line);
}

static void power_off(void) {
    say("powering off");
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

static void die(const char *what) {
    say("FATAL: %s: %s", what, strerror(errno));
    power_off();
}

static void console(void) {
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0) return;
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2) close(fd);
}

static void mount_or_die(const char *source, const char *target, const char *type,
                         unsigned long flags, const char *data) {
    mkdir(target, 0755);
    if (mount(source, target, type, flags, data) != 0 && errno != EBUSY) die(target);
}

/* Reads a whole small file into a NUL-terminated heap buffer; NULL when absent. */
static char *slurp(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    char *buffer = malloc(MAX_FILE + 1);
    if (!buffer) die("malloc");
    size_t used = 0;
    for (;;) {
        ssize_t got = read(fd, buffer + used, MAX_FILE - used);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) die(path);
        if (got == 0) break;
        used += (size_t)got;
        if (used == MAX_FILE) {
            errno = EFBIG;
            die(path);
        }
    }
    close(fd);
    buffer[used] = '\0';
    if (size) *size = used;
    return buffer;
}

/* Splits text on newlines into items (empty lines skipped); returns the count. */
static int lines(char *text, char **items, int max) {
    int count = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (count == max - 1) {
            errno = E2BIG;
            die("too many lines in /cmd or /env");
        }
        items[count++] = line;
    }
    items[count] = NULL;
    return count;
}

static unsigned long cmdline_number(const char *key, unsigned long fallback) {
    size_t length = strlen(key);
    for (char *word = cmdline; (word = strstr(word, key)) != NULL; word += length) {
        if ((word == cmdline || word[-1] == ' ') && word[length] == '=') {
            char *end;
            unsigned long value = strtoul(word + length + 1, &end, 10);
            if (end != word + length + 1 && (*end == ' ' || *end == '\0' || *end == '\n'))
                return value;
        }
    }
    return fallback;
}

/* "name.a=1 name.b=2" words of the command line for module `name` ('-' and '_' alike). */
static void module_params(const char *name, char *out, size_t size) {
    out[0] = '\0';
    size_t used = 0, length = strlen(name);
    char copy[sizeof cmdline];
    memcpy(copy, cmdline, sizeof copy);
    for (char *save = NULL, *word = strtok_r(copy, " \n", &save); word;
         word = strtok_r(NULL, " \n", &save)) {
        if (strlen(word) <= length + 1 || word[length] != '.') continue;
        int same = 1;
        for (size_t i = 0; i < length && same; i++) {
            char a = word[i] == '-' ? '_' : word[i], b = name[i] == '-' ? '_' : name[i];
            same = a == b;
        }
        if (!same) continue;
        int n = snprintf(out + used, size - used, "%s%s", used ? " " : "", word + length + 1);
        if (n < 0 || (size_t)n >= size - used) break;
        used += (size_t)n;
    }
}

static void load_modules(void) {
    char *order = slurp("/modules.order", NULL);
    if (!order) {
        say("no /modules.order: no modules to load");
        return;
    }
    char *names[MAX_ITEMS];
    int count = lines(order, names, MAX_ITEMS);
    for (int i = 0; i < count; i++) {
        char path[256], params[1024];
        snprintf(path, sizeof path, "/modules/%s.ko", names[i]);
        module_params(names[i], params, sizeof params);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die(path);
        if (syscall(SYS_finit_module, fd, params, 0) != 0 && errno != EEXIST) die(path);
        close(fd);
        say("loaded module %s%s%s", names[i], params[0] ? " " : "", params);
    }
    free(order);
}

static long remaining_ms(const struct timespec *deadline) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/* Waits for `events` on fd until the deadline; 1 ready, 0 timed out, -1 error. */
static int wait_for(int fd, short events, const struct timespec *deadline) {
    for (;;) {
        long left = remaining_ms(deadline);
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n;
        return (p.revents & (POLLERR | POLLHUP)) && !(p.revents & events) ? -1 : 1;
    }
}

static const char *heartbeat_attempt(unsigned cid, unsigned port, const struct timespec *deadline) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return strerror(errno);
    struct sockaddr_vm address = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    const char *outcome = NULL;
    unsigned char byte = HEARTBEAT, echo = 0;
    int error = 0;
    socklen_t length = sizeof error;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0 && errno != EINPROGRESS) {
        outcome = strerror(errno);
    } else if (wait_for(fd, POLLOUT, deadline) != 1) {
        outcome = "connect timed out";
    } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 || error != 0) {
        outcome = strerror(error ? error : errno);
    } else if (write(fd, &byte, 1) != 1) {
        outcome = strerror(errno);
    } else if (wait_for(fd, POLLIN, deadline) != 1) {
        outcome = "no echo before the timeout";
    } else if (read(fd, &echo, 1) != 1 || echo != HEARTBEAT) {
        outcome = "wrong or no echo";
    }
    close(fd);
    return outcome;
}

static void heartbeat(void) {
    unsigned cid = (unsigned)cmdline_number("nitrokms.parent_cid", DEFAULT_PARENT_CID);
    unsigned port = (unsigned)cmdline_number("nitrokms.heartbeat_port", DEFAULT_HEARTBEAT_PORT);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += HEARTBEAT_TIMEOUT_MS / 1000;
    const char *outcome = heartbeat_attempt(cid, port, &deadline);
    if (outcome)
        say("heartbeat to vsock %u:%u failed (%s); going on", cid, port, outcome);
    else
        say("heartbeat to vsock %u:%u answered", cid, port);
}

static void enter_rootfs(void) {
    if (chroot("/rootfs") != 0 || chdir("/") != 0) die("chroot /rootfs");
    mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_or_die("dev", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, NULL);
    mount_or_die("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_or_die("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_or_die("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    say("entered /rootfs (proc, sys, dev, dev/pts, dev/shm, tmp, run mounted)");
}

int main(void) {
    console();
    say("starting");
    mount_or_die("dev", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    console();
    say("mounted /dev /proc /sys");
    char *kernel_cmdline = slurp("/proc/cmdline", NULL);
    if (kernel_cmdline) {
        snprintf(cmdline, sizeof cmdline, "%s", kernel_cmdline);
        free(kernel_cmdline);
    }
    load_modules();
    heartbeat();

    char *argv[MAX_ITEMS], *envp[MAX_ITEMS];
    char *cmd = slurp("/cmd", NULL), *env = slurp("/env", NULL);
    if (!cmd || lines(cmd, argv, MAX_ITEMS) == 0) {
        errno = ENOENT;
        die("/cmd is missing or empty");
    }
    if (!env || lines(env, envp, MAX_ITEMS) < 0) envp[0] = NULL;
    enter_rootfs();

    say("exec %s", argv[0]);
    pid_t service = fork();
    if (service < 0) die("fork");
    if (service == 0) {
        setsid();
        execvpe(argv[0], argv, envp);
        say("FATAL: exec %s: %s", argv[0], strerror(errno));
        _exit(127);
    }
    for (;;) {
        int status;
        pid_t done = wait(&status);
        if (done < 0 && errno == EINTR) continue;
        if (done < 0) die("wait");
        if (done != service) continue;
        if (WIFEXITED(status))
            say("service exited with status %d", WEXITSTATUS(status));
        else
            say("service killed by signal %d", WTERMSIG(status));
        power_off();
    }
}
