/*
 * status.c — status names, version queries, dtype sizes.
 */
#include "internal.h"
#include "ha_shared.h"

#define HA_STR2(x) #x
#define HA_STR(x) HA_STR2(x)

HA_API uint32_t ha_version(void)
{
    return HA_VERSION;
}

HA_API const char *ha_version_string(void)
{
    return HA_STR(HA_VERSION_MAJOR) "." HA_STR(HA_VERSION_MINOR) "." HA_STR(HA_VERSION_PATCH);
}

HA_API const char *ha_status_string(ha_status status)
{
    switch (status) {
    case HA_OK: return "ok";
    case HA_ERR_INVALID_ARGUMENT: return "invalid argument";
    case HA_ERR_SHAPE: return "shape mismatch";
    case HA_ERR_OVERFLOW: return "size overflow";
    case HA_ERR_OUT_OF_MEMORY: return "out of memory";
    case HA_ERR_IO: return "I/O error";
    case HA_ERR_FORMAT: return "malformed file";
    case HA_ERR_BACKEND_NOT_FOUND: return "backend not found";
    case HA_ERR_ABI_MISMATCH: return "plugin ABI mismatch";
    case HA_ERR_UNSUPPORTED: return "unsupported by this backend";
    case HA_ERR_BACKEND: return "backend failure";
    case HA_ERR_STATE: return "wrong state";
    }
    return "unknown status";
}

HA_API size_t ha_dtype_size(ha_dtype dtype)
{
    return ha_elem_size(dtype);
}
