/* edgeops host firmware: the TFLite Micro runner, out of process.
 *
 * A board build links TFLite Micro from its SDK (runners/tflm/edgeops_model_tflm.cc).
 * There is no TFLite Micro C/C++ library for the host here: only the tflite-micro
 * Python package, whose interpreter is TFLM's C++ interpreter and kernels behind
 * pybind. So with EDGEOPS_WITH_TFLM=1 the host port implements the same three
 * functions the core calls (core/edgeops_model.h: edgeops_model_tflm_load, _predict,
 * _unload) by running that interpreter in a coprocess,
 *
 *   $EDGEOPS_TFLM_PYTHON -m edgeops.firmware.tflm_worker      (default: python3)
 *
 * started at the first TFLite load, talking binary frames over a socket pair, its
 * standard input and output (src/edgeops/firmware/tflm_worker.py documents them; a
 * socket, not pipes, so that writing to a dead worker is an error, never SIGPIPE).
 * Everything the core does — manifests, chunks, slots, verification, the health
 * check, probation, telemetry — is the board build's code; what stays here in C is
 * what the board runner does around TFLM: the flatbuffer check, the int8
 * quantization of the features, the dequantization of int8 scores and the argmax
 * (the core's functions). The worker holds one interpreter per loaded model (handle
 * = the interpreter's index here), copies tensor bytes in, invokes and copies tensor
 * bytes out.
 *
 * Calls block on a round trip (tens of microseconds), with timeouts. A worker
 * that dies (the interpreter can crash on a tensor arena that is too small) fails
 * the load it was serving, with how it ended in the reason; a prediction that finds
 * the worker dead starts a new one, loads its model again from the bytes the core
 * keeps and tries once more (models are stateless).
 */
#include "edgeops_config.h"

#if EDGEOPS_WITH_TFLM

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "edgeops_model.h"

#define HOST_TFLM_MODELS 4         /* interpreters: the agent's two models, an app's own */
#define HOST_TFLM_START_MS 60000   /* Python and its imports */
#define HOST_TFLM_LOAD_MS 60000
#define HOST_TFLM_CALL_MS 10000
#define HOST_TFLM_FRAME 8u
#define HOST_TFLM_LOADED 28u
#define HOST_TFLM_FLOAT32 1u       /* TfLiteType numbering */
#define HOST_TFLM_INT8 9u
#define HOST_TFLM_HELLO "edgeops-tflm-worker 1"
#define HOST_TFLM_MODULE "edgeops.firmware.tflm_worker"
#define HOST_TFLM_FAILED "the TFLite Micro worker failed: "

typedef struct {
    const edgeops_model_t *owner;
    uint32_t worker;     /* the worker it was loaded into (a restart loses it) */
    uint8_t in_type;
    uint8_t out_type;
    float in_scale;
    float out_scale;
    int32_t in_zero;
    int32_t out_zero;
} host_tflm_model_t;

