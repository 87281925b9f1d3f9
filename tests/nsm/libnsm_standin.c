/* A stand-in for AWS libnsm (spec 2 signatures) that exercises the cffi declarations in tests. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    ERROR_CODE_SUCCESS = 0, ERROR_CODE_INVALID_ARGUMENT = 1, ERROR_CODE_INVALID_INDEX = 2,
    ERROR_CODE_INVALID_RESPONSE = 3, ERROR_CODE_READ_ONLY_INDEX = 4,
    ERROR_CODE_INVALID_OPERATION = 5, ERROR_CODE_BUFFER_TOO_SMALL = 6,
    ERROR_CODE_INPUT_TOO_LARGE = 7, ERROR_CODE_INTERNAL_ERROR = 8
} ErrorCode;
typedef enum { DIGEST_SHA256 = 0, DIGEST_SHA384 = 1, DIGEST_SHA512 = 2 } Digest;
typedef struct {
    uint16_t version_major; uint16_t version_minor; uint16_t version_patch;
    uint8_t module_id[100]; uint32_t module_id_len; uint16_t max_pcrs;
    uint16_t locked_pcrs[64]; uint32_t locked_pcrs_len; Digest digest;
} NsmDescription;

int exits = 0;
/* When non-zero, every length the stand-in writes back is this one instead of the true length: a
 * library that claims a longer reply than the caller's buffer holds. */
uint32_t standin_reported_len = 0;

static uint32_t reported(uint32_t true_len)
{
    return standin_reported_len ? standin_reported_len : true_len;
}

int32_t nsm_lib_init(void) { return 7; }
void nsm_lib_exit(int32_t fd) { if (fd == 7) { exits++; } }

ErrorCode nsm_get_description(int32_t fd, NsmDescription *d)
{
    const char *id = "i-0123456789abcdef0-enc0123456789abcdef";
    if (fd != 7) { return ERROR_CODE_INVALID_ARGUMENT; }
    memset(d, 0, sizeof(*d));
    d->version_major = 1; d->version_minor = 2; d->version_patch = 3;
    memcpy(d->module_id, id, strlen(id) + 1);
    d->module_id_len = reported((uint32_t)strlen(id));
    d->max_pcrs = 32;
    for (uint16_t i = 0; i < 16; i++) { d->locked_pcrs[i] = 15 - i; }
    d->locked_pcrs_len = reported(16);
    d->digest = DIGEST_SHA384;
    return ERROR_CODE_SUCCESS;
}

ErrorCode nsm_get_random(int32_t fd, uint8_t *buf, uintptr_t *buf_len)
{
    if (fd < 0 || buf == NULL || *buf_len == 0) { return ERROR_CODE_INVALID_ARGUMENT; }
    if (*buf_len > 256) { *buf_len = 256; }
    memset(buf, 0x5a, *buf_len);
    *buf_len = reported((uint32_t)*buf_len);
    return ERROR_CODE_SUCCESS;
}

ErrorCode nsm_describe_pcr(int32_t fd, uint16_t index, bool *lock, uint8_t *data, uint32_t *len)
{
    (void)fd;
    if (index >= 32) { return ERROR_CODE_INVALID_INDEX; }
    if (*len < 48) { return ERROR_CODE_BUFFER_TOO_SMALL; }
    *lock = index < 16;
    memset(data, index, 48);
    *len = reported(48);
    return ERROR_CODE_SUCCESS;
}

ErrorCode nsm_extend_pcr(int32_t fd, uint16_t index, const uint8_t *data, uint32_t data_len,
                         uint8_t *out, uint32_t *out_len)
{
    (void)fd;
    if (data == NULL) { return ERROR_CODE_INVALID_ARGUMENT; }
    if (index < 16) { return ERROR_CODE_READ_ONLY_INDEX; }
    memset(out, data_len > 0 ? data[0] : 0, 48);
    *out_len = reported(48);
    return ERROR_CODE_SUCCESS;
}

ErrorCode nsm_lock_pcr(int32_t fd, uint16_t index)
{
    (void)fd;
    return index < 16 ? ERROR_CODE_READ_ONLY_INDEX : ERROR_CODE_SUCCESS;
}

ErrorCode nsm_lock_pcrs(int32_t fd, uint16_t range)
{
    (void)fd;
    return range > 32 ? ERROR_CODE_INVALID_INDEX : ERROR_CODE_SUCCESS;
}

/* Echo each field as 'N' (NULL) or 'L', length byte, bytes, so tests see what was passed. */
ErrorCode nsm_get_attestation_doc(int32_t fd, const uint8_t *u, uint32_t ul, const uint8_t *n,
                                  uint32_t nl, const uint8_t *k, uint32_t kl, uint8_t *out,
                                  uint32_t *out_len)
{
    const uint8_t *ptrs[3] = {u, n, k};
    uint32_t lens[3] = {ul, nl, kl};
    uint32_t pos = 0;
    (void)fd;
    for (int i = 0; i < 3; i++) {
        if (ptrs[i] == NULL) { out[pos++] = 'N'; continue; }
        out[pos++] = 'L';
        out[pos++] = (uint8_t)lens[i];
        memcpy(out + pos, ptrs[i], lens[i]);
        pos += lens[i];
    }
    *out_len = reported(pos);
    return ERROR_CODE_SUCCESS;
}
