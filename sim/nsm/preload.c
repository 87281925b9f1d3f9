/*
 * LD_PRELOAD interposer standing in for /dev/nsm (nitrokms test harness).
 *
 * open/open64/openat/openat64 (and the _FORTIFY_SOURCE __open_2 variants) of the path "/dev/nsm"
 * return a unix stream socket connected to the simulator at $NITROKMS_NSM_SOCKET, whether or not a
 * real /dev/nsm exists (a connect failure is ENODEV; with the variable unset the real open runs). ioctl(fd, 0xC0200A00, struct nsm_raw *) on such an fd behaves like the
 * kernel driver (spec 1.1): request.len > 4096 fails with EMSGSIZE; otherwise the request is sent
 * as a 4-byte big-endian length plus bytes, the reply is read the same way, min(capacity, reply)
 * bytes are copied out and response.len is set to that count. close() forgets the fd. Any other
 * path, fd or request goes to the real libc (dlsym RTLD_NEXT). One global mutex serialises
 * exchanges, like the driver's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define NSM_PATH "/dev/nsm"
#define NSM_IOCTL_RAW 0xC0200A00UL
#define NSM_REQUEST_MAX 0x1000U
#define NSM_RESPONSE_MAX 0x3000U
#define MAX_TRACKED_FDS 65536

struct nsm_iovec { uint64_t addr; uint64_t len; };
struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; };

static pthread_mutex_t nsm_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char nsm_fds[MAX_TRACKED_FDS];

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*close_fn)(int);

static void *real(const char *name)
{
    void *fn = dlsym(RTLD_NEXT, name);
    if (fn == NULL) {
        abort();
    }
    return fn;
}

/* Only with a simulator socket configured; otherwise a real /dev/nsm (if any) is opened. */
static int is_nsm_path(const char *path)
{
    const char *target = getenv("NITROKMS_NSM_SOCKET");
    return path != NULL && strcmp(path, NSM_PATH) == 0 && target != NULL && target[0] != '\0';
}

static int is_nsm_fd(int fd)
{
    return fd >= 0 && fd < MAX_TRACKED_FDS && __atomic_load_n(&nsm_fds[fd], __ATOMIC_ACQUIRE);
}

static int open_nsm(int flags)
{
    const char *target = getenv("NITROKMS_NSM_SOCKET");
    struct sockaddr_un addr;
    int type = SOCK_STREAM | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0);
    int fd;

    if (strlen(target) >= sizeof(addr.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, target);
    fd = socket(AF_UNIX, type, 0);
    if (fd < 0) {
        return -1;
    }
    if (fd >= MAX_TRACKED_FDS || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int saved = fd >= MAX_TRACKED_FDS ? EMFILE : errno;
        ((close_fn)real("close"))(fd);
        errno = saved == ECONNREFUSED ? ENODEV : saved;
        return -1;
    }
    __atomic_store_n(&nsm_fds[fd], 1, __ATOMIC_RELEASE);
    return fd;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;

    if (is_nsm_path(path)) {
        return open_nsm(flags);
    }
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return ((open_fn)real("open"))(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;

    if (is_nsm_path(path)) {
        return open_nsm(flags);
    }
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return ((open_fn)real("open64"))(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;

    if (is_nsm_path(path)) {
        return open_nsm(flags);
    }
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return ((openat_fn)real("openat"))(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;

    if (is_nsm_path(path)) {
        return open_nsm(flags);
    }
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return ((openat_fn)real("openat64"))(dirfd, path, flags, mode);
}

int __open_2(const char *path, int flags)
{
    if (is_nsm_path(path)) {
        return open_nsm(flags);
    }
    return ((int (*)(const char *, int))real("__open_2"))(path, flags);
}

int __open64_2(const char *path, int flags)
{
    if (is_nsm_path(path)) {
        return open_nsm(flags);
    }
    return ((int (*)(const char *, int))real("__open64_2"))(path, flags);
}

static int send_all(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int recv_all(int fd, unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void put_be32(unsigned char *out, uint32_t value)
{
    out[0] = (unsigned char)(value >> 24);
    out[1] = (unsigned char)(value >> 16);
    out[2] = (unsigned char)(value >> 8);
    out[3] = (unsigned char)value;
}

static uint32_t get_be32(const unsigned char *in)
{
    return ((uint32_t)in[0] << 24) | ((uint32_t)in[1] << 16) | ((uint32_t)in[2] << 8) | in[3];
}

/* One framed round trip; the caller holds nsm_lock. Returns reply length or -1 (errno EIO). */
static long round_trip(int fd, const unsigned char *request, uint32_t request_len,
                       unsigned char *reply)
{
    unsigned char header[4];
    uint32_t reply_len;

    put_be32(header, request_len);
    if (send_all(fd, header, 4) != 0 || send_all(fd, request, request_len) != 0 ||
        recv_all(fd, header, 4) != 0) {
        return -1;
    }
    reply_len = get_be32(header);
    if (reply_len > NSM_RESPONSE_MAX || recv_all(fd, reply, reply_len) != 0) {
        return -1;
    }
    return (long)reply_len;
}

static int nsm_ioctl(int fd, struct nsm_raw *raw)
{
    static unsigned char reply[NSM_RESPONSE_MAX];
    unsigned char request[NSM_REQUEST_MAX];
    uint64_t copied;
    long reply_len;

    if (raw == NULL) {
        errno = EFAULT;
        return -1;
    }
    if (raw->request.len > NSM_REQUEST_MAX) {
        errno = EMSGSIZE;
        return -1;
    }
    if (raw->request.len > 0 && raw->request.addr == 0) {
        errno = EFAULT;
        return -1;
    }
    memcpy(request, (const void *)(uintptr_t)raw->request.addr, (size_t)raw->request.len);
    pthread_mutex_lock(&nsm_lock);
    reply_len = round_trip(fd, request, (uint32_t)raw->request.len, reply);
    if (reply_len < 0) {
        pthread_mutex_unlock(&nsm_lock);
        errno = EIO;
        return -1;
    }
    copied = (uint64_t)reply_len < raw->response.len ? (uint64_t)reply_len : raw->response.len;
    if (copied > 0 && raw->response.addr == 0) {
        pthread_mutex_unlock(&nsm_lock);
        errno = EFAULT;
        return -1;
    }
    memcpy((void *)(uintptr_t)raw->response.addr, reply, (size_t)copied);
    pthread_mutex_unlock(&nsm_lock);
    raw->response.len = copied;
    return 0;
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (is_nsm_fd(fd)) {
        if (request != NSM_IOCTL_RAW) {
            errno = ENOTTY;
            return -1;
        }
        return nsm_ioctl(fd, (struct nsm_raw *)arg);
    }
    return ((ioctl_fn)real("ioctl"))(fd, request, arg);
}

int close(int fd)
{
    if (is_nsm_fd(fd)) {
        __atomic_store_n(&nsm_fds[fd], 0, __ATOMIC_RELEASE);
    }
    return ((close_fn)real("close"))(fd);
}