static host_tflm_model_t models[HOST_TFLM_MODELS];
static pid_t worker_pid = -1;
static int channel = -1; /* our end of the socket pair */
static uint32_t workers_started;
/* one request's tensor, one reply (scores, or a reason) */
static uint8_t tensor[4u * EDGEOPS_MAX_FEATURES];
static uint8_t reply[4u * EDGEOPS_MAX_CLASSES + EDGEOPS_REASON_MAX + HOST_TFLM_LOADED];

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float get_f32(const uint8_t *p)
{
    const uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static const char *python(void)
{
    const char *p = getenv("EDGEOPS_TFLM_PYTHON");
    return p != NULL && p[0] != '\0' ? p : "python3";
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- the worker process ------------------------------------------------------------------ */

/* close the channel, reap the worker (killed if it does not end by itself), and say how
 * it ended in how[] */
static void stop_worker(int kill_now, char *how, size_t cap)
{
    int status = 0;
    pid_t done = 0;
    if (channel >= 0) {
        close(channel);
    }
    channel = -1;
    if (how != NULL && cap > 0) {
        snprintf(how, cap, "it stopped answering");
    }
    if (worker_pid <= 0) {
        return;
    }
    for (int i = 0; !kill_now && i < 100 && done == 0; i++) { /* up to 1 s to exit */
        done = waitpid(worker_pid, &status, WNOHANG);
        if (done == 0) {
            struct timespec pause = {0, 10 * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
    if (done == 0) {
        kill(worker_pid, SIGKILL);
        done = waitpid(worker_pid, &status, 0);
    }
    if (done == worker_pid && how != NULL && cap > 0) {
        if (kill_now) {
            snprintf(how, cap, "it did not answer in time and was killed");
        } else if (WIFSIGNALED(status)) {
            snprintf(how, cap, "it was killed by signal %d", WTERMSIG(status));
        } else if (WIFEXITED(status)) {
            snprintf(how, cap, "it exited with code %d", WEXITSTATUS(status));
        }
    }
    worker_pid = -1;
}

/* 1: fd is ready; 0: the deadline passed */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        const int64_t left = deadline - now_ms();
        struct pollfd pfd = {fd, events, 0};
        if (left <= 0) {
            return 0;
        }
        const int rc = poll(&pfd, 1, left > 1000000 ? 1000000 : (int)left);
        if (rc > 0) {
            return 1;
        }
        if (rc < 0 && errno != EINTR) {
            return 1; /* the read or write that follows reports the error */
        }
    }
}

/* 0: done; -1: the channel broke; -2: timeout */
static int write_all(const uint8_t *p, size_t n, int64_t deadline)
{
    while (n > 0) {
        if (!wait_fd(channel, POLLOUT, deadline)) {
            return -2;
        }
        const ssize_t w = send(channel, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(uint8_t *p, size_t n, int64_t deadline)
{
    while (n > 0) {
        if (!wait_fd(channel, POLLIN, deadline)) {
            return -2;
        }
        const ssize_t r = read(channel, p, n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* one reply into reply[]: EDGEOPS_OK (status 0) or EDGEOPS_ERR_MODEL (status 1, the
 * worker's reason in reason[]); EDGEOPS_ERR_IO when the worker broke (it is stopped and
 * reason[] says how) */
static edgeops_err_t read_reply(uint32_t *len, int64_t deadline, char *reason, size_t cap)
{
    uint8_t head[HOST_TFLM_FRAME];
    char how[128];
    int rc = read_all(head, sizeof head, deadline);
    if (rc == 0) {
        *len = get_u32(head + 4);
        if (*len > sizeof reply || head[0] > 1) {
            rc = -3;
        } else {
            rc = read_all(reply, *len, deadline);
        }
    }
    if (rc != 0) {
        stop_worker(rc == -2 || rc == -3, how, sizeof how);
        snprintf(reason, cap, HOST_TFLM_FAILED "%s", rc == -3 ? "it broke the protocol" : how);
        return EDGEOPS_ERR_IO;
    }
    if (head[0] != 0) {
        snprintf(reason, cap, "%.*s", (int)*len, (const char *)reply);
        return EDGEOPS_ERR_MODEL;
    }
    return EDGEOPS_OK;
}

static edgeops_err_t start_worker(char *reason, size_t cap)
{
    int pair[2];
    uint32_t len = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
        snprintf(reason, cap, "cannot start the TFLite Micro worker: %s", strerror(errno));
        return EDGEOPS_ERR_IO;
    }
    const pid_t pid = fork();
    if (pid == 0) { /* the child: stdin and stdout are its end, nothing else is open */
        long max_fd = sysconf(_SC_OPEN_MAX);
        dup2(pair[1], STDIN_FILENO);
        dup2(pair[1], STDOUT_FILENO);
        for (long fd = 3; fd < (max_fd > 0 && max_fd < 65536 ? max_fd : 65536); fd++) {
            close((int)fd);
        }
        execlp(python(), python(), "-m", HOST_TFLM_MODULE, (char *)NULL);
        _exit(127);
    }
    close(pair[1]);
    if (pid < 0) {
        snprintf(reason, cap, "cannot start the TFLite Micro worker: %s", strerror(errno));
        close(pair[0]);
        return EDGEOPS_ERR_IO;
    }
    fcntl(pair[0], F_SETFD, FD_CLOEXEC);
    worker_pid = pid;
    channel = pair[0];
    workers_started++;
    char why[EDGEOPS_REASON_MAX / 2];
    const edgeops_err_t err = read_reply(&len, now_ms() + HOST_TFLM_START_MS, why, sizeof why);
    if (err == EDGEOPS_OK && len == strlen(HOST_TFLM_HELLO) &&
        memcmp(reply, HOST_TFLM_HELLO, len) == 0) {
        return EDGEOPS_OK;
    }
    if (err != EDGEOPS_ERR_IO) {
        stop_worker(0, NULL, 0);
    }
    const char *detail = err == EDGEOPS_OK ? "it is not an edgeops TFLite Micro worker" : why;
    if (strncmp(detail, HOST_TFLM_FAILED, strlen(HOST_TFLM_FAILED)) == 0) {
        detail += strlen(HOST_TFLM_FAILED);
    }
    snprintf(reason, cap,
             "the TFLite Micro worker (%s -m " HOST_TFLM_MODULE ") did not start: %s; set "
             "EDGEOPS_TFLM_PYTHON to a Python with edgeops and tflite-micro",
             python(), detail);
    return EDGEOPS_ERR_IO;
}

/* a request (op, handle, head bytes, then body bytes) and its reply */
static edgeops_err_t call(uint8_t op, int handle, const uint8_t *head, uint32_t head_len,
                          const uint8_t *body, uint32_t body_len, int timeout_ms, uint32_t *len,
                          char *reason, size_t cap)
{
    uint8_t frame[HOST_TFLM_FRAME + 4];
    char how[128];
    const int64_t deadline = now_ms() + timeout_ms;
    if (worker_pid <= 0) {
        const edgeops_err_t err = start_worker(reason, cap);
        if (err != EDGEOPS_OK) {
            return err;
        }
    }
    frame[0] = op;
    frame[1] = (uint8_t)handle;
    frame[2] = frame[3] = 0;
    put_u32(frame + 4, head_len + body_len);
    if (head_len > 0) {
        memcpy(frame + HOST_TFLM_FRAME, head, head_len); /* head_len <= 4 */
    }
    int rc = write_all(frame, HOST_TFLM_FRAME + head_len, deadline);
    if (rc == 0 && body_len > 0) {
        rc = write_all(body, body_len, deadline);
    }
    if (rc != 0) {
        stop_worker(rc == -2, how, sizeof how);
        snprintf(reason, cap, HOST_TFLM_FAILED "%s", how);
        return EDGEOPS_ERR_IO;
    }
    return read_reply(len, deadline, reason, cap);
}

/* --- the interpreters ---------------------------------------------------------------- */

/* the interpreter this model had, else one no loaded model uses; -1 when all are taken */
static int free_slot(const edgeops_model_t *m)
{
    for (int i = 0; i < HOST_TFLM_MODELS; i++) {
        if (models[i].owner == m) {
            return i;
        }
    }
    for (int i = 0; i < HOST_TFLM_MODELS; i++) {
        if (models[i].owner == NULL || models[i].owner->kind != EDGEOPS_MODEL_TFLM) {
            return i;
        }
    }
    return -1;
}

/* the flatbuffer into interpreter `slot` of the worker (started when needed) */
static edgeops_err_t load_into(int slot, edgeops_model_t *m, const uint8_t *data, uint32_t size,
                               char *reason, size_t cap)
{
    uint8_t arena[4];
    uint32_t len = 0;
    host_tflm_model_t *h = &models[slot];
    put_u32(arena, (uint32_t)EDGEOPS_TFLM_ARENA_BYTES);
    const edgeops_err_t err = call('L', slot, arena, sizeof arena, data, size, HOST_TFLM_LOAD_MS,
                                   &len, reason, cap);
    if (err == EDGEOPS_ERR_IO && strstr(reason, "killed by signal") != NULL &&
        strlen(reason) + 1 < cap) {
        const size_t used = strlen(reason);
        snprintf(reason + used, cap - used,
                 " while loading the model (is the tensor arena of %u bytes, "
                 "EDGEOPS_TFLM_ARENA_BYTES, too small for it?)",
                 (unsigned)EDGEOPS_TFLM_ARENA_BYTES);
    }
    if (err != EDGEOPS_OK) {
        return EDGEOPS_ERR_MODEL;
    }
    if (len != HOST_TFLM_LOADED) {
        snprintf(reason, cap, "the TFLite Micro worker answered a load with %lu bytes",
                 (unsigned long)len);
        stop_worker(1, NULL, 0);
        return EDGEOPS_ERR_MODEL;
    }
    const uint32_t n_in = get_u32(reply);
    const uint32_t n_out = get_u32(reply + 4);
    const uint8_t in_type = reply[8];
    const uint8_t out_type = reply[9];
    if ((in_type != HOST_TFLM_INT8 && in_type != HOST_TFLM_FLOAT32) ||
        (out_type != HOST_TFLM_INT8 && out_type != HOST_TFLM_FLOAT32)) {
        snprintf(reason, cap, "the model's input and output must be int8 or float32 tensors");
        return EDGEOPS_ERR_MODEL;
    }
    if (n_in == 0 || n_in > EDGEOPS_MAX_FEATURES || n_out == 0 || n_out > EDGEOPS_MAX_CLASSES) {
        snprintf(reason, cap,
                 "the model takes %lu values and gives %lu; this build allows %u and %u",
                 (unsigned long)n_in, (unsigned long)n_out, (unsigned)EDGEOPS_MAX_FEATURES,
                 (unsigned)EDGEOPS_MAX_CLASSES);
        return EDGEOPS_ERR_MODEL;
    }
    h->owner = m;
    h->worker = workers_started;
    h->in_type = in_type;
    h->out_type = out_type;
    h->in_scale = get_f32(reply + 12);
    h->in_zero = (int32_t)get_u32(reply + 16);
    h->out_scale = get_f32(reply + 20);
    h->out_zero = (int32_t)get_u32(reply + 24);
    m->kind = EDGEOPS_MODEL_TFLM;
    m->data = data;
    m->size = size;
    m->n_features = n_in;
    m->n_outputs = n_out;
    m->tflm = h;
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_model_tflm_load(edgeops_model_t *m, const uint8_t *data, uint32_t size,
                                      char *reason, size_t cap)
{
    const edgeops_err_t checked = edgeops_model_tflite_check(data, size, reason, cap);
    if (checked != EDGEOPS_OK) {
        return checked;
    }
    const int slot = free_slot(m);
    if (slot < 0) {
        snprintf(reason, cap, "all %d TFLite Micro interpreters are in use", HOST_TFLM_MODELS);
        return EDGEOPS_ERR_MODEL;
    }
    return load_into(slot, m, data, size, reason, cap);
}

edgeops_err_t edgeops_model_tflm_predict(edgeops_model_t *m, const float *x, uint32_t n_x,
                                         float *scores, uint32_t n_scores, int32_t *cls)
{
    char why[EDGEOPS_REASON_MAX / 2];
    uint32_t len = 0;
    host_tflm_model_t *h = (host_tflm_model_t *)m->tflm;
    if (h == NULL || h->owner != m || n_x != m->n_features) {
        return EDGEOPS_ERR_MODEL;
    }
    const int slot = (int)(h - models);
    uint32_t in_bytes;
    if (h->in_type == HOST_TFLM_INT8) {
        edgeops_model_quantize_int8(x, n_x, h->in_scale, h->in_zero, (int8_t *)tensor);
        in_bytes = n_x;
    } else {
        memcpy(tensor, x, sizeof(float) * n_x);
        in_bytes = (uint32_t)sizeof(float) * n_x;
    }
    edgeops_err_t err = EDGEOPS_ERR_IO;
    /* a worker found dead is replaced and the prediction tried once more (it is stateless);
     * a worker that dies on this very input fails it */
    for (int attempt = 0; attempt < 2 && err == EDGEOPS_ERR_IO; attempt++) {
        if (h->worker != workers_started || worker_pid <= 0) {
            /* a new worker: load the model again from the bytes the core keeps */
            if (load_into(slot, m, m->data, m->size, why, sizeof why) != EDGEOPS_OK) {
                fprintf(stderr, "edgeops-firmware warning: TFLite Micro: %s\n", why);
                return EDGEOPS_ERR_MODEL;
            }
        }
        err = call('P', slot, NULL, 0, tensor, in_bytes, HOST_TFLM_CALL_MS, &len, why,
                   sizeof why);
    }
    if (err != EDGEOPS_OK) {
        fprintf(stderr, "edgeops-firmware warning: TFLite Micro: %s\n", why);
        return EDGEOPS_ERR_MODEL;
    }
    const uint32_t width = h->out_type == HOST_TFLM_INT8 ? 1u : (uint32_t)sizeof(float);
    if (len != m->n_outputs * width) {
        fprintf(stderr, "edgeops-firmware warning: TFLite Micro: %lu output bytes for %lu "
                "scores\n", (unsigned long)len, (unsigned long)m->n_outputs);
        return EDGEOPS_ERR_MODEL;
    }
    const uint32_t n = m->n_outputs < n_scores ? m->n_outputs : n_scores;
    if (h->out_type == HOST_TFLM_INT8) {
        edgeops_model_dequantize_int8((const int8_t *)reply, n, h->out_scale, h->out_zero,
                                      scores);
    } else {
        memcpy(scores, reply, sizeof(float) * n);
    }
    *cls = edgeops_model_argmax(scores, n);
    return EDGEOPS_OK;
}

void edgeops_model_tflm_unload(edgeops_model_t *m)
{
    char why[128];
    uint32_t len = 0;
    host_tflm_model_t *h = (host_tflm_model_t *)m->tflm;
    if (h != NULL && h->owner == m) {
        if (worker_pid > 0 && h->worker == workers_started) {
            (void)call('U', (int)(h - models), NULL, 0, NULL, 0, HOST_TFLM_CALL_MS, &len, why,
                       sizeof why);
        }
        h->owner = NULL;
    }
    m->tflm = NULL;
}

#else

typedef int host_tflm_not_built_t; /* EDGEOPS_WITH_TFLM=0: no TFLite Micro in this build */

#endif /* EDGEOPS_WITH_TFLM */
