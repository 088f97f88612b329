# Turns INPUT into a C++ source defining megaserve::api::kOpenApiJson (a std::string_view).
file(READ ${INPUT} hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR size "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUTPUT}
  "// Generated from api/openapi.json by cmake/embed.cmake; do not edit.\n"
  "#include <string_view>\n"
  "namespace megaserve::api {\n"
  "namespace { constexpr char kData[] = {${bytes} 0}; }\n"
  "extern const std::string_view kOpenApiJson;\n"
  "const std::string_view kOpenApiJson(kData, ${size});\n"
  "}  // namespace megaserve::api\n")
