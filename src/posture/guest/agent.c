/*
 * The L3 guest's native exec agent: the wire protocol and behaviour of agent.py's
 * `--device` mode, in C, so that the first command of an emulated guest does not wait
 * for a Python interpreter to start (about two seconds under TCG).
 *
 * posture compiles it statically on the host (l3/nativeagent.py); the guest's init runs
 * it as PID 1 after switch_root, so it also reaps every orphan. A frame is a 9-byte header
 * (payload length u32, stream id u32, type u8, big-endian) then the payload; wire.py has
 * the types. Each OPEN starts a command in a new session: with `tty` on a fresh pty made
 * here, otherwise with separate stdout and stderr pipes. Exit codes are 128+N for signal N.
 * The host is the trusted side: its requests are parsed strictly, and anything malformed
 * is answered with an ERROR rather than guessed at.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

enum {
    OPEN = 1, STDIN = 2, STDIN_EOF = 3, RESIZE = 4, SIGNAL = 5,
    STARTED = 16, STDOUT = 17, STDERR = 18, EXIT = 19, ERROR = 20, HELLO = 21,
};
#define MAX_PAYLOAD (1u << 20)
#define MAX_PROCS 256
#define READ_CHUNK 65536

static int dev = -1;

/* ------------------------------------------------------------------ frames out */

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return; /* the host end went away: nothing to tell it */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void send_frame(uint32_t stream, int kind, const void *payload, size_t len) {
    unsigned char head[9];
    put_u32(head, (uint32_t)len);
    put_u32(head + 4, stream);
    head[8] = (unsigned char)kind;
    if (len == 0) {
        write_all(dev, head, 9);
        return;
    }
    unsigned char *buf = malloc(9 + len);
    if (!buf) return;
    memcpy(buf, head, 9);
    memcpy(buf + 9, payload, len);
    write_all(dev, buf, 9 + len);
    free(buf);
}

static void send_text(uint32_t stream, int kind, const char *text) {
    send_frame(stream, kind, text, strlen(text));
}

/* A JSON object {"message": "..."} with `msg` escaped. */
static void send_error(uint32_t stream, const char *msg) {
    size_t n = strlen(msg);
    char *out = malloc(32 + 6 * n);
    if (!out) return;
    char *o = out + sprintf(out, "{\"message\": \"");
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p == '"' || *p == '\\') { *o++ = '\\'; *o++ = (char)*p; }
        else if (*p < 0x20 || *p >= 0x7f) o += sprintf(o, "\\u%04x", *p);
        else *o++ = (char)*p;
    }
    strcpy(o, "\"}");
    send_text(stream, ERROR, out);
    free(out);
}

/* ------------------------------------------------------------------ JSON in */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int type;
    long long num;      /* J_BOOL, J_NUM */
    char *str;          /* J_STR: decoded bytes, NUL-terminated */
    size_t len;         /* J_STR: length; a string holding a NUL is refused where used */
    struct jv *items;   /* J_ARR, J_OBJ: values */
    char **keys;        /* J_OBJ */
    size_t n;
} jv;

typedef struct { const char *p, *end; int depth; } jparser;

