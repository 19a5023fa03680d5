/* Memory budget for an ESP32 (.bss competes with Wi-Fi for about 180 KiB of DRAM):
 * about 185 KiB for the agent. See docs/firmware.md, "Memory budget". */
#define EDGEOPS_MANIFEST_MAX_BYTES 24576u
#define EDGEOPS_JSON_MAX_TOKENS 2048u
#define EDGEOPS_MODEL_MAX_BYTES 40960u
#define EDGEOPS_MAX_CHUNKS 64u
#define EDGEOPS_CHUNK_MAX_BYTES 8192u
#define EDGEOPS_MAX_FEATURES 64u
#define EDGEOPS_MAX_EDGE_VALUES 1024u
#define EDGEOPS_MAX_CLASSES 32u
#define EDGEOPS_OUTBOX_BYTES 8192u
#define EDGEOPS_MESSAGE_MAX_BYTES 6144u
#define EDGEOPS_MLP_MAX_WIDTH 128u
