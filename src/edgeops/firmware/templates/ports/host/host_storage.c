#include "host_storage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static void region_path(const host_storage_t *hs, int slot, edgeops_region_t region, char *out,
                        size_t cap)
{
    snprintf(out, cap, "%s/slot-%d.%s", hs->dir, slot,
             region == EDGEOPS_REGION_ARTIFACT ? "artifact" : "manifest");
}

static uint32_t capacity(void *ctx, edgeops_region_t region)
{
    const host_storage_t *hs = (const host_storage_t *)ctx;
    return region == EDGEOPS_REGION_ARTIFACT ? hs->artifact_capacity : hs->manifest_capacity;
}

static int sync_dir(const char *dir)
{
    const int fd = open(dir, O_RDONLY);
    if (fd < 0) {
        return -1;
    }
    const int rc = fsync(fd);
    close(fd);
    return rc;
}

static int fill_erased(int fd, uint32_t size)
{
    uint8_t ones[4096];
    memset(ones, 0xff, sizeof ones);
    for (uint32_t off = 0; off < size;) {
        const uint32_t n = size - off < sizeof ones ? size - off : (uint32_t)sizeof ones;
        const ssize_t done = pwrite(fd, ones, n, (off_t)off);
        if (done <= 0 && errno != EINTR) {
            return -1;
        }
        off += done > 0 ? (uint32_t)done : 0u;
    }
    return 0;
}

static edgeops_err_t erase(void *ctx, int slot, edgeops_region_t region)
{
    char path[1100];
    const host_storage_t *hs = (const host_storage_t *)ctx;
    region_path(hs, slot, region, path, sizeof path);
    const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return EDGEOPS_ERR_STORAGE;
    }
    if (hs->nor && fill_erased(fd, capacity(ctx, region)) != 0) {
        close(fd);
        return EDGEOPS_ERR_STORAGE;
    }
    const int rc = fsync(fd);
    close(fd);
    return rc == 0 ? EDGEOPS_OK : EDGEOPS_ERR_STORAGE;
}

/* NOR flash: programming clears bits only (data becomes old & new) */
static int program_bits(int fd, uint32_t offset, const uint8_t *data, uint32_t len)
{
    uint8_t old[4096];
    for (uint32_t done = 0; done < len;) {
        const uint32_t n = len - done < sizeof old ? len - done : (uint32_t)sizeof old;
        const ssize_t got = pread(fd, old, n, (off_t)offset + done);
        if (got < 0) {
            return -1;
        }
        for (uint32_t i = 0; i < n; i++) {
            old[i] = (uint8_t)((i < (uint32_t)got ? old[i] : 0xffu) & data[done + i]);
        }
        if (pwrite(fd, old, n, (off_t)offset + done) != (ssize_t)n) {
            return -1;
        }
        done += n;
    }
    return 0;
}

static edgeops_err_t write_region(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                                  const uint8_t *data, uint32_t len)
{
    char path[1100];
    const host_storage_t *hs = (const host_storage_t *)ctx;
    if ((uint64_t)offset + len > capacity(ctx, region)) {
        return EDGEOPS_ERR_STORAGE;
    }
    region_path(hs, slot, region, path, sizeof path);
    const int fd = open(path, hs->nor ? O_RDWR | O_CREAT : O_WRONLY | O_CREAT, 0600);
    if (fd < 0) {
        return EDGEOPS_ERR_STORAGE;
    }
    if (hs->nor) {
        const int ok = program_bits(fd, offset, data, len) == 0 && fsync(fd) == 0;
        close(fd);
        return ok ? EDGEOPS_OK : EDGEOPS_ERR_STORAGE;
    }
    uint32_t done = 0;
    while (done < len) {
        const ssize_t n = pwrite(fd, data + done, len - done, (off_t)offset + done);
        if (n <= 0 && errno != EINTR) {
            close(fd);
            return EDGEOPS_ERR_STORAGE;
        }
        done += n > 0 ? (uint32_t)n : 0u;
    }
    const int rc = fsync(fd);
    close(fd);
    return rc == 0 ? EDGEOPS_OK : EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t read_exact(const char *path, uint32_t offset, uint8_t *buf, uint32_t len)
{
    const int fd = open(path, O_RDONLY);
    if (fd < 0) {
        return EDGEOPS_ERR_STORAGE;
    }
    uint32_t done = 0;
    while (done < len) {
        const ssize_t n = pread(fd, buf + done, len - done, (off_t)offset + done);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            close(fd);
            return EDGEOPS_ERR_STORAGE;
        }
        done += n > 0 ? (uint32_t)n : 0u;
    }
    close(fd);
    return EDGEOPS_OK;
}

static edgeops_err_t read_region(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                                 uint8_t *buf, uint32_t len)
{
    char path[1100];
    region_path((const host_storage_t *)ctx, slot, region, path, sizeof path);
    return read_exact(path, offset, buf, len);
}

static edgeops_err_t record_write(void *ctx, int copy, const uint8_t *data, uint32_t len)
{
    char path[1100];
    char tmp[1110];
    const host_storage_t *hs = (const host_storage_t *)ctx;
    snprintf(path, sizeof path, "%s/record-%d", hs->dir, copy);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return EDGEOPS_ERR_STORAGE;
    }
    uint32_t done = 0;
    while (done < len) {
        const ssize_t n = write(fd, data + done, len - done);
        if (n <= 0 && errno != EINTR) {
            close(fd);
            return EDGEOPS_ERR_STORAGE;
        }
        done += n > 0 ? (uint32_t)n : 0u;
    }
    if (fsync(fd) != 0) {
        close(fd);
        return EDGEOPS_ERR_STORAGE;
    }
    close(fd);
    if (rename(tmp, path) != 0 || sync_dir(hs->dir) != 0) {
        return EDGEOPS_ERR_STORAGE;
    }
    return EDGEOPS_OK;
}

static edgeops_err_t record_read(void *ctx, int copy, uint8_t *buf, uint32_t cap, uint32_t *len)
{
    char path[1100];
    struct stat st;
    const host_storage_t *hs = (const host_storage_t *)ctx;
    snprintf(path, sizeof path, "%s/record-%d", hs->dir, copy);
    *len = 0;
    if (stat(path, &st) != 0) {
        return errno == ENOENT ? EDGEOPS_OK : EDGEOPS_ERR_STORAGE;
    }
    if (st.st_size <= 0 || (uint64_t)st.st_size > cap) {
        return EDGEOPS_OK; /* empty or not ours: treated as never written */
    }
    const edgeops_err_t err = read_exact(path, 0, buf, (uint32_t)st.st_size);
    if (err == EDGEOPS_OK) {
        *len = (uint32_t)st.st_size;
    }
    return err;
}

int host_storage_open(host_storage_t *hs, edgeops_storage_t *st, const char *dir,
                      uint32_t artifact_capacity, uint32_t manifest_capacity)
{
    if (strlen(dir) >= sizeof hs->dir) {
        return -1;
    }
    snprintf(hs->dir, sizeof hs->dir, "%s", dir);
    hs->artifact_capacity = artifact_capacity;
    hs->manifest_capacity = manifest_capacity;
    const char *flash = getenv("EDGEOPS_HOST_FLASH");
    hs->nor = flash != NULL && strcmp(flash, "nor") == 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        return -1;
    }
    st->ctx = hs;
    st->capacity = capacity;
    st->erase = erase;
    st->write = write_region;
    st->read = read_region;
    st->record_write = record_write;
    st->record_read = record_read;
    return 0;
}
