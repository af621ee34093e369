/*
 * reference.h — the core's portable scalar reference of every stage: the oracle that tests compare
 * every backend against, and the built-in "reference" backend (always available, lowest score).
 * Straight loops, double accumulation, no tricks: correctness over speed.
 */
#ifndef HA_REFERENCE_H
#define HA_REFERENCE_H

#include "hashattn_plugin.h"

/** Pre-activation output y (length desc->dims[depth], double) of MLP head `head` for input x (dims[0]). */
void ha_ref_mlp_forward(const ha_mlp_desc *desc, int32_t head, const float *x, double *y);

/** Stages with the semantics documented in hashattn_plugin.h. Host memory; args already validated. */
ha_status ha_ref_encode(const ha_encode_args *args);
ha_status ha_ref_match(const ha_match_args *args);
ha_status ha_ref_attend(const ha_attend_args *args);

/** The built-in backend's table (name "reference", probe score 1, host memory). */
const ha_plugin_api *ha_reference_plugin_api(void);

#endif /* HA_REFERENCE_H */
