# The edgeops component: the portable core, the feature transforms and the model of
# @MODEL@ (@VARIANT@), and emlearn's headers. Buffer sizes: app/edgeops_board_config.h.
file(GLOB EDGEOPS_SOURCES ${CMAKE_CURRENT_LIST_DIR}/core/*.c ${CMAKE_CURRENT_LIST_DIR}/app/*.c)
idf_component_register(
    SRCS ${EDGEOPS_SOURCES}
    INCLUDE_DIRS "core" "app"
)
# emlearn's headers define unused static functions: include them as system headers
target_include_directories(${COMPONENT_LIB} SYSTEM PRIVATE
                           ${CMAKE_CURRENT_LIST_DIR}/third_party/emlearn)
target_compile_definitions(${COMPONENT_LIB} PUBLIC
                           "EDGEOPS_USER_CONFIG=\"edgeops_board_config.h\"")
target_compile_options(${COMPONENT_LIB} PRIVATE -std=gnu99 -Wall -Wextra -Werror
                       -ffp-contract=off)