static void jfree(jv *v) {
    if (!v) return;
    free(v->str);
    for (size_t i = 0; i < v->n; i++) {
        jfree(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

static void jskip(jparser *jp) {
    while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r')) jp->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static char *utf8(char *o, unsigned cp) {
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) { *o++ = (char)(0xc0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3f)); }
    else if (cp < 0x10000) { *o++ = (char)(0xe0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
    else { *o++ = (char)(0xf0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3f)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
    return o;
}

/* A string; \udc80-\udcff alone stand for raw bytes 0x80-0xff, as Python's surrogateescape
 * writes undecodable bytes of argv and environment, so such names arrive unchanged. */
static int jstring(jparser *jp, char **out, size_t *outlen) {
    if (jp->p >= jp->end || *jp->p != '"') return -1;
    jp->p++;
    char *buf = malloc((size_t)(jp->end - jp->p) + 1), *o = buf;
    if (!buf) return -1;
    while (jp->p < jp->end && *jp->p != '"') {
        unsigned char c = (unsigned char)*jp->p++;
        if (c < 0x20) goto bad;
        if (c != '\\') { *o++ = (char)c; continue; }
        if (jp->p >= jp->end) goto bad;
        char e = *jp->p++;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (jp->end - jp->p < 4 || hex4(jp->p, &cp)) goto bad;
            jp->p += 4;
            if (cp >= 0xd800 && cp <= 0xdbff && jp->end - jp->p >= 6 && jp->p[0] == '\\' && jp->p[1] == 'u'
                && !hex4(jp->p + 2, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
                jp->p += 6;
                o = utf8(o, 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00));
            } else if (cp >= 0xdc80 && cp <= 0xdcff) {
                *o++ = (char)(cp - 0xdc00);
            } else if (cp >= 0xd800 && cp <= 0xdfff) {
                goto bad; /* a lone surrogate that is not an escaped byte: not encodable */
            } else {
                o = utf8(o, cp);
            }
            break;
        }
        default: goto bad;
        }
    }
    if (jp->p >= jp->end) goto bad;
    jp->p++;
    *o = 0;
    *out = buf;
    *outlen = (size_t)(o - buf);
    return 0;
bad:
    free(buf);
    return -1;
}

static int jvalue(jparser *jp, jv *v);

static int jpush(jv *v, size_t *cap) {
    if (v->n < *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    jv *items = realloc(v->items, ncap * sizeof(jv));
    if (!items) return -1;
    v->items = items;
    if (v->type == J_OBJ) {
        char **keys = realloc(v->keys, ncap * sizeof(char *));
        if (!keys) return -1;
        v->keys = keys;
    }
    *cap = ncap;
    return 0;
}

static int jvalue(jparser *jp, jv *v) {
    memset(v, 0, sizeof(*v));
    jskip(jp);
    if (jp->p >= jp->end || ++jp->depth > 32) return -1;
    char c = *jp->p;
    int rc = -1;
    if (c == '"') {
        v->type = J_STR;
        rc = jstring(jp, &v->str, &v->len);
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        size_t cap = 0;
        v->type = c == '{' ? J_OBJ : J_ARR;
        jp->p++;
        jskip(jp);
        if (jp->p < jp->end && *jp->p == close) { jp->p++; rc = 0; goto done; }
        for (;;) {
            if (jpush(v, &cap)) goto done;
            memset(&v->items[v->n], 0, sizeof(jv)); /* jfree may see it whatever happens next */
            if (v->type == J_OBJ) {
                size_t klen;
                jskip(jp);
                v->keys[v->n] = NULL;
                if (jstring(jp, &v->keys[v->n], &klen)) { v->n++; goto done; }
                jskip(jp);
                if (jp->p >= jp->end || *jp->p != ':') { v->n++; goto done; }
                jp->p++;
            }
            if (jvalue(jp, &v->items[v->n])) { v->n++; goto done; }
            v->n++;
            jskip(jp);
            if (jp->p < jp->end && *jp->p == ',') { jp->p++; continue; }
            if (jp->p < jp->end && *jp->p == close) { jp->p++; rc = 0; }
            goto done;
        }
    } else if (c == 't' && jp->end - jp->p >= 4 && !memcmp(jp->p, "true", 4)) {
        v->type = J_BOOL; v->num = 1; jp->p += 4; rc = 0;
    } else if (c == 'f' && jp->end - jp->p >= 5 && !memcmp(jp->p, "false", 5)) {
        v->type = J_BOOL; jp->p += 5; rc = 0;
    } else if (c == 'n' && jp->end - jp->p >= 4 && !memcmp(jp->p, "null", 4)) {
        v->type = J_NULL; jp->p += 4; rc = 0;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        int neg = c == '-';
        long long n = 0;
        if (neg) jp->p++;
        if (jp->p >= jp->end || *jp->p < '0' || *jp->p > '9') goto done;
        while (jp->p < jp->end && *jp->p >= '0' && *jp->p <= '9') {
            if (n > 100000000000LL) goto done;
            n = n * 10 + (*jp->p++ - '0');
        }
        if (jp->p < jp->end && (*jp->p == '.' || *jp->p == 'e' || *jp->p == 'E')) goto done; /* integers only */
        v->type = J_NUM; v->num = neg ? -n : n; rc = 0;
    }
done:
    jp->depth--;
    return rc;
}

static int jparse(const unsigned char *data, size_t len, jv *out) {
    jparser jp = {(const char *)data, (const char *)data + len, 0};
    if (jvalue(&jp, out)) { jfree(out); return -1; }
    jskip(&jp);
    if (jp.p != jp.end) { jfree(out); return -1; }
    return 0;
}

static const jv *jget(const jv *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (obj->keys[i] && !strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

static long long jint(const jv *obj, const char *key, long long dflt) {
    const jv *v = jget(obj, key);
    return v && (v->type == J_NUM || v->type == J_BOOL) ? v->num : dflt;
}

/* ------------------------------------------------------------------ commands */

typedef struct {
    int used;
    uint32_t stream;
    pid_t pid;
    int tty;
    int in_fd;             /* -1 once closed */
    int out_fd, err_fd;    /* -1 once at end of file */
    unsigned char *inbuf;
    size_t inlen;
    int in_eof;
    int exited, code;
} proc_t;

static proc_t procs[MAX_PROCS];

static proc_t *find_stream(uint32_t stream) {
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used && procs[i].stream == stream) return &procs[i];
    return NULL;
}

static void kill_proc(proc_t *p, int signo) {
    if (kill(-p->pid, signo) != 0) kill(p->pid, signo);
}

static void close_stdin(proc_t *p) {
    if (p->in_fd >= 0) {
        close(p->in_fd);
        p->in_fd = -1;
    }
    free(p->inbuf);
    p->inbuf = NULL;
    p->inlen = 0;
}

static void maybe_finish(proc_t *p) {
    if (!p->exited || p->out_fd >= 0 || p->err_fd >= 0) return;
    close_stdin(p);
    char buf[48];
    snprintf(buf, sizeof buf, "{\"code\": %d}", p->code);
    uint32_t stream = p->stream;
    memset(p, 0, sizeof(*p));
    send_text(stream, EXIT, buf);
}

static void flush_stdin(proc_t *p) {
    while (p->in_fd >= 0 && p->inlen) {
        ssize_t n = write(p->in_fd, p->inbuf, p->inlen);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return; /* poll() tells when it drains */
            p->inlen = 0;                /* the command closed its input: drop the rest */
            break;
        }
        memmove(p->inbuf, p->inbuf + n, p->inlen - (size_t)n);
        p->inlen -= (size_t)n;
    }
    if (p->in_eof && p->inlen == 0) close_stdin(p);
}

static int has_nul(const jv *v) { return v->type == J_STR && strlen(v->str) != v->len; }

/* The child's side of OPEN: never returns. */
static void child_exec(int tty, int fds[3], int report, char **argv, char **envp, const char *cwd) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    setsid();
    for (int i = 0; i < 3; i++) dup2(fds[i], i);
    if (tty) ioctl(0, TIOCSCTTY, 0);
    for (int fd = 3; fd < 1024; fd++)
        if (fd != report) close(fd);
    const char *what = "chdir";
    if (chdir(cwd) == 0) {
        what = "exec";
        environ = envp; /* execvp looks the command up in the command's own PATH */
        execvp(argv[0], argv);
    }
    int err = errno, code = err == ENOENT ? 127 : 126;
    char msg[4096];
    if (what[0] == 'c') snprintf(msg, sizeof msg, "%s: cannot change to %s: %s", argv[0], cwd, strerror(err));
    else snprintf(msg, sizeof msg, "%s: %s", argv[0], strerror(err));
    write_all(report, msg, strlen(msg));
    _exit(code);
}

static char **string_list(const jv *arr, int *bad) {
    char **out = calloc(arr->n + 1, sizeof(char *));
    if (!out) { *bad = 1; return NULL; }
    for (size_t i = 0; i < arr->n; i++) {
        if (arr->items[i].type != J_STR || has_nul(&arr->items[i])) *bad = 1;
        out[i] = arr->items[i].str ? arr->items[i].str : "";
    }
    return out;
}

static char **env_list(const jv *obj, int *bad) {
    char **out = calloc(obj->n + 1, sizeof(char *));
    if (!out) { *bad = 1; return NULL; }
    for (size_t i = 0; i < obj->n; i++) {
        const jv *v = &obj->items[i];
        if (v->type != J_STR || has_nul(v) || !obj->keys[i] || !*obj->keys[i] || strchr(obj->keys[i], '=')) { *bad = 1; out[i] = ""; continue; }
        size_t n = strlen(obj->keys[i]) + 1 + v->len + 1;
        out[i] = malloc(n);
        if (!out[i]) { *bad = 1; out[i] = ""; continue; }
        snprintf(out[i], n, "%s=%s", obj->keys[i], v->str);
    }
    return out;
}

static void open_stream(uint32_t stream, const jv *req) {
    const jv *argv_v = jget(req, "argv"), *env_v = jget(req, "env"), *cwd_v = jget(req, "cwd");
    if (!argv_v || argv_v->type != J_ARR || argv_v->n == 0) {
        send_error(stream, "empty command");
        send_text(stream, EXIT, "{\"code\": 127}");
        return;
    }
    int slot = -1;
    for (int i = 0; i < MAX_PROCS; i++)
        if (!procs[i].used) { slot = i; break; }
    if (slot < 0) {
        send_error(stream, "too many commands at once");
        send_text(stream, EXIT, "{\"code\": 126}");
        return;
    }
    int bad = 0;
    char **argv = string_list(argv_v, &bad);
    char **envp = NULL;
    if (env_v && env_v->type == J_OBJ) envp = env_list(env_v, &bad);
    else if (env_v && env_v->type != J_NULL) bad = 1;
    const char *cwd = "/";
    if (cwd_v && cwd_v->type == J_STR && cwd_v->len) { cwd = cwd_v->str; if (has_nul(cwd_v)) bad = 1; }
    else if (cwd_v && cwd_v->type != J_NULL && cwd_v->type != J_STR) bad = 1;
    int tty = (int)jint(req, "tty", 0) != 0;
    if (bad) {
        send_error(stream, "malformed command request (argv, env and cwd must be strings without NUL)");
        send_text(stream, EXIT, "{\"code\": 126}");
        goto out;
    }

    int report[2], fds[3] = {-1, -1, -1}, in_fd = -1, out_fd = -1, err_fd = -1;
    int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, master = -1, slave = -1;
    if (pipe2(report, O_CLOEXEC)) { send_error(stream, strerror(errno)); send_text(stream, EXIT, "{\"code\": 126}"); goto out; }
    if (tty) {
        struct winsize ws = {0};
        ws.ws_row = (unsigned short)jint(req, "rows", 24);
        ws.ws_col = (unsigned short)jint(req, "cols", 80);
        if (!ws.ws_row) ws.ws_row = 24;
        if (!ws.ws_col) ws.ws_col = 80;
        if (openpty(&master, &slave, NULL, NULL, &ws)) goto fail;
        fcntl(master, F_SETFD, FD_CLOEXEC);
        fds[0] = fds[1] = fds[2] = slave;
    } else {
        if (pipe2(in_p, O_CLOEXEC) || pipe2(out_p, O_CLOEXEC) || pipe2(err_p, O_CLOEXEC)) goto fail;
        fds[0] = in_p[0]; fds[1] = out_p[1]; fds[2] = err_p[1];
    }
    pid_t pid = fork();
    if (pid < 0) goto fail;
    if (pid == 0) child_exec(tty, fds, report[1], argv, envp ? envp : environ, cwd);
    close(report[1]);
    char failure[4096];
    size_t flen = 0;
    for (;;) {
        ssize_t n = read(report[0], failure + flen, sizeof failure - 1 - flen);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        flen += (size_t)n;
        if (flen >= sizeof failure - 1) break;
    }
    failure[flen] = 0;
    close(report[0]);
    if (tty) {
        close(slave);
        in_fd = dup(master);
        fcntl(in_fd, F_SETFD, FD_CLOEXEC);
        out_fd = master;
    } else {
        close(in_p[0]); close(out_p[1]); close(err_p[1]);
        in_fd = in_p[1]; out_fd = out_p[0]; err_fd = err_p[0];
    }
    /* non-blocking everywhere: a stale poll result for a reused fd number must never block the loop */
    for (int fd_i = 0; fd_i < 3; fd_i++) {
        int fd = fd_i == 0 ? in_fd : fd_i == 1 ? out_fd : err_fd;
        if (fd >= 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    proc_t *p = &procs[slot];
    memset(p, 0, sizeof(*p));
    p->used = 1; p->stream = stream; p->pid = pid; p->tty = tty;
    p->in_fd = in_fd; p->out_fd = out_fd; p->err_fd = err_fd;
    if (flen) {
        send_error(stream, failure);
    } else {
        char buf[48];
        snprintf(buf, sizeof buf, "{\"pid\": %d}", (int)pid);
        send_text(stream, STARTED, buf);
    }
    goto out;
fail:
    send_error(stream, strerror(errno));
    send_text(stream, EXIT, "{\"code\": 126}");
    for (int i = 0; i < 2; i++) {
        if (in_p[i] >= 0) close(in_p[i]);
        if (out_p[i] >= 0) close(out_p[i]);
        if (err_p[i] >= 0) close(err_p[i]);
        close(report[i]);
    }
    if (master >= 0) close(master);
    if (slave >= 0) close(slave);
out:
    if (envp) {
        for (char **e = envp; *e; e++)
            if (**e) free(*e);
        free(envp);
    }
    free(argv);
}

static void handle_frame(uint32_t stream, int kind, const unsigned char *payload, size_t len) {
    if (stream == 0) {
        if (kind == HELLO) send_text(0, HELLO, "{\"agent\": \"posture\", \"version\": 1}"); /* the host asks again */
        return;
    }
    proc_t *p = find_stream(stream);
    jv req;
    if (kind == OPEN) {
        if (p) { send_error(stream, "stream already open"); return; }
        if (jparse(payload, len, &req) || req.type != J_OBJ) {
            send_error(stream, "malformed command request");
            send_text(stream, EXIT, "{\"code\": 126}");
            return;
        }
        open_stream(stream, &req);
        jfree(&req);
        return;
    }
    if (!p) return;
    if (kind == STDIN) {
        if (p->in_fd < 0 || !len) return;
        unsigned char *grown = realloc(p->inbuf, p->inlen + len);
        if (!grown) return;
        p->inbuf = grown;
        memcpy(p->inbuf + p->inlen, payload, len);
        p->inlen += len;
        flush_stdin(p);
    } else if (kind == STDIN_EOF) {
        if (p->tty) {
            handle_frame(stream, STDIN, (const unsigned char *)"\x04", 1); /* a terminal's end of input */
        } else {
            p->in_eof = 1;
            flush_stdin(p);
        }
    } else if (kind == RESIZE || kind == SIGNAL) {
        if (jparse(payload, len, &req) || req.type != J_OBJ) return;
        if (kind == RESIZE && p->tty && p->out_fd >= 0) {
            struct winsize ws = {0};
            ws.ws_row = (unsigned short)jint(&req, "rows", 24);
            ws.ws_col = (unsigned short)jint(&req, "cols", 80);
            ioctl(p->out_fd, TIOCSWINSZ, &ws);
            kill_proc(p, SIGWINCH);
        } else if (kind == SIGNAL) {
            long long signo = jint(&req, "signal", 0);
            if (signo > 0 && signo < 65) kill_proc(p, (int)signo);
        }
        jfree(&req);
    }
}

static void read_output(proc_t *p, int which) {
    static unsigned char buf[READ_CHUNK];
    int *fd = which == STDOUT ? &p->out_fd : &p->err_fd;
    ssize_t n;
    do n = read(*fd, buf, sizeof buf); while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN) return;
    if (n > 0) {
        send_frame(p->stream, which, buf, (size_t)n);
        return;
    }
    close(*fd); /* end of file, or EIO: the pty's last user is gone */
    *fd = -1;
    if (which == STDOUT && p->err_fd < 0) close_stdin(p);
    maybe_finish(p);
}

static void reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return;
        for (int i = 0; i < MAX_PROCS; i++) {
            proc_t *p = &procs[i];
            if (!p->used || p->pid != pid) continue;
            p->exited = 1;
            p->code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
            maybe_finish(p);
        }
    }
}

/* ------------------------------------------------------------------ main loop */

int main(int argc, char **argv) {
    const char *device = NULL, *fdarg = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--fd") && i + 1 < argc) fdarg = argv[++i]; /* a connected stream (tests) */
        else { fprintf(stderr, "usage: %s (--device DEV | --fd N)\nunknown argument %s\n", argv[0], argv[i]); return 2; }
    }
    if (!device == !fdarg) { fprintf(stderr, "usage: %s (--device DEV | --fd N)\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (device) {
        dev = open(device, O_RDWR | O_NOCTTY | O_CLOEXEC);
    } else {
        char *end;
        long fd = strtol(fdarg, &end, 10);
        dev = (*end || fd < 3 || fcntl((int)fd, F_SETFD, FD_CLOEXEC)) ? -1 : (int)fd;
        if (dev < 0) errno = EBADF;
    }
    if (sfd < 0 || dev < 0) { perror("posture-agent"); return 1; }
    send_text(0, HELLO, "{\"agent\": \"posture\", \"version\": 1}");

    unsigned char *in = malloc(9 + MAX_PAYLOAD);
    size_t have = 0;
    if (!in) return 1;
    struct pollfd pfd[2 + 3 * MAX_PROCS];
    struct { proc_t *p; int what; } who[2 + 3 * MAX_PROCS];
    for (;;) {
        int n = 0;
        pfd[n] = (struct pollfd){.fd = sfd, .events = POLLIN}; who[n++].p = NULL;
        pfd[n] = (struct pollfd){.fd = dev, .events = POLLIN}; who[n++].p = NULL;
        for (int i = 0; i < MAX_PROCS; i++) {
            proc_t *p = &procs[i];
            if (!p->used) continue;
            if (p->out_fd >= 0) { pfd[n] = (struct pollfd){.fd = p->out_fd, .events = POLLIN}; who[n].p = p; who[n++].what = STDOUT; }
            if (p->err_fd >= 0) { pfd[n] = (struct pollfd){.fd = p->err_fd, .events = POLLIN}; who[n].p = p; who[n++].what = STDERR; }
            if (p->in_fd >= 0 && p->inlen) { pfd[n] = (struct pollfd){.fd = p->in_fd, .events = POLLOUT}; who[n].p = p; who[n++].what = STDIN; }
        }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("posture-agent: poll");
            return 1;
        }
        if (pfd[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
            reap();
        }
        if (pfd[1].revents) {
            ssize_t got = read(dev, in + have, 9 + MAX_PAYLOAD - have);
            if (got < 0 && errno == EINTR) continue;
            if (got == 0 && fdarg) return 0; /* the stream's other end closed */
            if (got <= 0) {
                usleep(50000); /* a serial port with no host end reads empty */
            } else {
                have += (size_t)got;
                size_t off = 0;
                while (have - off >= 9) {
                    uint32_t len = get_u32(in + off), stream = get_u32(in + off + 4);
                    int kind = in[off + 8];
                    if (len > MAX_PAYLOAD) { have = off = 0; break; } /* out of step: drop what is buffered */
                    if (have - off < 9 + len) break;
                    handle_frame(stream, kind, in + off + 9, len);
                    off += 9 + len;
                }
                memmove(in, in + off, have - off);
                have -= off;
            }
        }
        /* procs may have changed while handling frames: serve only entries whose fd is unchanged */
        for (int i = 2; i < n; i++) {
            proc_t *p = who[i].p;
            if (!pfd[i].revents || !p->used) continue;
            if (who[i].what == STDIN) {
                if (p->in_fd == pfd[i].fd) flush_stdin(p);
            } else if ((who[i].what == STDOUT ? p->out_fd : p->err_fd) == pfd[i].fd) {
                read_output(p, who[i].what);
            }
        }
        reap();
    }
}
