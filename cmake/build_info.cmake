# Writes build_info.h from its template with the current git commit (run at build time).
execute_process(COMMAND git rev-parse --short=12 HEAD
  WORKING_DIRECTORY ${SOURCE_DIR} OUTPUT_VARIABLE MEGASERVE_GIT_COMMIT
  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT MEGASERVE_GIT_COMMIT)
  set(MEGASERVE_GIT_COMMIT "unknown")
endif()
set(CMAKE_CXX_COMPILER_ID_VERSION "${COMPILER}")
configure_file(${INPUT} ${OUTPUT} @ONLY)
