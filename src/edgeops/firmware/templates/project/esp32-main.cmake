# The ESP-IDF port (main/edgeops_port_esp.c): MQTT via esp-mqtt, slots in flash partitions.
idf_component_register(
    SRCS "edgeops_port_esp.c"
    INCLUDE_DIRS "."
    REQUIRES edgeops mqtt nvs_flash esp_partition esp_timer esp_netif esp_event
)
target_compile_options(${COMPONENT_LIB} PRIVATE -std=gnu99 -Wall -Wextra -Werror)
