# Admin API listener (node/admin.c): providers and keys over the config store.
list(APPEND CORE_SOURCES node/admin.c)
