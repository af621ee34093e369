/*
 * api_table.c — the whole public API as one versioned, append-only table (ONNX Runtime's GetApi
 * pattern), for hosts that dlopen libhashattn instead of linking it.
 */
#include "internal.h"

static const ha_api api_v1 = {
    .version = 1,
    .struct_size = sizeof(ha_api),
    .version_number = ha_version,
    .version_string = ha_version_string,
    .status_string = ha_status_string,
    .last_error = ha_last_error,
    .set_log_callback = ha_set_log_callback,
    .dtype_size = ha_dtype_size,
    .runtime_open = ha_runtime_open,
    .runtime_close = ha_runtime_close,
    .runtime_backend_name = ha_runtime_backend_name,
    .runtime_backend_description = ha_runtime_backend_description,
    .runtime_is_host_memory = ha_runtime_is_host_memory,
    .mem_alloc = ha_mem_alloc,
    .mem_free = ha_mem_free,
    .mem_copy = ha_mem_copy,
    .synchronize = ha_synchronize,
    .weights_load = ha_weights_load,
    .weights_load_memory = ha_weights_load_memory,
    .weights_free = ha_weights_free,
    .weights_get_info = ha_weights_get_info,
    .weights_layer_is_dense = ha_weights_layer_is_dense,
    .plan_config_init = ha_plan_config_init,
    .plan_create = ha_plan_create,
    .plan_destroy = ha_plan_destroy,
    .plan_max_kept = ha_plan_max_kept,
    .plan_kept_for_length = ha_plan_kept_for_length,
    .plan_selection_heads = ha_plan_selection_heads,
    .cache_create = ha_cache_create,
    .cache_destroy = ha_cache_destroy,
    .cache_bytes = ha_cache_bytes,
    .cache_encode_keys = ha_cache_encode_keys,
    .encode_queries = ha_encode_queries,
    .match = ha_match,
    .attend = ha_attend,
    .dense_attend = ha_dense_attend,
    .decode_step = ha_decode_step,
};

/* Pins: the table only grows at the end. */
_Static_assert(offsetof(ha_api, version) == 0, "ha_api layout");
_Static_assert(offsetof(ha_api, struct_size) == 4, "ha_api layout");
_Static_assert(sizeof(void *) != 8 || offsetof(ha_api, version_number) == 8, "ha_api v1 layout");
_Static_assert(sizeof(void *) != 8 || offsetof(ha_api, runtime_open) == 56, "ha_api v1 layout");
_Static_assert(sizeof(void *) != 8 || offsetof(ha_api, decode_step) == 280, "ha_api v1 layout");

HA_API const ha_api *ha_get_api(uint32_t version)
{
    if (version == 0 || version > HA_API_VERSION)
        return NULL;
    return &api_v1;
}
