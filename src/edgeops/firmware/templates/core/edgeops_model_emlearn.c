/* emlearn models loaded from bytes: the "EOML" artifact (docs/firmware.md).
 *
 * Trees: emlearn 0.23's own loadable trees (eml_trees.h, EmlTrees) take int16
 * features and thresholds, which would truncate float thresholds and disagree
 * with scikit-learn and with the inline C edgeops generates. The artifact keeps
 * emlearn's tables — decision nodes (feature, threshold, left, right), roots,
 * leaves — with float32 thresholds, and they are evaluated here with exactly
 * the arithmetic of emlearn's generated inline C (x < threshold goes left; soft
 * votes summed as leaf / 255.0f per tree; strict argmax from 0), so the class
 * is the same bit for bit as the c-emlearn variant's.
 *
 * MLPs: emlearn's eml_net (eml_net.h) runs the layers, whose weights and
 * biases point into the artifact (4-byte aligned, little-endian float32).
 */
#include <string.h>

#include "edgeops_model.h"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <eml_net.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include <stdio.h>

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static int32_t rd_i32(const uint8_t *p)
{
    const uint32_t u = rd_u32(p);
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static float rd_f32(const uint8_t *p)
{
    const uint32_t u = rd_u32(p);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static int little_endian(void)
{
    const uint32_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static edgeops_err_t bad(char *reason, size_t cap, const char *what)
{
    snprintf(reason, cap, "the emlearn artifact is invalid: %s", what);
    return EDGEOPS_ERR_MODEL;
}

static edgeops_err_t load_trees(edgeops_model_t *m, const uint8_t *data, uint32_t size,
                                char *reason, size_t cap)
{
    m->n_nodes = rd_u32(data + 16);
    m->n_trees = rd_u32(data + 20);
    m->n_leaves = rd_u32(data + 24);
    m->leaf_bits = rd_u32(data + 28);
    if (m->leaf_bits != 0 && m->leaf_bits != 8) {
        return bad(reason, cap, "leaf_bits must be 0 or 8");
    }
    const uint64_t leaf_size = m->leaf_bits == 0 ? 2u : m->n_outputs;
    const uint64_t need = (uint64_t)EDGEOPS_ARTIFACT_HEADER + 16u * (uint64_t)m->n_nodes +
                          4u * (uint64_t)m->n_trees + leaf_size * (uint64_t)m->n_leaves;
    if (m->n_nodes == 0 || m->n_trees == 0 || m->n_leaves == 0 || need != size ||
        m->n_nodes > 0x7fffffffu || m->n_leaves > 0x7fffffffu) {
        return bad(reason, cap, "table sizes do not add up to the artifact size");
    }
    m->nodes = data + EDGEOPS_ARTIFACT_HEADER;
    m->roots = m->nodes + 16u * m->n_nodes;
    m->leaves = m->roots + 4u * m->n_trees;
    /* children point forward (or at a leaf), so every walk ends */
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        const uint8_t *node = m->nodes + 16u * i;
        const int32_t feature = rd_i32(node);
        if (feature < 0 || (uint32_t)feature >= m->n_features) {
            return bad(reason, cap, "a node reads a feature the model does not have");
        }
        for (unsigned side = 0; side < 2; side++) {
            const int32_t child = rd_i32(node + 8 + 4 * side);
            if (child >= 0 ? ((uint32_t)child <= i || (uint32_t)child >= m->n_nodes)
                           : ((uint32_t)(-(child + 1)) >= m->n_leaves)) {
                return bad(reason, cap, "a node points at a node or leaf out of range");
            }
        }
    }
    for (uint32_t t = 0; t < m->n_trees; t++) {
        const int32_t root = rd_i32(m->roots + 4u * t);
        if (root < 0 || (uint32_t)root >= m->n_nodes) {
            return bad(reason, cap, "a tree root is out of range");
        }
    }
    if (m->leaf_bits == 0) {
        for (uint32_t l = 0; l < m->n_leaves; l++) {
            const uint32_t cls = (uint32_t)m->leaves[2 * l] | ((uint32_t)m->leaves[2 * l + 1] << 8);
            if (cls >= m->n_outputs) {
                return bad(reason, cap, "a leaf names a class the model does not have");
            }
        }
    }
    m->kind = EDGEOPS_MODEL_TREES;
    return EDGEOPS_OK;
}

static edgeops_err_t load_mlp(edgeops_model_t *m, const uint8_t *data, uint32_t size,
                              char *reason, size_t cap)
{
    m->n_layers = rd_u32(data + 16);
    if (m->n_layers < 2 || m->n_layers > EDGEOPS_MLP_MAX_LAYERS) {
        snprintf(reason, cap, "the MLP has %lu layers; this build runs 2 to %u",
                 (unsigned long)m->n_layers, (unsigned)EDGEOPS_MLP_MAX_LAYERS);
        return EDGEOPS_ERR_MODEL;
    }
    if (((uintptr_t)data & 3u) != 0 || !little_endian()) {
        return bad(reason, cap, "MLP weights need a 4-byte aligned buffer on a little-endian CPU");
    }
    uint64_t offset = EDGEOPS_ARTIFACT_HEADER + 16u * (uint64_t)m->n_layers;
    uint32_t previous = m->n_features;
    m->width = 0;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const uint8_t *row = data + EDGEOPS_ARTIFACT_HEADER + 16u * l;
        edgeops_mlp_layer_t *layer = &m->layers[l];
        if (offset > size) {
            return bad(reason, cap, "the layer table is cut short");
        }
        layer->n_inputs = rd_u32(row);
        layer->n_outputs = rd_u32(row + 4);
        layer->activation = rd_u32(row + 8);
        if (layer->n_inputs != previous || layer->n_outputs == 0 ||
            layer->activation >= (uint32_t)EmlNetActivationFunctions) {
            return bad(reason, cap, "layers do not chain, or an activation is unknown");
        }
        if (layer->n_inputs > EDGEOPS_MLP_MAX_WIDTH || layer->n_outputs > EDGEOPS_MLP_MAX_WIDTH) {
            snprintf(reason, cap, "an MLP layer is wider than EDGEOPS_MLP_MAX_WIDTH (%u)",
                     (unsigned)EDGEOPS_MLP_MAX_WIDTH);
            return EDGEOPS_ERR_MODEL;
        }
        const uint64_t weights = 4u * (uint64_t)layer->n_inputs * layer->n_outputs;
        if (offset + weights + 4u * (uint64_t)layer->n_outputs > size) {
            return bad(reason, cap, "the weights are cut short");
        }
        layer->weights = (const float *)(const void *)(data + offset);
        offset += weights;
        layer->biases = (const float *)(const void *)(data + offset);
        offset += 4u * (uint64_t)layer->n_outputs;
        if (layer->n_inputs > m->width) {
            m->width = layer->n_inputs;
        }
        if (layer->n_outputs > m->width) {
            m->width = layer->n_outputs;
        }
        previous = layer->n_outputs;
    }
    if (offset != size) {
        return bad(reason, cap, "bytes after the last layer");
    }
    const uint32_t last = m->layers[m->n_layers - 1].n_outputs;
    if (!(last == m->n_outputs || (last == 1 && m->n_outputs == 2))) {
        return bad(reason, cap, "the last layer does not give one output per class");
    }
    m->kind = EDGEOPS_MODEL_MLP;
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_model_emlearn_load(edgeops_model_t *m, const uint8_t *data, uint32_t size,
                                         char *reason, size_t cap)
{
    if (size < EDGEOPS_ARTIFACT_HEADER || memcmp(data, EDGEOPS_ARTIFACT_MAGIC, 4) != 0) {
        return bad(reason, cap, "no EOML header");
    }
    const uint32_t version = (uint32_t)data[4] | ((uint32_t)data[5] << 8);
    const uint32_t kind = (uint32_t)data[6] | ((uint32_t)data[7] << 8);
    if (version != EDGEOPS_ARTIFACT_VERSION) {
        snprintf(reason, cap, "emlearn artifact format %lu; this firmware reads format %u",
                 (unsigned long)version, (unsigned)EDGEOPS_ARTIFACT_VERSION);
        return EDGEOPS_ERR_UNSUPPORTED;
    }
    m->data = data;
    m->size = size;
    m->n_features = rd_u32(data + 8);
    m->n_outputs = rd_u32(data + 12);
    if (m->n_features == 0 || m->n_features > EDGEOPS_MAX_FEATURES || m->n_outputs == 0 ||
        m->n_outputs > EDGEOPS_MAX_CLASSES) {
        snprintf(reason, cap,
                 "the model has %lu features and %lu classes; this build takes at most %u and %u",
                 (unsigned long)m->n_features, (unsigned long)m->n_outputs,
                 (unsigned)EDGEOPS_MAX_FEATURES, (unsigned)EDGEOPS_MAX_CLASSES);
        return EDGEOPS_ERR_MODEL;
    }
    if (kind == EDGEOPS_MODEL_TREES) {
        return load_trees(m, data, size, reason, cap);
    }
    if (kind == EDGEOPS_MODEL_MLP) {
        return load_mlp(m, data, size, reason, cap);
    }
    return bad(reason, cap, "unknown model kind");
}

static int32_t tree_leaf(const edgeops_model_t *m, int32_t idx, const float *x)
{
    while (idx >= 0) {
        const uint8_t *node = m->nodes + 16u * (uint32_t)idx;
        const float threshold = rd_f32(node + 4);
        idx = (x[rd_i32(node)] < threshold) ? rd_i32(node + 8) : rd_i32(node + 12);
    }
    return -idx - 1;
}

static edgeops_err_t predict_trees(const edgeops_model_t *m, const float *x, int32_t *cls)
{
    int32_t best = -1;
    if (m->leaf_bits == 8) {
        float out[EDGEOPS_MAX_CLASSES];
        float best_value = 0.0f;
        for (uint32_t i = 0; i < m->n_outputs; i++) {
            out[i] = 0.0f;
        }
        for (uint32_t t = 0; t < m->n_trees; t++) {
            const int32_t leaf = tree_leaf(m, rd_i32(m->roots + 4u * t), x);
            const uint8_t *p = m->leaves + (uint32_t)leaf * m->n_outputs;
            for (uint32_t i = 0; i < m->n_outputs; i++) {
                out[i] += (p[i] / 255.0f);
            }
        }
        for (uint32_t i = 0; i < m->n_outputs; i++) {
            if (out[i] > best_value) {
                best = (int32_t)i;
                best_value = out[i];
            }
        }
    } else {
        int32_t votes[EDGEOPS_MAX_CLASSES];
        int32_t best_votes = 0;
        for (uint32_t i = 0; i < m->n_outputs; i++) {
            votes[i] = 0;
        }
        for (uint32_t t = 0; t < m->n_trees; t++) {
            const int32_t leaf = tree_leaf(m, rd_i32(m->roots + 4u * t), x);
            const uint32_t c = (uint32_t)m->leaves[2u * (uint32_t)leaf] |
                               ((uint32_t)m->leaves[2u * (uint32_t)leaf + 1] << 8);
            votes[c] += 1;
        }
        for (uint32_t i = 0; i < m->n_outputs; i++) {
            if (votes[i] > best_votes) {
                best = (int32_t)i;
                best_votes = votes[i];
            }
        }
    }
    if (best < 0) {
        return EDGEOPS_ERR_MODEL;
    }
    *cls = best;
    return EDGEOPS_OK;
}

static edgeops_err_t predict_mlp(edgeops_model_t *m, const float *x, int32_t *cls)
{
    EmlNetLayer layers[EDGEOPS_MLP_MAX_LAYERS];
    EmlNet net;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        layers[l].n_outputs = (int32_t)m->layers[l].n_outputs;
        layers[l].n_inputs = (int32_t)m->layers[l].n_inputs;
        layers[l].weights = m->layers[l].weights;
        layers[l].biases = m->layers[l].biases;
        layers[l].activation = (EmlNetActivationFunction)m->layers[l].activation;
    }
    net.n_layers = (int32_t)m->n_layers;
    net.layers = layers;
    net.activations1 = m->act1;
    net.activations2 = m->act2;
    net.activations_length = (int32_t)m->width;
    const int32_t out = eml_net_predict(&net, x, (int32_t)m->n_features);
    if (out < 0 || (uint32_t)out >= m->n_outputs) {
        return EDGEOPS_ERR_MODEL;
    }
    *cls = out;
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_model_emlearn_predict(edgeops_model_t *m, const float *x, int32_t *cls)
{
    if (m->kind == EDGEOPS_MODEL_TREES) {
        return predict_trees(m, x, cls);
    }
    if (m->kind == EDGEOPS_MODEL_MLP) {
        return predict_mlp(m, x, cls);
    }
    return EDGEOPS_ERR_MODEL;
}
